"""Metrics: shipped evaluate modules give the published numbers; the registry's errors."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer, scoring

from workbench.evaluation import METRICS, EvaluationError, module_path, register_metric
from workbench.evaluation.bootstrap import resample_indices
from workbench.evaluation.metrics import Column, resolve_metrics

PREDS = ["the cat sat on the mat", "hello there general kenobi", "", "a quick brown fox"]
REFS = ["the cat is on the mat", "hello there", "nothing here", "the quick brown fox jumps"]
INDICES = resample_indices(len(PREDS), 300, seed=0)
# Intervals need at least MIN_ROWS_FOR_AN_INTERVAL rows: the four examples three times over
# (mean ROUGE is the same on the repeated corpus).
PREDS3, REFS3 = tuple(PREDS * 3), tuple(REFS * 3)
INDICES3 = resample_indices(len(PREDS3), 300, seed=0)


@pytest.fixture(autouse=True)
def _restore_metric_registry():
    """Metrics a test registers must not leak into later tests (or the docstring examples)."""
    saved = dict(METRICS)
    yield
    METRICS.clear()
    METRICS.update(saved)


def _idx(n):
    return resample_indices(n, 50, seed=0)


def _load(name):
    return evaluate.load(module_path(name))


def test_rouge_module_matches_rouge_score_per_example_and_pinned():
    result = _load("rouge").compute(predictions=PREDS, references=REFS, use_aggregator=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    for key in result:
        expected = [scorer.score(r, p)[key].fmeasure for r, p in zip(REFS, PREDS, strict=True)]
        assert result[key] == pytest.approx(expected)
    assert result["rouge1"] == pytest.approx([0.8333333, 0.6666667, 0.0, 0.6666667], abs=1e-6)
    assert result["rouge2"] == pytest.approx([0.6, 0.5, 0.0, 0.5714286], abs=1e-6)


def test_rouge_module_aggregate_is_the_published_bootstrap_mid():
    np.random.seed(7)
    ours = _load("rouge").compute(predictions=PREDS, references=REFS)
    np.random.seed(7)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    aggregator = scoring.BootstrapAggregator()
    for r, p in zip(REFS, PREDS, strict=True):
        aggregator.add_scores(scorer.score(r, p))
    published = {k: v.mid.fmeasure for k, v in aggregator.aggregate().items()}
    assert ours == pytest.approx(published)


def test_workbench_rouge_is_mean_of_per_example_fmeasure():
    scores = METRICS["rouge"].score(Column(PREDS3, REFS3), INDICES3)
    assert scores["rouge1"].value == pytest.approx((0.8333333 + 0.6666667 + 0 + 0.6666667) / 4)
    lo, hi = scores["rouge1"].ci
    assert lo <= scores["rouge1"].value <= hi and lo < hi


def test_fewer_than_ten_rows_get_no_interval():
    # A bootstrap of four rows gave "95% intervals" such as [0, 0] when all scored alike.
    for name in ("rouge", "bleu", "exact_match"):
        for scored in METRICS[name].score(Column(tuple(PREDS), tuple(REFS)), INDICES).values():
            assert all(math.isnan(x) for x in scored.ci), name
            assert math.isfinite(scored.value)


def test_exact_match_on_rows_that_all_agree_gets_a_wilson_interval_not_zero_width():
    # A bootstrap of 12 rows that all matched said [1, 1]; a proportion's interval does not.
    same = ("the cat",) * 12
    all_right = METRICS["exact_match"].score(Column(same, same), resample_indices(12, 300))
    lo, hi = all_right["exact_match"].ci
    assert all_right["exact_match"].value == 1.0
    assert lo == pytest.approx(0.7575, abs=1e-4) and hi == 1.0  # Wilson, 12 of 12
    all_wrong = METRICS["exact_match"].score(
        Column(same, ("a dog",) * 12), resample_indices(12, 300)
    )
    lo, hi = all_wrong["exact_match"].ci
    assert lo == 0.0 and hi == pytest.approx(0.2425, abs=1e-4)
    for n in (10, 14, 24, 25, 28):  # rounding showed "[2.776e-17, 0.2775]" and 0.9999...
        rows = resample_indices(n, 300)
        wrong = METRICS["exact_match"].score(Column(same[:1] * n, ("a dog",) * n), rows)
        right = METRICS["exact_match"].score(Column(same[:1] * n, same[:1] * n), rows)
        assert wrong["exact_match"].ci[0] == 0.0 and right["exact_match"].ci[1] == 1.0, n


def test_a_pass_fail_function_gets_a_wilson_interval_and_a_continuous_one_its_bootstrap():
    from workbench.evaluation.metrics._scorers import FunctionScorer

    same = Column(("a",) * 12, ("a",) * 12)
    indices = resample_indices(12, 300)
    passed = FunctionScorer(lambda p, r: p == r, "passed").score(same, indices)["passed"]
    assert passed.ci == pytest.approx((0.7575, 1.0), abs=1e-4)  # bools: pass/fail per row
    # numpy's bool too (it was refused: "returned np.True_ ... must return a finite number")
    numpy_bool = FunctionScorer(lambda p, r: (np.array([p]) == r).all(), "numpy").score(
        same, indices
    )
    assert numpy_bool["numpy"].value == 1.0 and numpy_bool["numpy"].ci == passed.ci
    # a word count of 1 on every row is no proportion: no Wilson interval made up for it
    words = FunctionScorer(lambda p, r: len(p.split()), "words").score(same, indices)["words"]
    assert words.ci == (1.0, 1.0)
    assert METRICS["tool_calls"].score(same, indices)["tool_calls"].ci[0] < 1.0


def test_the_demo_s_json_valid_is_pass_fail_with_a_wilson_interval():
    # It returned 1.0/0.0, so the demo printed "json_valid 0 [0, 0]", a zero-width interval
    # the README says a pass/fail score never gets.
    from workbench.evaluation.metrics._scorers import FunctionScorer
    from workbench.tasks import json_valid

    answers = Column(('{"name": "Ada"}',) * 12, ("",) * 12)
    scored = FunctionScorer(json_valid, "json_valid").score(answers, resample_indices(12, 300))
    assert scored["json_valid"].ci == pytest.approx((0.7575, 1.0), abs=1e-4)


def test_bleu_is_sacrebleu_corpus_bleu_pinned():
    result = _load("bleu").compute(predictions=PREDS, references=REFS)
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert result["score"] == pytest.approx(29.249712395093642, abs=1e-9)
    scored = METRICS["bleu"].score(Column(PREDS3, REFS3), INDICES3)["bleu"]
    assert scored.value == pytest.approx(sacrebleu.corpus_bleu(PREDS3, [REFS3]).score)
    assert scored.per_example[0] == pytest.approx(
        sacrebleu.sentence_bleu(PREDS[0], [REFS[0]]).score
    )
    assert scored.ci[0] <= scored.value <= scored.ci[1] and scored.ci[0] < scored.ci[1]


def test_chrf_is_sacrebleu_corpus_chrf():
    result = _load("chrf").compute(predictions=PREDS, references=REFS)
    assert result["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    plus = _load("chrf").compute(predictions=PREDS, references=REFS, word_order=2)
    assert plus["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS], word_order=2).score)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # The published module's own documented examples.
        (
            {
                "regexes_to_ignore": ["the ", "yell", "YELL"],
                "ignore_case": True,
                "ignore_punctuation": True,
            },
            0.75,
        ),
        (
            {
                "regexes_to_ignore": ["the ", "yell"],
                "ignore_case": True,
                "ignore_punctuation": True,
            },
            0.5,
        ),
        (
            {
                "regexes_to_ignore": ["the ", "yell", "YELL"],
                "ignore_case": True,
                "ignore_punctuation": True,
                "ignore_numbers": True,
            },
            1.0,
        ),
        ({}, 0.25),
    ],
)
def test_exact_match_published_examples(options, expected):
    refs = ["the cat", "theater", "YELLING", "agent007"]
    preds = ["cat?", "theater", "yelling", "agent"]
    result = _load("exact_match").compute(predictions=preds, references=refs, **options)
    assert result["exact_match"] == pytest.approx(expected)


def test_exact_match_strip_and_empty_prediction():
    em = _load("exact_match")
    assert em.compute(predictions=[" Paris\n"], references=["Paris"])["exact_match"] == 0.0
    assert (
        em.compute(predictions=[" Paris\n"], references=["Paris"], strip=True)["exact_match"] == 1.0
    )
    scored = METRICS["exact_match"].score(Column(("", "x"), ("y", "x")), _idx(2))
    assert scored["exact_match"].per_example == (0.0, 1.0)


def test_unknown_metric_lists_known_ones():
    with pytest.raises(EvaluationError, match=r"unknown metric 'blue'.*bleu.*rouge"):
        resolve_metrics(["blue"])


def test_custom_function_and_module_instances():
    metrics = resolve_metrics([lambda p, r: float(len(p) == len(r)), _load("exact_match")])
    assert [m.name for m in metrics] == ["<lambda>", "exact_match"]
    col = Column(("ab", "c"), ("xy", "c"))
    assert metrics[0].score(col, _idx(2))["<lambda>"].value == 1.0
    assert metrics[1].score(col, _idx(2))["exact_match"].per_example == (0.0, 1.0)


def test_custom_metric_errors_name_metric_and_example():
    def boom(prediction, reference):
        if prediction == "bad":
            raise RuntimeError("cannot score")
        return 1.0

    register_metric("boom", boom)
    with pytest.raises(EvaluationError, match=r"metric 'boom' raised on example 1: RuntimeError"):
        METRICS["boom"].score(Column(("ok", "bad"), ("a", "b")), _idx(2))
    register_metric("texty", lambda p, r: "yes")
    with pytest.raises(EvaluationError, match=r"metric 'texty' returned 'yes' for example 0"):
        METRICS["texty"].score(Column(("a",), ("b",)), _idx(1))
    with pytest.raises(EvaluationError, match="cannot use int"):
        register_metric("number", 3)


def test_options_and_perplexity():
    em = resolve_metrics({"exact_match": {"ignore_case": True}})[0]
    assert em.score(Column(("PARIS",), ("paris",)), _idx(1))["exact_match"].value == 1.0
    ppl = METRICS["perplexity"].score(Column(("", ""), ("", ""), (0.0, math.log(3))), _idx(2))
    assert ppl["perplexity"].value == pytest.approx(2.0)
    assert METRICS["perplexity"].higher_is_better is False


def test_workbench_rouge_gives_rouge_score_s_numbers_on_english_with_and_without_stemming():
    for stem in (False, True):
        metric = METRICS["rouge"].with_options(use_stemmer=stem) if stem else METRICS["rouge"]
        scores = metric.score(Column(tuple(PREDS), tuple(REFS)), INDICES)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
        expected = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(REFS, PREDS, strict=True)]
        assert scores["rougeL"].per_example == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("猫が寝ている", "猫が寝ている", 1.0),  # Japanese: no spaces, a word per character
        ("今天天气很好", "今天天气不好", 5 / 6),
        ("Кошка спит на диване", "Кошка спит", 2 / 3),
        ("القطة نائمة", "القطة نائمة", 1.0),
        ("नमस्ते दुनिया", "नमस्ते दुनिया", 1.0),  # Devanagari's vowel signs are marks, in words
        ("café au lait", "café noir", 0.4),
    ],
)
def test_rouge_scores_text_in_any_script(prediction, reference, expected):
    """rouge-score alone keeps [a-z0-9] only: every one of these would score 0."""
    scores = METRICS["rouge"].score(Column((prediction,), (reference,)), _idx(1))
    assert scores["rouge1"].value == pytest.approx(expected)


def test_a_custom_metric_must_return_a_finite_number():
    for value in (float("nan"), np.float32("nan"), float("inf"), -np.inf, 10**400):
        register_metric("odd", lambda p, r, value=value: value)
        with pytest.raises(EvaluationError, match=r"metric 'odd' returned .* a finite number"):
            METRICS["odd"].score(Column(("a",), ("b",)), _idx(1))
    register_metric("numpy", lambda p, r: np.float32(0.25))
    assert METRICS["numpy"].score(Column(("a",), ("b",)), _idx(1))["numpy"].value == 0.25


def test_two_metrics_giving_a_score_of_the_same_name_are_refused_before_any_answer():
    def rougeL(prediction, reference):  # noqa: N802 - the clash is the point
        return 0.123

    with pytest.raises(EvaluationError, match=r"'rouge' and 'rougeL' both give a score named"):
        resolve_metrics(["rouge", rougeL])
    assert [m.name for m in resolve_metrics({"rouge": {"rouge_types": ["rouge1"]}})] == ["rouge"]
    resolve_metrics([METRICS["rouge"].with_options(rouge_types=["rouge1"]), rougeL])


def test_json_valid_is_json_as_rfc_8259_reads_it():
    from workbench.tasks import json_valid

    assert json_valid('{"age": 36}', "") == 1.0
    for text in (
        '{"age": NaN}',
        '{"age": Infinity}',
        '{"age": -Infinity}',
        "[1, 2]",
        "```json\n{}\n```",
    ):
        assert json_valid(text, "") == 0.0


def test_perplexity_leaves_out_a_reference_without_tokens():
    # One empty reference made the whole perplexity NaN ("-") next to a finite interval.
    losses = (float("nan"), *[math.log(4.0)] * 11)
    column = Column(("",) * 12, ("", *["x"] * 11), losses)
    scored = METRICS["perplexity"].score(column, resample_indices(12, 100))["perplexity"]
    assert scored.value == pytest.approx(4.0)
    assert scored.ci == pytest.approx((4.0, 4.0))
    assert math.isnan(scored.per_example[0])


def test_a_diverged_model_s_perplexity_is_infinite_and_its_evaluation_is_kept(
    tmp_path, tiny_model_dir
):
    # Found by QA: a mean token loss past ~709.8 raised a bare OverflowError from math.exp
    # once every answer was generated; nothing was saved and no answer was kept.
    import torch

    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    s.load_data(rows, validation=rows[:2])
    with torch.no_grad():
        s.model.get_output_embeddings().weight.mul_(3000.0)  # a diverged model's logits
    evaluation = s.evaluate(metrics=["exact_match", "perplexity"], max_new_tokens=2)
    assert evaluation.scores["perplexity"]["base"] == math.inf
    assert "inf" in str(evaluation)
    assert set(wb.Evaluation.load(evaluation.path).scores) == {"exact_match", "perplexity"}
