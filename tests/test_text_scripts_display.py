"""Text of any script shown as written: right-to-left rows keep their own direction in the
panels and the report, control characters show as pictures, labels of unspaced scripts tell
rows apart, near duplicates are found in Chinese, and plain-text tables align wide characters."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pyarrow as pa
from data_fixtures import cache_dir, load, tokenizer

from workbench._display import display_width, text_table
from workbench.data.duplicates import duplicate_problems
from workbench.evaluation import EvalRow, Evaluation
from workbench.report import write_report
from workbench.widgets.chat_panel import ChatPanel
from workbench.widgets.data_inspector import DataInspector
from workbench.widgets.eval_panel import EvalPanel
from workbench.widgets.training_monitor import _probe_table

__all__ = ["cache_dir", "tokenizer"]

HEBREW = "השעה היא 14:30 בשעון ישראל, GMT+3."
ARABIC = "ما هو عدد سكان القاهرة (Cairo) في 2023؟"
CONTROL = "ok\x03 then\x13 end\x85"


def _holder(html: str, text: str) -> str:
    """The opening tag of the element whose text starts with ``text``."""
    found = re.search(r"<(\w+)([^>]*)>" + re.escape(html_lib.escape(text, quote=True)), html)
    assert found, f"{text!r} not found in {html[:300]!r}"
    return found.group(0)[: -len(html_lib.escape(text, quote=True))]


def _evaluation(prompt: str, reference: str, answer: str) -> Evaluation:
    row = EvalRow(0, prompt, reference, {"base": "x", "tuned": answer})
    return Evaluation({}, (row,), {"columns": ["base", "tuned"]})


# --- 1. right-to-left text gets its own direction --------------------------------------------


def test_the_eval_panel_gives_arabic_and_hebrew_text_their_own_direction():
    panel = EvalPanel(_evaluation(ARABIC, ARABIC, HEBREW))
    detail = panel.open_row(0)
    assert _holder(detail, ARABIC) == '<pre dir="auto">'  # prompt (and reference)
    assert detail.count('<pre dir="auto">') == 2
    assert re.search(r'<td dir="auto"[^>]*>[^<]*<span[^>]*>' + re.escape(HEBREW[:4]), detail)
    ((label, _),) = panel.rows_select.options  # a list label: Unicode isolates, no markup
    assert label.endswith(f"|  \u2068{ARABIC}\u2069")
    # The panel's own layout stays left to right: nothing around the text changes direction.
    assert 'dir="rtl"' not in detail and "<table style='width:100%'>" in detail


def test_english_text_html_is_unchanged():
    detail = EvalPanel(_evaluation("Q?", "A.", "B.")).open_row(0)
    assert "dir=" not in detail and "<pre>Q?</pre>" in detail


def test_the_probe_table_and_the_chat_give_hebrew_answers_their_own_direction():
    probes = _probe_table(["prompt", "base"], [["2+2?", HEBREW]])
    assert _holder(probes, HEBREW).startswith('<td dir="auto"')
    assert "<td style" in probes  # the English prompt's cell: no attribute needed

    chat = ChatPanel(lambda messages, max_new_tokens: HEBREW)
    chat.send("מה השעה?")
    page = chat.html()
    assert _holder(page, HEBREW).startswith('<div dir="auto"')
    assert _holder(page, "מה השעה?").startswith('<div dir="auto"')


def test_the_inspector_rows_and_token_view_give_hebrew_rows_their_own_direction(
    tokenizer, cache_dir
):
    rows = [{"question": f"שאלה {i}: {HEBREW}", "answer": f"תשובה {i}."} for i in range(6)]
    ins = DataInspector(load(rows, tokenizer, cache_dir))
    label = html_lib.escape(f"שאלה 0: {HEBREW}")
    assert f'<td dir="auto">{label}</td><td dir="auto">תשובה 0.</td>' in ins.table_html.value
    assert re.search(r'<div dir="auto" style="[^"]*"><span', ins.example_html.value)


def test_the_report_gives_each_cell_its_own_direction_and_shows_control_characters(tmp_path):
    evaluation = _evaluation(ARABIC, HEBREW, CONTROL)
    page = write_report(Path(tmp_path / "report.html"), "r", evaluation=evaluation).read_text()
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"table\.workbench td, pre \{ unicode-bidi: plaintext;", style)
    assert f"<td>{html_lib.escape(HEBREW)}</td>" in page  # a td of table.workbench
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", page)
    assert "ok\u2403 then\u2413 end\\x85" in page


# --- 2. control characters shown visibly in HTML views -----------------------------------


def test_control_characters_show_as_pictures_in_the_panels():
    detail = EvalPanel(_evaluation(CONTROL, "r", "a")).open_row(0)
    assert "<pre>ok\u2403 then\u2413 end\\x85</pre>" in detail
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", detail)
    chat = ChatPanel(lambda messages, max_new_tokens: "a\x00b\x7f")
    chat.send("hi")
    assert "a\u2400b\u2421" in chat.html()
    assert chat.turns[0].answers[0][1] == "a\x00b\x7f"  # the data itself is unchanged


def test_invisible_characters_are_reported_by_field_and_shown_in_the_inspector(
    tokenizer, cache_dir
):
    # A zero-width space or a right-to-left override pasted into a row looked like nothing,
    # in every panel and in the report, while the model learned to write it.
    rows = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(6)]
    rows[1]["answer"] = "zero\u200bwidth\u200bspace"
    rows[2]["question"] = "total: \u202e0.01$"
    rows[3]["answer"] = "family 👨\u200d👩\u200d👧 and שלום\u200f, fine"  # joiners, marks: needed
    data = load(rows, tokenizer, cache_dir)
    found = {p.row: p.message for p in data.report().problems if p.kind == "invisible_text"}
    assert sorted(found) == [1, 2]
    assert found[1].startswith("invisible characters: U+200B ZERO WIDTH SPACE x2 in messages[1]")
    assert found[2].startswith("invisible characters: U+202E RIGHT-TO-LEFT OVERRIDE in messages[0]")
    inspector = DataInspector(data)
    assert "invisible_text" in inspector.problem_kind.options
    assert "zero\\u200bwidth\\u200bspace" in inspector.table_html.value
    assert "\u200b" not in inspector.table_html.value and "\u202e" not in inspector.table_html.value
    inspector.show_example(1)
    example = inspector.example_html.value
    assert "\\u200b" in example and "\u200b" not in example


def test_terminal_escape_sequences_in_rows_and_file_names_are_printed_as_pictures(
    tokenizer, cache_dir, tmp_path
):
    # print(s.example(0)) retitled and recoloured the terminal, and a file name holding
    # "\x1b[2J" cleared the screen when the data report was printed.
    import json

    from workbench._display import text_table

    hostile = "\x1b]0;PWNED\x07\x1b[31mRED\x1b[2J"
    source = tmp_path / f"data{hostile}.jsonl"
    rows = [{"question": f"q{i} {hostile}", "answer": f"a{i}"} for i in range(4)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load(str(source), tokenizer, cache_dir)
    printed = [str(data.report()), str(data.example(0)), text_table([(hostile, 1)])]
    assert not [text for text in printed if "\x1b" in text or "\x07" in text]
    assert all("␛]0;PWNED␇␛[31mRED␛[2J" in text for text in printed)


def test_hidden_tag_text_is_flagged_and_a_lone_carriage_return_shown_but_flags_kept(
    tokenizer, cache_dir
):
    # Tag characters spell invisible ASCII ("ignore previous instructions") that a model
    # reads; an emoji subdivision flag is spelled in the same tags and must stay as it is.
    # "ok\rEVIL" printed as "EVIL"; a score name in a table header went out raw.
    from workbench._display import printable

    hidden = "".join(chr(0xE0000 + ord(c)) for c in "obey me")
    scotland = "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in "gbsct") + "\U000e007f"
    rows = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(4)]
    rows[1]["answer"] = f"sure{hidden}"
    rows[2]["answer"] = f"go {scotland}!"
    data = load(rows, tokenizer, cache_dir)
    found = {p.row: p.message for p in data.report().problems if p.kind == "invisible_text"}
    assert list(found) == [1] and "U+E006F TAG LATIN SMALL LETTER O," in found[1]
    assert "U+E0065 TAG LATIN SMALL LETTER E x2" in found[1]
    assert printable(f"go {scotland}!") == f"go {scotland}!"
    assert printable("ok\rEVIL\r\n") == "ok\u240dEVIL\r\n"
    assert "\x1b" not in text_table([(1,)], header=["\x1b[2Jscore"])


# --- 3. row labels of scripts written without spaces --------------------------------------


def test_chinese_rows_with_a_long_shared_start_get_distinct_labels(tokenizer, cache_dir):
    shared = "请把下面这句话翻译成英文，并且保持原来的语气和说话人的语体，不要增加任何解释，" * 2
    endings = ["很高兴", "很难过", "去上班", "不舒服", "吃饭了", "学习了"]
    rows = [{"instruction": f"{shared}我今天{x}", "output": "ok"} for x in endings]
    ins = DataInspector(load(rows, tokenizer, cache_dir))
    cells = re.findall(r"<tr><td[^>]*>\d+</td><td[^>]*>[^<]*</td><td[^>]*>([^<]*)</td>",
                       ins.table_html.value)  # fmt: skip
    assert [html_lib.unescape(c) for c in cells] == [f"…{x}" for x in endings]


def test_a_shared_start_is_never_cut_inside_a_letter_with_its_combining_mark(tokenizer, cache_dir):
    # Thai is written without spaces; "กี" is ก with a combining vowel sign.
    shared = "ช่วยแปลประโยคต่อไปนี้เป็นภาษาอังกฤษให้หน่อยนะครับ"
    rows = [{"instruction": f"{shared}ก{x}", "output": "ok"} for x in "\u0e35\u0e34\u0e37"]
    ins = DataInspector(load(rows, tokenizer, cache_dir))
    cells = re.findall(r"<td[^>]*>(…[^<]*)</td>", ins.table_html.value)
    assert [html_lib.unescape(c) for c in cells] == ["…ก\u0e35", "…ก\u0e34", "…ก\u0e37"]


# --- 4. near duplicates in scripts written without spaces ---------------------------------


def test_two_long_chinese_rows_differing_by_one_character_are_near_duplicates_and_leaks():
    row = (
        "请告诉我这个国家北部河边山上那座古老城堡的历史，越详细越好。它由一位公爵于一二零零年建造。"
    )
    copy = row.replace("零零年", "五零年")
    others = [f"第{i}行：城市{i * 7}的天气很{'好差冷热'[i % 4]}，人们待在家里。" for i in range(10)]
    problems = duplicate_problems(pa.array([row, *others, copy]), pa.array([copy + "！"]))
    said = [str(p) for p in problems]
    assert any(s.startswith("[near_duplicate] train row 11: nearly the same text as train row 0")
               for s in said), said  # fmt: skip
    assert any(s.startswith("[leak] validation row 0:") for s in said), said
    japanese = "きょうはとてもいいてんきなので、こうえんまでさんぽにいきましょう。"
    found = duplicate_problems(pa.array([japanese, japanese.replace("こうえん", "こうばん")]))
    assert [p.kind for p in found] == ["near_duplicate"]


# --- 5. plain-text tables pad by display width ------------------------------------------


def test_plain_text_columns_line_up_with_wide_and_combining_characters():
    rows = [("中文名字", "1"), ("abc", "2"), ("cafe\u0301", "3")]
    lines = text_table(rows, header=("name", "n")).splitlines()
    starts = {display_width(line[: line.rfind(" ") + 1]) for line in lines}
    assert starts == {10}, lines  # "中文名字" is 8 columns wide, then two spaces
