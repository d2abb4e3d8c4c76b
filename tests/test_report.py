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
