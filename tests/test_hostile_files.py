"""Files made to hurt the loader: a gigabyte of one cell in a 1 MB .gz or .xlsx, a workbook
whose XML declares entities. Each is refused by name (file, row, field) before it fills the
memory, and a refused load caches nothing. The limits are lowered here, so the files stay
small: what is tested is where they are checked and what the message says."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import pytest
from data_fixtures import cache_dir, load, tokenizer

from workbench.data import loading, sources
from workbench.errors import DataError

__all__ = ["cache_dir", "tokenizer"]  # fixtures used by name

GOOD = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
SHEET = "xl/worksheets/sheet1.xml"
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
)


def _no_arrow_files(tmp_path):
    return not list((tmp_path / "arrow-cache").rglob("*.arrow"))


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
    return path


def _cell(ref, text):
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def _row(number, first, second):
    return f'<row r="{number}">{_cell(f"A{number}", first)}{_cell(f"B{number}", second)}</row>'


def _workbook(path, sheet_xml):
    """A workbook of one sheet whose XML is ``sheet_xml``, as written by hand."""
    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["instruction", "output"])
    made = io.BytesIO()
    book.save(made)
    with zipfile.ZipFile(made) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for part in src.infolist():
            out.writestr(part, sheet_xml if part.filename == SHEET else src.read(part.filename))
    return path


@pytest.mark.parametrize("batched", [True, False])
def test_a_field_over_the_limit_names_the_file_row_and_field(
    tmp_path, tokenizer, cache_dir, monkeypatch, batched
):
    monkeypatch.setattr(loading, "MAX_FIELD_BYTES", 2**20)
    huge = {"instruction": "q", "output": "A" * (2 * 2**20)}  # 2 KB once compressed
    path = _write_gz(tmp_path / "big.jsonl.gz", [json.dumps(r) for r in [*GOOD[:2], huge, *GOOD]])
    expected = (
        r"big\.jsonl\.gz, line 3, field 'output': a text of 2.00 MiB, longer than the 1.00 MiB one "
        r"field may hold \(far more than any model reads at once\)"
    )
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir, batched=batched)
    assert _no_arrow_files(tmp_path)
    data = load(path, tokenizer, cache_dir, batched=batched, on_error="skip")
    assert len(data.train) == 6
    assert [(p.kind, p.row) for p in data.skipped] == [("malformed", 3)]
    assert "field 'output': a text of 2.00 MiB" in data.skipped[0].message


def test_a_chat_turn_over_the_limit_is_named_by_its_turn(
    tmp_path, tokenizer, cache_dir, monkeypatch
):
    monkeypatch.setattr(loading, "MAX_FIELD_BYTES", 2**16)
    user = {"role": "user", "content": "hi"}
    short, long = ({"role": "assistant", "content": text} for text in ("yo", "B" * 2**17))
    rows = [{"messages": [user, short]}, {"messages": [user, long]}]
    path = _write_gz(tmp_path / "chat.jsonl.gz", [json.dumps(r) for r in rows])
    expected = r"chat\.jsonl\.gz, line 2, field 'messages\[1\]\.content': a text of 128\.00 KiB"
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir)
    assert _no_arrow_files(tmp_path)


def test_a_workbook_cell_over_the_limit_names_its_sheet_row(
    tmp_path, tokenizer, cache_dir, monkeypatch
):
    monkeypatch.setattr(loading, "MAX_FIELD_BYTES", 16 * 1024)
    rows = _row(1, "instruction", "output") + _row(2, "q", "a") + _row(3, "C" * 20_000, "a")
    path = _workbook(tmp_path / "book.xlsx", f"{HEAD}<sheetData>{rows}</sheetData></worksheet>")
    expected = (
        r"book\.xlsx, row 3, field 'instruction': a text of 19\.53 KiB, longer than the "
        r"16\.00 KiB one field may hold"
    )
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir)
    assert _no_arrow_files(tmp_path)


def test_a_line_over_the_limit_is_refused_unread(tmp_path, tokenizer, cache_dir, monkeypatch):
    # the line is never held whole: a gigabyte of one line in a 1 MB .gz stays on disk
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 2**20)
    huge = json.dumps({"instruction": "q", "output": "A" * (3 * 2**20)})
    path = _write_gz(tmp_path / "long.jsonl.gz", [json.dumps(GOOD[0]), huge, json.dumps(GOOD[1])])
    expected = r"long\.jsonl\.gz, line 2: a line longer than 1\.00 MiB, the most one row may hold"
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir)
    assert _no_arrow_files(tmp_path)
    data = load(path, tokenizer, cache_dir, on_error="skip")
    assert [m[-1]["content"] for m in data.train["messages"]] == ["a0", "a1"]
    assert [(p.kind, p.row) for p in data.skipped] == [("malformed", 2)]


def test_a_workbook_that_inflates_like_a_zip_bomb_is_refused(tmp_path, tokenizer, cache_dir):
    cell = "A" * (2 * 2**20)  # 2 MiB of one cell, about 2 KB compressed
    rows = _row(1, "instruction", "output") + _row(2, cell, "a")
    path = _workbook(tmp_path / "bomb.xlsx", f"{HEAD}<sheetData>{rows}</sheetData></worksheet>")
    expected = (
        r"bomb\.xlsx: not a readable Excel workbook \(its part 'xl/worksheets/sheet1\.xml' "
        r"inflates from [\d.]+ KiB to 2\.00 MiB, over 100 times: a zip bomb"
    )
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir)
    assert _no_arrow_files(tmp_path)


@pytest.mark.parametrize(
    ("doctype", "text", "refused"),
    [
        ('<!DOCTYPE x [<!ENTITY s SYSTEM "file:///etc/hostname">]>', "q&s;", "EntitiesForbidden"),
        ('<!DOCTYPE x [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;">]>', "&b;", "EntitiesForbidden"),
    ],
    ids=["external-entity", "entity-expansion"],
)
def test_a_workbook_whose_xml_declares_entities_is_refused_by_name(
    tmp_path, tokenizer, cache_dir, doctype, text, refused
):
    rows = _row(1, "instruction", "output") + _row(2, text, "a")
    xml = HEAD.replace("<worksheet", f"{doctype}<worksheet")
    path = _workbook(tmp_path / "entities.xlsx", f"{xml}<sheetData>{rows}</sheetData></worksheet>")
    expected = (
        rf"^entities\.xlsx: not a readable Excel workbook \(its XML declares entities or a DTD "
        rf"\({refused}\), which Excel never writes .*: refused\); save it again as \.xlsx or CSV$"
    )
    with pytest.raises(DataError, match=expected):
        load(path, tokenizer, cache_dir)
