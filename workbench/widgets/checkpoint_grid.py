"""CheckpointGrid: held-out examples x checkpoints, right or wrong per cell, export a step.

A view of a :class:`~workbench.evaluation.checkpoints.CheckpointEvaluation`. Rows are the
examples (a short line of each prompt), columns the base model and each checkpoint's step;
a cell is ``✓`` (green) or ``✗`` (red), ``▲`` where the row first became right and ``▼``
where it broke again. The header rows give each column's rows right, the rule's metric and
the reference loss; the best step's column is highlighted. A step dropdown says what that
step fixed and broke, and its button calls the ``on_export(step)`` the Session passes.

Every piece of data text is escaped; the grid is plain HTML with inline styles (no scripts,
nothing fetched), so the same markup is the static ``text/html`` snapshot of the display
bundle, and :meth:`CheckpointGrid.text` its ``text/plain``.

Examples:
    >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
    >>> result = CheckpointEvaluation((10, 20), ((False, True), (True, False)),
    ...                               base=(False, False), prompts=("<script>x</script>", "b"))
    >>> html = grid_html(result)
    >>> html.count("✓"), html.count("✗"), "<script>" in html, "&lt;script&gt;" in html
    (2, 4, False, True)
    >>> exported = []
    >>> panel = CheckpointGrid(result, on_export=exported.append)
    >>> panel.step_select.value = 20
    >>> panel.export_button.click()
    >>> exported, panel.detail_html.value
    ([20], 'step 20: 1/2 right; fixed #0; broke #1')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench._display import answer_text
from workbench.errors import WorkbenchError
from workbench.evaluation.checkpoints import BROKE, FIRST, short_input
from workbench.widgets._closing import close_panel
from workbench.widgets._html import escape, shorten, text_dir

__all__ = ["CheckpointGrid", "grid_html"]

_CELL = "padding:2px 8px;border:1px solid #ddd;text-align:center;"
_RIGHT = "background:#c8f0c8;color:#000;"
_WRONG = "background:#f8c8c8;color:#000;"
_NONE = "color:#999;"
_BEST = "background:#ffe58a;"
_BEST_EDGE = "border-left:2px solid #c9a000;border-right:2px solid #c9a000;"
_HEAD = "padding:2px 8px;border:1px solid #ddd;text-align:right;font-weight:normal;color:#444;"
_LEGEND = (
    f"{FIRST} first right &nbsp; {BROKE} broke again (right before, wrong here) &nbsp; "
    "green: right, red: wrong &nbsp; highlighted column: the step with the most rows right"
)


def _cell(right: bool | None, marker: str, tip: str, extra: str = "") -> str:
    if right is None:
        return f'<td style="{_CELL}{_NONE}{extra}" title="{escape(tip)}">-</td>'
    glyph, style = ("✓", _RIGHT) if right else ("✗", _WRONG)
    mark = f"<sup>{escape(marker)}</sup>" if marker else ""
    return f'<td style="{_CELL}{style}{extra}" title="{escape(tip)}">{glyph}{mark}</td>'


def _tip(result: Any, i: int, step: int | None, right: bool | None, marker: str) -> str:
    where = "base" if step is None else f"step {step}"
    state = "not evaluated" if right is None else ("right" if right else "wrong")
    notes = {FIRST: ", first right here", BROKE: ", broke again here"}.get(marker, "")
    answer = result.output(i, step)
    said = "" if answer is None else f"; answer: {shorten(answer_text(answer), 100)}"
    return f"#{i} at {where}: {state}{notes}{said}"


def grid_html(result: Any) -> str:
    """The grid as self-contained, escaped HTML (inline styles, no scripts, nothing fetched).

    Examples:
        >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
        >>> html = grid_html(CheckpointEvaluation((1, 2), ((False, True),), prompts=("Q",)))
        >>> html.count("✓"), html.count("✗"), html.count("▲"), "<script" in html
        (1, 1, 2, False)
    """
    best = result.marked_best
    steps = result.steps
    head = [f'<th style="{_HEAD}">#</th>', f'<th style="{_HEAD}text-align:left;">input</th>']
    head.append(f'<th style="{_HEAD}text-align:center;">base</th>')
    for s in steps:
        style = _HEAD + "text-align:center;" + (_BEST + _BEST_EDGE if s == best else "")
        label = f"step {s}" + ("<br><b>best</b>" if s == best else "")
        head.append(f'<th style="{style}">{label}</th>')
    parts = [f"<tr>{''.join(head)}</tr>"]
    for name, values in result.score_rows():
        cells = [f'<th colspan="2" style="{_HEAD}">{escape(name)}</th>']
        for k, value in enumerate(values):
            best_col = k > 0 and steps[k - 1] == best
            style = _HEAD + "text-align:center;" + (_BEST + _BEST_EDGE if best_col else "")
            cells.append(f'<td style="{style}">{escape(value)}</td>')
        parts.append(f"<tr>{''.join(cells)}</tr>")
    body = []
    for i, row in enumerate(result.grid):
        prompt_tip = f"prompt: {result.prompts[i]}\nreference: {result.references[i]}"
        shown = short_input(result.prompts[i])
        cells = [
            f'<td style="{_CELL}color:#666;">{i}</td>',
            f'<td{text_dir(shown)} style="{_CELL}text-align:start;white-space:nowrap;" '
            f'title="{escape(prompt_tip)}">{escape(shown)}</td>',
            _cell(result.base[i], "", _tip(result, i, None, result.base[i], "")),
        ]
        for j, ok in enumerate(row):
            marker = result.marker(i, j)
            edge = _BEST_EDGE if steps[j] == best else ""
            cells.append(_cell(ok, marker, _tip(result, i, steps[j], ok, marker), edge))
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = (
        '<table style="border-collapse:collapse;font-size:13px;">'
        f"<thead>{''.join(parts)}</thead><tbody>{''.join(body)}</tbody></table>"
    )
    return (
        '<div class="wb-checkpoint-grid" style="font-family:sans-serif;">'
        f'<div style="font-weight:bold;margin:4px 0;">{escape(result.header())}</div>'
        f'<div style="max-height:520px;overflow:auto;">{table}</div>'
        f'<div style="color:#555;font-size:12px;margin-top:4px;">{_LEGEND}</div></div>'
    )


class CheckpointGrid:
    """Notebook panel over a checkpoint sweep; the ipywidgets tree is ``.widget``.

    Args:
        result: A :class:`~workbench.evaluation.checkpoints.CheckpointEvaluation`.
        on_export: Called with the chosen step by the "Export this checkpoint" button
            (``None``: the button is disabled). The Session passes one; this panel never
            imports the Session.

    Examples:
        >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
        >>> panel = CheckpointGrid(CheckpointEvaluation((5, 10), ((True, True),)))
        >>> panel.step_select.options, panel.export_button.disabled
        ((('step 5 (best)', 5), ('step 10', 10)), True)
        >>> sorted(panel._repr_mimebundle_())[-2:]
        ['text/html', 'text/plain']
    """

    def __init__(self, result: Any, on_export: Callable[[int], Any] | None = None) -> None:
        self.result, self.on_export = result, on_export
        best = result.marked_best
        self.grid = w.HTML(grid_html(result))
        self.step_select = w.Dropdown(
            options=[(f"step {s}" + (" (best)" if s == best else ""), s) for s in result.steps],
            value=result.best_step,
            description="checkpoint",
        )
        self.export_button = w.Button(
            description="Export this checkpoint",
            disabled=on_export is None,
            tooltip="write the chosen checkpoint as a model folder"
            if on_export
            else "no session to export with: use session.export(path, checkpoint=step)",
        )
        self.detail_html, self.status_html = w.HTML(), w.HTML()
        self.widget = w.VBox(
            [
                self.grid,
                w.HBox([self.step_select, self.export_button]),
                self.detail_html,
                self.status_html,
            ]
        )
        self.step_select.observe(lambda change: self.select(change["new"]), names="value")
        self.export_button.on_click(lambda _button: self.export())
        self.select(result.best_step)

    def select(self, step: int) -> str:
        """Show what ``step`` fixed and broke (compared with the column before it).

        Examples:
            >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
            >>> panel = CheckpointGrid(CheckpointEvaluation((1, 2), ((True, False),)))
            >>> panel.select(2)
            'step 2: 0/1 right; fixed nothing; broke #0'
        """
        text = self.result.step_summary(step)
        self.detail_html.value = escape(text)
        return text

    def export(self, step: int | None = None) -> Any:
        """Call ``on_export`` with ``step`` (default: the dropdown's); show where it went.

        A workbench error (a full disk, say) is shown in the panel and ``None`` returned.

        Examples:
            >>> from workbench.errors import WriteError
            >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
            >>> def refuse(step):
            ...     raise WriteError(f"no room for <step {step}>")
            >>> panel = CheckpointGrid(CheckpointEvaluation((1,), ((True,),)), on_export=refuse)
            >>> panel.export() is None, panel.status_html.value
            (True, 'export failed: no room for &lt;step 1&gt;')
        """
        step = self.step_select.value if step is None else step
        if self.on_export is None:
            self.status_html.value = "no session to export with: use session.export(path, ...)"
            return None
        try:
            out = self.on_export(step)
        except WorkbenchError as err:
            self.status_html.value = escape(f"export failed: {err}")
            return None
        self.status_html.value = escape(f"exported step {step}" + (f" to {out}" if out else ""))
        return out

    def text(self) -> str:
        """The grid as text (the ``text/plain`` of the display bundle).

        Examples:
            >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
            >>> CheckpointGrid(CheckpointEvaluation((1,), ((True,),))).text().splitlines()[-2]
            '#0       -     ✓▲'
        """
        return self.result.text()

    def html(self) -> str:
        """The static grid (the ``text/html`` of the display bundle).

        Examples:
            >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
            >>> CheckpointGrid(CheckpointEvaluation((1,), ((True,),))).html().count("✓")
            1
        """
        return self.grid.value

    def close(self) -> None:
        """Close the panel's widgets, every one of them (a closed panel can be collected).

        Examples:
            >>> from workbench.evaluation.checkpoints import CheckpointEvaluation
            >>> panel = CheckpointGrid(CheckpointEvaluation((5, 10), ((True, True),)))
            >>> panel.close()
            >>> panel.widget.comm is None and panel.export_button.comm is None
            True
        """
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # Front ends without widgets show the static grid (html) or the text grid.
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.html()
        return bundle

    def __str__(self) -> str:
        return self.text()
