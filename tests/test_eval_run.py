"""run_evaluation on a real tiny model trained with LoRA: base vs tuned, files, errors."""

from __future__ import annotations

import json
import math

import pytest

from tests.eval_fixtures import END, TASK, toy_rows, trained  # noqa: F401 (fixture)
from workbench.evaluation import Evaluation, EvaluationError, run_evaluation
from workbench.events import EventHub
from workbench.models.generation import generate_text
from workbench.models.loading import load_model


@pytest.fixture(scope="module")
def evaluation(trained, tmp_path_factory):  # noqa: F811
    model, tok, _ = trained
    out = tmp_path_factory.mktemp("evals") / "eval-1"
    return run_evaluation(
        model,
        tok,
        toy_rows(),
        metrics=["exact_match", "rouge", "bleu", "chrf", "perplexity"],
        max_new_tokens=8,
        stop_strings=[END],
        out_dir=out,
        batch_size=3,
    )


def test_tuned_beats_base_on_the_toy_task(evaluation, trained):  # noqa: F811
    assert trained[2] < 0.5  # the training loss fell: the adapter learned the task
    em = evaluation.scores["exact_match"]
    assert em["tuned"] == 1.0 and em["base"] == 0.0
    assert all(math.isnan(x) for x in em["tuned_ci"])  # under 10 rows: no interval
    assert [r.tuned for r in evaluation.rows] == list(TASK.values())
    assert evaluation.scores["perplexity"]["tuned"] < evaluation.scores["perplexity"]["base"]
    for row in evaluation.rows:
        assert row.losses["tuned"] < row.losses["base"]
        assert len(row.tokens) == len(row.token_losses["tuned"]) == len(row.token_losses["base"])
        assert row.scores["exact_match"] == {"base": 0.0, "tuned": 1.0}


def test_adapter_off_gives_the_fresh_base_models_outputs(evaluation, tiny_model_dir):
    fresh = load_model(str(tiny_model_dir), on_event=lambda m: None)
    prompts = [r["prompt"] for r in toy_rows()]
    expected = generate_text(fresh.model, fresh.tokenizer, prompts, 8, stop_strings=[END])
    assert [r.base for r in evaluation.rows] == expected
    assert [r.base for r in evaluation.rows] != [r.tuned for r in evaluation.rows]


def test_saved_atomically_and_reloads_without_model(evaluation):
    folder = evaluation.path
    assert sorted(p.name for p in folder.iterdir()) == [
        "rows.jsonl",
        "scores.json",
        "settings.json",
    ]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["columns"] == ["base", "tuned"] and settings["stop_strings"] == [END]
    loaded = Evaluation.load(folder)
    assert json.dumps(loaded.scores) == json.dumps(evaluation.scores)  # NaN == NaN here
    assert "NaN" not in (folder / "scores.json").read_text()  # a missing value is null
    assert loaded.rows == evaluation.rows
    assert "exact_match" in str(loaded) and "rouge1" in str(loaded)


def test_events_plain_model_limit_and_empty_generation(trained):  # noqa: F811
    model, tok, _ = trained
    seen = []
    hub = EventHub()
    hub.on("*", lambda name, payload: seen.append(name))
    base = model.get_base_model()  # a plain model: one column
    rows = [{"prompt": toy_rows()[0]["prompt"], "reference": "red"}] * 3
    ev = run_evaluation(
        base,
        tok,
        rows,
        metrics=["exact_match", "bleu"],
        max_new_tokens=1,
        limit=2,
        events=hub,
        stop_strings=["r"],
    )
    assert ev.columns == ("tuned",) and len(ev.rows) == 2
    assert [r.tuned for r in ev.rows] == ["", ""]  # cut at the stop string: empty answers
    assert ev.scores["exact_match"]["tuned"] == 0.0 and ev.scores["bleu"]["tuned"] == 0.0
    assert "eval_progress" in seen and seen[-1] == "eval_done"


@pytest.mark.parametrize(
    ("rows", "metrics", "message"),
    [
        ([], ["exact_match"], "no rows to evaluate"),
        (None, ["exact_match"], "no rows to evaluate"),
        ([{"prompt": "p"}], ["exact_match"], "row 0: missing field 'reference'"),
        ([{"prompt": "p", "reference": "r"}], ["rogue"], "unknown metric 'rogue'.*rouge"),
        (
            [{"prompt": "p", "reference": "r"}, {"prompt": "p", "reference": "r"}],
            [lambda p, r: None],
            "metric '<lambda>' returned None for example 0",
        ),
    ],
)
def test_bad_input_raises_clear_errors(trained, rows, metrics, message):  # noqa: F811
    model, tok, _ = trained
    with pytest.raises(EvaluationError, match=message):
        run_evaluation(model, tok, rows, metrics=metrics, max_new_tokens=2)


def test_generate_text_stop_strings(trained):  # noqa: F811
    model, tok, _ = trained
    prompts = [r["prompt"] for r in toy_rows()]
    plain = generate_text(model, tok, prompts, 6)  # backward compatible: no stop strings
    assert plain == generate_text(model, tok, prompts, 6, stop_strings=None)
    stopped = generate_text(model, tok, prompts, 6, stop_strings=[END])
    assert stopped == list(TASK.values())  # eos id for the one-token end of turn
    cut = generate_text(model, tok, prompts, 6, stop_strings=[END, "ee", "lu"])  # both kinds
    assert cut == ["red", "gr", "b", "cat"]


def test_rows_past_the_context_are_refused_before_generating_or_scored_as_far_as_they_fit(
    tmp_path,
):
    # GPT-2 raised a bare IndexError from its position embedding after generating every
    # answer; Llama scored 22k tokens against a context of 1024 without a word.
    import workbench as wb
    from workbench.errors import SpecError, WorkbenchWarning
    from workbench.models.tiny import build_tiny_model

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(build_tiny_model(tmp_path / "gpt2", "gpt2")))
    context = s.model.config.n_positions
    long = " ".join(f"w{i}" for i in range(context))
    rows = [{"question": "What is 1 plus 1?", "answer": "2"}]
    with pytest.raises(SpecError) as refused:
        s.evaluate(data=[*rows, {"question": long, "answer": "x"}], max_new_tokens=4)
    assert str(refused.value).startswith("row 1 has ")
    assert f"past the model's context of {context} tokens: leave such rows out" in str(
        refused.value
    )
    assert not list((tmp_path / "s").glob("evaluations/*"))  # nothing generated or saved

    with pytest.warns(WorkbenchWarning, match=r"row 1 runs past the model's context of 1024"):
        ev = s.evaluate(
            data=[*rows, {"question": "Write.", "answer": long}],
            metrics=["perplexity"],
            max_new_tokens=4,
        )
    fitted = ev.rows[1]
    prompt = s._evaluation_rows([{"question": "Write.", "answer": long}])[0]
    assert len(fitted.tokens) == context - len(prompt["prompt_ids"])
    assert ev.scores["perplexity"]["base"] > 1 and ev.rows[0].tokens == ("2",)


def test_a_metric_that_cannot_score_fails_before_anything_is_generated(trained):  # noqa: F811
    model, tok, _ = trained
    generated = []
    with pytest.raises(EvaluationError, match=r"bogus.*found before generating"):
        run_evaluation(
            model,
            tok,
            toy_rows(),
            metrics={"exact_match": {"bogus": 1}},
            events=lambda name, payload: generated.append(name),
        )
    assert generated == []

    def loss(prediction, reference):
        return 0.0

    with pytest.raises(EvaluationError, match=r"score named 'loss', which the panel"):
        run_evaluation(model, tok, toy_rows(), metrics=[loss])


def test_a_users_own_metric_is_not_tried_on_the_reference_first(trained):  # noqa: F811
    # the dry run refused a working metric that cannot score a reference against itself
    # (one reading an answer format the references lack, or one needing several rows)
    model, tok, _ = trained

    def answer_after_colon(prediction, reference):
        if prediction == reference:
            raise IndexError("no 'Answer:' in the text")  # what the dry run would have hit
        return float(reference in prediction)

    ev = run_evaluation(model, tok, toy_rows(), metrics=[answer_after_colon], max_new_tokens=4)
    assert "answer_after_colon" in ev.scores


def test_intervals_an_earlier_version_saved_for_too_few_rows_are_read_as_none(tmp_path):
    from tests.eval_fixtures import handmade_evaluation

    old = handmade_evaluation()  # 3 rows, saved with an interval as versions before 10 rows
    assert old.scores["exact_match"]["tuned_ci"] == (0.0, 1.0)
    old.save(tmp_path / "eval-001")
    loaded = Evaluation.load(tmp_path / "eval-001")
    assert all(math.isnan(x) for x in loaded.scores["exact_match"]["tuned_ci"])
    assert loaded.score_table()[0][2:5] == ("[-, -]", "0.3333", "[-, -]")
    assert "no 95% intervals: 3 rows are too few (they need 10)" in str(loaded)
