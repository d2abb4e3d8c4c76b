"""The learning-rate finder: the sweep, its suggestion, the model left untouched, the panel."""

from __future__ import annotations

import base64
import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_fixtures import toy_dataset

import workbench as wb
from workbench.errors import DataError, SessionStateError, SpecError, TrainingError
from workbench.models.loading import load_model
from workbench.train import RunState
from workbench.train import lr_finder as finder
from workbench.train.lr_finder import (
    LRFinderResult,
    exponential_lrs,
    find_lr,
    format_lr,
    skipped_points,
    steepest_index,
)
from workbench.widgets.lr_finder_panel import LRFinderPanel

PAIRS = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]
CHEAP = {"num_steps": 30, "batch_size": 4}  # a sweep of ~1 s on the tiny models


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        key, value = PAIRS[rng.randrange(len(PAIRS))]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 4)))
        rows.append({"question": f"{digits} {key}", "answer": value})
    return rows


def session(tmp_path, model_dir, **load) -> wb.Session:
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(model_dir), **load)
    s.load_data(toy_rows(32))
    return s


def fingerprint(model) -> dict:
    """Everything the sweep could leave behind on a model."""
    modules = list(model.named_modules())
    params = list(model.named_parameters())
    return {
        "params": {n: p.detach().clone() for n, p in params},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in params},
        "grads": {n: id(p.grad) if p.grad is not None else None for n, p in params},
        "dtypes": {n: p.dtype for n, p in params},
        "classes": [(n, type(m).__name__) for n, m in modules],
        "training": [(n, m.training) for n, m in modules],
        "hooks": [
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in modules
        ],
        "attributes": [(n, sorted(vars(m))) for n, m in modules],
        "config": model.config.to_dict(),
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("requires_grad", "grads", "dtypes", "classes", "training", "hooks"):
        assert after[key] == before[key], key
    assert after["attributes"] == before["attributes"]
    assert after["config"] == before["config"]
    for key in ("params", "buffers"):
        assert list(after[key]) == list(before[key])
        changed = [n for n, t in before[key].items() if not torch.equal(after[key][n], t)]
        assert not changed, f"{key} changed: {changed[:5]}"
    assert torch.equal(after["rng"][0], before["rng"][0])
    assert np.array_equal(after["rng"][1], before["rng"][1])
    assert after["rng"][2] == before["rng"][2]


# -- the sweep -------------------------------------------------------------------------------
def test_rates_grow_geometrically_from_start_to_end(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 32)
    result = find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 4}, num_steps=30)
    lrs = np.array(result.lrs)
    assert len(lrs) == 30 and result.diverged_at is None  # LoRA on the tiny model never blows up
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9, atol=0)
    assert lrs[0] == 1e-7 and math.isclose(lrs[-1], 1.0, rel_tol=1e-9)
    assert math.isclose(ratios[0], 1e7 ** (1 / 29), rel_tol=1e-9)
    np.testing.assert_allclose(exponential_lrs(1e-5, 1e-1, 5), [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


def test_the_sweep_stops_early_when_the_loss_diverges(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 32)
    # Full fine-tuning of the tiny model blows up past lr ~1 (LoRA's loss stays bounded).
    full = {"method": "full", "batch_size": 4}
    result = find_lr(loaded.model, loaded.tokenizer, data, full, end_lr=1e3, num_steps=30)
    assert result.diverged_at is not None and len(result.lrs) < 30
    assert result.diverged_at == result.lrs[-1] < 1e3
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert all(s <= 4 * min(result.smoothed[: i + 1]) for i, s in enumerate(result.smoothed[:-1]))
    panel = LRFinderPanel(result)
    assert f"the loss diverged at lr {format_lr(result.diverged_at)}" in panel.text()


def test_a_loss_that_is_not_finite_stops_the_sweep_before_that_point(tiny_model_dir, monkeypatch):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 16)
    real, calls = finder.token_loss_sum, []

    def nan_from_call_12(model, batch, fast=True):
        total, count = real(model, batch, fast)
        calls.append(1)
        return (total * math.nan if len(calls) >= 12 else total), count

    monkeypatch.setattr(finder, "token_loss_sum", nan_from_call_12)
    result = find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 4}, num_steps=20)
    lrs = exponential_lrs(1e-7, 1.0, 20)
    assert len(result.lrs) == 11 and result.diverged_at == lrs[11]
    assert all(math.isfinite(x) for x in result.losses)


def test_a_failing_sweep_still_puts_the_model_back(tiny_model_dir, monkeypatch):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 16)
    before = fingerprint(loaded.model)

    def infinite(model, batch, fast=True):
        return torch.tensor(math.inf, requires_grad=True), 1

    monkeypatch.setattr(finder, "token_loss_sum", infinite)
    with pytest.raises(TrainingError, match="the loss is inf at the sweep's first step"):
        find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 4}, num_steps=10)
    assert_same(before, fingerprint(loaded.model))


def test_the_suggestion_is_the_steepest_fall_of_the_smoothed_curve(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 32)
    result = find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 4}, num_steps=30)
    # The smoothing, recomputed: a debiased exponential moving average of weight 0.8.
    avg, smoothed = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.8 * avg + 0.2 * loss
        smoothed.append(avg / (1 - 0.8 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed, smoothed, rtol=1e-12)
    # The steepest fall over ln(lr), searched after the average's first (lag = 4) points.
    assert result.skipped == 4
    lrs, s = np.array(result.lrs), np.array(smoothed)
    slopes = [(s[i + 1] - s[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(4, len(s) - 1)]
    best = 4 + int(np.argmin(slopes))
    assert result.suggested_lr == result.lrs[best]
    assert result.lrs[0] <= result.suggested_lr <= result.lrs[-1]
    assert min(slopes) < 0 and result.reason == "the loss falls fastest here"
    assert result.alternatives["minimum/10"] == result.lrs[int(np.argmin(s))] / 10


def test_the_suggestion_trains_the_toy_task_well(tiny_model_dir):
    # Ground truth, measured with 40-step runs (batch 8) on this toy task: mean loss of the
    # last 5 steps 4.1 at lr 1e-3, 0.63 at 3e-3, 0.03 at 1e-2, 0.64 at 3e-2, 1.3 at 1e-1.
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 64)
    result = find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 8}, num_steps=60)
    assert 3e-3 <= result.suggested_lr <= 3e-2, result


@pytest.mark.parametrize("center", [-5.0, -4.0, -3.2])
def test_the_rule_finds_the_steepest_rate_of_a_known_curve(center):
    lrs = exponential_lrs(1e-7, 1.0, 60)
    x = np.log10(lrs)
    losses = 5 - 3 / (1 + np.exp(-(x - center) / 0.3)) + np.exp((x - center - 2) * 3)
    result = LRFinderResult.from_curve(lrs, losses)
    assert abs(math.log10(result.suggested_lr) - center) < 0.5
    assert result.alternatives["valley"] < 10 ** (center + 1.5)


def test_a_flat_or_noisy_curve_gets_no_confident_suggestion():
    # Any drop, a rounding error included, used to read as "the loss falls fastest here".
    import random as rnd

    lrs = exponential_lrs(1e-7, 1.0, 60)
    noise = rnd.Random(0)
    for losses in ([5.0] * 60, [5.0 + noise.uniform(-0.02, 0.02) for _ in range(60)]):
        result = LRFinderResult.from_curve(lrs, losses)
        assert "(unreliable)" in result.advice, result.advice
        assert "did not fall by 2% anywhere in the sweep" in result.reason
    falling = [5.0 - 3.0 * k / 59 for k in range(60)]
    assert "(unreliable)" not in LRFinderResult.from_curve(lrs, falling).advice


def test_a_curve_that_never_falls_says_the_suggestion_is_unreliable():
    result = LRFinderResult.from_curve(exponential_lrs(1e-6, 1e-2, 8), np.linspace(2, 3, 8))
    assert "(unreliable)" in result.advice and "did not fall" in result.reason
    assert steepest_index([1e-3, 1e-2], [1.0, 2.0]) == 0
    assert skipped_points(60, 0.8) == 4 and skipped_points(8, 0.98) == 2


# -- refusals -----------------------------------------------------------------------------
def test_bad_settings_and_missing_data_are_refused(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir), on_event=lambda _m: None)
    model, tok = loaded.model, loaded.tokenizer
    data = toy_dataset(tok, 8)
    for options, pattern in [
        ({"num_steps": 2}, r"num_steps=2 must be an integer >= 5"),
        ({"start_lr": 1e-2, "end_lr": 1e-3}, r"end_lr=0.001 must be a number above start_lr"),
        ({"start_lr": 0}, r"start_lr=0 must be a number > 0"),
        ({"smoothing": 1.0}, r"smoothing=1.0 must be in \[0, 1\)"),
        ({"diverge_factor": 1}, r"diverge_factor=1 must be above 1"),
    ]:
        with pytest.raises(SpecError, match=pattern):
            find_lr(model, tok, data, None, **options)
    with pytest.raises(SpecError, match=r"find_lr\(\) takes no warp= \(did you mean warmup\?\)"):
        find_lr(model, tok, data, {"warp": 9})
    with pytest.raises(SpecError, match="find_lr needs training data"):
        find_lr(model, tok, None)
    masked = {"input_ids": [[1, 2, 3]], "labels": [[-100, -100, -100]]}
    with pytest.raises(DataError, match="no training example has a trained token"):
        find_lr(model, tok, masked)
    s = wb.Session(tmp_path / "s", verbose=False)
    with pytest.raises(wb.NoModelError):
        s.find_lr()
    s.load_model(str(tiny_model_dir))
    with pytest.raises(wb.NoDataError, match=r"call session\.load_data"):
        s.find_lr()
    assert not hasattr(model, "peft_config")


def test_find_lr_is_refused_while_a_run_trains_or_is_paused(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    run = s.train(max_steps=400, lr=5e-3, batch_size=4, eval_every=1000, wait=False)
    try:
        assert run.state is RunState.RUNNING
        refused = r"^find_lr\(\) is refused while run-001 is "
        with pytest.raises(SessionStateError, match=refused + "running"):
            s.find_lr(**CHEAP)
        run.pause()
        with pytest.raises(SessionStateError, match=refused + r"paused .*run\.stop\(\)"):
            s.find_lr(**CHEAP)
    finally:
        run.stop()
        run.wait()
    assert s.find_lr(**CHEAP).adapter == "existing"  # allowed once the run has stopped


# -- the model is left as it was -------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_fixture", "load", "settings"),
    [
        ("tiny_model_dir", {}, {}),
        ("tiny_gpt2_dir", {}, {}),
        ("tiny_model_dir", {}, {"gradient_checkpointing": True, "neftune_alpha": 5.0}),
        ("tiny_model_dir", {}, {"method": "full", "layer_lr_decay": 0.5, "weight_decay": 0.1}),
        ("tiny_gpt2_dir", {}, {"lora": wb.LoRA(r=4, target=["c_attn"], use_dora=True)}),
        ("tiny_model_dir", {"quantization": "4bit"}, {"method": "qlora"}),
    ],
    ids=["llama", "gpt2", "checkpointing-neftune", "full", "gpt2-dora", "qlora"],
)
def test_before_training_the_model_is_bit_for_bit_the_base_again(
    request, tmp_path, model_fixture, load, settings
):
    s = session(tmp_path, request.getfixturevalue(model_fixture), **load)
    model = s.model
    # First: bitsandbytes repacks 4-bit weights for the CPU at their first forward.
    answer = s.generate("1 cat", max_new_tokens=6)
    before = fingerprint(model)
    result = s.find_lr(**CHEAP, **settings)
    assert s.model is model and not hasattr(model, "peft_config")
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]
    assert not [n for n, m in model.named_modules() if "lora" in type(m).__module__]
    assert_same(before, fingerprint(model))
    assert s.generate("1 cat", max_new_tokens=6) == answer
    assert result.adapter == ("full" if settings.get("method") == "full" else "temporary")
    assert len(result.losses) == len(result.lrs) > 5 and result.losses[0] > 0
    assert s.train(max_steps=2, batch_size=4).state is RunState.FINISHED  # no adapter left over


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_after_training_the_adapter_is_put_back_exactly(request, tmp_path, model_fixture):
    s = session(tmp_path, request.getfixturevalue(model_fixture))
    s.train(max_steps=4, lr=5e-3, batch_size=4, wait=True)
    model = s.model
    answer = s.generate("1 cat", max_new_tokens=8)  # first: peft's generate sets attributes
    before = fingerprint(model)
    adapter = {n: t for n, t in before["params"].items() if "lora_" in n}
    result = s.find_lr(**CHEAP)
    assert result.adapter == "existing" and s.model is model
    assert_same(before, fingerprint(model))
    after = dict(model.named_parameters())
    assert adapter and all(torch.equal(after[n], t) for n, t in adapter.items())
    assert s.generate("1 cat", max_new_tokens=8) == answer
    assert max(result.losses) > min(result.losses)  # the copy did train
    with pytest.raises(SpecError, match="lora= cannot apply: the model already carries"):
        s.find_lr(lora=wb.LoRA(r=4), **CHEAP)
    with pytest.raises(SpecError, match="method='full' cannot apply"):
        s.find_lr(method="full", **CHEAP)
    assert_same(before, fingerprint(model))


def test_raw_text_and_fewer_rows_than_steps(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"text": "The quick brown fox jumps over the lazy dog."}] * 3)
    messages = []
    s.on("progress", messages.append)
    result = s.find_lr(num_steps=30, batch_size=2)  # 3 rows, cycled through 30 steps
    assert len(result.lrs) == 30 or result.diverged_at is not None
    assert messages[-1] == f"lr finder: {result.advice}"
    assert any(m.startswith("lr finder: step 5/30, lr ") for m in messages)


# -- the panel -------------------------------------------------------------------------------
def chart_points(svg: str, label: str) -> list[tuple[float, float]]:
    path = re.search(rf'data-label="{label}" d="([^"]+)"', svg).group(1)
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+) ([-\d.]+)", path)]


def test_the_panel_marks_the_suggested_rate_on_the_curve(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir), on_event=lambda _m: None)
    data = toy_dataset(loaded.tokenizer, 32)
    result = find_lr(loaded.model, loaded.tokenizer, data, {"batch_size": 4}, num_steps=30)
    panel = LRFinderPanel(result)
    html = panel.html()
    # Self-contained and kept by JupyterLab's sanitizer: the chart is an image of a data URI.
    assert "<svg" not in html and "<script" not in html
    assert re.findall(r'src="([^",;]+)', html) == ["data:image/svg+xml"]
    assert not re.findall(r"https?://", html)
    encoded = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(encoded).decode() == panel.svg()
    svg = panel.svg()
    smoothed = chart_points(svg, "smoothed")
    assert len(smoothed) == len(chart_points(svg, "loss")) == len(result.lrs)
    marker = re.search(r'<g class="wb-chart-marker" data-x="([^"]+)"><line x1="([^"]+)"', svg)
    assert float(marker.group(1)) == pytest.approx(result.suggested_lr, rel=1e-5)
    index = result.lrs.index(result.suggested_lr)
    assert float(marker.group(2)) == smoothed[index][0]  # the marker stands on that point
    dot = re.search(r'<circle cx="([^"]+)" cy="([^"]+)"', svg)
    assert (float(dot.group(1)), float(dot.group(2))) == smoothed[index]
    lr = format_lr(result.suggested_lr)
    assert f"suggested {lr}</text>" in svg and f"suggested lr {lr}: " in html
    text = panel.text()
    assert text.splitlines()[1] == (
        f"suggested lr {lr}: the loss falls fastest here; use it as lr= in s.train"
    )
    assert f"{lr}  " in text and "<- suggested" in text and str(result) == text
    xs = [x for x, _ in smoothed]
    assert xs == sorted(xs)  # a log axis keeps the rates in order, evenly spaced
    gaps = np.diff(xs)
    np.testing.assert_allclose(gaps, gaps[0], atol=0.11)


def test_every_label_in_the_panel_is_escaped_the_charts_in_test_svg_chart():
    bad = '<script>alert("x")</script>'
    result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], adapter=bad)
    html = LRFinderPanel(result).html()
    assert "<script" not in html and "&lt;script&gt;" in html


def test_the_display_bundle_has_the_widget_text_and_a_static_snapshot():
    result = LRFinderResult.from_curve(exponential_lrs(1e-6, 1e-1, 12), np.linspace(5, 1, 12))
    bundle = result._repr_mimebundle_()
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(bundle)
    assert bundle["text/plain"] == LRFinderPanel(result).text()
    assert bundle["text/html"].startswith('<div class="wb-lr-finder"')
    assert repr(result).startswith("LRFinderResult(suggested_lr=")


def test_scripts_never_load_the_widgets():
    code = (
        "import sys\n"
        "from workbench.train.lr_finder import LRFinderResult\n"
        "r = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9])\n"
        "text = str(r) + r.panel().html()\n"
        "assert 'ipywidgets' not in sys.modules, 'loaded too early'\n"
        "r._repr_mimebundle_()\n"
        "assert 'ipywidgets' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_settings_the_sweep_cannot_use_are_named_in_a_warning(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    with pytest.warns(wb.WorkbenchWarning, match=r"find_lr ignores lr=, max_steps=: the sweep"):
        result = s.find_lr(lr=1e-3, max_steps=5, **CHEAP)
    assert len(result.lrs) == CHEAP["num_steps"]  # the sweep ran its own steps and rates


def test_train_does_not_warn_against_the_rate_find_lr_measured(tmp_path, tiny_model_dir):
    # The finder suggested ~0.03 on the tiny model (the best rate there), and train() then
    # warned that it was "far above" what LoRA trains at, pointing at spec.py, not the user.
    import warnings as w

    s = session(tmp_path, tiny_model_dir)
    suggested = s.find_lr(num_steps=40, batch_size=4).suggested_lr
    assert suggested > 0.01  # above the rule of thumb the warning states
    with pytest.warns(wb.WorkbenchWarning, match="is far above what full"):  # not measured
        s.train(method="full", lr=suggested, max_steps=1, batch_size=4, wait=True)
    s.load_model(str(tiny_model_dir))
    assert s.find_lr(num_steps=40, batch_size=4).suggested_lr == suggested  # repeatable
    with w.catch_warnings():
        w.simplefilter("error", wb.WorkbenchWarning)
        s.train(lr=suggested, max_steps=2, batch_size=4, wait=True)
    s.load_model(str(tiny_model_dir))  # another model: the measurement no longer holds
    with pytest.warns(wb.WorkbenchWarning, match="is far above") as said:
        s.train(lr=suggested, max_steps=1, batch_size=4, wait=True)
    assert [r.filename for r in said if "far above" in str(r.message)] == [__file__]
