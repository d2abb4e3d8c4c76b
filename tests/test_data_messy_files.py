"""Files as real users have them: cut emoji, damaged Parquet, unclosed CSV quotes, long cells,
repeated headers, edits that keep a file's size and time. Each is read right or refused by
name (file, line, field), and a refused load caches nothing."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from data_fixtures import cache_dir, load, plain_tokenizer, tokenizer, write_jsonl

from workbench.errors import DataError

__all__ = ["cache_dir", "plain_tokenizer", "tokenizer"]  # fixtures used by name

GOOD = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
CUT_EMOJI = '{"instruction": "emoji cut \\ud83d", "output": "x"}'  # half of a surrogate pair


def _answers(data):
    return [m[-1]["content"] for m in data.train["messages"]]


def _no_arrow_files(tmp_path):
    return not list((tmp_path / "arrow-cache").rglob("*.arrow"))


@pytest.mark.parametrize("batched", [True, False])
def test_a_cut_emoji_names_its_line_and_field_or_is_skipped(
    tmp_path, tokenizer, cache_dir, batched
):
    path = write_jsonl(tmp_path / "cut.jsonl", [*GOOD, CUT_EMOJI])
    with pytest.raises(DataError, match=r"cut\.jsonl, line 7, field 'instruction': .*surrogate"):
        load(path, tokenizer, cache_dir, batched=batched)
    assert _no_arrow_files(tmp_path)
    data = load(path, tokenizer, cache_dir, batched=batched, on_error="skip")
    assert _answers(data) == [f"a{i}" for i in range(6)]
    assert [(p.kind, p.row) for p in data.skipped] == [("malformed", 7)]
    assert "field 'instruction'" in data.skipped[0].message


def test_a_cut_emoji_in_a_chat_turn_or_an_in_memory_row_is_named(tokenizer, cache_dir):
    chat = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\ud83d"}]
    }
    with pytest.raises(DataError, match=r"list, row 2, field 'messages\[1\]\.content'"):
        load(
            [
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": "y"},
                    ]
                },
                chat,
            ],
            tokenizer,
            cache_dir,
        )
    paired = {"instruction": "smile \ud83d\ude00", "output": "ok"}  # a whole pair is fine
    with pytest.raises(DataError, match=r"list, row 1, field 'output'"):
        load([{"instruction": "q", "output": "\udc00 after"}, paired], tokenizer, cache_dir)


@pytest.mark.parametrize(
    ("content", "shown"),
    [(b"", "size is 0 bytes"), (b"PAR1 not really a parquet file", "magic bytes")],
)
def test_an_empty_or_damaged_parquet_file_names_itself(
    tmp_path, tokenizer, cache_dir, content, shown
):
    path = tmp_path / "rows.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"rows\.parquet: not a readable Parquet file \(.*{shown}"):
        load(path, tokenizer, cache_dir)
    assert _no_arrow_files(tmp_path)


def test_a_cut_short_parquet_file_names_itself(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "rows.parquet"
    pd.DataFrame(GOOD * 50).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-100])  # a copy stopped before its footer
    with pytest.raises(DataError, match=r"rows\.parquet: not a readable Parquet file"):
        load(path, tokenizer, cache_dir)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_unclosed_csv_quote_names_its_line_instead_of_swallowing_the_rest(
    tmp_path, tokenizer, cache_dir, on_error, newline
):
    lines = ["instruction,output", "q1,a1", 'q2,"a2 oops', "q3,a3", "q4,a4"]
    path = tmp_path / "quote.csv"
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    with pytest.raises(DataError, match=r"quote\.csv, line 3: a quoted cell is never closed"):
        load(path, tokenizer, cache_dir, on_error=on_error)
    assert _no_arrow_files(tmp_path)
    path.write_bytes(newline.join(lines).encode())  # no line break at the end
    with pytest.raises(DataError, match=r"quote\.csv, line 3: a quoted cell is never closed"):
        load(path, tokenizer, cache_dir, on_error=on_error)


def test_closed_multi_line_cells_at_the_end_still_load(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "multi.csv"
    path.write_text('instruction,output\nq1,a1\nq2,"two\nlines"\n', newline="")
    assert _answers(load(path, tokenizer, cache_dir)) == ["a1", "two\nlines"]
    path.write_text('instruction,output\nq1,a1\nq2,"ends with a break\n"\n', newline="")
    assert _answers(load(path, tokenizer, cache_dir)) == ["a1", "ends with a break\n"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_record_over_several_lines_is_numbered_by_its_first(
    tmp_path, tokenizer, cache_dir, newline
):
    lines = ["instruction,output", "q1,a1", '"line3', "line4", 'line5"', "q6,a6", ""]
    path = tmp_path / "multi.csv"
    path.write_bytes(newline.join(lines).encode())
    with pytest.raises(DataError, match=r"multi\.csv, line 3, field 'output': missing"):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, on_error="skip")
    assert [(p.row, "field 'output'" in p.message) for p in data.skipped] == [(3, True)]
    assert data.train["source_row"] == [2, 6]


def test_a_csv_cell_longer_than_python_s_default_limit_loads(tmp_path, tokenizer, cache_dir):
    long_answer = "word " * 40_000  # 200,000 characters; Python's csv stops at 131,072
    path = tmp_path / "long.csv"
    pd.DataFrame(
        [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": long_answer}]
    ).to_csv(path, index=False)
    assert _answers(load(path, tokenizer, cache_dir)) == ["a1", long_answer]


def test_a_column_named_twice_is_refused_not_half_read(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "twice.csv"
    path.write_text("instruction,output,output\nq1,first,second\n")
    with pytest.raises(DataError, match=r"twice\.csv, line 1: .*column 'output' twice"):
        load(path, tokenizer, cache_dir)
    frame = pd.DataFrame([["q1", "first", "second"]], columns=["instruction", "output", "output"])
    with pytest.raises(DataError, match=r"DataFrame: .*column 'output' twice"):
        load(frame, tokenizer, cache_dir)
    frame.to_excel(tmp_path / "twice.xlsx", index=False)  # pandas writes the names as given
    with pytest.raises(DataError, match=r"twice\.xlsx\[Sheet1\], row 1: .*column 'output' twice"):
        load(tmp_path / "twice.xlsx", tokenizer, cache_dir)
    path.write_text("instruction,output,,\nq1,a1,,\n")  # empty trailing columns are not names
    assert _answers(load(path, tokenizer, cache_dir)) == ["a1"]


def test_an_edit_that_keeps_size_and_time_is_not_served_from_the_cache(
    tmp_path, tokenizer, cache_dir
):
    """``cp -p``, ``rsync -t``, an unpacked archive or a coarse-time file system can leave an
    edited file with its old size and time written."""
    path = write_jsonl(tmp_path / "same.jsonl", GOOD)
    assert _answers(load(path, tokenizer, cache_dir))[:2] == ["a0", "a1"]
    before = os.stat(path)
    write_jsonl(path, [{**row, "output": row["output"].replace("a", "b")} for row in GOOD])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    assert _answers(load(path, tokenizer, cache_dir))[:2] == ["b0", "b1"]


@pytest.mark.parametrize("message", [{"content": "q"}, {"text": "q", "speaker": "user"}])
def test_a_message_without_a_role_names_the_role_field(tokenizer, cache_dir, message):
    row = {"messages": [message, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match=r"list, row 1, field 'messages\[0\]\.role': missing"):
        load([row], tokenizer, cache_dir)
    sharegpt = {"conversations": [{"value": "q"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(DataError, match=r"field 'conversations\[0\]\.from': missing"):
        load([sharegpt], tokenizer, cache_dir)


@pytest.mark.parametrize("indent", [None, 2])
def test_one_row_holding_a_list_of_objects_is_a_row_not_a_wrapper(
    tmp_path, tokenizer, cache_dir, indent
):
    row = {"instruction": "q", "output": "a", "sources": [{"url": "https://example.org"}]}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(row, indent=indent))
    data = load(path, tokenizer, cache_dir)
    assert _answers(data) == ["a"]
    assert json.loads(data.example(0).row["sources"]) == row["sources"]
    wrapper = {"source": "export", "data": [{"instruction": "q", "output": "wrapped"}]}
    path.write_text(json.dumps(wrapper, indent=indent))
    assert _answers(load(path, tokenizer, cache_dir)) == ["wrapped"]


def test_a_key_given_twice_in_a_json_line_is_refused(tmp_path, tokenizer, cache_dir):
    # json keeps the last value silently: the row trained on "second" with no problem listed
    path = tmp_path / "twice.jsonl"
    lines = [
        '{"question": "q1", "answer": "a1"}',
        '{"question": "q2", "answer": "x", "answer": "y"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"twice\.jsonl, line 2: the key 'answer' is given twice"):
        load(path, tokenizer, cache_dir)


def test_an_empty_wrapped_array_is_a_file_of_no_rows(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "empty.json"
    path.write_text('{"data": []}')
    with pytest.raises(DataError, match=r"empty\.json: empty \(no rows\)"):
        load(path, tokenizer, cache_dir)


def test_an_unclosed_quote_in_the_first_column_is_named_not_a_missing_cell(
    tmp_path, tokenizer, cache_dir
):
    # it blamed line 2 (a valid row) for a missing 'answer'
    path = tmp_path / "open.csv"
    path.write_text('question,answer\nq1,a1\n"unclosed quote,a2\nq3,a3\nq4,a4\n')
    with pytest.raises(DataError, match=r"open\.csv, line 3: a quoted cell is never closed"):
        load(path, tokenizer, cache_dir)


def test_a_row_of_another_format_says_so(tmp_path, tokenizer, cache_dir):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rows = [*[{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)], {"messages": chat}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    says = (
        r"mixed\.jsonl, line 4, field 'question': missing: this row's columns \['messages'\] "
        r"are of the chat format, but the file was read as qa"
    )
    with pytest.raises(DataError, match=says):
        load(path, tokenizer, cache_dir)


def test_a_sheet_s_blank_rows_saved_as_csv_are_skipped_as_in_the_sheet(
    tmp_path, tokenizer, cache_dir
):
    # Found by QA: Excel's CSV writes a blank row as ",,"; those became three empty
    # training examples that teach the model to answer with only its end token.
    path = tmp_path / "sheet.csv"
    path.write_text("question,answer,system\nq1,a1,\n,,\nq2,a2,s\n,,\n\n,,\n", newline="")
    data = load(path, tokenizer, cache_dir, validation=None)
    assert _answers(data) == ["a1", "a2"]
    assert data.train["source_row"] == [2, 4]  # numbered as the file's lines
    report = data.report()
    assert (report.rows, report.train) == (2, 2)
    assert not [p for p in report.problems if p.kind == "empty_field"]


@pytest.mark.parametrize("recorded", ["A1", "A1:B3"])
def test_a_workbook_that_records_too_small_a_size_loads_every_row(
    tmp_path, tokenizer, cache_dir, recorded
):
    # Found by QA: some exporters record the sheet's size as "A1"; read-only openpyxl trusts
    # it, so the workbook was "empty (no rows)", or lost 3 of 5 rows and a column in silence.
    import re
    import zipfile

    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["question", "answer", "system"])
    for i in range(5):
        book.active.append([f"q{i}", f"a{i}", f"s{i}"])
    book.save(tmp_path / "whole.xlsx")
    path = tmp_path / "small.xlsx"
    with zipfile.ZipFile(tmp_path / "whole.xlsx") as whole, zipfile.ZipFile(path, "w") as out:
        for part in whole.infolist():
            content = whole.read(part.filename)
            if part.filename.startswith("xl/worksheets/sheet"):
                content, n = re.subn(
                    rb'<dimension ref="[^"]*"', f'<dimension ref="{recorded}"'.encode(), content
                )
                assert n == 1
            out.writestr(part, content)
    data = load(path, tokenizer, cache_dir, validation=None)
    assert _answers(data) == [f"a{i}" for i in range(5)]
    assert "s4" in data.example(4).text  # the third column too


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_named_jsonl_is_read_as_its_rows(tmp_path, tokenizer, cache_dir, indent):
    # Found by QA: it was refused as "line 1: expected a JSON object, got list" (pretty
    # printed: "line ends before its JSON does"); a .json of JSON Lines was already read.
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    path = tmp_path / "array.jsonl"
    path.write_text(json.dumps(rows, indent=indent))
    data = load(path, tokenizer, cache_dir, validation=None)
    assert _answers(data) == ["a0", "a1", "a2", "a3"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows, indent=2)[:-3])
    with pytest.raises(DataError, match=r"^broken\.jsonl"):
        load(broken, tokenizer, cache_dir)


def test_a_header_line_repeated_as_a_row_is_named_not_trained(tmp_path, tokenizer, cache_dir):
    # Found by QA: two CSV files joined with cat trained "question" -> "answer" in silence.
    path = tmp_path / "joined.csv"
    path.write_text("question,answer\nq1,a1\nquestion,answer\nq2,a2\n")
    with pytest.raises(DataError, match=r"^joined\.csv, line 3: the header line again, as a row"):
        load(path, tokenizer, cache_dir)
    data = load(path, tokenizer, cache_dir, on_error="skip", validation=None)
    assert _answers(data) == ["a1", "a2"] and [p.row for p in data.skipped] == [3]
