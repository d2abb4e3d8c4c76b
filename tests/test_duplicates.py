"""Near duplicates and leaks: real copies are found, templated distinct records are not.

"Near" is an exact Jaccard similarity of at least 80% between two rows' sets of word pairs,
not counting the word pairs that many rows share (workbench/data/duplicates.py). The tests
check the reported percentages against a plain-Python computation of that definition.
"""

from __future__ import annotations

import itertools
import random
import re

import pyarrow as pa
import pytest
from data_fixtures import tokenizer

from workbench.data import PreparedData
from workbench.data.duplicates import NEAR_THRESHOLD, duplicate_problems
from workbench.tasks.records import INSTRUCTION, make_records, records_to_json

__all__ = ["tokenizer"]

NOTES = [
    "Summarize the meeting notes about the quarterly budget review for the marketing team "
    "and list every action item with its owner and the date it is due",
    "Write a short friendly email to a customer whose parcel arrived two days late, apologise "
    "for the delay and offer free shipping on their next order from the shop",
    "Explain to a ten year old why the sky looks blue during the day and turns orange and red "
    "when the sun sets in the evening over the sea",
    "Translate the following sentence into French and keep the polite form: could you please "
    "send me the signed contract before the end of the week",
    "List three healthy breakfast ideas that take less than ten minutes to prepare and need "
    "no cooking at all, with a sentence on why each one is good",
    "Give step by step instructions for changing a flat bicycle tyre at the side of the road "
    "with only a pump, two levers and a patch kit in the bag",
]


def texts(rows):
    """One text per row, as the data report joins a row's fields."""
    return pa.array(["\n".join(str(v) for v in row.values()) for row in rows])


def shown(problems, kinds=("duplicate", "near_duplicate", "leak")):
    return [(p.kind, p.split, p.row, p.message) for p in problems if p.kind in kinds]


def word_pairs(text: str) -> set[tuple[str, str]]:
    words = [w for w in re.split(r"[^\w]+|_", text.lower()) if w]
    return set(itertools.pairwise(words)) or {(w,) for w in words}


def jaccard(a: str, b: str) -> float:
    x, y = word_pairs(a), word_pairs(b)
    return len(x & y) / len(x | y)


def test_real_near_duplicates_and_leaks_are_found_with_their_true_share():
    train = [*NOTES]
    train.append(NOTES[0].replace("quarterly", "annual"))  # 6: one word of 27 changed
    train.append("  " + NOTES[1].upper().replace(" ", "   ") + "\n")  # 7: case and spaces
    train.append(NOTES[2].replace(" ", ", ", 3) + "!")  # 8: punctuation only
    train.append(NOTES[3].replace("the end of the week", "friday"))  # 9: too different
    validation = [
        NOTES[4].replace("three", "four"),  # 0: a leak, nearly
        NOTES[5].lower(),  # 1: a leak, exactly
        "Something unrelated entirely about gardening in the spring",  # 2: new
        "something unrelated entirely about gardening in the spring!!",  # 3: near row 2 only
    ]
    problems = duplicate_problems(pa.array(train), pa.array(validation))
    found = {(p.kind, p.split, p.row): p.message for p in problems}
    assert set(found) == {
        ("near_duplicate", "train", 6),
        ("duplicate", "train", 7),
        ("near_duplicate", "train", 8),
        ("leak", "validation", 0),
        ("leak", "validation", 1),
        ("near_duplicate", "validation", 3),
    }
    share = jaccard(train[6], train[0])
    assert share >= NEAR_THRESHOLD > jaccard(train[9], train[3])
    assert found["near_duplicate", "train", 6] == (
        f"nearly the same text as train row 0: {int(share * 100)}% of their word pairs are "
        "shared (near = 80% or more, not counting text many rows share, like an instruction)"
    )
    assert found["duplicate", "train", 7].startswith("same text as train row 1 (")
    assert found["near_duplicate", "train", 8] == (
        "the same words as train row 2; only punctuation differs"
    )
    assert found["leak", "validation", 0].startswith("nearly the same text as train row 4: ")
    assert (
        f"{int(jaccard(validation[0], NOTES[4]) * 100)}% of their" in found["leak", "validation", 0]
    )
    assert found["leak", "validation", 1].startswith("same text as train row 5 (")
    assert found["near_duplicate", "validation", 3].startswith("the same words as validation row 2")


def test_templated_distinct_records_are_not_near_but_a_copy_among_them_is():
    rows = make_records(200, seed=5, hard_share=0.3)
    assert all(row["instruction"] == INSTRUCTION for row in rows)
    copy = dict(rows[17], input=rows[17]["input"] + " (!)")
    edited = dict(rows[40], output=rows[40]["output"].replace('"age": ', '"age": 1'))
    problems = duplicate_problems(texts([*rows, copy, edited]))
    assert [(p.kind, p.row) for p in problems] == [("near_duplicate", 200), ("near_duplicate", 201)]
    assert "same words as train row 17" in problems[0].message
    assert "train row 40:" in problems[1].message
    # Counted with the instruction, distinct records come within a few points of the line.
    plain = [t.as_py() for t in texts(rows)]
    closest = max(jaccard(a, b) for a, b in itertools.combinations(plain, 2))
    assert 0.75 < closest < NEAR_THRESHOLD


def test_a_long_shared_instruction_is_not_counted():
    system = " ".join(NOTES)  # ~170 words every row starts with
    rng = random.Random(0)
    vocabulary = sorted({w for note in NOTES for w in note.lower().split()} | set("abcdefgh"))

    def content(n: int) -> str:
        return " ".join(f"{rng.choice(vocabulary)}{rng.randrange(99)}" for _ in range(n))

    short = [f"{system}\n{content(10)}" for _ in range(30)]
    assert jaccard(short[0], short[1]) > NEAR_THRESHOLD  # counted, the instruction dominates
    assert shown(duplicate_problems(pa.array(short))) == []

    long = [f"{system}\n{content(30)}" for _ in range(30)]
    words = long[7].split()
    words[-12] = "changed"
    problems = duplicate_problems(pa.array([*long, " ".join(words)]))
    assert [(p.kind, p.row) for p in problems] == [("near_duplicate", 30)]
    # The share is that of the rows' own parts (with the word pair that joins them on).
    own = [" ".join(text.split()[-31:]) for text in (long[7], " ".join(words))]
    assert f"train row 7: {int(jaccard(*own) * 100)}% of their word pairs" in problems[0].message
    assert jaccard(*own) < jaccard(long[7], " ".join(words))


def test_a_few_copies_in_a_small_data_set_are_not_mistaken_for_a_template():
    train = (
        [f"{note} please" for note in NOTES]
        + [
            NOTES[0] + " thanks",
            NOTES[0] + " thank you",
            NOTES[0].replace("marketing", "sales"),
        ]
        + [f"an unrelated row number {i} about {w}" for i, w in enumerate("abcdef")]
    )
    problems = duplicate_problems(pa.array(train))
    assert [(p.kind, p.row) for p in problems] == [
        ("near_duplicate", 6),
        ("near_duplicate", 7),
        ("near_duplicate", 8),
    ]


def test_a_validation_row_near_a_training_row_is_a_leak_even_when_near_another_too():
    base = NOTES[1]
    problems = duplicate_problems(
        pa.array([base, NOTES[2]]),
        pa.array([base.replace("late", "early"), base.replace("late", "early") + " now"]),
    )
    assert [(p.kind, p.split, p.row) for p in problems] == [
        ("leak", "validation", 0),
        ("leak", "validation", 1),
    ]
    assert all("train row 0:" in p.message for p in problems)


def test_words_of_any_script_count():
    row = (
        "Le café crème coûte deux euros cinquante à la gare de Lyon ce matin et "
        "le thé vert coûte trois euros à côté du kiosque près de la sortie"
    )
    problems = duplicate_problems(pa.array([row, row.replace("cinquante", "soixante"), "x"]))
    assert [(p.kind, p.row) for p in problems] == [("near_duplicate", 1)]
    assert "only punctuation" not in problems[0].message  # "café" and "cafe" are not the same


def test_the_same_text_in_composed_and_decomposed_unicode_is_a_duplicate_and_a_leak():
    # Text pasted on macOS arrives decomposed ("e" + a combining accent): it looked the same
    # and was neither a duplicate nor a leak.
    import unicodedata

    row = "Trong tiếng Việt, chữ “ở” và “ơ” khác nhau; Grüße aus Köln, déjà vu"
    nfd = unicodedata.normalize("NFD", row)
    assert nfd != row
    problems = duplicate_problems(pa.array([row, nfd, "other"]), pa.array([nfd]))
    assert [(p.kind, p.split, p.row) for p in problems] == [
        ("duplicate", "train", 1),
        ("leak", "validation", 0),
    ]


@pytest.mark.parametrize(("train_size", "test_size"), [(64, 16), (600, 60)])
def test_the_demo_data_shows_no_duplicate_problems(tokenizer, tmp_path, train_size, test_size):
    train, test = records_to_json(train_size, test_size)
    data = PreparedData.load(train, tokenizer, validation=test, cache_dir=str(tmp_path))
    report = data.report()
    assert report.count("near_duplicate") == 0
    assert report.count("leak") == 0
    assert report.count("duplicate") == 0
    # Planted into it, a copy with other spacing and punctuation, and a validation row again.
    copy = dict(train[3], input=train[3]["input"].replace(" ", "  ").rstrip(".") + "!")
    leak = dict(test[2], output=test[2]["output"].replace('"age"', '"AGE"'))
    data = PreparedData.load(
        [*train, copy, leak], tokenizer, validation=test, cache_dir=str(tmp_path / "planted")
    )
    found = shown(data.report().problems)
    assert found == [
        (
            "near_duplicate",
            "train",
            train_size,
            "the same words as train row 3; only punctuation differs",
        ),
        (
            "leak",
            "validation",
            2,
            f"same text as train row {train_size + 1} (after normalising whitespace and case)",
        ),
    ]
