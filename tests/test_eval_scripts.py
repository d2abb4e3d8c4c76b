"""Metrics and the word diff on text beyond English: unspaced scripts, Unicode normal forms."""

from __future__ import annotations

import unicodedata

import evaluate
import pytest
import sacrebleu

from workbench.evaluation import METRICS, module_path
from workbench.evaluation.bootstrap import resample_indices
from workbench.evaluation.diff import word_diff
from workbench.evaluation.metrics import Column
from workbench.widgets.eval_panel import diff_html

CHINESE = "我今天在公园里看见了一只很可爱的小猫。"
JAPANESE = "今日は公園でとてもかわいい子猫を見ました。"
THAI = "วันนี้ฉันเห็นลูกแมวน่ารักในสวนสาธารณะ"
COMPOSED = unicodedata.normalize("NFC", "un café et le résumé de la réunion")
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)
INDICES = resample_indices(10, 200, seed=0)


def _score(metric, predictions, references):
    column = Column(tuple(predictions), tuple(references))
    return METRICS[metric].score(column, resample_indices(len(references), 200, seed=0))


@pytest.mark.parametrize(
    ("text", "tokenize"), [(CHINESE, "zh"), (JAPANESE, "char"), (THAI, "char")]
)
def test_bleu_of_a_perfect_answer_in_an_unspaced_script_is_100_with_its_tokenizer(text, tokenize):
    scored = _score("bleu", [text] * 10, [text] * 10)["bleu"]  # 13a: one word each, 0.0
    assert round(scored.value, 6) == 100.0
    assert scored.ci == pytest.approx((100.0, 100.0))
    assert scored.per_example == pytest.approx((100.0,) * 10)
    assert scored.settings == {"tokenize": tokenize}
    module = evaluate.load(module_path("bleu"))
    result = module.compute(predictions=[text], references=[text])
    assert (round(result["score"], 6), result["tokenize"]) == (100.0, tokenize)


def test_bleu_on_english_keeps_13a_and_a_given_tokenize_wins():
    preds, refs = ["the cat sat on the mat"], ["the cat is on the mat"]
    english = _score("bleu", preds, refs)["bleu"]
    assert english.settings == {"tokenize": "13a"}
    assert english.value == sacrebleu.corpus_bleu(preds, [refs]).score
    given = METRICS["bleu"].with_options(tokenize="13a")
    assert given.score(Column((CHINESE,), (CHINESE,)), INDICES[:, :1])["bleu"].value == 0.0


def test_bleu_tokenizer_follows_the_references_so_base_and_tuned_are_scored_alike():
    base = _score("bleu", ["the cat is asleep"], [CHINESE])["bleu"]
    tuned = _score("bleu", [CHINESE[:-3] + "狗。"], [CHINESE])["bleu"]
    assert base.settings == tuned.settings == {"tokenize": "zh"}
    assert base.value == 0.0
    assert 70 < tuned.value < 100


def test_every_text_metric_reads_a_precomposed_and_a_decomposed_accent_alike():
    assert COMPOSED != DECOMPOSED  # é vs e + U+0301
    assert _score("exact_match", [DECOMPOSED], [COMPOSED])["exact_match"].value == 1.0
    assert _score("rouge", [DECOMPOSED], [COMPOSED])["rouge1"].value == 1.0
    assert round(_score("bleu", [DECOMPOSED] * 10, [COMPOSED] * 10)["bleu"].value, 6) == 100.0
    chrf = _score("chrf", [DECOMPOSED] * 10, [COMPOSED] * 10)["chrf"]
    assert (chrf.value, chrf.ci) == (100.0, (100.0, 100.0))


def test_exact_match_ignore_case_no_longer_cuts_off_a_lengthened_text():
    # "İ".lower() is two characters; numpy's char.lower kept the width and cut the last one,
    # so "İSTANBUL" matched "İSTANBUX".
    em = METRICS["exact_match"].with_options(ignore_case=True)
    score = em.score(Column(("İSTANBUL", "İSTANBUL"), ("İSTANBUX", "i̇stanbul")), INDICES[:, :2])
    assert score["exact_match"].per_example == (0.0, 1.0)


def test_word_diff_marks_no_change_between_a_precomposed_and_a_decomposed_accent():
    assert word_diff(COMPOSED, DECOMPOSED) == [("equal", COMPOSED)]
    assert word_diff(f"the {COMPOSED}", f"a {DECOMPOSED}") == [
        ("delete", "the "),
        ("insert", "a "),
        ("equal", COMPOSED),
    ]
    assert "<span" not in "".join(diff_html(COMPOSED, DECOMPOSED))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "我喜欢小猫。",
            "我喜欢小狗。",
            [("equal", "我喜欢小"), ("delete", "猫"), ("insert", "狗"), ("equal", "。")],
        ),
        (
            "猫が好きです",
            "犬が好きです",
            [("delete", "猫"), ("insert", "犬"), ("equal", "が好きです")],
        ),
        (  # a Thai vowel sign stays with its consonant
            "แมวนอน",
            "แมวนั่ง",
            [("equal", "แมว"), ("delete", "นอน"), ("insert", "นั่ง")],
        ),
        (
            "the cat sat",
            "the dog sat",
            [("equal", "the "), ("delete", "cat "), ("insert", "dog "), ("equal", "sat")],
        ),
    ],
)
def test_word_diff_marks_only_the_changed_characters_of_an_unspaced_script(old, new, expected):
    assert word_diff(old, new) == expected
    left, right = diff_html(old, new)
    assert left.count("<span") == sum(kind == "delete" for kind, _ in expected)
    assert right.count("<span") == sum(kind == "insert" for kind, _ in expected)


def test_the_tokenizer_bleu_chose_is_saved_with_its_score(tmp_path, tiny_model_dir):
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"问题 {i}", "answer": f"猫在睡觉第{i}次"} for i in range(12)]
    s.load_data(rows, validation=0.5)
    ev = s.evaluate(metrics=["bleu"], max_new_tokens=2)
    assert ev.scores["bleu"]["tokenize"] == "zh"
    assert wb.Evaluation.load(ev.path).scores["bleu"]["tokenize"] == "zh"


def test_exact_match_counts_trailing_nul_characters():
    # Found by QA: numpy's str arrays drop trailing NULs, so "a\x00" matched "a".
    for options in ({}, {"strip": False}, {"ignore_case": True}):
        em = METRICS["exact_match"].with_options(**options)
        score = em.score(Column(("a\x00", "a", "b"), ("a", "a\x00\x00", "b")), INDICES[:, :3])
        assert score["exact_match"].per_example == (0.0, 0.0, 1.0), options
