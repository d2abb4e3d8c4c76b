"""Formats, sources and bad input: real files in tmp_path, the tiny model's real tokenizer."""

from __future__ import annotations

import copy
import json
import re
import warnings

import pandas as pd
import pytest
from data_fixtures import CHAT_ROW, cache_dir, load, plain_tokenizer, tokenizer, write_jsonl

from workbench.data import PreparedData
from workbench.errors import DataError, SpecError, WorkbenchWarning

__all__ = ["cache_dir", "plain_tokenizer", "tokenizer"]  # fixtures used by name

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}


def _last_answer(data, i=0):
    return data.train[i]["messages"][-1]


@pytest.mark.parametrize(
    ("row", "expected_format"),
    [
        (ALPACA, "alpaca"),
        ({"question": "2+2?", "answer": "4"}, "qa"),
        ({"prompt": "2+2?", "completion": "4"}, "qa"),
        (CHAT_ROW, "chat"),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            "sharegpt",
        ),
        ({"text": "Once upon a time."}, "text"),
    ],
)
def test_each_format_is_detected_and_normalised(
    tmp_path, tokenizer, cache_dir, row, expected_format
):
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    data = load(path, tokenizer, cache_dir)
    assert data.format == expected_format
    assert len(data.train) == 2
    if expected_format == "text":
        assert data.train[0]["text"] == "Once upon a time."
    else:
        assert _last_answer(data)["role"] == "assistant"


def test_alpaca_input_is_joined_to_the_instruction(tmp_path, tokenizer, cache_dir):
    data = load(write_jsonl(tmp_path / "a.jsonl", [ALPACA]), tokenizer, cache_dir)
    assert data.train[0]["messages"][0] == {
        "role": "user",
        "content": "Add the numbers.\n\n2 and 2",
    }
    assert data.example(0).row == {
        "instruction": "Add the numbers.",
        "input": "2 and 2",
        "output": "4",
    }


def test_sharegpt_roles_are_mapped(tmp_path, tokenizer, cache_dir):
    row = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "h"},
            {"from": "gpt", "value": "g"},
        ]
    }
    data = load(write_jsonl(tmp_path / "s.jsonl", [row]), tokenizer, cache_dir)
    assert [m["role"] for m in data.train[0]["messages"]] == ["system", "user", "assistant"]


def test_a_system_column_beside_the_turns_opens_the_conversation(tmp_path, tokenizer, cache_dir):
    # LLaMA-Factory's ShareGPT layout: the system prompt was dropped without a word.
    system = "You are a calculator. Answer with digits only."
    sharegpt = {
        "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
        "system": system,
    }
    chat = {
        "messages": [
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "five", "weight": 0},
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "6"},
        ],
        "system": system,
    }
    own = {
        "messages": [{"role": "system", "content": "Be brief."}, *chat["messages"][:2]],
        "system": system,
    }
    no_system = {**chat, "system": ""}
    data = load(write_jsonl(tmp_path / "s.jsonl", [sharegpt]), tokenizer, cache_dir)
    assert data.train[0]["messages"][0] == {"role": "system", "content": system}
    assert system in data.example(0).text and data.example(0).trained_text == "4<|im_end|>\n"
    data = load([chat, own, no_system], tokenizer, cache_dir)
    opened = data.train[0]["messages"]
    assert [m["role"] for m in opened] == ["system", "user", "assistant", "user", "assistant"]
    assert data.example(0).trained_text == "6<|im_end|>\n"  # the weight-0 turn stays untrained
    assert data.train[1]["messages"][0]["content"] == "Be brief."  # its own system wins
    assert data.train[2]["messages"][0]["role"] == "user"


def test_column_mapping_and_format_override(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "qa.csv"
    pd.DataFrame({"q": ["2+2?", "3+3?"], "a": ["4", "6"]}).to_csv(path, index=False)
    data = load(path, tokenizer, cache_dir, columns={"prompt": "q", "answer": "a"})
    assert data.format == "qa"
    assert data.train[1]["messages"][1]["content"] == "6"
    assert data.example(1).row == {"q": "3+3?", "a": "6"}
    as_text = load(path, tokenizer, cache_dir, format="text", columns={"text": "q"})
    assert as_text.format == "text" and as_text.train[0]["text"] == "2+2?"


def test_a_spreadsheet_s_header_in_capitals_with_spaces_is_read(tmp_path, tokenizer, cache_dir):
    """Excel and Google Sheets exports keep a header's stray spaces and capitals."""
    path = tmp_path / "sheet.csv"
    path.write_text(" Question ,ANSWER\n2+2?,4\n3+3?,\n")
    data = load(path, tokenizer, cache_dir)
    assert data.format == "qa"
    assert data.train[0]["messages"][1]["content"] == "4"
    assert data.example(0).row == {" Question ": "2+2?", "ANSWER": "4"}
    empty = [(p.row, p.message) for p in data.report().problems if p.kind == "empty_field"]
    assert empty == [(1, "empty: ANSWER")]  # named as the file names it


def test_unknown_columns_name_the_file_and_suggest_mapping(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": "x", "bar": "y"}])
    with pytest.raises(DataError, match=r"odd\.jsonl.*columns=") as err:
        load(path, tokenizer, cache_dir)
    assert "foo" in str(err.value)


def test_mapped_column_that_does_not_exist(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(DataError, match="field 'zzz'"):
        load(path, tokenizer, cache_dir, columns={"prompt": "zzz", "answer": "a"})


def test_one_column_mapped_to_two_fields_is_refused_before_reading(tmp_path, tokenizer, cache_dir):
    # Found by QA: {"prompt": "X", "answer": "X"} trained the model to repeat its prompt.
    from pathlib import Path

    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(SpecError, match=r"^columns: 'q' is mapped to 'prompt' and 'answer'; "):
        load(path, tokenizer, cache_dir, columns={"prompt": "q", "answer": "q"})
    assert not list(Path(cache_dir).rglob("*.arrow"))


@pytest.mark.parametrize(
    "kind",
    ["json", "csv", "parquet", "disk", "dataset", "frame", "polars", "list", "tuple", "generator"],
)
def test_every_source_kind(tmp_path, tokenizer, cache_dir, kind):
    import datasets
    import polars

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    frame = pd.DataFrame(rows)
    source = {
        "json": lambda: (tmp_path / "d.json").write_text(json.dumps(rows)) and tmp_path / "d.json",
        "csv": lambda: frame.to_csv(tmp_path / "d.csv", index=False) or tmp_path / "d.csv",
        "parquet": lambda: frame.to_parquet(tmp_path / "d.parquet") or tmp_path / "d.parquet",
        "disk": lambda: (
            datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "ds") or tmp_path / "ds"
        ),
        "dataset": lambda: datasets.Dataset.from_list(rows),
        "frame": lambda: frame,
        "polars": lambda: polars.DataFrame(rows),
        "list": lambda: rows,
        "tuple": lambda: tuple(rows),
        "generator": lambda: (row for row in rows),
    }[kind]()
    data = load(source, tokenizer, cache_dir)
    assert data.format == "qa"
    assert [data.train[i]["messages"][1]["content"] for i in range(4)] == ["a0", "a1", "a2", "a3"]
    assert data.train[3]["source_row"] == (5 if kind == "csv" else 4)  # CSV counts lines (header)


def test_rows_from_polars_or_a_generator_name_their_row_when_bad(tokenizer, cache_dir):
    import polars

    frame = polars.DataFrame({"question": ["q1", None, "q3"], "answer": ["a1", "a2", "a3"]})
    with pytest.raises(DataError, match=r"DataFrame, row 2, field 'question': missing"):
        load(frame, tokenizer, cache_dir)
    rows = ({"question": f"q{i}", "answer": None if i == 2 else "a"} for i in range(1, 4))
    with pytest.raises(DataError, match=r"generator, row 2, field 'answer': missing"):
        load(rows, tokenizer, cache_dir)
    with pytest.raises(DataError, match=r"cannot read data from a set: .*polars DataFrame"):
        load({"question"}, tokenizer, cache_dir)


def test_dataset_dict_uses_its_validation_split(tokenizer, cache_dir):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(6)]),
            "test": datasets.Dataset.from_list([{"text": "v"}]),
        }
    )
    data = PreparedData.load(dd, tokenizer, cache_dir=cache_dir)
    assert len(data.train) == 6 and len(data.validation) == 1


def test_a_dataset_dict_without_a_train_split_warns_before_training_on_held_out_rows(
    tokenizer, cache_dir
):
    import datasets

    rows = datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(4)])
    with pytest.warns(
        WorkbenchWarning,
        match=r"DatasetDict has no 'train' split: training on "
        r"its 'test' split \(4 rows\), usually held out",
    ) as said:
        data = PreparedData.load(
            datasets.DatasetDict({"test": rows}), tokenizer, cache_dir=cache_dir, validation=None
        )
    assert len(data.train) == 4 and [w.filename for w in said] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)
        PreparedData.load(datasets.DatasetDict({"sft": rows}), tokenizer, cache_dir=cache_dir)
    with pytest.raises(DataError, match="the DatasetDict has no splits"):
        PreparedData.load(datasets.DatasetDict({}), tokenizer, cache_dir=cache_dir)


def test_validation_fraction_is_seeded_and_second_source_works(tmp_path, tokenizer, cache_dir):
    rows = [{"text": f"row {i}"} for i in range(20)]
    a = PreparedData.load(rows, tokenizer, validation=0.25, seed=3, cache_dir=cache_dir)
    b = PreparedData.load(rows, tokenizer, validation=0.25, seed=3, cache_dir=cache_dir)
    assert len(a.validation) == 5 and len(a.train) == 15
    assert a.validation["text"] == b.validation["text"]
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "held out"}])
    c = PreparedData.load(rows, tokenizer, validation=val, cache_dir=cache_dir)
    assert len(c.train) == 20 and c.validation["text"] == ["held out"]
    none = PreparedData.load(rows, tokenizer, validation=None, cache_dir=cache_dir)
    assert none.validation is None


def test_a_validation_file_with_other_columns_shows_its_own_rows(tmp_path, tokenizer, cache_dir):
    # Training rows carry an `id`; the validation file writes prompt/completion: showing a
    # validation example looked the training columns up in it (KeyError: 'id').
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": i, "question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)],
    )
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "What is 9+2?", "completion": "11"}])
    data = PreparedData.load(train, tokenizer, validation=val, cache_dir=cache_dir)
    shown = data.example(0, "validation")
    assert shown.row == {"prompt": "What is 9+2?", "completion": "11"}
    assert shown.answer == "11" and data.example(0).row["id"] == "0"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('{"question": "a", "answer": "b"},\n', "a comma after the object; JSON Lines has"),
        ('{"question": "a", "answer": "b",}\n', "a comma before '}' (JSON allows no trailing"),
        ("{'question': 'a', 'answer': 'b'}\n", "single quotes; JSON needs double quotes"),
        ('{"question": "a", "answer": "b"}\r{"question": "c", "answer": "d"}\r', "carriage"),
        ('{"question": "a", "answer": "b', "at column 29): the line ends inside a text, with"),
        ('{"question": "a", "answer": "b\n', "the line ends inside a text, with no closing quote"),
        ('{"question": "a", "answer": "b"\n', "the line ends before its JSON does (was it cut"),
    ],
    ids=["comma-after", "trailing-comma", "single-quotes", "cr-only", "cut", "cut-eol", "no-brace"],
)
def test_a_json_line_s_error_says_what_usually_causes_it(
    tmp_path, tokenizer, cache_dir, text, hint
):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(text.encode())
    with pytest.raises(
        DataError, match=rf"rows\.jsonl, line 1: not valid JSON \(.*{re.escape(hint)}"
    ):
        load(path, tokenizer, cache_dir)


def test_a_role_written_with_spaces_around_it_is_read(tokenizer, cache_dir):
    turns = [{"role": " user", "content": "Hi"}, {"role": "Assistant ", "content": "Hello"}]
    data = load([{"messages": turns}], tokenizer, cache_dir)
    assert [m["role"] for m in data.train[0]["messages"]] == ["user", "assistant"]


BAD_LINES = [
    ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n', 2, None, "not valid JSON"),
    ('{"question": "a", "answer": "b"}\n{"question": "c"}\n', 2, "answer", "missing"),
    ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": true}\n', 2, "answer", "bool"),
    ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": NaN}\n', 2, "answer", "nan"),
    (
        '{"question": "a", "answer": "b"}\n{"question": "c", "answer": ["x"]}\n',
        2,
        "answer",
        "string",
    ),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), BAD_LINES)
def test_bad_rows_raise_with_file_line_and_field(
    tmp_path, tokenizer, cache_dir, text, line, field, words
):
    path = tmp_path / "bad.jsonl"
    path.write_text(text + '{"question": "e", "answer": "f"}\n')
    with pytest.raises(DataError, match=words) as err:
        load(path, tokenizer, cache_dir)
    assert f"bad.jsonl, line {line}" in str(err.value)
    assert err.value.line == line and err.value.file == "bad.jsonl" and err.value.field == field
    data = load(path, tokenizer, cache_dir, on_error="skip")
    assert len(data.train) == 2
    (problem,) = [p for p in data.report().problems if p.kind == "malformed"]
    assert problem.row == line and problem.split == "source" and words in problem.message


def test_numbers_are_their_text_in_json_and_csv(tmp_path, tokenizer, cache_dir):
    # Math and classification sets store answers as numbers; a CSV column of digits is read
    # as integers. Each becomes its text (a bool or NaN would be a guess: refused above).
    rows = [{"question": f"{i} + {i}?", "answer": 2 * i if i % 2 else f"{2 * i}"} for i in range(6)]
    rows[1]["answer"] = 2.5
    from_json = load(write_jsonl(tmp_path / "mixed.jsonl", rows), tokenizer, cache_dir)
    csv = tmp_path / "numbers.csv"
    csv.write_text("question,answer\n" + "".join(f"{i} + {i}?,{2 * i}\n" for i in range(6)))
    from_csv = load(csv, tokenizer, cache_dir)

    def answers(data):
        return sorted(data.example(i).answer for i in range(len(data.train)))

    assert answers(from_json) == sorted(str(row["answer"]) for row in rows)  # '2.5' included
    assert answers(from_csv) == sorted(str(2 * i) for i in range(6))


def test_unknown_role_and_non_utf8(tmp_path, tokenizer, cache_dir):
    bad_role = {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}
    path = tmp_path / "chat.jsonl"
    good = json.dumps(CHAT_ROW).encode()
    path.write_bytes(
        good + b"\n" + json.dumps(bad_role).encode() + b"\n" + b'{"messages": "\xff\xfe"}\n'
    )
    with pytest.raises(DataError, match=r"chat\.jsonl, line 2, field 'messages\[1\]\.role'.*robot"):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, on_error="skip")
    kinds = {p.row: p.message for p in data.report().problems if p.kind == "malformed"}
    assert set(kinds) == {2, 3} and "UTF-8" in kinds[3]


def test_non_utf8_csv_row(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "d.csv"
    path.write_bytes(b"question,answer\nok,fine\nbad \xff,x\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3.*UTF-8"):
        load(path, tokenizer, cache_dir)


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("d.jsonl", "utf-16"),  # Windows PowerShell 5's `>`: UTF-16 LE with a byte order mark
        ("d.jsonl", "utf-16-be"),
        ("d.json", "utf-32"),
        ("d.tsv", "utf-16"),  # Excel's "Unicode Text"
        ("d.csv", "utf-16"),
        ("d.jsonl.gz", "utf-16"),
    ],
)
def test_text_files_in_utf16_or_utf32_with_a_byte_order_mark_are_read(
    tmp_path, tokenizer, cache_dir, name, encoding
):
    import gzip

    rows = [{"question": f"Café n°{i} — 2+2?", "answer": f"{i} ✓"} for i in range(3)]
    kind = name.split(".")[1]
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        text = "\r\n".join(
            [f"question{sep}answer", *(f"{r['question']}{sep}{r['answer']}" for r in rows)]
        )
    elif kind == "json":
        text = json.dumps(rows, ensure_ascii=False)
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    data = ("\ufeff" + text).encode(encoding) if encoding.endswith("-be") else text.encode(encoding)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    loaded = load(path, tokenizer, cache_dir)
    assert [m["messages"][0]["content"] for m in loaded.train] == [r["question"] for r in rows]
    assert loaded.train[2]["messages"][1]["content"] == "2 ✓"


def test_a_legacy_encoding_is_named_with_encoding(tmp_path, tokenizer, cache_dir):
    """A CSV Excel saved on Windows is cp1252: refused as not UTF-8 with the way to read it,
    then read with encoding='cp1252' (a validation file too), cached apart from UTF-8."""
    text = "question;answer\r\nCafé crème?;Oui — très\r\nNaïve?;Déjà vu\r\n"
    path = tmp_path / "excel.csv"
    path.write_bytes(text.encode("cp1252"))
    second = tmp_path / "excel-val.csv"
    second.write_bytes("question;answer\r\nÉté?;Chaud\r\n".encode("cp1252"))
    with pytest.raises(
        DataError, match=r"excel\.csv, line 2: bytes that are not UTF-8.*encoding='cp1252'"
    ):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, encoding="cp1252", validation=str(second))
    assert [r["messages"][1]["content"] for r in data.train] == ["Oui — très", "Déjà vu"]
    assert data.validation[0]["messages"][0]["content"] == "Été?"
    latin = load(path, tokenizer, cache_dir, encoding="latin-1")  # not served from the cache
    assert latin.train[0]["messages"][1]["content"] == "Oui \x97 très"
    with pytest.raises(SpecError, match=r"encoding='klingon' is not a text encoding"):
        load(path, tokenizer, cache_dir, encoding="klingon")
    with pytest.raises(SpecError, match=r"encoding='cp1252' is for text files.*a list is not one"):
        load([{"question": "q", "answer": "a"}], tokenizer, cache_dir, encoding="cp1252")


def test_a_legacy_encoding_given_for_a_utf8_file_is_questioned(tmp_path, tokenizer, cache_dir):
    # The loader's own hint names cp1252, so users try it on any file: a UTF-8 one loaded as
    # "PrÃ¨s de la gare" without a word, and one with UTF-8's byte order mark failed with
    # "cannot tell the format from the columns ['ï»¿question', 'answer']".
    row = {"question": "Où est la gare?", "answer": "Près de la poste"}
    path = write_jsonl(tmp_path / "utf8.jsonl", [json.dumps(row, ensure_ascii=False)])
    with pytest.warns(
        WorkbenchWarning,
        match=r"utf8\.jsonl: the file reads as UTF-8 .* "
        r"encoding='latin-1' reads 'Où' as 'OÃ¹'",
    ) as said:
        PreparedData.load(path, tokenizer, cache_dir=cache_dir, encoding="latin-1")
    assert [w.filename for w in said] == [__file__]  # the user's line, not the package's
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffquestion,answer\nCafé?,Oui\n".encode())
    with pytest.raises(
        DataError,
        match=r"bom\.csv: the file starts with UTF-8's byte order "
        r"mark, so it is UTF-8, not encoding='cp1252': leave encoding out",
    ):
        load(bom, tokenizer, cache_dir, encoding="cp1252")
    legacy = tmp_path / "legacy.csv"
    legacy.write_bytes("question,answer\nCafé?,Oui — très\n".encode("cp1252"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)  # really cp1252: no question asked
        data = load(legacy, tokenizer, cache_dir, encoding="cp1252")
        assert data.train[0]["messages"][1]["content"] == "Oui — très"
        load(path, tokenizer, cache_dir, encoding="utf-8")


def test_utf16_and_undecodable_files_say_which_encoding_and_line(tmp_path, tokenizer, cache_dir):
    # A UTF-16 file without its mark failed with "cannot tell the format from the columns
    # ['i\x00n\x00...']"; one with its mark, or a UTF-8 file, given encoding='cp1252' failed
    # with "not valid CP1252 text (character maps to <undefined>)": no line, no way out.
    text = "question,answer\nCafé?,Oui\n"
    unmarked = tmp_path / "unmarked.csv"
    unmarked.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"unmarked\.csv: the file looks like UTF-16 text "
                       r"without a byte order mark .*: pass encoding='utf-16-le'"):  # fmt: skip
        load(unmarked, tokenizer, cache_dir)
    data = load(unmarked, tokenizer, cache_dir, encoding="utf-16-le")
    assert data.train[0]["messages"][1]["content"] == "Oui"
    big = tmp_path / "big.csv"
    big.write_bytes(text.encode("utf-16-be"))
    with pytest.raises(DataError, match=r"pass encoding='utf-16-be'"):
        load(big, tokenizer, cache_dir)
    lines = tmp_path / "rows.jsonl"  # JSON Lines too (its error said "not valid JSON")
    lines.write_bytes('{"question": "a", "answer": "b"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"rows\.jsonl: the file looks like UTF-16 text"):
        load(lines, tokenizer, cache_dir)
    marked = tmp_path / "marked.csv"
    marked.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match=r"marked\.csv: the file starts with UTF-16's byte "
                       r"order mark, so it is UTF-16, not encoding='cp1252'"):  # fmt: skip
        load(marked, tokenizer, cache_dir, encoding="cp1252")
    chinese = tmp_path / "chinese.csv"
    chinese.write_text("question,answer\n" + "a,b\n" * 5 + "可以吗?,可以\n", encoding="utf-8")
    said = r"chinese\.csv: not valid CP1252 text at line 7 .*; it reads as UTF-8: leave encoding"
    with pytest.raises(DataError, match=said), warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkbenchWarning)  # "reads as UTF-8" said first
        load(chinese, tokenizer, cache_dir, encoding="cp1252")


def test_the_session_records_the_encoding(tmp_path, tiny_model_dir):
    import workbench as wb

    path = tmp_path / "d.jsonl"
    rows = [{"question": f"Ça va {i}?", "answer": "Très bien"} for i in range(6)]
    path.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("cp1252"))
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(str(path), encoding="cp1252", validation=None)
    assert s.example(0).text.count("Très bien") == 1
    state = json.loads((tmp_path / "run" / "session.json").read_text())
    assert state["data"]["options"] == {"encoding": "cp1252", "validation": None}


def test_damaged_utf16_names_the_file(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "cut.jsonl"
    text = json.dumps({"question": "q", "answer": "a"})
    path.write_bytes(text.encode("utf-16") + "\ud800".encode("utf-16-le", "surrogatepass"))
    with pytest.raises(DataError, match=r"cut\.jsonl: not valid UTF-16 text"):
        load(path, tokenizer, cache_dir)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path, tokenizer, cache_dir, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: empty"):
        load(path, tokenizer, cache_dir)


def test_missing_file_and_unsupported_type(tmp_path, tokenizer, cache_dir):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nope.jsonl", tokenizer, cache_dir)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load(tmp_path / "x.txt", tokenizer, cache_dir)


def test_failed_load_leaves_no_arrow_files(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, "{oops"])
    with pytest.raises(DataError):
        load(path, tokenizer, cache_dir)
    assert not list((tmp_path / "arrow-cache").rglob("*.arrow"))


def test_changed_file_is_read_again_not_served_from_cache(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "first"}])
    assert load(path, tokenizer, cache_dir).train["text"] == ["first"]
    write_jsonl(path, [{"text": "second version"}])
    assert load(path, tokenizer, cache_dir).train["text"] == ["second version"]


def test_spec_is_validated(tokenizer, cache_dir):
    with pytest.raises(SpecError, match="on_error"):
        PreparedData.load([{"text": "a"}], tokenizer, on_error="ignore", cache_dir=cache_dir)
    with pytest.raises(SpecError, match="validation"):
        PreparedData.load([{"text": "a"}], tokenizer, validation=1.5, cache_dir=cache_dir)
    with pytest.raises(SpecError, match="format"):
        PreparedData.load([{"text": "a"}], tokenizer, format="xml", cache_dir=cache_dir)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("excel-de.csv", 'question;answer\n"Was ist 2+2?";vier\n"Hallo, Welt";hallo\n'),
        ("tabs.tsv", "question\tanswer\nWhat is 2+2?\tfour, of course\nHello\thi\n"),
        ("tabs.csv", "question\tanswer\nWhat is 2+2?\tfour, of course\nHello\thi\n"),
        ("pipes.csv", "question|answer\nWhat is 2+2?|four\nHello|hi\n"),
        ("commas.csv", 'question,answer\n"What is 2+2; or so?",four\nHello,hi\n'),
    ],
)
def test_csv_delimiter_is_read_from_the_header(tmp_path, tokenizer, cache_dir, name, text):
    """Spreadsheets saved in many locales separate with semicolons; .tsv files with tabs."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    data = load(path, tokenizer, cache_dir)
    assert data.format == "qa"
    first, second = data.train[0]["messages"], data.train[1]["messages"]
    assert [m["content"] for m in first] in (
        ["Was ist 2+2?", "vier"],
        ["What is 2+2?", "four, of course"],
        ["What is 2+2?", "four"],
        ["What is 2+2; or so?", "four"],
    )
    assert second[0]["content"] in ("Hallo, Welt", "Hello")


@pytest.mark.parametrize(
    "document",
    [
        {"data": [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]},
        {"version": "1.1", "rows": [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]},
    ],
    ids=["data", "versioned"],
)
@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty"])
def test_a_json_object_wrapping_its_rows_is_read_as_those_rows(
    tmp_path, tokenizer, cache_dir, document, indent
):
    document = copy.deepcopy(document)  # the parameters are shared between cases
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps(document, indent=indent))
    data = load(path, tokenizer, cache_dir)
    assert [m[-1]["content"] for m in data.train["messages"]] == ["a0", "a1", "a2"]
    rows = next(v for v in document.values() if isinstance(v, list))
    rows[1]["answer"] = None  # a bad item is named by its place in the list
    path.write_text(json.dumps(document, indent=indent))
    with pytest.raises(DataError, match=r"wrapped\.json, item 2, field 'answer'"):
        load(path, tokenizer, cache_dir)


@pytest.mark.parametrize("orient", ["columns", "index", "split", "table"])
@pytest.mark.parametrize("indent", [0, 2], ids=["one-line", "pretty"])
def test_what_pandas_to_json_writes_is_read_as_its_rows(
    tmp_path, tokenizer, cache_dir, orient, indent
):
    # df.to_json("x.json") (orient="columns", the default) said "field 'question': expected
    # a string, got dict {'0': 'q0', ...}".
    frame = pd.DataFrame({"question": [f"q{i}" for i in range(12)], "answer": ["a"] * 12})
    frame.loc[11, "answer"] = "last"
    path = tmp_path / "frame.json"
    frame.to_json(path, orient=orient, indent=indent)
    data = load(path, tokenizer, cache_dir)
    assert len(data.train) == 12 and data.format == "qa"
    assert [m[0]["content"] for m in data.train["messages"]][::11] == ["q0", "q11"]
    assert data.train[11]["messages"][1]["content"] == "last"


def test_a_json_object_that_holds_no_single_list_of_rows_is_refused_by_name(
    tmp_path, tokenizer, cache_dir
):
    rows = [{"question": "q", "answer": "a"}]
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"a": 1, "b": 2}, indent=2))
    with pytest.raises(DataError, match=r"settings.json: one JSON object with keys \[.*not rows"):
        load(path, tokenizer, cache_dir)
    for indent in (None, 2):  # on one line it said "cannot tell the format from ['train', ...]"
        path = tmp_path / "splits.json"
        path.write_text(json.dumps({"train": rows, "test": rows}, indent=indent))
        with pytest.raises(
            DataError,
            match=r"splits.json: one JSON object holding several "
            r"lists of rows \('train', 'test'\): give one list per file, or .* "
            r"field='train'\)",
        ):
            load(path, tokenizer, cache_dir)
    # one chat conversation on one line is a row, not a wrapper of its messages; JSON Lines
    # whose first row is damaged is still JSON Lines (the row is skipped, the rest read)
    lines = tmp_path / "lines.json"
    lines.write_text('{"question": "q0", "answer": \n' + json.dumps(rows[0]) + "\n")
    skipped = load(lines, tokenizer, cache_dir, on_error="skip")
    assert len(skipped.train) == 1
    assert any("lines.json, line 1: not valid JSON" in p.message for p in skipped.report().problems)
    # Two damaged first rows: it was read as one document, and failed at a line that is fine
    two_bad = tmp_path / "two-bad.json"
    good = "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(4))
    two_bad.write_text('{"question": "q0", "answer": \n{"question": \n' + good)
    with pytest.raises(DataError, match=r"two-bad\.json, line 1: not valid JSON"):
        load(two_bad, tokenizer, cache_dir)
    assert len(load(two_bad, tokenizer, cache_dir, on_error="skip").train) == 4
    single = tmp_path / "one-chat.json"
    single.write_text(json.dumps(CHAT_ROW))
    assert load(single, tokenizer, cache_dir).train[0]["messages"] == CHAT_ROW["messages"]


def test_openai_chat_rows_developer_role(tmp_path, tokenizer, cache_dir):
    """OpenAI's fine-tuning format: "developer" is the system message, extra keys are ignored."""
    chat = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "2+2?", "name": "ada"},
        {"role": "assistant", "content": "4", "weight": 1},
    ]
    path = write_jsonl(tmp_path / "openai.jsonl", [{"messages": chat}, {"messages": chat}])
    data = load(path, tokenizer, cache_dir)
    assert [m["role"] for m in data.train[0]["messages"]] == ["system", "user", "assistant"]
    assert data.train[0]["untrained_turns"] == []


def test_conversations_held_as_text_in_a_csv_are_read(tmp_path, tokenizer, cache_dir):
    """pandas writes a list column as its repr, JSON tools as JSON: both are conversations."""
    chats = [[{"role": "user", "content": f"Hi, {i}?"}, WEIGHTED[3]] for i in range(3)]
    for name, cells in (("json", [json.dumps(c) for c in chats]), ("repr", chats)):
        path = tmp_path / f"{name}.csv"
        pd.DataFrame({"messages": cells}).to_csv(path, index=False)
        data = load(path, tokenizer, cache_dir)
        assert data.format == "chat", name
        assert data.train[1]["messages"] == [
            {"role": "user", "content": "Hi, 1?"},
            {"role": "assistant", "content": "Hello there!"},
        ]
    shared = tmp_path / "sharegpt.csv"
    turns = [{"from": "human", "value": 'a, "quoted"\nline'}, {"from": "gpt", "value": "b"}]
    pd.DataFrame({"conversations": [json.dumps(turns)] * 2}).to_csv(shared, index=False)
    assert load(shared, tokenizer, cache_dir).train[0]["messages"][0]["content"] == (
        'a, "quoted"\nline'
    )
    bad = tmp_path / "bad.csv"
    cut, words = json.dumps(chats[0])[:-5], "just words"
    for cell, why in ((cut, "is not a list of messages in JSON"), (words, "got text 'just wo")):
        pd.DataFrame({"messages": [json.dumps(chats[0]), cell]}).to_csv(bad, index=False)
        with pytest.raises(DataError, match=rf"bad\.csv, line 3, field 'messages': .*{why}"):
            load(bad, tokenizer, cache_dir)
    pd.DataFrame({"messages": [json.dumps(chats[0]), cut, words, ""]}).to_csv(bad, index=False)
    assert len(load(bad, tokenizer, cache_dir, on_error="skip").train) == 1


def test_json_nested_thousands_deep_is_a_bad_row_not_a_crash(tmp_path, tokenizer, cache_dir):
    deep = "[" * 100_000 + "]" * 100_000
    good = json.dumps({"question": "q", "answer": "a"})
    lines = write_jsonl(tmp_path / "deep.jsonl", [good, deep, good])
    with pytest.raises(DataError, match=r"deep\.jsonl, line 2: JSON nested too deeply"):
        load(lines, tokenizer, cache_dir)
    assert len(load(lines, tokenizer, cache_dir, on_error="skip").train) == 2
    document = tmp_path / "deep.json"
    document.write_text(deep)
    with pytest.raises(DataError, match=r"deep\.json: JSON nested too deeply"):
        load(document, tokenizer, cache_dir)
    cell = tmp_path / "deep.csv"
    nested = "[" * 5000 + "]" * 5000  # under the CSV reader's field limit
    pd.DataFrame({"messages": [json.dumps(WEIGHTED[:2]), nested]}).to_csv(cell, index=False)
    with pytest.raises(DataError, match=r"deep\.csv, line 3, field 'messages': .*recursion"):
        load(cell, tokenizer, cache_dir)


@pytest.mark.parametrize("batched", [True, False])
def test_trl_conversational_prompt_completion_rows(tmp_path, tokenizer, cache_dir, batched):
    """TRL's prompt/completion as message lists: the completion is trained, the prompt's own
    assistant turns (few-shot examples) are context."""
    few_shot = [WEIGHTED[0], {"role": "assistant", "content": "Hi!"}, WEIGHTED[2]]
    rows = [
        {"prompt": few_shot, "completion": [WEIGHTED[3]]},
        {"prompt": [{"role": "system", "content": "Be kind."}, WEIGHTED[0]], "completion": "Hey"},
        {"prompt": "Plain question?", "completion": [{"role": "assistant", "content": "Yes."}]},
    ]
    path = write_jsonl(tmp_path / "trl.jsonl", rows)
    data = load(path, tokenizer, cache_dir, batched=batched)
    assert data.format == "qa"
    assert data.train[0]["messages"] == [
        *few_shot,
        {"role": "assistant", "content": "Hello there!"},
    ]
    assert data.train[0]["untrained_turns"] == [1]
    trained = [_trained_text(tokenizer, r) for r in data.train]
    assert trained == [f"{answer}<|im_end|>\n" for answer in ("Hello there!", "Hey", "Yes.")]
    assert [m["role"] for m in data.train[1]["messages"]] == ["system", "user", "assistant"]
    assert data.example(0).answer == "Hello there!"
    # a bad message inside a list is named by its column and index
    rows[0]["completion"] = [{"role": "robot", "content": "beep"}]
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"trl\.jsonl, line 1, field 'completion\[0\]\.role'"):
        load(path, tokenizer, cache_dir, batched=batched)


def test_image_parts_and_implicit_prompt_preferences_say_what_to_do(tmp_path, tokenizer, cache_dir):
    picture = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    looks = [{"type": "text", "text": "What is this?"}, picture]
    rows = [{"messages": [{"role": "user", "content": looks}, WEIGHTED[3]]}] * 2
    path = write_jsonl(tmp_path / "vision.jsonl", rows)
    why = r"vision\.jsonl, line 1, field 'messages\[0\]\.content': has image_url parts: only text"
    with pytest.raises(DataError, match=why):
        load(path, tokenizer, cache_dir)
    # preference pairs whose chosen side is a whole conversation (TRL's implicit prompt)
    pairs = [{"chosen": [WEIGHTED[0], WEIGHTED[3]], "rejected": WEIGHTED[:2]}] * 2
    path = write_jsonl(tmp_path / "dpo.jsonl", pairs)
    with pytest.raises(DataError, match=r'columns=\{"messages": "chosen"\}'):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, columns={"messages": "chosen"})
    assert _trained_text(tokenizer, data.train[0]) == "Hello there!<|im_end|>\n"


def test_a_folder_of_data_files_says_how_to_read_them_as_one(tmp_path, tokenizer, cache_dir):
    """A dataset's shards (train-00000-of-00002.jsonl...) are not a save_to_disk folder."""
    import datasets

    shards = tmp_path / "dataset" / "data"
    shards.mkdir(parents=True)
    for k in range(2):
        rows = [{"question": f"{k}.{i}?", "answer": str(i)} for i in range(3)]
        write_jsonl(shards / f"train-0000{k}-of-00002.jsonl", rows)
    hint = (
        r"holds data files \(data/train-00000-of-00002\.jsonl, data/train-00001-of-00002\.jsonl"
        r"\): give one file, or read them as one with datasets\.load_dataset\('json', "
    )
    with pytest.raises(DataError, match=hint):
        load(tmp_path / "dataset", tokenizer, cache_dir)
    files = sorted(str(p) for p in shards.iterdir())
    joined = datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache_dir)
    data = load(joined, tokenizer, cache_dir)
    assert [m[0]["content"] for m in data.train["messages"]][::3] == ["0.0?", "1.0?"]
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    for k in range(2):  # datasets has no Excel builder: pandas reads them
        pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_excel(sheets / f"{k}.xlsx")
    with pytest.raises(DataError, match=r"pandas\.concat\(\[pandas\.read_excel\(f\)"):
        load(sheets, tokenizer, cache_dir)


def test_excel_cells_are_the_text_they_show(tmp_path, tokenizer, cache_dir):
    """A person who typed 25%, 3.50 or a date in a spreadsheet trains on what they see, not on
    0.25, 3.5 or 1995-03-01T00:00:00 (each cell carries its value and its number format)."""
    import datetime

    from openpyxl import Workbook
    from openpyxl.styles.numbers import BUILTIN_FORMATS

    shown = {
        "share": (0.25, "0%", "25%"),
        "rate": (0.1234, "0.00%", "12.34%"),
        "price": (3.5, "0.00", "3.50"),
        "debt": (-1234.5, '"$"#,##0.00_);("$"#,##0.00)', "($1,234.50)"),
        "zero": (0, '_(* #,##0.00_);_(* \\(#,##0.00\\);_(* "-"??_);_(@_)', "-"),
        "euros": (12.3, "#,##0.00 [$€-407]", "12.30 €"),
        "count": (1234567, "#,##0", "1,234,567"),
        "sum": (0.1 + 0.2, "General", "0.3"),
        "tiny": (0.000123, "0.00E+00", "1.23E-04"),
        "day": (datetime.date(1995, 3, 1), "yyyy-mm-dd", "1995-03-01"),
        "named": (datetime.datetime(1995, 3, 1), "dddd, mmmm d, yyyy", "Wednesday, March 1, 1995"),
        "short": (datetime.datetime(1995, 3, 1), "mm-dd-yy", "1995-03-01"),  # locale's: ISO
        "clock": (datetime.time(14, 30), "h:mm AM/PM", "2:30 PM"),
        "lap": (datetime.time(0, 5, 7, 500000), "mm:ss.0", "05:07.5"),
        "hours": (datetime.timedelta(hours=30, minutes=5), "[h]:mm", "30:05"),
        "yes": (True, "General", "TRUE"),
        "typed": ("0.25", "0%", "0.25"),  # text stays the text typed
        "fraction": (0.125, "# ?/?", "0.125"),  # a format not read: the number's own text
        # found against LibreOffice's rendering of 4,700 cells:
        "ssn": (123456789, "000-00-0000", "123-45-6789"),  # text between digits
        "code": (7, "0,000", "0,007"),  # leading zeros with a thousands separator
        "big": (123456789012345678, "#,##0", "123,456,789,012,346,000"),  # 15 digits
        "huge": (1e30, "0", "1" + "0" * 30),  # beyond decimal's default 28 digits
        "half": (0.125, "0.0E+00", "1.3E-01"),  # half away from zero, as fixed decimals
        "tier": (2.5, "[>=1000]#,##0;0", "3"),  # a condition picks the section
        "shift": (datetime.timedelta(hours=30, minutes=5), "[Red][h]:mm", "30:05"),
        "label": ("hello", '0;0;0;"<"@">"', "<hello>"),  # the text section
        "accounting": (1234.5, BUILTIN_FORMATS[44], "$1,234.50"),  # openpyxl's id 44 string
    }
    book = Workbook()
    sheet = book.active
    sheet.append(["question", "answer"])
    for number, (name, (value, number_format, _)) in enumerate(shown.items(), start=2):
        sheet.append([f"What is the {name}?", value])
        sheet.cell(number, 2).number_format = number_format
    book.save(tmp_path / "shown.xlsx")
    data = load(tmp_path / "shown.xlsx", tokenizer, cache_dir)
    rows = [data.example(i).row for i in range(len(data.train))]
    answers = {row["question"]: row["answer"] for row in rows}
    assert answers == {f"What is the {name}?": text for name, (_, _, text) in shown.items()}


def test_excel_workbooks_are_read_from_their_first_sheet(tmp_path, tokenizer, cache_dir):
    """As spreadsheets hold data: a blank row above the header, numbers and dates in cells,
    blank rows below; errors name the row as the spreadsheet numbers it."""
    import datetime

    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append([])
    sheet.append(["question", "answer", None, "added"])
    for i in range(3):
        sheet.append([f"What is {i}+{i}?", 2 * i, None, datetime.date(2026, 1, i + 1)])
    sheet.append([])
    sheet.append(["Last?", "Yes."])
    book.create_sheet("notes").append(["not", "data"])
    path = tmp_path / "sums.xlsx"
    book.save(path)
    data = load(path, tokenizer, cache_dir)
    assert data.format == "qa"
    assert [m[-1]["content"] for m in data.train["messages"]] == ["0", "2", "4", "Yes."]
    assert data.train["source_row"] == [3, 4, 5, 7]  # the spreadsheet's own row numbers
    assert data.example(0).row == {
        "question": "What is 0+0?",
        "answer": "0",
        "added": "2026-01-01",  # as the cell shows it (openpyxl writes dates as yyyy-mm-dd)
    }
    sheet.append(["Empty?", None])
    sheet.append(["stray", "x", "a value under no header"])
    book.save(path)
    with pytest.raises(DataError, match=r"sums\.xlsx\[Sheet\], row 8, field 'answer': missing"):
        load(path, tokenizer, cache_dir)
    skipped = load(path, tokenizer, cache_dir, on_error="skip")
    assert [(p.row, p.kind) for p in skipped.skipped] == [(8, "malformed"), (9, "malformed")]
    assert "row 9: a value in column C, which has no header" in skipped.skipped[1].message
    # what pandas writes (openpyxl underneath), chat conversations as JSON text in a cell
    chats = [json.dumps([WEIGHTED[0], WEIGHTED[3]])] * 2
    pd.DataFrame({"messages": chats}).to_excel(tmp_path / "chats.xlsx", index=False)
    chat = load(tmp_path / "chats.xlsx", tokenizer, cache_dir)
    assert _trained_text(tokenizer, chat.train[0]) == "Hello there!<|im_end|>\n"
    (tmp_path / "damaged.xlsx").write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"damaged\.xlsx: not a readable Excel workbook"):
        load(tmp_path / "damaged.xlsx", tokenizer, cache_dir)
    (tmp_path / "sums.xlsx.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx\.gz'"):
        load(tmp_path / "sums.xlsx.gz", tokenizer, cache_dir)


def test_a_workbook_s_train_and_validation_sheets_are_its_splits(tmp_path, tokenizer, cache_dir):
    """As a DatasetDict's splits: the sheet named train (not the notes before it) is trained
    on, the one named test is the validation split, each read and cached on its own; messages
    name the sheet."""
    from openpyxl import Workbook

    book = Workbook()
    book.active.title = "notes"
    book.active.append(["Read me first: the data is on the other sheets."])
    train = book.create_sheet(" Train ")
    train.append(["question", "answer"])
    for i in range(6):
        train.append([f"What is {i}+{i}?", str(2 * i)])
    held_out = book.create_sheet("Test")
    held_out.append(["question", "answer"])
    held_out.append(["What is 9+9?", "18"])
    path = tmp_path / "sums.xlsx"
    book.save(path)
    data = load(path, tokenizer, cache_dir, validation=0.1)  # the default: a sheet wins
    assert [m[-1]["content"] for m in data.train["messages"]] == [str(2 * i) for i in range(6)]
    assert [m[-1]["content"] for m in data.validation["messages"]] == ["18"]
    assert data.train["source_row"] == [2, 3, 4, 5, 6, 7]
    held_out.append(["What is 5+5?", None])
    book.save(path)
    with pytest.raises(DataError, match=r"sums\.xlsx\[Test\], row 3, field 'answer': missing"):
        load(path, tokenizer, cache_dir, validation=0.1)
    book.create_sheet("Eval").append(["question", "answer"])  # eval before test, as splits
    book.save(path)
    with pytest.raises(DataError, match=r"sums\.xlsx\[Eval\]: empty \(no rows\)"):
        load(path, tokenizer, cache_dir, validation=0.1)
    del book["Test"], book["Eval"]
    book.save(path)
    split = load(path, tokenizer, cache_dir, validation=0.5)  # no validation sheet: a split
    assert len(split.train) == 3 and len(split.validation) == 3
    single = Workbook()
    single.active.append(["question", "answer"])
    single.active.append(["Where?", None])
    single.save(tmp_path / "one.xlsx")  # one sheet: the message names the file alone
    with pytest.raises(DataError, match=r"one\.xlsx, row 2, field 'answer': missing"):
        load(tmp_path / "one.xlsx", tokenizer, cache_dir)


def test_sheet_picks_the_workbook_sheet_to_train_on(tmp_path, tokenizer, cache_dir):
    """A workbook whose data sits on a sheet named neither train nor first (a README sheet in
    front) is read from the sheet asked for; its test sheet is still the validation split."""
    from openpyxl import Workbook

    book = Workbook()
    book.active.title = "README"
    book.active.append(["Questions collected in March; the answers were checked twice."])
    march = book.create_sheet("March data")
    march.append(["question", "answer"])
    for i in range(4):
        march.append([f"What is {i}+{i}?", str(2 * i)])
    book.create_sheet("test").append(["question", "answer"])
    book["test"].append(["What is 9+9?", "18"])
    path = tmp_path / "march.xlsx"
    book.save(path)
    with pytest.raises(DataError, match=r"march\.xlsx\[README\]"):  # the default: the first
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, sheet=" march DATA ", validation=0.1)
    assert [m[-1]["content"] for m in data.train["messages"]] == ["0", "2", "4", "6"]
    assert [m[-1]["content"] for m in data.validation["messages"]] == ["18"]
    with pytest.raises(DataError, match=r"march\.xlsx: no sheet named 'April'; its sheets are "
                       r"\['README', 'March data', 'test'\]"):  # fmt: skip
        load(path, tokenizer, cache_dir, sheet="April")
    with pytest.raises(SpecError, match="sheet='March data' picks a sheet of an Excel workbook"):
        load([{"question": "q", "answer": "a"}] * 4, tokenizer, cache_dir, sheet="March data")


def _trained_text(tokenizer, row):
    return tokenizer.decode([t for t in row["labels"] if t != -100])


WEIGHTED = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Whatever, hi.", "weight": 0},
    {"role": "user", "content": "Politely?"},
    {"role": "assistant", "content": "Hello there!", "weight": 1},
]


@pytest.mark.parametrize("batched", [True, False])
def test_an_assistant_turn_of_weight_0_is_context_not_trained(
    tmp_path, tokenizer, cache_dir, batched
):
    """OpenAI's per-turn weight: a weight-0 answer stays in the prompt and gets no labels."""
    sharegpt = [
        {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
        | ({"weight": m["weight"]} if "weight" in m else {})
        for m in WEIGHTED
    ]
    rows = [{"messages": WEIGHTED}] * 3 + [{"messages": WEIGHTED[:2]}]
    for name, data_rows in (("chat", rows), ("sharegpt", [{"conversations": sharegpt}] * 3)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", data_rows)
        data = load(path, tokenizer, cache_dir, batched=batched)
        row = data.train[0]
        assert row["untrained_turns"] == [1], name
        assert _trained_text(tokenizer, row) == "Hello there!<|im_end|>\n", name
        assert "Whatever, hi." in tokenizer.decode(row["input_ids"])  # still there as context
        shown = "".join(t.text for t in data.example(0).tokens if t.trained)
        assert shown == "Hello there!<|im_end|>\n"
    # a row whose only answer has weight 0 has nothing to train on, and says so
    problems = data_problems(tmp_path, tokenizer, cache_dir, rows, batched)
    assert [(p.row, p.kind) for p in problems] == [(3, "no_trained_tokens")]
    assert "weight 0" in problems[0].message


def test_a_row_is_shown_and_judged_by_its_last_trained_answer(tmp_path, tokenizer, cache_dir):
    """The preview, example and evaluation reference skip a final weight-0 answer."""
    rude = [
        {**WEIGHTED[3], "weight": 1},
        {"role": "user", "content": "Now rudely?"},
        {"role": "assistant", "content": "Whatever.", "weight": 0},
    ]
    chat = [WEIGHTED[0], *rude]
    data = load(write_jsonl(tmp_path / "c.jsonl", [{"messages": chat}] * 2), tokenizer, cache_dir)
    example = data.example(0)
    assert example.answer == "Hello there!"
    assert example.prompt.endswith("Say hi.<|im_end|>\n<|im_start|>assistant\n")
    assert "Whatever." in example.text and "Whatever." not in example.prompt
    preview = data.preview([0])[0]
    assert (preview["prompt"], preview["answer"]) == ("Say hi.", "Hello there!")


def data_problems(tmp_path, tokenizer, cache_dir, rows, batched):
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    report = load(path, tokenizer, cache_dir, batched=batched).report()
    return [p for p in report.problems if p.kind == "no_trained_tokens"]


@pytest.mark.parametrize("weight", [0.5, -1, 2, "0", [0]])
def test_a_turn_weight_other_than_0_or_1_names_its_row_and_field(
    tmp_path, tokenizer, cache_dir, weight
):
    odd = [*WEIGHTED[:3], {**WEIGHTED[3], "weight": weight}]
    path = write_jsonl(tmp_path / "openai.jsonl", [{"messages": WEIGHTED}, {"messages": odd}])
    why = r"openai\.jsonl, line 2, field 'messages\[3\]\.weight': expected 0 .* or 1"
    with pytest.raises(DataError, match=why):
        load(path, tokenizer, cache_dir)
    assert len(load(path, tokenizer, cache_dir, on_error="skip").train) == 1


def test_turn_weights_from_parquet_where_absent_weights_are_null(tmp_path, tokenizer, cache_dir):
    """A Parquet file gives every message every key: a missing weight is null, so trained."""
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED]
    frame = pd.DataFrame({"messages": [WEIGHTED, unweighted, WEIGHTED]})
    path = tmp_path / "chats.parquet"
    frame.to_parquet(path)
    data = load(path, tokenizer, cache_dir)
    assert [r["untrained_turns"] for r in data.train] == [[1], [], [1]]
    both = "Whatever, hi.<|im_end|>\nHello there!<|im_end|>\n"
    assert _trained_text(tokenizer, data.train[1]) == both
    assert _trained_text(tokenizer, data.train[2]) == "Hello there!<|im_end|>\n"


def test_input_output_pairs_are_prompt_and_answer(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"input": "2+2?", "output": "4"}] * 2)
    data = load(path, tokenizer, cache_dir)
    assert data.format == "qa"
    assert data.train[0]["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    # with an instruction it stays alpaca: the input is the instruction's context
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{**ALPACA}] * 2)
    assert load(alpaca, tokenizer, cache_dir).format == "alpaca"


def test_preference_pairs_get_a_hint_to_tune_on_the_chosen_answers(tmp_path, tokenizer, cache_dir):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 2
    path = write_jsonl(tmp_path / "dpo.jsonl", rows)
    hint = r'preference pairs .*columns=\{"prompt": "prompt", "answer": "chosen"\}'
    with pytest.raises(DataError, match=hint):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, columns={"prompt": "prompt", "answer": "chosen"})
    assert data.train[0]["messages"][-1] == {"role": "assistant", "content": "4"}


COMPRESSIONS = [".gz", ".bz2", ".xz", ".zst"]


def write_compressed(path, data: bytes) -> None:
    """``data`` compressed as the suffix of ``path`` says (Zstandard frames by libzstd)."""
    import bz2
    import gzip
    import lzma

    import pyarrow as pa

    if path.suffix == ".zst":
        with pa.output_stream(str(path), compression="zstd") as fh:
            fh.write(data)
        return
    path.write_bytes(
        {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[path.suffix](data)
    )


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_compressed_text_files_are_read_as_they_decompress(
    tmp_path, tokenizer, cache_dir, kind, compression
):
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(3)]
    text = {
        ".jsonl": "\n".join(json.dumps(r) for r in rows),
        ".json": json.dumps({"data": rows}, indent=2),
        ".csv": "question;answer\n" + "".join(f"{r['question']};{r['answer']}\n" for r in rows),
    }[kind]
    path = tmp_path / f"data{kind}{compression}"
    write_compressed(path, text.encode())
    data = load(path, tokenizer, cache_dir)
    assert [m[-1]["content"] for m in data.train["messages"]] == ["0", "2", "4"]
    # a bad row is still named by its file and line (or item) inside the compressed file
    rows[1]["answer"] = None
    bad = {
        ".jsonl": "\n".join(json.dumps(r) for r in rows).encode(),
        ".json": json.dumps({"data": rows}, indent=2).encode(),
        ".csv": b"question;answer\nWhat;4\nbad \xff;x\n",  # not UTF-8
    }[kind]
    write_compressed(path, bad)
    where = {".jsonl": "line 2", ".json": "item 2", ".csv": "line 3"}[kind]
    with pytest.raises(DataError, match=rf"data{kind}{compression}, {where}"):
        load(path, tokenizer, cache_dir)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_a_damaged_or_cut_short_compressed_file_names_itself_and_caches_nothing(
    tmp_path, tokenizer, kind, compression
):
    rows = [{"question": f"What is {i}+{i}? " * 5, "answer": str(2 * i)} for i in range(3000)]
    text = {
        ".jsonl": "\n".join(json.dumps(r) for r in rows),
        ".json": json.dumps(rows, indent=1),
        ".csv": "question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in rows),
    }[kind]
    path = tmp_path / f"data{kind}{compression}"
    write_compressed(path, text.encode())
    whole = path.read_bytes()
    cache = tmp_path / "cache"
    damaged = {"cut short": whole[: len(whole) // 2]}  # a download stopped half way
    if compression != ".zst":  # these carry checksums; a Zstandard frame need not (pyarrow's)
        damaged["damaged"] = whole[: len(whole) // 2] + bytes(64) + whole[len(whole) // 2 + 64 :]
    for what, data in damaged.items():
        path.write_bytes(data)
        why = rf"data{kind}{compression}: the compressed file is damaged or cut short \("
        # a damaged stream can also decode to bad text first: that row is named instead
        why += rf"|data{kind}{compression}, (line|item) \d+"
        for on_error in ("raise", "skip"):
            with pytest.raises(DataError, match=why):
                load(path, tokenizer, str(cache), on_error=on_error)
        stored = [p.name for p in cache.rglob("*") if p.is_file()]
        assert not [n for n in stored if n.endswith((".arrow", ".incomplete"))], (what, stored)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("kind", [".jsonl", ".csv"])
def test_compressed_data_under_a_text_name_says_what_it_holds(
    tmp_path, tokenizer, cache_dir, kind, compression
):
    # It said "bytes that are not UTF-8 ... encoding='cp1252'" (garbage if followed) for a
    # .jsonl and "empty (no rows)" for a .csv.
    packed = tmp_path / f"data{kind}{compression}"
    write_compressed(packed, b'{"question": "a", "answer": "b"}\n' * 50)
    path = packed.rename(tmp_path / f"data{kind}")
    what = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "Zstandard"}[compression]
    with pytest.raises(
        DataError,
        match=rf"data{kind}: the file holds {what}-compressed data, "
        rf"not text: name it data{kind}\{compression}",
    ):
        load(path, tokenizer, cache_dir)
    frame = tmp_path / "frame.parquet"
    pd.DataFrame({"question": ["a"], "answer": ["b"]}).to_parquet(frame)
    with pytest.raises(DataError, match=r"holds a Parquet file, not text: name it frame.parquet"):
        load(frame.rename(tmp_path / "frame.jsonl"), tokenizer, cache_dir)


def test_a_compressed_parquet_or_unknown_file_is_refused(tmp_path, tokenizer, cache_dir):
    for name in ("data.parquet.gz", "notes.txt.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
        shown = name.partition(".")[2]
        with pytest.raises(DataError, match=rf"unsupported file type '\.{shown}'"):
            load(tmp_path / name, tokenizer, cache_dir)


def test_a_missing_file_names_the_file_beside_it_that_was_likely_meant(
    tmp_path, tokenizer, cache_dir
):
    # "people.json: no such file or folder", with people.jsonl right beside it.
    (tmp_path / "people.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError) as missing:
        load(tmp_path / "people.json", tokenizer, cache_dir)
    assert str(missing.value) == (
        f"{tmp_path / 'people.json'}: no such file or folder (did you mean people.jsonl?)"
    )
