"""DataInspector driven headless: the same handlers a click calls, then read widget state."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from data_fixtures import cache_dir, load, tokenizer

from workbench.data import PreparedData
from workbench.widgets.data_inspector import DataInspector

__all__ = ["cache_dir", "tokenizer"]

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def data(tokenizer, tmp_path_factory):
    rows = [
        {"question": f"What is number {i} in words, please tell me?", "answer": f"n{i}"}
        for i in range(45)
    ]
    rows[7] = {"question": f"Find {SCRIPT} here", "answer": XSS}
    rows.append(dict(rows[3]))  # a duplicate, to have a clickable problem
    return PreparedData.load(
        rows, tokenizer, validation=0.1, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )


def _body_rows(html):
    return html.count("<tr>") - 1  # minus the header row


def test_pages(data):
    ins = DataInspector(data, page_size=10)
    assert ins.page == 0 and _body_rows(ins.table_html.value) == 10
    assert ins.page_label.value == f"page 1 of 5 ({len(data.train)} rows)"
    ins.next_button.click()
    assert ins.page == 1 and "page 2 of 5" in ins.page_label.value
    ins.go_to_page(99)
    assert ins.page == 4 and ins.next_button.disabled
    assert _body_rows(ins.table_html.value) == len(data.train) - 40


def test_search_filters_rows(data):
    ins = DataInspector(data)
    ins.search_box.value = "number 1"  # continuous_update=False: fires on enter, like this
    expected = {
        i for i in range(len(data.train)) if "number 1" in data.train[i]["messages"][0]["content"]
    }
    assert ins.matches == len(expected) > 0 and ins.page == 0
    ins.search("no such text anywhere")
    assert ins.matches == 0 and "no matching rows" in ins.table_html.value


def test_split_toggle_shows_validation_rows(data):
    ins = DataInspector(data)
    ins.split_toggle.value = "validation"
    assert f"({len(data.validation)} rows)" in ins.page_label.value


def test_slider_reports_truncation_from_the_data(data):
    ins = DataInspector(data)
    longest = data.report().lengths["total"].max
    assert ins.cutoff_slider.max == longest and ins.cutoff_slider.value == longest
    ins.cutoff_slider.value = 20
    cut = data.truncation_at(20)
    assert ins.cutoff_label.value.startswith(
        f"cutoff 20: {cut['examples']} of {cut['total']} examples cut"
    )
    assert f"{cut['answers']} answers cut" in ins.cutoff_label.value
    assert ins.figure.layout.shapes[0].x0 == 20
    assert sum(ins.figure.data[0].y) == cut["total"]


def test_apply_calls_back_and_shows_the_new_data(data):
    calls = []

    def apply(n):
        calls.append(n)
        return data.with_max_length(n)

    ins = DataInspector(data, on_apply_max_length=apply)
    ins.cutoff_slider.value = 18
    ins.apply_button.click()
    assert calls == [18]
    assert ins.data.spec.max_length == 18 and ins.cutoff_slider.value == 18
    assert ins.report.count("truncated_answer") + ins.report.count("no_trained_tokens") > 0


def test_problem_click_shows_its_example(data):
    ins = DataInspector(data)
    report = data.report()
    index = next(i for i, p in enumerate(report.problems) if p.kind == "duplicate")
    problem = report.problems[index]
    ins.problem_kind.value = "duplicate"
    assert [v for _, v in ins.problems_select.options] == [index]
    ins.problems_select.value = index
    assert (ins.example.index, ins.example.split) == (problem.row, problem.split)
    assert f"example {problem.row} " in ins.example_html.value


def test_example_view_marks_tokens(data):
    ins = DataInspector(data)
    ins.example_index.value = 2
    ex = data.example(2)
    html = ins.example_html.value
    trained = sum(t.trained for t in ex.tokens)
    assert html.count('class="wb-tok trained') == trained + 1  # + the legend
    assert html.count('class="wb-tok masked') == len(ex.tokens) - trained + 2
    assert f'title="id {ex.tokens[0].id} · masked · special"' in html


def test_everything_is_escaped(data):
    ins = DataInspector(data)
    row = next(i for i in range(len(data.train)) if data.train[i]["messages"][1]["content"] == XSS)
    ins.search("find")
    ins.show_example(row, "train")
    for html in (ins.table_html.value, ins.example_html.value, ins.summary_html.value):
        assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in ins.table_html.value
    assert "&lt;script&gt;" in ins.table_html.value
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", ins.example_html.value.replace("↵<br>", "\n")))
    assert XSS in shown and SCRIPT in shown  # shown as text, token by token


def test_large_data_renders_one_page(tokenizer, cache_dir):
    rows = [{"text": f"row {i}"} for i in range(3000)]
    ins = DataInspector(load(rows, tokenizer, cache_dir), page_size=25)
    assert _body_rows(ins.table_html.value) == 25 and "of 120" in ins.page_label.value
