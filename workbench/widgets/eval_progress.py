"""EvalProgressPanel: a running evaluation's progress, time left and rows as they are answered.

A view of an :class:`~workbench.evaluation.background.EvaluationRun`: a progress bar
(``base 8/16, tuned 3/16``), a status line with the time elapsed and left, a Cancel button
(one ``cancel()`` call), and a table in which each row appears as soon as a column has
answered it (the latest ``max_rows`` rows). When the evaluation finishes, the finished
:class:`~workbench.widgets.EvalPanel` takes its place; a failure or a cancel is said in the
status line and the rows answered so far stay. Every piece of data text is escaped.

The worker never touches this panel: the panel subscribes to the handle's ``eval_progress``
events and its end, and its renders go to the kernel's event loop when there is one
(batched, a few per second at most); headless (tests, scripts) they run at once.

Examples:
    A handle whose work needs no model (``Session.evaluate(..., wait=False)`` makes real ones):

    >>> from workbench.events import EvalProgress
    >>> from workbench.evaluation import EvalRow, Evaluation
    >>> from workbench.evaluation.background import EvaluationRun
    >>> def work(emit, cancelled):
    ...     emit("eval_progress", EvalProgress("tuned", 1, 2, ("<b>red</b>",)))
    ...     raise ValueError("metric 'strict' raised on example 1")
    >>> ev = EvaluationRun(work, [{"prompt": "sky?", "reference": "blue"},
    ...                           {"prompt": "grass?", "reference": "green"}], ("tuned",))
    >>> ev.cancel()
    'failed'
    >>> panel = EvalProgressPanel(ev)
    >>> panel.bar.value, panel.bar.max, panel.row_count()
    (1, 2, 1)
    >>> "&lt;b&gt;red&lt;/b&gt;" in panel.rows_html.value
    True
    >>> print(panel.status_text())  # doctest: +ELLIPSIS
    failed at tuned 1/2 after 0:00:...: ValueError: metric 'strict' raised on example 1
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import ipywidgets as w

from workbench._display import answer_text, printable
from workbench.events import EVAL_PROGRESS
from workbench.widgets._closing import close_panel
from workbench.widgets._html import escape, shorten, table

__all__ = ["EvalProgressPanel"]

MIN_INTERVAL = 0.25  # seconds between renders: a few updates per second at most
MAX_ROWS = 50  # rows shown in the table: the latest answered ones
PROMPT_TAIL = 120  # characters of a prompt shown (its end: where the question is)
_STYLE = {"running": "", "finished": "success", "failed": "danger", "cancelled": "warning"}
_COLOUR = {"failed": "#b00020", "cancelled": "#8a6d00"}


def _tail(text: str, limit: int = PROMPT_TAIL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class EvalProgressPanel:
    """Progress bar, status, Cancel button and the rows answered so far of a running evaluation.

    Args:
        evaluation_run: The :class:`~workbench.evaluation.background.EvaluationRun`.
        min_interval: Seconds between renders.
        max_rows: Rows shown in the table (the latest answered ones, in index order).

    Attributes:
        bar: The ``IntProgress`` (answers generated over all columns).
        status_html: The status line (progress, elapsed, time left; or why it ended).
        cancel_button: Calls ``evaluation_run.cancel(wait=False)``.
        rows_html: The table of rows answered so far.
        result_panel: The :class:`~workbench.widgets.EvalPanel` once finished, else ``None``.
        widget: The whole panel (the EvalPanel's widget alone once finished).

    Examples:
        Once the evaluation has finished, the panel is the EvalPanel:

        >>> from workbench.evaluation import EvalRow, Evaluation
        >>> from workbench.evaluation.background import EvaluationRun
        >>> ev = EvaluationRun(
        ...     lambda emit, cancelled: Evaluation({}, (EvalRow(0, "Q", "A", {"tuned": "A"}),), {}),
        ...     [{"prompt": "Q", "reference": "A"}], ("tuned",))
        >>> _ = ev.wait()
        >>> panel = EvalProgressPanel(ev)
        >>> panel.widget.children == (panel.result_panel.widget,), panel.status_text()[:8]
        (True, 'finished')
    """

    def __init__(
        self, evaluation_run: Any, min_interval: float = MIN_INTERVAL, max_rows: int = MAX_ROWS
    ) -> None:
        self.run, self.min_interval, self.max_rows = evaluation_run, min_interval, max_rows
        self.result_panel: Any = None
        self._lock = threading.Lock()  # guards the render timer
        self._render_lock = threading.RLock()  # one render at a time, each from a new snapshot
        self._last_render, self._timer = 0.0, None
        self._snapshot = evaluation_run.snapshot()
        self.bar = w.IntProgress(
            value=0, min=0, max=1, description="evaluating", style={"description_width": "initial"}
        )
        self.status_html = w.HTML()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="danger")
        self.cancel_button.on_click(self._on_cancel)
        self.rows_html = w.HTML()
        self.controls = w.HBox([self.bar, self.cancel_button])
        self.widget = w.VBox([self.controls, self.status_html, self.rows_html])
        self.widget.add_class("wb-eval-progress")  # a stable hook for browser tests
        self._unsubscribe = [evaluation_run.events.on(EVAL_PROGRESS, self._on_progress)]
        self.refresh()
        evaluation_run.add_done_callback(self._on_end)

    # -- events (any thread): schedule a render -------------------------------------------
    def _on_progress(self, _payload: Any) -> None:
        self._schedule()
        from workbench.widgets import _snapshot

        try:  # a notebook saved mid-evaluation showed "0 of N" from when it was displayed
            _snapshot.save_snapshot(self, every=_snapshot.SNAPSHOT_EVERY)
        except Exception:  # the live panel and the evaluation go on without a snapshot
            logging.getLogger(__name__).exception("could not update the evaluation's snapshot")

    def _on_end(self, _run: Any) -> None:
        self._dispatch(self.refresh)
        from workbench.widgets._snapshot import finalise

        finalise(self)  # its displays become the static snapshot (scores, or why it ended)

    def _on_cancel(self, _button: Any) -> None:
        self.run.cancel(wait=False)
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"

    def _schedule(self) -> None:
        with self._lock:
            wait = self.min_interval - (time.monotonic() - self._last_render)
            if wait > 0 and self._timer is not None:
                return  # a render is already due: it will show this change too
            if wait > 0:
                self._timer = threading.Timer(wait, self._dispatch, (self.refresh,))
                self._timer.daemon = True
                self._timer.start()
                return
        self._dispatch(self.refresh)

    @staticmethod
    def _dispatch(fn: Any) -> None:
        """Run ``fn`` on the kernel's event loop if there is one (the main thread), else now."""
        from workbench._display import notebook_kernel

        io_loop = getattr(notebook_kernel(), "io_loop", None)
        if io_loop is not None and threading.current_thread() is not threading.main_thread():
            io_loop.add_callback(fn)
        else:
            fn()

    # -- rendering ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Render the handle's progress and rows now (or the EvalPanel once finished).

        Examples:
            The module example renders a failed evaluation; rendering again changes nothing:

            >>> from workbench.evaluation.background import EvaluationRun
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> panel = EvalProgressPanel(ev)
            >>> before = panel.rows_html.value
            >>> panel.refresh()
            >>> panel.rows_html.value == before, panel.bar.bar_style
            (True, 'danger')
        """
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._last_render = None, time.monotonic()
        with self._render_lock:  # headless, renders come from several threads
            self._render(self.run.snapshot())

    def _render(self, snap: Any) -> None:
        self._snapshot = snap
        if snap.state == "finished":
            self._show_result(snap.evaluation)
            return
        self.bar.max = max(snap.planned, 1)
        self.bar.value = snap.done
        self.bar.bar_style = _STYLE[snap.state]
        self.bar.description = snap.progress_text() if snap.state == "running" else snap.state
        colour = _COLOUR.get(snap.state)
        style = f' style="color:{colour}"' if colour else ""
        self.status_html.value = (
            f'<div class="wb-eval-status"{style}>{escape(snap.status_text())}</div>'
        )
        self.rows_html.value = self._rows_html(snap)
        if snap.state != "running":
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancel"

    def _show_result(self, evaluation: Any) -> None:
        if self.result_panel is not None:
            return
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.result_panel = evaluation.panel()
        self.widget.children = (self.result_panel.widget,)

    def _window(self, snap: Any) -> tuple[int, int]:
        """The index range shown: ``max_rows`` rows ending at the latest answered one."""
        start = max(0, snap.latest - self.max_rows + 1)
        return start, start + self.max_rows

    def _rows_html(self, snap: Any) -> str:
        if not snap.rows:
            return '<div class="wb-eval-rows"><i>no answers yet</i></div>'
        start, end = self._window(snap)
        shown = [r for r in snap.rows if start <= r["index"] < end]
        columns = list(snap.progress)
        body = [
            [
                r["index"],
                _tail(r["prompt"]),
                shorten(r["reference"]),
                *[shorten(r[c]) if c in r else "…" for c in columns],
            ]
            for r in shown
        ]
        note = f"{len(snap.rows)} of {snap.total} rows answered"
        if len(shown) < len(snap.rows):
            note += f"; showing #{shown[0]['index']} to #{shown[-1]['index']}"
        headers = ["#", "prompt", "reference", *columns]
        shown_table = table(headers, body, answers=range(3, len(headers)))  # "" marked, not blank
        return f'<div class="wb-eval-rows"><div>{escape(note)}</div>{shown_table}</div>'

    def row_count(self) -> int:
        """Rows in the table as shown now.

        Examples:
            >>> from workbench.evaluation.background import EvaluationRun
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> EvalProgressPanel(ev).row_count()  # nothing was answered
            0
        """
        return len(re.findall(r"<tr>", self.rows_html.value.split("<tbody>", 1)[-1]))

    def status_text(self) -> str:
        """The status line as text.

        Examples:
            >>> from workbench.evaluation.background import EvaluationRun
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> EvalProgressPanel(ev).status_text()  # doctest: +ELLIPSIS
            'failed at tuned 0/1 after 0:00:...: ZeroDivisionError: division by zero'
        """
        return self._snapshot.status_text()

    def text(self, last: int = 5) -> str:
        """Plain-text fallback: the status line and the last rows answered.

        Examples:
            >>> from workbench.evaluation.background import EvaluationRun
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> EvalProgressPanel(ev).text()  # doctest: +ELLIPSIS
            'failed at tuned 0/1 after 0:00:...: ZeroDivisionError: division by zero'
        """
        snap = self._snapshot
        if snap.state == "finished":
            return str(snap.evaluation)
        lines = [snap.status_text()]
        for r in snap.rows[-last:]:
            answers = "  ".join(
                f"{c}: {shorten(answer_text(r[c]), 60)}" for c in snap.progress if c in r
            )
            lines.append(f"#{r['index']}  {answers}")
        return printable("\n".join(lines))

    def close(self) -> None:
        """Unsubscribe from the evaluation's events and close the widgets.

        Examples:
            >>> from workbench.evaluation.background import EvaluationRun
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> panel = EvalProgressPanel(ev)
            >>> panel.close()
            >>> panel.widget.comm is None
            True
        """
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from workbench.widgets._snapshot import snapshot_bundle

        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        bundle["text/html"] = snapshot_bundle(self)["text/html"]  # no kernel needed
        return bundle

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        show(self)
