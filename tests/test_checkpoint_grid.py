"""What each checkpoint fixed and broke: ``Session.evaluate(checkpoints=...)``, its grid,
``Session.export(checkpoint=...)`` and the CheckpointGrid panel.

The grid is proven, not trusted: every cell is compared with a generation by a fresh model
carrying that checkpoint's adapter (loaded by peft from the checkpoint folder).
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

import workbench as wb
from workbench.errors import EvaluationError, SpecError
from workbench.evaluation import Evaluation
from workbench.evaluation.checkpoints import GRID_FILE, CheckpointEvaluation, step_folder
from workbench.models.generation import generate_text
from workbench.train.checkpoint import checkpoint_step, list_checkpoints
from workbench.widgets.checkpoint_grid import CheckpointGrid, grid_html

PAIRS = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]
TOKENS = 4
XSS = "<script>alert(1)</script>"


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """The colour task (digits, then a key word; the answer is the key's colour)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        key, value = PAIRS[rng.randrange(len(PAIRS))]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 4)))
        rows.append({"question": f"{digits} {key}", "answer": value})
    return rows


def trained_session(folder, model_dir, steps=30, save_every=5) -> wb.Session:
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model_dir))
    s.load_data(toy_rows(32), validation=toy_rows(8, seed=1))
    run = s.train(
        max_steps=steps,
        lr=5e-3,
        batch_size=8,
        save_every=save_every,
        eval_every=1000,
        keep_checkpoints=100,
        seed=3,
        wait=True,
    )
    assert run.status.step == steps
    return s


def stops(session) -> list[str] | None:
    """The stop strings the session's evaluation uses (its template's end of turn, if known)."""
    from workbench.chat import chat_stop_strings

    return chat_stop_strings(session.data.template, session.tokenizer) or None


def weights(session) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in session.model.named_parameters()}


def assert_same_weights(session, before) -> None:
    after = dict(session.model.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n].detach(), t) for n, t in before.items())


def exact(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def starts_same(prediction: str, reference: str) -> bool:
    return prediction[:1] == reference[:1]


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """(session, result, weights before the sweep, eval_progress payloads)."""
    s = trained_session(tmp_path_factory.mktemp("grid") / "s", tiny_model_dir)
    before = weights(s)
    progress = []
    off = s.on("eval_progress", progress.append)
    result = s.evaluate(checkpoints="all", metrics=["exact_match"], max_new_tokens=TOKENS)
    off()
    return s, result, before, progress


def prompts_of(result) -> list[str]:
    return list(result.prompts)


@pytest.fixture(scope="module")
def independent(sweep, tiny_model_dir):
    """{step: outputs} from a fresh model with each checkpoint's adapter (peft), and base's."""
    from peft import PeftModel

    from workbench.models.loading import load_model

    s, result, _, _ = sweep
    fresh = load_model(str(tiny_model_dir), on_event=lambda m: None)
    model, tokenizer, prompts, stop = fresh.model, fresh.tokenizer, prompts_of(result), stops(s)
    outputs = {None: generate_text(model, tokenizer, prompts, TOKENS, stop)}
    for path in list_checkpoints(s.run.run_dir):
        adapted = PeftModel.from_pretrained(model, str(path / "adapter")).eval()
        outputs[checkpoint_step(path)] = generate_text(adapted, tokenizer, prompts, TOKENS, stop)
        model = adapted.unload()  # the bare base again for the next checkpoint
    return outputs


# -- the sweep on a real run ---------------------------------------------------------------
def test_all_checkpoints_make_a_rows_by_steps_grid_proven_by_independent_generation(
    sweep, independent
):
    s, result, _, _ = sweep
    on_disk = [checkpoint_step(p) for p in list_checkpoints(s.run.run_dir)]
    assert result.steps == tuple(on_disk) == (5, 10, 15, 20, 25, 30)
    assert len(result.grid) == len(s.data.validation) == 8
    assert all(len(row) == len(result.steps) for row in result.grid)
    assert result.correct == "exact_match >= 1" and result.metric == "exact_match"
    for j, step in enumerate(result.steps):
        expected = [exact(o, r) for o, r in zip(independent[step], result.references, strict=True)]
        assert [row[j] for row in result.grid] == expected, step
        assert [r.tuned for r in result.evaluations[step].rows] == independent[step]
    base = [exact(o, r) for o, r in zip(independent[None], result.references, strict=True)]
    assert list(result.base) == base
    # The run learned the task on the way: the grid is not the same at every step.
    assert len({tuple(row[j] for row in result.grid) for j in range(len(result.steps))}) > 1
    assert result.right_counts[result.steps[-1]] > result.right_counts[result.steps[0]]


def test_first_right_broke_again_and_best_step_follow_the_grid(sweep):
    _, result, _, _ = sweep
    for i, row in enumerate(result.grid):
        rights = [s for s, ok in zip(result.steps, row, strict=True) if ok]
        assert result.first_right[i] == (rights[0] if rights else None)
        later_wrong = any(
            row[j] and not row[k] for j in range(len(row)) for k in range(j, len(row))
        )
        assert result.broke_again[i] == later_wrong
    assert any(f not in (None, result.steps[0]) for f in result.first_right)
    counts = [sum(row[j] for row in result.grid) for j in range(len(result.steps))]
    assert result.best_step == result.steps[counts.index(max(counts))]
    for j, step in enumerate(result.steps):
        before = [row[j - 1] for row in result.grid] if j else list(result.base)
        now = [row[j] for row in result.grid]
        fixed = [i for i in range(len(now)) if now[i] and not before[i]]
        broken = [i for i in range(len(now)) if before[i] and not now[i]]
        assert (result.fixed_by(step), result.broken_by(step)) == (fixed, broken)
    assert result.scores[result.steps[-1]]["exact_match"] == counts[-1] / len(result.grid)
    assert result.scores[result.steps[-1]]["loss"] < result.scores[result.steps[0]]["loss"]


def test_the_base_is_generated_once_and_shared_by_every_step(sweep, independent):
    _, result, _, progress = sweep
    base_rounds = [p for p in progress if p.column == "base" and p.done == p.total]
    tuned_rounds = [p for p in progress if p.column == "tuned" and p.done == p.total]
    assert len(base_rounds) == 1 and len(tuned_rounds) == len(result.steps)
    for ev in result.evaluations.values():
        assert ev.columns == ("base", "tuned")
        assert [r.base for r in ev.rows] == independent[None]


def test_the_live_weights_are_the_same_bit_for_bit(sweep):
    s, _, before, _ = sweep
    assert_same_weights(s, before)
    assert any(p.requires_grad for p in s.model.parameters())


def test_saved_as_grid_json_and_one_evaluation_per_step(sweep):
    _, result, _, _ = sweep
    folder = result.path
    assert folder.parent.name == "evaluations"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([GRID_FILE, *(step_folder(s) for s in result.steps)])
    data = json.loads((folder / GRID_FILE).read_text())
    assert data["steps"] == list(result.steps) and data["best_step"] == result.best_step
    assert [r["right"] for r in data["rows"]] == [list(row) for row in result.grid]
    loaded = CheckpointEvaluation.load(folder)
    assert loaded == result
    assert loaded.first_right == result.first_right and loaded.text() == result.text()
    step = result.steps[1]
    ev = Evaluation.load(folder / step_folder(step))
    assert ev.settings["checkpoint_step"] == step and ev.rows == result.evaluations[step].rows


def test_a_list_of_steps_selects_exactly_those_with_a_function_for_right(sweep, independent):
    s, _, before, _ = sweep
    result = s.evaluate(
        checkpoints=[20, 10], metrics=["exact_match"], max_new_tokens=TOKENS, correct=starts_same
    )
    assert result.steps == (10, 20) and sorted(result.evaluations) == [10, 20]
    assert result.correct == "starts_same(prediction, reference)" and result.metric is None
    for j, step in enumerate(result.steps):
        expected = [
            starts_same(o, r) for o, r in zip(independent[step], result.references, strict=True)
        ]
        assert [row[j] for row in result.grid] == expected
    assert_same_weights(s, before)


def test_unknown_steps_and_bad_rules_are_refused_naming_what_exists(sweep):
    s, _, before, _ = sweep
    evaluations = sorted(p.name for p in (s.run_dir / "evaluations").iterdir())
    with pytest.raises(SpecError) as info:
        s.evaluate(checkpoints=[10, 7], metrics=["exact_match"])
    assert "step 7" in str(info.value) and "[5, 10, 15, 20, 25, 30]" in str(info.value)
    with pytest.raises(SpecError, match=r"step 7.*\[5, 10, 15, 20, 25, 30\]"):
        s.export("export/nope", checkpoint=7)
    with pytest.raises(SpecError, match="correct=.*checkpoints"):
        s.evaluate(metrics=["exact_match"], correct="exact_match")
    with pytest.raises(SpecError, match=r"'rougeL' is not a score.*\['exact_match'\]"):
        s.evaluate(checkpoints=[5], metrics=["exact_match"], correct="rougeL", max_new_tokens=2)
    assert sorted(p.name for p in (s.run_dir / "evaluations").iterdir()) == evaluations
    assert not (s.run_dir / "export" / "nope").exists()
    assert_same_weights(s, before)


@pytest.mark.parametrize("said", [float("nan"), "no", None, 2])
def test_a_correct_function_that_returns_no_true_or_false_is_refused(sweep, said):
    # Found by QA: bool(nan) and bool("no") are True: every answer counted as right.
    s, _, before, _ = sweep
    with pytest.raises(
        EvaluationError,
        match=rf"correct=<lambda> returned {re.escape(repr(said))} on example 0: it must return",
    ):
        s.evaluate(
            checkpoints=[5], metrics=["exact_match"], correct=lambda p, r: said, max_new_tokens=2
        )
    assert_same_weights(s, before)


# -- export of one checkpoint --------------------------------------------------------------
def step_loaded_by_hand_outputs(session, step, prompts) -> list[str]:
    """The session's answers with ``step``'s trained weights copied in by hand, then undone."""
    from safetensors.torch import load_file

    path = session.run.run_dir / "checkpoints" / step_folder(step)
    saved = weights(session)
    params = dict(session.model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(path / "trainable.safetensors")).items():
            params[name].copy_(tensor)
        try:
            return session.generate(prompts, max_new_tokens=TOKENS, stop_strings=stops(session))
        finally:
            for name, tensor in saved.items():
                params[name].copy_(tensor)


def a_step_unlike_the_last(result) -> int:
    final = [r.tuned for r in result.evaluations[result.steps[-1]].rows]
    return next(s for s in result.steps if [r.tuned for r in result.evaluations[s].rows] != final)


def test_export_of_a_checkpoint_loads_with_transformers_and_answers_like_it(sweep):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s, result, before, _ = sweep
    step = a_step_unlike_the_last(result)
    folder = s.export("export/merged-step", checkpoint=step)
    assert_same_weights(s, before)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = prompts_of(result)
    exported = generate_text(model, tokenizer, prompts, TOKENS, stops(s))
    assert exported == step_loaded_by_hand_outputs(s, step, prompts)
    assert exported == [r.tuned for r in result.evaluations[step].rows]
    assert exported != s.generate(prompts, max_new_tokens=TOKENS, stop_strings=stops(s))
    assert_same_weights(s, before)


def test_adapter_export_of_a_checkpoint_through_the_result_loads_with_peft(sweep, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    s, result, before, _ = sweep
    step = a_step_unlike_the_last(result)
    folder = result.export(step, "export/adapter-step", format="adapter")
    assert folder == s.run_dir / "export" / "adapter-step"
    assert_same_weights(s, before)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    prompts = prompts_of(result)
    exported = generate_text(model, s.tokenizer, prompts, TOKENS, stops(s))
    assert exported == step_loaded_by_hand_outputs(s, step, prompts)


def test_the_panel_of_a_session_sweep_exports_the_chosen_step(sweep):
    s, result, before, _ = sweep
    panel = result.panel()
    assert not panel.export_button.disabled and panel.step_select.value == result.best_step
    panel.step_select.value = result.steps[0]
    panel.export_button.click()
    target = s.run_dir / "export" / f"checkpoint-{result.steps[0]}"
    assert (target / "config.json").is_file()
    assert str(target) in panel.status_html.value
    assert_same_weights(s, before)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir"])
def test_gpt2_sweep_and_export_leave_the_model_as_it_was(fixture, request, tmp_path):
    s = trained_session(tmp_path / "s", request.getfixturevalue(fixture), steps=6, save_every=2)
    before = weights(s)
    result = s.evaluate(checkpoints="all", metrics=["exact_match"], max_new_tokens=2, limit=3)
    assert result.steps == (2, 4, 6) and len(result.grid) == 3
    assert s.export("export/a", format="adapter", checkpoint=2).is_dir()
    assert_same_weights(s, before)


# -- hand-made grids and the panel ---------------------------------------------------------
def handmade(prompts=("a", "b", "c", "d")) -> CheckpointEvaluation:
    return CheckpointEvaluation(
        steps=(10, 20, 30, 40),
        grid=(
            (False, True, True, True),  # fixed at 20, stays
            (True, False, True, False),  # right, broke, right, broke again
            (False, False, False, False),  # never
            (False, False, True, True),  # fixed at 30
        ),
        base=(False, True, False, True),
        prompts=prompts,
        references=("r",) * 4,
        scores={s: {"exact_match": 0.5, "loss": 1.0} for s in (10, 20, 30, 40)},
    )


def test_hand_made_grid_first_right_broke_again_best_fixed_and_broken():
    r = handmade()
    assert r.first_right == (20, 10, None, 30)
    assert r.broke_again == (False, True, False, False)
    assert r.broke_at == (None, 20, None, None)
    assert r.right_counts == {10: 1, 20: 1, 30: 3, 40: 2}
    assert r.best_step == 30
    assert r.fixed_by(10) == [] and r.broken_by(10) == [3]  # against the base
    assert r.fixed_by(20) == [0] and r.broken_by(20) == [1]
    assert r.fixed_by(30) == [1, 3] and r.broken_by(40) == [1]
    tie = CheckpointEvaluation((1, 2), ((True, False), (False, True)))
    assert tie.best_step == 1
    with pytest.raises(SpecError, match=r"step 15 .*\[10, 20, 30, 40\]"):
        r.fixed_by(15)
    text = r.text().splitlines()
    assert text[0].endswith("best step 30 (3/4 right)")
    assert text[6].split() == ["#1", "✓", "✓▲", "✗▼", "✓", "✗▼", "b"]


def test_grid_html_counts_marks_and_escapes():
    r = handmade(prompts=(XSS, "b", "c", "d"))
    html = grid_html(r)
    cells = [ok for row in r.grid for ok in row] + list(r.base)
    assert html.count("✓") == sum(cells) and html.count("✗") == len(cells) - sum(cells)
    assert html.count("▲") == 3 + 1 and html.count("▼") == 2 + 1  # cells + the legend
    assert "<script" not in html.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "://" not in html and "src=" not in html  # self-contained
    assert "step 30<br><b>best</b>" in html
    bundle = CheckpointGrid(r)._repr_mimebundle_()
    assert bundle["text/plain"] == r.text() and bundle["text/html"] == html
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert r._repr_mimebundle_()["text/html"] == html


def test_the_export_button_calls_the_callback_with_the_chosen_step():
    calls = []
    panel = CheckpointGrid(handmade(), on_export=lambda step: calls.append(step) or f"<out{step}>")
    assert panel.step_select.value == 30 and "(best)" in panel.step_select.label
    panel.step_select.value = 20
    assert panel.detail_html.value == "step 20: 1/4 right; fixed #0; broke #1"
    panel.export_button.click()
    assert calls == [20] and panel.status_html.value == "exported step 20 to &lt;out20&gt;"
    assert CheckpointGrid(handmade()).export_button.disabled


def test_a_sweep_after_load_model_names_the_reason(tmp_path, tiny_model_dir):
    # it said "the latest run has none that are complete; train first" though it had them
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=0.25)
    run = s.train(max_steps=2, batch_size=4, wait=True)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(SpecError, match=rf"not the one {run.run_dir.name} trained .*s.resume"):
        s.evaluate(checkpoints="all", metrics=["exact_match"])
    assert not list((tmp_path / "s").glob("evaluations/eval-*"))


def test_no_column_is_called_best_when_no_step_gets_anything_right():
    # it said "best step 1 (0/4 right)" and highlighted step 1
    from workbench.evaluation.checkpoints import CheckpointEvaluation
    from workbench.widgets.checkpoint_grid import CheckpointGrid, grid_html

    result = CheckpointEvaluation((1, 2), ((False, False), (False, False)), prompts=("a", "b"))
    assert result.marked_best is None and result.best_step == 1
    assert result.header().endswith("; no step gets an example right")
    assert " best" not in result.text().splitlines()[1]
    assert "<b>best</b>" not in grid_html(result)
    panel = CheckpointGrid(result)
    assert [label for label, _ in panel.step_select.options] == ["step 1", "step 2"]


def test_a_cells_hover_says_an_empty_answer_is_empty():
    # The tip read "answer: " with nothing after it.
    from workbench.evaluation import EvalRow

    def evaluation(answer):
        return Evaluation({}, (EvalRow(0, "Q", "A", {"base": "b", "tuned": answer}),), {})

    grid = CheckpointEvaluation(
        (1, 2),
        ((False, False),),
        prompts=("Q",),
        evaluations={1: evaluation(" "), 2: evaluation("x")},
    )
    html = grid_html(grid)
    assert 'title="#0 at step 1: wrong; answer: (empty answer)"' in html
    assert 'title="#0 at step 2: wrong; answer: x"' in html
