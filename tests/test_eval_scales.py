"""Scores of different scales never share an axis (EvalPanel and ``wb.compare``), and the
EvalPanel's Tokens tab is filled as soon as the panel is built."""

from __future__ import annotations

import json
import math

import pytest

from tests.eval_fixtures import END, XSS, handmade_evaluation, toy_rows, train_lora
from workbench.evaluation import EvalRow, Evaluation, compare, run_evaluation
from workbench.widgets.eval_panel import EvalPanel


def _mixed_scales() -> Evaluation:
    """Perplexity ~1580 (lower is better) beside exact match 0.5 (higher is better)."""
    rows = tuple(
        EvalRow(i, f"Q{i}", "A", {"base": "B", "tuned": "A" if i else "B"}) for i in range(2)
    )
    scores = {
        "exact_match": {
            "base": 0.0,
            "tuned": 0.5,
            "base_ci": (0.0, 0.0),
            "tuned_ci": (0.0, 1.0),
            "higher_is_better": True,
        },
        "perplexity": {
            "base": 1580.0,
            "tuned": 1210.0,
            "base_ci": (1400.0, 1700.0),
            "tuned_ci": (1100.0, 1300.0),
            "higher_is_better": False,
        },
    }
    return Evaluation(scores, rows, {"columns": ["base", "tuned"]})


def _axes(fig) -> dict[str, list[str]]:
    """Which y axis each score's traces are drawn on (by the subplot titles)."""
    by_axis: dict[str, list[str]] = {}
    for trace in fig.data:
        by_axis.setdefault(trace.yaxis, []).append(trace.name)
    return by_axis


def _ranges(fig) -> dict[str, tuple[float, float]]:
    return {
        name: tuple(fig.layout[name].range)
        for name in fig.layout
        if name.startswith("yaxis") and fig.layout[name].range is not None
    }


def _titles(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_tokens_tab_shows_the_first_example_at_once():
    panel = EvalPanel(handmade_evaluation())
    html = panel.tokens_html.value
    assert html.startswith("<div>loss 0.500 (mean NLL per token)</div>")  # row 0, tuned
    assert 'title="loss 0.100"' in html and 'title="loss 7.000"' in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and XSS not in html
    empty = EvalPanel(Evaluation({}, (), {"columns": ["base", "tuned"]}))
    assert empty.tokens_html.value == "<i>no examples were evaluated</i>"


def test_each_score_has_its_own_axis_in_the_panel():
    panel = EvalPanel(_mixed_scales())
    fig = panel.figure
    assert _titles(fig) == ["exact_match ↑ higher is better", "perplexity ↓ lower is better"]
    assert _axes(fig) == {"y": ["base", "tuned"], "y2": ["base", "tuned"]}
    assert [list(t.y) for t in fig.data] == [[0.0], [0.5], [1580.0], [1210.0]]
    ranges = _ranges(fig)
    assert set(ranges) == {"yaxis", "yaxis2"}
    assert ranges["yaxis"] == pytest.approx((0.0, 1.15))  # up to the tuned interval's 1.0
    assert ranges["yaxis2"] == pytest.approx((0.0, 1955.0))  # up to base's 1700
    # Under each bar: its column and value.
    assert [t.x[0] for t in fig.data] == ["base", "tuned", "base", "tuned"]
    assert fig.layout.xaxis.ticktext == ("base: 0", "tuned: 0.5")
    assert fig.layout.xaxis2.ticktext == ("base: 1,580", "tuned: 1,210")
    assert list(fig.data[3].error_y.array) == pytest.approx([90.0])
    assert list(fig.data[3].error_y.arrayminus) == pytest.approx([110.0])


def test_a_real_evaluation_with_perplexity_keeps_the_scales_apart(tiny_model_dir, tmp_path):
    model, tok, _ = train_lora(tiny_model_dir, steps=3)  # barely trained: perplexity is large
    ev = run_evaluation(
        model,
        tok,
        toy_rows(),
        metrics=["exact_match", "perplexity"],
        max_new_tokens=8,
        stop_strings=[END],
        out_dir=tmp_path / "eval-1",
        batch_size=4,
    )
    fig = EvalPanel(ev).figure
    ranges = _ranges(fig)
    assert _titles(fig) == ["exact_match ↑ higher is better", "perplexity ↓ lower is better"]
    for axis, name in (("yaxis", "exact_match"), ("yaxis2", "perplexity")):
        score = ev.scores[name]
        values = [score["base"], score["tuned"], *score["base_ci"], *score["tuned_ci"]]
        # From 0 to 15% above the highest value or bound (a unit axis when all are 0).
        assert ranges[axis] == pytest.approx((0.0, max(values) * 1.15 or 1.0)), (name, values)
    assert ev.scores["perplexity"]["base"] > 10 * ranges["yaxis"][1]  # would flatten em's bars


def _run_folder(folder, exact_match: float, perplexity: float) -> None:
    folder.mkdir(parents=True)
    lines = [{"kind": "train", "step": s, "loss": 3.0 - s} for s in (1, 2)]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    ev = _mixed_scales()
    ev.scores["exact_match"]["tuned"] = exact_match
    ev.scores["perplexity"]["tuned"] = perplexity
    ev.save(folder / "evaluations" / "eval-1")


def test_compare_gives_each_score_its_own_axis(tmp_path):
    _run_folder(tmp_path / "lr-1e-4", 0.5, 1580.0)
    _run_folder(tmp_path / "lr-5e-4", 0.25, 900.0)
    fig = compare([tmp_path / "lr-1e-4", tmp_path / "lr-5e-4"]).figure()
    assert _titles(fig) == [
        "loss ↓ lower is better",
        "exact_match ↑ higher is better",
        "perplexity ↓ lower is better",
    ]
    axes = _axes(fig)
    assert axes["y"] == ["lr-1e-4 loss", "lr-5e-4 loss"]
    assert axes["y2"] == ["lr-1e-4 scores", "lr-5e-4 scores"]  # exact match, one bar per run
    assert axes["y3"] == ["lr-1e-4 scores", "lr-5e-4 scores"]  # perplexity
    bars = [(t.yaxis, t.x[0], t.y[0], t.text[0]) for t in fig.data if t.type == "bar"]
    assert bars == [  # each bar labelled with its value
        ("y2", "lr-1e-4", 0.5, "0.5"),
        ("y3", "lr-1e-4", 1580.0, "1,580"),
        ("y2", "lr-5e-4", 0.25, "0.25"),
        ("y3", "lr-5e-4", 900.0, "900"),
    ]
    ranges = _ranges(fig)
    assert ranges["yaxis2"] == pytest.approx((0.0, 0.575))
    assert ranges["yaxis3"] == pytest.approx((0.0, 1817.0))
    assert "yaxis" not in ranges  # the loss axis fits its curves itself
    # One legend entry per run for the bars, coloured like the run's loss curve.
    shown = [t.name for t in fig.data if t.type == "bar" and t.showlegend]
    assert shown == ["lr-1e-4 scores", "lr-5e-4 scores"]
    colours = {t.name.split()[0]: t.marker.color for t in fig.data if t.type == "bar"}
    assert colours["lr-1e-4"] == fig.data[0].line.color


def test_a_score_only_some_runs_have_and_nan_values(tmp_path):
    _run_folder(tmp_path / "a", 0.5, math.nan)
    fig = compare([tmp_path / "a"]).figure()
    assert _ranges(fig)["yaxis3"] == (0.0, 1.0)  # nothing finite to fit: a unit axis
