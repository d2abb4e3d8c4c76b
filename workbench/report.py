"""A standalone HTML report of a session: length histogram, loss curves, scores, examples.

The page embeds plotly.js once, so it opens offline. All dataset text and model outputs are
escaped.

Examples:
    >>> path = write_report(Path("/tmp/wb-doc-report.html"), title="empty")
    >>> "<html" in path.read_text()
    True
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from workbench._display import html_table
from workbench._io import atomic_write_text

__all__ = ["write_report"]


def _histogram_figure(report: Any):
    import plotly.graph_objects as go

    counts, edges = report.histogram
    centers = [(a + b) / 2 for a, b in pairwise(edges)]
    figure = go.Figure(go.Bar(x=centers, y=list(counts), name="examples"))
    figure.update_layout(
        title="Token length per example (prompt + answer)",
        xaxis_title="tokens",
        yaxis_title="examples",
        height=320,
    )
    return figure


def _loss_figure(history: Sequence[Any]):
    import plotly.graph_objects as go

    train = [r for r in history if _get(r, "kind") == "train" and _get(r, "loss") is not None]
    evals = [r for r in history if _get(r, "kind") == "eval" and _get(r, "eval_loss") is not None]
    figure = go.Figure()
    figure.add_scatter(
        x=[_get(r, "step") for r in train],
        y=[_get(r, "loss") for r in train],
        mode="lines",
        name="train loss",
    )
    figure.add_scatter(
        x=[_get(r, "step") for r in evals],
        y=[_get(r, "eval_loss") for r in evals],
        mode="lines+markers",
        name="eval loss",
    )
    figure.update_layout(title="Loss", xaxis_title="step", yaxis_title="loss", height=320)
    return figure


def _scores_figure(scores: dict):
    import plotly.graph_objects as go

    figure = go.Figure()
    names = list(scores)
    for column in ("base", "tuned"):
        values = [scores[m].get(column) for m in names]
        if any(v is not None for v in values):
            figure.add_bar(x=names, y=values, name=column)
    figure.update_layout(title="Scores: base vs tuned", barmode="group", height=320)
    return figure


def _get(record: Any, name: str):
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def _examples_table(rows: Iterable[Any], limit: int = 50) -> str:
    table = []
    for row in list(rows)[:limit]:
        outputs = _get(row, "outputs") or {}
        table.append(
            (
                _get(row, "index"),
                _get(row, "prompt"),
                _get(row, "reference"),
                outputs.get("base", ""),
                outputs.get("tuned", ""),
            )
        )
    return html_table(table, ("#", "input", "reference", "base", "tuned"))


STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }
table.workbench { border-collapse: collapse; font-size: 12px; }
table.workbench td, table.workbench th { border: 1px solid #ccc; padding: 4px; vertical-align: top;
  white-space: pre-wrap; }
pre { white-space: pre-wrap; margin: 0; }
</style>"""


def write_report(
    path: Path,
    title: str,
    data_report: Any = None,
    history: Sequence[Any] = (),
    evaluation: Any = None,
    summary: Sequence[str] = (),
) -> Path:
    """Write the report page atomically and return its path.

    Args:
        path: Where to write the ``.html`` file.
        title: Page heading (escaped).
        data_report: A :class:`~workbench.data.DataReport` (histogram and its text).
        history: Training log records (``kind``, ``step``, ``loss``, ``eval_loss``).
        evaluation: An :class:`~workbench.evaluation.Evaluation` (scores and rows).
        summary: Lines shown at the top (escaped).

    Examples:
        The title is escaped in both places it appears (``<title>`` and ``<h1>``):

        >>> page = write_report(Path("/tmp/wb-doc-report-page.html"), "<b>x</b>",
        ...                     summary=["a < b"]).read_text()
        >>> page.count("&lt;b&gt;x&lt;/b&gt;"), "<b>x</b>" in page, "<p>a &lt; b</p>" in page
        (2, False, True)
    """
    import plotly.io as pio

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>{STYLE}</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in summary]
    figures = []
    if data_report is not None:
        figures.append(_histogram_figure(data_report))
    if history:
        figures.append(_loss_figure(history))
    if evaluation is not None and evaluation.scores:
        figures.append(_scores_figure(evaluation.scores))
    for i, figure in enumerate(figures):
        parts.append(pio.to_html(figure, full_html=False, include_plotlyjs=(i == 0)))
    if data_report is not None:
        parts.append(f"<h2>Data</h2><pre>{html.escape(str(data_report))}</pre>")
    if evaluation is not None:
        parts.append(f"<h2>Evaluation</h2><pre>{html.escape(str(evaluation))}</pre>")
        parts.append(_examples_table(evaluation.rows))
    parts.append("</body></html>")
    return Path(atomic_write_text(path, "\n".join(parts)))
