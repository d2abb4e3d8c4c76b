"""EvaluationRun: an evaluation on a worker thread, with live progress, its rows so far, cancel.

``Session.evaluate(..., wait=False)`` (the default in a notebook) returns one at once; the
worker generates batch after batch and publishes ``eval_progress`` events (each with the
batch's answers), which the handle records and passes on. The worker never touches a
widget: the progress panel (:mod:`workbench.widgets.eval_progress`) subscribes to the
handle's events and renders on the kernel's event loop, and shows the finished
:class:`~workbench.evaluation.EvalPanel` in its place when the evaluation ends.

States: ``running`` -> ``finished`` (``wait()`` returns the
:class:`~workbench.evaluation.Evaluation`) | ``failed`` (``wait()`` raises the worker's
error, e.g. a metric that raised, by name) | ``cancelled`` (``cancel()``: the worker stops
before its next batch and nothing is saved; ``wait()`` raises an ``EvaluationError`` saying
so).

Any attribute of an :class:`~workbench.evaluation.Evaluation` (``scores``, ``rows``,
``path``, ``panel()``, ``save()``...) read on the handle waits for the end and reads the
result, so code written for a blocking ``evaluate()`` works unchanged on the handle.

Examples:
    On the tiny model, without a Session (:func:`start_evaluation`):

    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-background-model")), on_event=len)
    >>> rows = [{"prompt": f"Question {i}?", "reference": "yes"} for i in range(3)]
    >>> ev = start_evaluation(loaded.model, loaded.tokenizer, rows, metrics=["exact_match"],
    ...                       max_new_tokens=4, batch_size=1)
    >>> evaluation = ev.wait()
    >>> ev.state, ev.progress, len(evaluation.rows), len(ev.rows_so_far)
    ('finished', {'tuned': (3, 3)}, 3, 3)
    >>> ev.scores == evaluation.scores  # the Evaluation's attributes, read through the handle
    True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from workbench.errors import SessionStateError
from workbench.evaluation.results import Evaluation
from workbench.evaluation.run import EvalSpec, _columns, _emitter, run_evaluation, validate_rows
from workbench.events import EVAL_PROGRESS, EvalProgress, EventHub

__all__ = ["EvalSnapshot", "EvaluationRun", "evaluation_columns", "start_evaluation"]

logger = logging.getLogger(__name__)

PUMP_INTERVAL = 0.25  # seconds between the panel's renders while wait() holds the main thread

# Names read through to the finished Evaluation (waiting for it): its fields and methods.
_FORWARDED = frozenset(
    {f.name for f in fields(Evaluation)} | {n for n in dir(Evaluation) if not n.startswith("_")}
)

Work = Callable[[Callable[[str, Any], None], Callable[[], bool]], Evaluation]


def evaluation_columns(
    model: Any, compare_base: bool = True, plain_model_role: str = "tuned"
) -> tuple[str, ...]:
    """The columns an evaluation of ``model`` generates, in order (base first).

    Examples:
        >>> evaluation_columns(object())  # a plain model: one column
        ('tuned',)
    """
    spec = EvalSpec(compare_base=compare_base, plain_model_role=plain_model_role)
    return tuple(_columns(model, spec))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class EvalSnapshot:
    """What an :class:`EvaluationRun` has done so far, read at one moment (for its views).

    Attributes:
        state: ``running``, ``finished``, ``failed`` or ``cancelled``.
        progress: ``{column: (done, total)}``: answers generated per column.
        rows: The rows with at least one answer, in index order: ``{"index", "prompt",
            "reference", column: answer...}`` (untrusted text: escape it for HTML).
        latest: The index of the row answered last (``-1`` before the first batch).
        elapsed: Seconds since the start (until the end, once ended).
        eta: Seconds of generation left, estimated from the pace so far (``None`` before the
            first batch and after the end).
        total: Rows in the evaluation.
        evaluation: The result once finished, else ``None``.
        error: The worker's error once failed or cancelled, else ``None``.

    Examples:
        >>> snap = EvalSnapshot("running", {"base": (8, 16), "tuned": (3, 16)}, (), 2, 5.0,
        ...                     7.0, 16)
        >>> snap.progress_text(), snap.status_text()
        ('base 8/16, tuned 3/16', 'running: base 8/16, tuned 3/16 · 0:00:05 elapsed · about \
0:00:07 left')
    """

    state: str
    progress: dict[str, tuple[int, int]]
    rows: tuple[dict[str, Any], ...]
    latest: int
    elapsed: float
    eta: float | None
    total: int
    evaluation: Evaluation | None = None
    error: BaseException | None = None

    @property
    def done(self) -> int:
        """Answers generated over all columns.

        Examples:
            >>> EvalSnapshot("running", {"base": (8, 16), "tuned": (3, 16)}, (), 2, 5.0,
            ...              7.0, 16).done
            11
        """
        return sum(d for d, _ in self.progress.values())

    @property
    def planned(self) -> int:
        """Answers to generate over all columns.

        Examples:
            >>> EvalSnapshot("running", {"tuned": (0, 4)}, (), -1, 0.0, None, 4).planned
            4
        """
        return sum(t for _, t in self.progress.values())

    def progress_text(self) -> str:
        """``"base 8/16, tuned 3/16"``.

        Examples:
            >>> EvalSnapshot("running", {"tuned": (1, 4)}, (), 0, 1.0, 3.0, 4).progress_text()
            'tuned 1/4'
        """
        return ", ".join(f"{col} {d}/{t}" for col, (d, t) in self.progress.items())

    def status_text(self) -> str:
        """One line: state, progress, time so far and left (or why it ended).

        Examples:
            >>> EvalSnapshot("cancelled", {"tuned": (1, 4)}, (), 0, 2.0, None, 4).status_text()
            'cancelled at tuned 1/4 after 0:00:02: nothing was saved'
        """
        progress = self.progress_text()
        if self.state == "running":
            left = f" · about {_clock(self.eta)} left" if self.eta is not None else ""
            return f"running: {progress} · {_clock(self.elapsed)} elapsed{left}"
        if self.state == "cancelled":
            return f"cancelled at {progress} after {_clock(self.elapsed)}: nothing was saved"
        if self.state == "failed":
            kind = type(self.error).__name__
            return f"failed at {progress} after {_clock(self.elapsed)}: {kind}: {self.error}"
        return f"finished: {progress} in {_clock(self.elapsed)}"


class EvaluationRun:
    """An evaluation running on a worker thread: wait for it, watch it, or cancel it.

    Made by ``Session.evaluate(..., wait=False)`` or :func:`start_evaluation`.

    Args:
        work: ``work(emit, cancelled) -> Evaluation``: runs the evaluation, passing ``emit``
            as ``run_evaluation``'s ``events`` and ``cancelled`` as its ``cancelled``.
        rows: The rows it evaluates (checked, and cut to ``limit``, here and now).
        columns: The columns it generates, in order (:func:`evaluation_columns`).
        limit: Evaluate only the first ``limit`` rows.
        events: Where to pass the events on as well (an ``EventHub``, such as the session's,
            or ``fn(name, payload)``).
        name: A name for the worker thread.

    Attributes:
        events: The handle's own :class:`~workbench.events.EventHub` (``eval_progress``,
            ``eval_done``): views subscribe here.

    Examples:
        ``work`` is any function of that shape; this one needs no model:

        >>> from workbench.evaluation import EvalRow
        >>> def work(emit, cancelled):
        ...     emit("eval_progress", EvalProgress("tuned", 1, 1, ("4",)))
        ...     return Evaluation({}, (EvalRow(0, "2+2?", "4", {"tuned": "4"}),), {})
        >>> ev = EvaluationRun(work, [{"prompt": "2+2?", "reference": "4"}], ("tuned",))
        >>> len(ev.wait().rows), ev.rows_so_far
        (1, [{'index': 0, 'prompt': '2+2?', 'reference': '4', 'tuned': '4'}])
    """

    def __init__(
        self,
        work: Work,
        rows: Sequence[dict],
        columns: Sequence[str],
        limit: int | None = None,
        events: Any = None,
        name: str = "evaluation",
    ) -> None:
        self._rows = validate_rows(rows, limit)
        self._columns = tuple(columns)
        self._work, self._forward = work, _emitter(events)
        self.events = EventHub()
        self._cond = threading.Condition()
        self._outputs: dict[str, list[str | None]] = {c: [None] * len(self._rows) for c in columns}
        self._done = dict.fromkeys(self._columns, 0)
        self._latest = -1
        self._cancel = threading.Event()
        self._cancel_seen = False  # the worker stopped because cancelled() answered True
        self._outcome: tuple[str, Any] | None = None
        self._ended = self._settled = False
        self._callbacks: list[Callable[[EvaluationRun], Any]] = []
        self._monitor: Any = None
        self._started = self._ended_at = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=f"evaluate:{name}", daemon=True)
        self._thread.start()

    # -- the worker -----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            outcome: tuple[str, Any] = ("finished", self._work(self._emit, self._cancelled))
        except BaseException as err:  # the worker's error, raised again by wait() and result
            outcome = ("cancelled" if self._cancel_seen else "failed", err)
        with self._cond:
            self._outcome, self._ended, self._ended_at = outcome, True, time.monotonic()
            callbacks, self._callbacks = list(self._callbacks), []
        for fn in callbacks:
            self._call(fn)
        with self._cond:
            self._settled = True
            self._cond.notify_all()

    def _call(self, fn: Callable[[EvaluationRun], Any]) -> None:
        try:
            fn(self)
        except Exception:  # a broken view must not stop the handle from settling
            logger.exception("done callback %r of an evaluation raised", fn)

    def _emit(self, name: str, payload: Any) -> None:
        if name == EVAL_PROGRESS and isinstance(payload, EvalProgress):
            with self._cond:
                answers = self._outputs.get(payload.column)
                if answers is not None:
                    for offset, text in enumerate(payload.outputs):
                        if 0 <= payload.first + offset < len(answers):
                            answers[payload.first + offset] = text
                    self._done[payload.column] = payload.done
                    self._latest = payload.done - 1
        self.events.emit(name, payload)
        self._forward(name, payload)

    def _cancelled(self) -> bool:
        if self._cancel.is_set():
            self._cancel_seen = True
            return True
        return False

    # -- state ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the worker has ended (finished, failed or cancelled): the model is free.

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: Evaluation({}, (), {}),
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.wait()
            >>> ev.done
            True
        """
        with self._cond:
            return self._ended

    @property
    def state(self) -> str:
        """``running``, ``finished``, ``failed`` or ``cancelled``.

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: Evaluation({}, (), {}),
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.wait()
            >>> ev.state
            'finished'
        """
        with self._cond:
            return self._outcome[0] if self._ended else "running"

    @property
    def error(self) -> BaseException | None:
        """The worker's error once it failed or was cancelled, else ``None``.

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> ev.cancel(), ev.error
            ('failed', ZeroDivisionError('division by zero'))
        """
        with self._cond:
            ended = self._ended and self._outcome[0] != "finished"
            return self._outcome[1] if ended else None

    @property
    def progress(self) -> dict[str, tuple[int, int]]:
        """``{column: (done, total)}``: answers generated so far per column.

        A peft model has ``base`` (generated first) and ``tuned``: ``{'base': (8, 16),
        'tuned': (3, 16)}`` on the way.

        Examples:
            >>> def work(emit, cancelled):
            ...     emit("eval_progress", EvalProgress("base", 1, 2, ("x",)))
            ...     raise ValueError("stopped here")
            >>> ev = EvaluationRun(work, [{"prompt": "Q", "reference": "A"}] * 2,
            ...                    ("base", "tuned"))
            >>> ev.cancel(), ev.progress
            ('failed', {'base': (1, 2), 'tuned': (0, 2)})
        """
        with self._cond:
            return {c: (self._done[c], len(self._rows)) for c in self._columns}

    def progress_text(self) -> str:
        """``"base 8/16, tuned 3/16"``.

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("base", "tuned"))
            >>> ev.progress_text()
            'base 0/1, tuned 0/1'
        """
        return self.snapshot().progress_text()

    @property
    def rows_so_far(self) -> list[dict[str, Any]]:
        """The rows answered so far (by at least one column), in index order.

        Each is ``{"index", "prompt", "reference", column: answer...}``; a column that has
        not reached the row yet is absent.

        Examples:
            >>> def work(emit, cancelled):
            ...     emit("eval_progress", EvalProgress("base", 1, 2, ("<b>",)))
            ...     raise ValueError("stopped here")
            >>> ev = EvaluationRun(work, [{"prompt": "Q", "reference": "A"}] * 2,
            ...                    ("base", "tuned"))
            >>> ev.cancel(), ev.rows_so_far  # row 1 has no answer yet
            ('failed', [{'index': 0, 'prompt': 'Q', 'reference': 'A', 'base': '<b>'}])
        """
        return list(self.snapshot().rows)

    def snapshot(self) -> EvalSnapshot:
        """Everything the views show, read at one moment (see :class:`EvalSnapshot`).

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> ev.cancel()
            'failed'
            >>> snap = ev.snapshot()
            >>> snap.state, snap.rows, snap.eta
            ('failed', (), None)
        """
        with self._cond:
            rows = []
            for i, row in enumerate(self._rows):
                answers = {c: self._outputs[c][i] for c in self._columns}
                answers = {c: text for c, text in answers.items() if text is not None}
                if answers:
                    base = {"index": i, "prompt": row["prompt"], "reference": row["reference"]}
                    rows.append({**base, **answers})
            progress = {c: (self._done[c], len(self._rows)) for c in self._columns}
            now = self._ended_at if self._ended else time.monotonic()
            elapsed = now - self._started
            done, planned = sum(self._done.values()), len(self._rows) * len(self._columns)
            eta = elapsed / done * (planned - done) if done and not self._ended else None
            state = self._outcome[0] if self._ended else "running"
            result = self._outcome[1] if self._ended else None
            latest = self._latest
        return EvalSnapshot(
            state,
            progress,
            tuple(rows),
            latest,
            elapsed,
            eta,
            len(self._rows),
            result if state == "finished" else None,
            result if state in ("failed", "cancelled") else None,
        )

    @property
    def result(self) -> Evaluation:
        """The :class:`~workbench.evaluation.Evaluation`; raises the worker's error if it failed.

        Raises:
            SessionStateError: It is still running (``wait()`` for it).
            EvaluationError: It was cancelled, or a metric failed (the message names it).

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> ev.result
            Traceback (most recent call last):
            ZeroDivisionError: division by zero
        """
        with self._cond:
            if not self._ended:
                msg = (
                    f"the evaluation is still running ({self.progress_text()}): call ev.wait() "
                    "for it, or ev.cancel()."
                )
                raise SessionStateError(msg)
            state, value = self._outcome
        if state != "finished":
            raise value
        return value

    # -- control --------------------------------------------------------------------------
    def _join(self, timeout: float | None) -> bool:
        """Wait until settled; while on a notebook's main thread, keep the panel rendering."""
        if threading.current_thread() is self._thread:
            return self._settled  # a listener on the worker cannot wait for the worker
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pump = self._pumping()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            step = PUMP_INTERVAL if pump and (left is None or left > PUMP_INTERVAL) else left
            with self._cond:
                settled = self._cond.wait_for(lambda: self._settled, step)
            if pump:
                self._monitor.refresh()
            if settled or (deadline is not None and time.monotonic() >= deadline):
                return settled

    def _pumping(self) -> bool:
        """Whether wait() should render the panel itself (the event loop is held by it)."""
        from workbench._display import in_notebook

        on_main = threading.current_thread() is threading.main_thread()
        return self._monitor is not None and on_main and in_notebook()

    def wait(self, timeout: float | None = None) -> Evaluation:
        """Block until the evaluation ends; returns the Evaluation or raises the worker's error.

        In a notebook, a progress panel already shown keeps updating while this blocks.

        Raises:
            TimeoutError: Still running after ``timeout`` seconds.
            EvaluationError: It was cancelled, or a metric failed (the message names it).

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: Evaluation({}, (), {}),
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> ev.wait(), ev.done
            (Evaluation(rows=0, scores=[], path=None), True)
        """
        if not self._join(timeout):
            raise TimeoutError(
                f"the evaluation is still running after {timeout} s ({self.progress_text()}): "
                "wait longer, or ev.cancel()."
            )
        if self._monitor is not None and threading.current_thread() is not self._thread:
            from workbench.widgets._snapshot import finalise

            finalise(self._monitor)  # sent from the waiting cell: nbclient applies it
        return self.result

    def cancel(self, wait: bool = True, timeout: float | None = None) -> str:
        """Stop before the next batch; returns the state (``cancelled``, or how it ended).

        The answers of the batch being generated are dropped and no evaluation folder is
        left (nothing is written before the end). Once scoring has started it is too late:
        the evaluation finishes and ``finished`` is returned.

        Args:
            wait: Block until the worker has stopped (the model is free again).
            timeout: Seconds to wait at most.

        Examples:
            >>> from workbench.errors import EvaluationError
            >>> def work(emit, cancelled):
            ...     while not cancelled():
            ...         time.sleep(0.01)
            ...     raise EvaluationError("cancelled")
            >>> ev = EvaluationRun(work, [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> ev.cancel(), ev.done
            ('cancelled', True)
        """
        self._cancel.set()
        if wait:
            self._join(timeout)
        return self.state

    def add_done_callback(self, fn: Callable[[EvaluationRun], Any]) -> None:
        """Call ``fn(self)`` once it has ended (on the worker thread; at once if it has).

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: Evaluation({}, (), {}),
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.wait()
            >>> ev.add_done_callback(lambda run: print(run.state))
            finished
        """
        with self._cond:
            if not self._ended:
                self._callbacks.append(fn)
                return
        self._call(fn)

    # -- views ----------------------------------------------------------------------------
    def monitor(self, max_rows: int | None = None) -> Any:
        """The progress panel (:class:`~workbench.widgets.eval_progress.EvalProgressPanel`).

        One per handle. It shows the progress bar, the time left and the rows as they are
        answered, then the finished :class:`~workbench.widgets.EvalPanel` in its place.

        Examples:
            >>> ev = EvaluationRun(lambda emit, cancelled: 1 / 0,
            ...                    [{"prompt": "Q", "reference": "A"}], ("tuned",))
            >>> _ = ev.cancel()
            >>> ev.monitor() is ev.monitor(), ev.monitor().status_text()[:6]
            (True, 'failed')
            >>> closed = ev.monitor()
            >>> closed.close()
            >>> ev.monitor() is closed  # a closed panel is built anew
            False
        """
        from workbench.widgets._closing import is_closed

        if self._monitor is None or is_closed(self._monitor):
            from workbench.widgets.eval_progress import EvalProgressPanel

            options = {} if max_rows is None else {"max_rows": max_rows}
            self._monitor = EvalProgressPanel(self, **options)
        return self._monitor

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED:  # an Evaluation attribute: wait for the result, read it there
            return getattr(self.wait(), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __str__(self) -> str:
        snap = self.snapshot()
        if snap.state == "finished":
            return str(snap.evaluation)
        return f"Evaluation {snap.status_text()}"

    def __repr__(self) -> str:
        snap = self.snapshot()
        return f"EvaluationRun(state={snap.state!r}, progress={snap.progress_text()!r})"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.monitor()._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        # An evaluation that has ended shows its static snapshot; ev.panel() a live panel.
        show(self.monitor(), live=not self.done)


def start_evaluation(
    model: Any, tokenizer: Any, rows: Sequence[dict], events: Any = None, **options: Any
) -> EvaluationRun:
    """:func:`~workbench.evaluation.run_evaluation` on a worker thread; returns its handle.

    Takes ``run_evaluation``'s keywords (``metrics``, ``compare_base``, ``max_new_tokens``,
    ``limit``, ``out_dir``, ``batch_size``...); ``events`` also receives the events. The
    module example runs one on the tiny model.

    Examples:
        Rows are checked at once, before the worker starts:

        >>> start_evaluation(None, None, [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.EvaluationError: no rows to evaluate: give rows=[{'prompt': ...
    """
    columns = evaluation_columns(
        model, options.get("compare_base", True), options.get("plain_model_role", "tuned")
    )

    def work(emit: Callable[[str, Any], None], cancelled: Callable[[], bool]) -> Evaluation:
        return run_evaluation(model, tokenizer, rows, events=emit, cancelled=cancelled, **options)

    return EvaluationRun(work, rows, columns, options.get("limit"), events)
