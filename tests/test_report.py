"""The offline HTML report: charts embedded once, untrusted text escaped."""

from __future__ import annotations

from workbench.evaluation.results import EvalRow, Evaluation
from workbench.report import write_report

HOSTILE = '<img src=x onerror="alert(1)">'


def test_report_embeds_charts_and_escapes_outputs(tmp_path):
    rows = (
        EvalRow(
            0,
            f"prompt {HOSTILE}",
            "ref",
            {"base": "b", "tuned": HOSTILE},
            {"exact_match": {"base": 0.0, "tuned": 1.0}},
        ),
    )
    scores = {"exact_match": {"base": 0.0, "tuned": 1.0, "base_ci": (0, 0), "tuned_ci": (1, 1)}}
    evaluation = Evaluation(scores, rows, {"columns": ["base", "tuned"]})
    history = [{"kind": "train", "step": s, "loss": 3.0 - s / 10} for s in range(1, 6)]
    history.append({"kind": "eval", "step": 5, "eval_loss": 2.6})
    page = write_report(
        tmp_path / "report.html",
        f"demo {HOSTILE}",
        history=history,
        evaluation=evaluation,
        summary=[f"note {HOSTILE}"],
    ).read_text()
    assert HOSTILE not in page
    escaped = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"
    assert page.count(escaped) == 5  # title, heading, note and two table cells
    assert page.count("plotly-graph-div") == 2  # loss curves and scores
    assert "window.Plotly" in page  # plotly.js embedded, so the page works offline
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, nothing left


def test_the_page_says_what_it_covers_and_gives_each_score_its_own_axis(tmp_path):
    # Perplexity in the thousands shared one axis with exact match in [0, 1] (flattened to
    # nothing), with no "lower is better"; and the page never said what it left out.
    rows = tuple(
        EvalRow(i, "p", "r", {"base": "b", "tuned": "t"},
                {"perplexity": {"base": 3759.0, "tuned": 1110.0},
                 "exact_match": {"base": 0.0, "tuned": 1.0}})
        for i in range(2)
    )  # fmt: skip
    scores = {
        "perplexity": {"base": 3759.0, "tuned": 1110.0, "higher_is_better": False,
                       "base_ci": (3000.0, 4500.0), "tuned_ci": (900.0, 1300.0)},
        "exact_match": {"base": 0.0, "tuned": 1.0, "higher_is_better": True},
    }  # fmt: skip
    evaluation = Evaluation(scores, rows, {"columns": ["base", "tuned"], "run": "run-003"})
    page = write_report(tmp_path / "r.html", "t", evaluation=evaluation).read_text()
    assert (
        "Covers: evaluation of run-003 (2 rows; base, tuned). Not included: data, training history."
    ) in page
    assert "perplexity (lower is better)" in page and "exact_match (higher is better)" in page
    from workbench.report import _scores_figure

    traces = _scores_figure(scores).data
    assert len({(t.xaxis, t.yaxis) for t in traces}) == 2  # one axis pair per score
    ppl = next(t for t in traces if t.name == "tuned" and list(t.y) == [1110.0])
    assert list(ppl.error_y.array) == [190.0] and list(ppl.error_y.arrayminus) == [210.0]
    empty = write_report(tmp_path / "e.html", "nothing").read_text()
    assert "Covers: nothing. Not included: data, training history, evaluation." in empty


def test_each_score_chart_starts_at_zero_and_shows_no_interval_it_lacks():
    # an all-zero exact match was drawn on an axis from -1 to 1; a missing interval (under
    # 10 rows) must not become an error bar
    from workbench.report import _scores_figure

    nan = float("nan")
    perplexity = {"base": 1500.0, "tuned": 1200.0, "base_ci": (1000.0, 2000.0)}
    figure = _scores_figure(
        {
            "exact_match": {"base": 0.0, "tuned": 0.0, "base_ci": (nan, nan)},
            "perplexity": {**perplexity, "higher_is_better": False},
        }
    )
    assert list(figure.layout.yaxis.range) == [0.0, 1.0]
    assert list(figure.layout.yaxis2.range) == [0.0, 2300.0]
    assert [bar.error_y.array for bar in figure.data] == [None, None, (500.0,), None]


def test_a_session_writes_its_own_report(tmp_path, tiny_model_dir):
    # only `python -m workbench demo` wrote report.html; a user's session had no way to
    import re

    import workbench as wb

    hostile = "<script>alert(1)</script>"
    rows = [{"question": f"{hostile} q{i}", "answer": f"a{i}"} for i in range(12)]
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(rows[:8], validation=rows[8:])
    run = s.train(max_steps=2, batch_size=4, wait=True)
    s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    page = s.report(title="My <b>run</b>")
    assert page == tmp_path / "s" / "report.html"
    text = page.read_text()
    assert "<h1>My &lt;b&gt;run&lt;/b&gt;</h1>" in text
    assert f"run: {run.run_dir.name}, finished at step 2 of 2" in text
    assert "exact_match" in text and "train 8, validation 4" in text
    assert hostile not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"<script[^>]+src=", text)  # plotly inlined: opens offline


def test_a_failed_run_s_report_says_why_and_a_bad_path_is_named(tmp_path, tiny_model_dir):
    import pytest
    from train_helpers import delete_under_a_writer

    import workbench as wb

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(rows, validation=None)
    run = s.train(max_steps=2000, batch_size=2, wait=False)
    while run.status.step < 1:
        run.wait(0.05)
    delete_under_a_writer(run.run_dir)  # the run folder deleted while it trains: it fails
    assert run.wait().state.value == "failed"
    text = s.report(tmp_path / "out").read_text()
    assert "why it failed: cannot write to the run folder" in text
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(wb.SpecError, match=r"a-file is a file, so .* cannot be a folder"):
        s.report(a_file / "sub" / "report.html")  # was FileExistsError from mkdir


def test_markup_in_score_run_and_column_names_is_shown_as_text_on_every_plotly_chart(tmp_path):
    # plotly reads <a href>, <b> and <span style> in titles, trace names and tick labels: a
    # metric named with a link put a phishing link on report.html's chart, and run or column
    # names from a handed folder did the same in compare and the eval panel.
    import json

    from workbench.evaluation import compare
    from workbench.report import _scores_figure
    from workbench.widgets.eval_panel import EvalPanel

    link = '<a href="https://evil.example">CLICK</a>'
    labels = []
    figure = _scores_figure({link: {"base": 0.0, "tuned": 1.0}})
    labels += [a.text for a in figure.layout.annotations]
    rows = (EvalRow(0, "p", "r", {"base": "b", "tuned": "t"}, {link: {"base": 0.0, "tuned": 1.0}}),)
    scores = {link: {"base": 0.0, "tuned": 1.0}}
    panel = EvalPanel(Evaluation(scores, rows, {"columns": ["base", "tuned"]}))
    labels += [a.text for a in panel.figure.layout.annotations]
    run = tmp_path / link.replace("/", "_")
    run.mkdir()
    (run / "history.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.0}))
    Evaluation(scores, rows, {"columns": ["base", "tuned"]}).save(run / "evaluations" / "e")
    chart = compare([run]).figure()
    labels += [a.text for a in chart.layout.annotations] + [t.name for t in chart.data]
    assert len(labels) >= 5 and not [label for label in labels if "<a" in label or "<" in label]
    assert '&lt;a href="https://evil.example"&gt;CLICK&lt;/a&gt; (higher is better)' in labels


def test_a_link_named_as_the_report_is_replaced_by_it_never_written_through(tmp_path):
    # A handed session folder with report.html -> ~/.bashrc: s.report() replaced the user's
    # file with the page.
    import workbench as wb

    victim = tmp_path / "notes.txt"
    victim.write_text("my notes")
    folder = tmp_path / "handed"
    folder.mkdir()
    (folder / "report.html").symlink_to(victim)
    (folder / "out").mkdir()
    (folder / "out" / "page.html").symlink_to(victim)
    s = wb.Session(folder, verbose=False)
    page = s.report()
    assert page == folder.resolve() / "report.html" and not page.is_symlink()
    assert "<!doctype html>" in page.read_text()
    named = s.report(folder / "out" / "page.html")
    assert not named.is_symlink() and named.parent == (folder / "out").resolve()
    assert victim.read_text() == "my notes"


def test_an_empty_answer_is_marked_not_a_blank_cell(tmp_path):
    # The report's examples showed an empty answer as an empty cell (or a bare mark).
    from workbench._display import EMPTY_ANSWER

    rows = (
        EvalRow(0, "p", "r", {"base": " \n", "tuned": "(empty answer)"},
                {"exact_match": {"base": 0.0, "tuned": 0.0}}),
        EvalRow(1, "p", "r", {"base": "", "tuned": "r"}),
    )  # fmt: skip
    scores = {"exact_match": {"base": 0.0, "tuned": 0.0}}
    evaluation = Evaluation(scores, rows, {"columns": ["base", "tuned"]})
    page = write_report(tmp_path / "r.html", "t", evaluation=evaluation).read_text()
    assert page.count(EMPTY_ANSWER) == 2  # the two empty answers; a model's own words are text
    assert f"</span> {EMPTY_ANSWER}</td>" in page  # marked wrong, and said empty
