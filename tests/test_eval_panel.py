"""EvalPanel and ABRating driven headless: sorting, side by side, tokens, rating buttons."""

from __future__ import annotations

import json

import pytest

from tests.eval_fixtures import XSS, handmade_evaluation
from workbench.evaluation import Evaluation
from workbench.widgets._html import pre
from workbench.widgets.eval_panel import EvalPanel, diff_html

ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


@pytest.fixture
def saved(tmp_path):
    ev = handmade_evaluation()
    probes = ({"step": 10, "prompt": XSS, "output": "tuned " + XSS, "base": "b"},)
    ev = Evaluation(ev.scores, ev.rows, ev.settings, None, probes)
    return ev.save(tmp_path / "ev")


def test_sort_order_by_gain_and_loss(saved):
    panel = EvalPanel(saved)
    assert panel.order == [0, 1, 2]  # exact_match gain +1, 0, -1
    assert panel.sort_by("exact_match", descending=False) == [2, 1, 0]
    panel.sort_key.value = "loss"
    panel.descending.value = True
    assert panel.order == [0, 1, 2]  # loss drop 2.5, 0.5, -1.0
    assert panel.rows_select.options[0][0].startswith("#0  gain +2.5")


def test_selecting_a_row_opens_side_by_side_escaped(saved):
    panel = EvalPanel(saved)
    panel.rows_select.value = 1
    html = panel.detail_html.value
    assert panel.selected == 1
    assert ESCAPED in html and XSS not in html
    assert "blue sky" in html and "<img" not in html
    panel.open_row(2)
    assert 'line-through;">green' in panel.detail_html.value  # base word marked deleted
    assert 'background:#c8f0c8;">gren' in panel.detail_html.value  # tuned word inserted


def test_scores_chart_tokens_and_probes(saved):
    panel = EvalPanel(saved)
    assert [bar.name for bar in panel.figure.data] == ["base", "tuned"]
    assert list(panel.figure.data[1].error_y.array) == pytest.approx([2 / 3])
    html = panel.show_tokens(0, "tuned")
    assert ESCAPED in html and "rgba(220,40,40,1.00)" in html and "rgba(220,40,40,0.02)" in html
    panel.token_column.value = "base"
    assert 'title="loss 5.000"' in panel.tokens_html.value
    assert ESCAPED in panel.probes_html.value and XSS not in panel.probes_html.value
    assert XSS not in panel.scores_html.value


def test_rating_buttons_write_lines_and_update_summary(saved):
    panel = EvalPanel(saved)
    ab = panel.ab
    first = ab.current_row
    assert XSS not in ab.a_html.value + ab.b_html.value + ab.prompt_html.value
    ab.score.value, ab.comment.value = 5, "<b>nice</b>"
    ab.a_button.click()
    ab.tie_button.click()
    lines = saved.ratings_path.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["row"] == first and record["score"] == 5 and record["comment"] == "<b>nice</b>"
    assert "of 2 rated" in panel.ratings_html.value
    ab.b_button.click()
    assert ab.a_button.disabled and ab.progress.value == "3 of 3 rated"
    assert saved.ratings_summary().n == 3


def test_panel_after_reload_and_diff_escaping(saved):
    panel = Evaluation.load(saved.path).panel()
    assert panel.order and panel.show_tokens(2, "base")
    left, right = diff_html("<a> same", "<b> same")
    assert "&lt;a&gt;" in left and "&lt;b&gt;" in right and "<a>" not in left + right


def test_a_score_without_an_interval_sends_no_nan_to_the_browser(tmp_path):
    # Under 10 rows there is no interval (NaN): the panel sent NaN in the figure, which is
    # not JSON, and the kernel printed "Message serialization failed" into the user's cell.
    nan = float("nan")
    ev = handmade_evaluation()
    for entry in ev.scores.values():
        entry["base_ci"] = entry["tuned_ci"] = (nan, nan)
    ev.scores["perplexity"] = {"base": nan, "tuned": 12.0, "higher_is_better": False}
    panel = EvalPanel(ev.save(tmp_path / "ev"))
    json.dumps(panel.figure.to_dict(), allow_nan=False)  # raises on NaN
    bars = {(bar.xaxis, bar.name): bar for bar in panel.figure.data}
    assert bars[("x", "tuned")].error_y.visible is False
    assert bars[("x2", "tuned")].y == (12.0,) and bars[("x2", "base")].y == (None,)
    assert "no 95% interval" in bars[("x", "tuned")].hovertemplate


def test_the_panel_counts_the_ratings_the_evaluation_counts(saved):
    # A rating of a row the evaluation does not hold (a hand-edited file) was counted by the
    # panel's human-eval tab, and by nothing else (print, the report, the A/B progress).
    panel = EvalPanel(saved)
    panel.ab.a_button.click()
    with saved.ratings_path.open("a") as ratings:
        ratings.write(json.dumps({"row": 99999, "a_is": "tuned", "verdict": "A"}) + "\n")
    panel.refresh_ratings()
    assert saved.ratings_summary().n == 1
    assert panel.ratings_html.value == pre(str(saved.ratings_summary()))


MARKER = 'class="wb-empty-answer"'


def empty_answer_evaluation(tmp_path) -> Evaluation:
    """Row 0: the tuned model said nothing, the base only whitespace; row 1 answered
    "(empty answer)" in words, which must not look like the marker."""
    from workbench.evaluation import EvalRow

    rows = (
        EvalRow(0, "Q0", "red", {"base": " \n\t", "tuned": ""}),
        EvalRow(1, "Q1", "blue", {"base": "(empty answer)", "tuned": XSS}),
    )
    probes = ({"step": 5, "prompt": "P", "output": "", "base": None},)
    ev = Evaluation({}, rows, {"columns": ["base", "tuned"]}, None, probes)
    return ev.save(tmp_path / "ev")


def test_an_empty_answer_shows_as_marked_in_every_view_of_the_answers(tmp_path):
    # An empty answer was a blank cell, the same as an answer never generated: in the
    # examples tab, the A/B rater, the probes tab and the saved notebook's snapshot alike.
    from workbench.widgets._snapshot import snapshot_bundle

    ev = empty_answer_evaluation(tmp_path)
    panel = EvalPanel(ev)
    empty, worded = panel.open_row(0), panel.open_row(1)
    assert empty.count(MARKER) == 2 and ">(empty answer)</i>" in empty
    assert MARKER not in worded and "(empty answer)" in worded  # the model's words, plain
    assert ESCAPED in worded and XSS not in worded
    ab = panel.ab
    shown = {}
    while ab.current_row is not None:
        shown[ab.current_row] = ab.a_html.value + ab.b_html.value
        ab.tie_button.click()
    assert shown[0].count(MARKER) == 2 and MARKER not in shown[1]
    assert ev.ratings_summary().ties == 2  # a pair with an empty answer is rated as any other
    assert panel.probes_html.value.count(MARKER) == 1  # the output; the base was not recorded
    html = snapshot_bundle(panel)["text/html"]
    assert html.count(MARKER) == 2 and ESCAPED in html and XSS not in html


def test_an_empty_answer_shows_as_marked_while_the_evaluation_runs():
    from workbench.evaluation.background import EvaluationRun
    from workbench.events import EvalProgress
    from workbench.widgets.eval_progress import EvalProgressPanel

    def work(emit, cancelled):
        emit("eval_progress", EvalProgress("base", 2, 3, ("", "<b>x</b>")))
        raise ValueError("stopped here")

    rows = [{"prompt": f"Q{i}", "reference": "A"} for i in range(3)]
    ev = EvaluationRun(work, rows, ("base", "tuned"))
    ev.cancel()
    panel = EvalProgressPanel(ev)
    html = panel.rows_html.value
    assert html.count(MARKER) == 1 and "&lt;b&gt;x&lt;/b&gt;" in html
    assert html.count("…</td>") == 2  # the tuned column, not generated: no marker
    assert "#0  base: (empty answer)" in panel.text()  # the plain-text fallback says it too
