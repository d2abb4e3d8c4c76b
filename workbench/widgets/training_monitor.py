"""TrainingMonitor: a live view of a :class:`~workbench.train.Run`, testable headless.

It subscribes to the run's events (``train_log``, ``train_state``, ``train_probes``), keeps
plain arrays, and renders them into one plotly ``FigureWidget`` (updated in place, batched,
at most a few times per second), a status line, control buttons and a probe timeline. Button
handlers call one :class:`~workbench.train.Run` method each. All text is escaped.

Under the status line, what the run chose for itself, with the reasons (``Run.choices``): the
batch size ``batch_size="auto"`` picked, gradient checkpointing when ``"auto"`` turned it on
for a quantized base, and whether it packs its micro-batches. Packing is
decided at the first step, so a monitor opened earlier says so and picks the decision up with
the first step's ``train_log`` event; ``run.json`` keeps both for :meth:`from_folder`, for a
run resumed from its folder (until its own first step) and for a launched run, whose rank 0
decides (it never packs).

Teaching mode (``teaching=True``) adds a "Single step" button (one optimizer step while
paused) and a heatmap of each transformer block's adapter gradient or weight norm per step
(``train_layer_norms`` events), updated in place with the same throttle as the loss plot.

Forks (``run.fork(step=..., lr=...)``, :mod:`workbench.train.fork`): when the run has a
parent or forks, the loss chart overlays their training losses, each named (``"run-001
(parent)"``, ``"run-002 fork @20, lr 1e-4"``), with each fork point marked (a diamond on the
curve and a dotted vertical line). The "Fork" row (a step with a checkpoint, an lr, the "Fork"
button) starts a fork of this run and shows the fork's own monitor below; the fork's curve
joins the overlays and follows it live.

Renders run on the thread that has news (the training worker, the throttle's timer), one at a
time under the monitor's lock: widget state is sent through the kernel's IOPub thread, so the
curves, status and probes follow the run even while a cell blocks the kernel (``run.wait()``,
a "Run All"). Button clicks reach the kernel between cells, or while ``run.wait()`` blocks
(:mod:`workbench.widgets._kernel`).

In a notebook, ``run.monitor()`` (or a bare ``monitor``) shows the panel.

Examples:
    A 3-step run on the tiny model, then its monitor and the same run read from disk:

    >>> import shutil
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train import TrainSpec, start_run
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-training-monitor-model")),
    ...                     on_event=len)
    >>> tok = loaded.tokenizer
    >>> ids = [tok(text).input_ids + [tok.eos_token_id] for text in ("cat => red", "dog => blue")]
    >>> shutil.rmtree("/tmp/wb-doc-training-monitor-run", ignore_errors=True)
    >>> run = start_run(loaded.model, tok, {"input_ids": ids, "labels": ids}, None,
    ...                 TrainSpec(max_steps=3, batch_size=2), "/tmp/wb-doc-training-monitor-run",
    ...                 None, None, wait=False)
    >>> run.wait().state.value
    'finished'
    >>> monitor = TrainingMonitor(run)
    >>> monitor.status_text().split(" · ")[:3], len(monitor.traces["loss"].x)
    (['finished', 'step 3/3', 'epoch 3.00'], 3)
    >>> monitor.stop_button.disabled, monitor.resume_button.disabled  # nothing left to run
    (True, True)
    >>> len(TrainingMonitor.from_folder(run.run_dir).traces["loss"].x)
    3
    >>> monitor.close()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from workbench.errors import SpecError, WorkbenchError
from workbench.events import (
    TRAIN_LAYER_NORMS,
    TRAIN_LOG,
    TRAIN_PROBES,
    TRAIN_STATE,
    TrainLayerNorms,
    TrainLog,
    TrainProbes,
    TrainState,
)
from workbench.widgets import _snapshot
from workbench.widgets._closing import close_panel
from workbench.widgets._html import answer_html, escape, text_dir
from workbench.widgets.svg_chart import thinned_indices

__all__ = ["TrainingMonitor"]

logger = logging.getLogger(__name__)

LIVE_POINTS = 1000  # points per live curve (longer ones keep each slice's extremes)
SMOOTHING = 0.9  # EMA weight, debiased like TensorBoard's smoothing
MIN_INTERVAL = 0.25  # seconds between renders: a few updates per second at most
PROBE_COLUMNS = 5  # evaluations shown in the probe table: the first, evenly spaced, latest
TRACES = ("loss", "smoothed", "eval_loss", "lr", "grad_norm")


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _loss_at(steps: Any, losses: Any, step: int) -> float:
    found = np.flatnonzero(np.asarray(steps) == step)
    return float(np.asarray(losses)[found[0]]) if len(found) else math.nan


def _fork_line(step: int) -> dict[str, Any]:
    """A dotted vertical line at a fork step, across the loss chart."""
    line = {"dash": "dot", "color": "#888", "width": 1}
    return {
        "type": "line",
        "x0": step,
        "x1": step,
        "xref": "x",
        "y0": 0,
        "y1": 1,
        "yref": "y domain",
        "line": line,
    }


def _memory(n: int | None) -> str:
    from workbench._display import format_bytes

    return format_bytes(n)


PACKING_PENDING = "decided at the first step"


def _shown(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A curve as the live chart draws it: thinned to :data:`LIVE_POINTS` keeping each
    slice's extremes, as every render sends the whole trace to the browser (a 20,000-step
    run sent 1.9 MB per render)."""
    keep = thinned_indices(values, LIVE_POINTS)
    return steps[keep], values[keep]


def _without(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _choice_lines(choices: dict[str, Any]) -> list[tuple[str, str]]:
    """What a run chose for itself as ``(what, why)`` pairs, in the monitor's words.

    Args:
        choices: ``"batch_size"``: ``(size, reason)`` when ``batch_size="auto"`` chose;
            ``"gradient_checkpointing"``: ``(on, reason)`` when ``"auto"`` chose;
            ``"packing"``: ``(on, reason)``, or ``None`` while the first step has not decided.

    Examples:
        >>> _choice_lines({"batch_size": (8, "batch_size='auto' chose 8: its peak fits"),
        ...               "packing": (False, "packing=False")})
        [('batch size 8 (auto)', 'its peak fits'), ('packing off', 'packing=False')]
        >>> _choice_lines({"packing": None})
        [('packing', 'decided at the first step')]
        >>> _choice_lines({"gradient_checkpointing": (True, "gradient_checkpointing='auto': "
        ...                "on for a 4-bit base")})
        [('gradient checkpointing on (auto)', 'for a 4-bit base')]
    """
    lines = []
    if choices.get("batch_size") is not None:
        size, reason = choices["batch_size"]
        why = _without(str(reason), f"batch_size='auto' chose {size}: ")
        lines.append((f"batch size {size} (auto)", why))
    if choices.get("gradient_checkpointing") is not None:
        on, reason = choices["gradient_checkpointing"]
        why = _without(str(reason), f"gradient_checkpointing='auto': {'on' if on else 'off'} ")
        lines.append((f"gradient checkpointing {'on' if on else 'off'} (auto)", why))
    if "packing" in choices:
        if choices["packing"] is None:
            lines.append(("packing", PACKING_PENDING))
        else:
            on, reason = choices["packing"]
            why = _without(str(reason), "packed: " if on else "not packed: ")
            lines.append((f"packing {'on' if on else 'off'}", why))
    return lines


def _saved_choices(meta: dict[str, Any]) -> dict[str, Any]:
    """The choices a run folder's ``run.json`` records (``batch_size_choice``,
    ``gradient_checkpointing_choice``, ``packing_choice``)."""
    from workbench.train.packing import Packing
    from workbench.train.store import chosen_at_start

    spec = meta.get("spec") or {}
    found: dict[str, Any] = {
        name: (spec.get(name), why) for name, why in chosen_at_start(meta).items()
    }
    packing = Packing.recorded(meta)
    if packing is not None:
        found["packing"] = (packing.on, packing.reason)
    return found


_SPREAD, _SPREAD_VALUE = "first, evenly spaced, latest", -1  # the picker's default entry
_CELL = "vertical-align:top;white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.35;"


def _probe_spread(n: int, picked: int | None = None) -> list[int]:
    """Which of ``n`` evaluations get a column: all if they fit, else the first, evenly
    spaced ones and the latest; with ``picked``, the first, that one and the latest."""
    if picked is not None:
        return sorted({0, picked, n - 1})
    if n <= PROBE_COLUMNS:
        return list(range(n))
    return sorted({round(k * (n - 1) / (PROBE_COLUMNS - 1)) for k in range(PROBE_COLUMNS)})


def _probe_note(steps: list[int], total: int, picked: int | None) -> str:
    """The line above the probe table that says which evaluations it shows."""
    if not total:
        return "the base model's answers; each evaluation adds a column"
    named = ", ".join(str(s) for s in steps)
    word = "step" if len(steps) == 1 else "steps"
    if len(steps) == total:
        return f"{word} {named} (all {total} evaluation{'s' if total > 1 else ''})"
    how = f"step {picked} (picked)" if picked is not None else "evenly spaced ones"
    return f"{word} {named} of {total} evaluations: the first, {how} and the latest"


def _probe_cell(value: Any, column: int) -> str:
    if column == 0:  # the prompt
        return escape(value)
    return "" if value is None else answer_html(value)


def _probe_table(headers: list[str], body: list[list[Any]]) -> str:
    """A fixed-layout table (prompt column 22%, the others equal) that wraps long answers
    and scrolls past 360px, so it never widens the panel. Every cell is escaped; after the
    prompt, an empty answer is marked and one not recorded (``None``) left blank."""
    share = 78 / max(len(headers) - 1, 1)
    cols = '<col style="width:22%">' + f'<col style="width:{share:.1f}%">' * (len(headers) - 1)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    cell = '<td{} style="{}">{}</td>'
    rows = "".join(
        "<tr>"
        + "".join(cell.format(text_dir(c), _CELL, _probe_cell(c, j)) for j, c in enumerate(row))
        + "</tr>"
        for row in body
    )
    table = (
        '<table class="wb-table wb-probe-table" style="table-layout:fixed;width:100%;">'
        f"<colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return f'<div style="max-height:360px;overflow:auto;max-width:100%;">{table}</div>'


class TrainingMonitor:
    """Curves, status, controls and probe answers of one training run.

    Args:
        run: A live :class:`~workbench.train.Run`, or ``None`` for a static view
            (see :meth:`from_folder`).
        min_interval: Seconds between renders.
        teaching: Add the single-step button and the layer-norm heatmap. The run must track
            layer norms for the heatmap to fill (``run.monitor(teaching=True)`` turns that on).

    Attributes:
        figure: The plotly ``FigureWidget`` (loss, eval loss; LR and grad norm below).
        traces: Its traces by name: loss, smoothed, eval_loss, lr, grad_norm.
        status_html: The status line.
        choices_html: What the run chose for itself, each with its reason: the batch size
            when ``batch_size="auto"`` chose it, and whether it packs (decided at the first
            step; "packing: decided at the first step" until then). See :meth:`choices`.
        pause_button, resume_button, stop_button, eval_button, save_button: Controls.
        step_button: "Single step" (shown in teaching mode; enabled only while paused).
        fork_step, fork_lr, fork_button: The fork row: a step with a checkpoint, the fork's
            learning rate, and "Fork" (``run.fork(step=..., lr=...)``; enabled while the run
            is paused or ended). fork_html says what happened; fork_box holds the new fork's
            monitor, and ``last_fork`` is that fork.
        overlays: The parent's and the forks' loss traces by label, and ``"fork points"``
            (the markers), when the run has relatives.
        heatmap: The :class:`~workbench.widgets._layer_norms.LayerNormHeatmap` in teaching
            mode, else ``None``.
        probes_html: The probe table: the base model's answers, then the first evaluation,
            evenly spaced ones and the latest (at most ``PROBE_COLUMNS``), steps named above.
        probe_step: Picks one step to show between the first and the latest (shown when
            there are more evaluations than columns).
        widget: The whole panel.

    Examples:
        With a live run each button calls one run method (Stop calls ``run.stop()``, and the
        run ends ``stopped``). Without a run it is an empty, static view:

        >>> m = TrainingMonitor()
        >>> m.status_text(), m.stop_button.disabled, m.heatmap is None
        ('no run', True, True)
        >>> TrainingMonitor(teaching=True).heatmap.kind.value  # heatmap shows gradient norms
        'grad'
    """

    def __init__(
        self, run: Any = None, min_interval: float = MIN_INTERVAL, teaching: bool = False
    ) -> None:
        self.run, self.min_interval, self.teaching = run, min_interval, teaching
        self._lock = threading.RLock()
        self._data: dict[str, list[float]] = {
            k: [] for k in ("step", "loss", "smoothed", "lr", "grad_norm", "eval_step", "eval_loss")
        }
        self._ema = (0.0, 0)
        self._status: Any = None  # a run's is read after its history (below)
        self._probes: dict[str, Any] = {"prompts": [], "base": [], "rows": []}
        self._last_render, self._timer, self._pending = 0.0, None, ""
        self._unsubscribe: list[Any] = []
        self._family: dict[str, dict[str, Any]] = {}  # run folder -> relative, steps, losses
        self._origin: dict[str, Any] | None = None  # forked_from of this run
        self.overlays: dict[str, Any] = {}
        self.last_fork: Any = None
        self._fork_seen: tuple[Any, ...] = ()  # what the step list was read for (re-read on change)
        self._fork_steps: list[int] = []
        self._saved: dict[str, Any] = {}  # the choices run.json records (batch size, packing)
        self._build()
        if run is not None:
            # Subscribe, then load the history, under the lock: events that arrive meanwhile
            # wait, and _add drops a step it has already seen.
            with self._lock:
                self._subscribe(run.events)
                self._load(run.history, run.probes, run.probe_base, run.probe_history)
                self._load_norms(getattr(run, "layer_norms", []))
                self._load_family(run.run_dir)
                self._saved = self._read_saved(run.run_dir)
                # after the history: read first, it showed a step older than the curve
                self._status = run.status
        self._dispatch(self.refresh)  # under the lock: the worker may be rendering too

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_folder(cls, run_dir: str | Path) -> TrainingMonitor:
        """A static monitor of a run from its folder (history, probes, status on disk).

        Examples:
            The module example reads a finished run this way; a folder without a run says so:

            >>> TrainingMonitor.from_folder("/nonexistent-run")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SpecError: /nonexistent-run holds no training run (no run.json). ...
        """
        from workbench.train import store
        from workbench.train.records import LogRecord, history_rows
        from workbench.train.start import probes_of_run
        from workbench.train.status import RunStatus

        run_dir = Path(run_dir)
        meta = store.read_meta(run_dir)
        data = store.read_status(run_dir)
        rows = store.read_jsonl(run_dir / store.PROBES)
        base = next((r["outputs"] for r in rows if r.get("base")), [])
        history = [LogRecord.from_dict(r) for r in history_rows(run_dir / store.HISTORY)]
        prompts = probes_of_run(meta, run_dir)
        monitor = cls(None)
        monitor._status = RunStatus.from_dict(data)
        monitor._saved = _saved_choices(meta)
        monitor._load(history, prompts, base, [r for r in rows if not r.get("base")])
        monitor._load_family(run_dir)
        monitor.refresh()
        return monitor

    def _build(self) -> None:
        self.figure = self._figure()
        self.traces = dict(zip(TRACES, self.figure.data, strict=True))
        self.status_html = w.HTML()
        self.choices_html = w.HTML()  # what the run chose for itself: batch size, packing
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger")
        self.eval_button = w.Button(description="Evaluate now")
        self.save_button = w.Button(description="Save now")
        self.step_button = w.Button(
            description="Single step",
            icon="step-forward",
            tooltip="one optimizer step, then pause again",
        )
        self.probes_html = w.HTML()
        self.probe_step = self._probe_step_picker()  # a step to show next to first and latest
        self.refusal_html = w.HTML()  # why the last button click was refused, if it was
        for button, handler in (
            (self.pause_button, self._on_pause),
            (self.resume_button, self._on_resume),
            (self.stop_button, self._on_stop),
            (self.eval_button, self._on_evaluate),
            (self.save_button, self._on_save),
            (self.step_button, self._on_step),
        ):
            button.on_click(self._saying_refusals(handler))
        buttons = [
            self.pause_button,
            self.resume_button,
            self.stop_button,
            self.eval_button,
            self.save_button,
        ]
        self.heatmap = self._teaching_heatmap()
        plots = [self.figure]
        if self.heatmap is not None:
            buttons.append(self.step_button)
            plots.append(self.heatmap.widget)
        fork_row = self._build_fork_row()
        self.findings_html = w.HTML()  # plain-language diagnostics, empty when all is well
        self.widget = w.VBox(
            [
                self.status_html,
                self.choices_html,
                w.HBox(buttons),
                self.refusal_html,
                fork_row,
                self.findings_html,
                *plots,
                w.VBox([self.probe_step, self.probes_html]),
                self.fork_box,
            ]
        )
        self.widget.add_class("wb-training-monitor")  # a stable hook for browser tests

    def _build_fork_row(self) -> Any:
        lr = float(self.run.spec.lr) if self.run is not None else 0.0
        self.fork_step = w.Dropdown(
            description="Fork at step", options=[], layout=w.Layout(width="200px")
        )
        self.fork_lr = w.FloatText(description="lr", value=lr, layout=w.Layout(width="180px"))
        self.fork_button = w.Button(
            description="Fork",
            icon="code-fork",
            tooltip="start a new run from the checkpoint at that step, with this lr",
        )
        self.fork_button.on_click(self._on_fork)
        self.fork_html = w.HTML()
        self.fork_box = w.VBox()
        return w.HBox([self.fork_step, self.fork_lr, self.fork_button, self.fork_html])

    @staticmethod
    def _figure() -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            row_heights=[0.65, 0.35],
            vertical_spacing=0.06,
            specs=[[{}], [{"secondary_y": True}]],
        )
        line = {"mode": "lines", "x": [], "y": []}
        fig.add_trace(go.Scatter(name="train loss", opacity=0.35, **line), row=1, col=1)
        fig.add_trace(go.Scatter(name="train loss (smoothed)", **line), row=1, col=1)
        fig.add_trace(go.Scatter(name="eval loss", x=[], y=[], mode="lines+markers"), row=1, col=1)
        fig.add_trace(go.Scatter(name="learning rate", **line), row=2, col=1)
        fig.add_trace(go.Scatter(name="grad norm", **line), row=2, col=1, secondary_y=True)
        fig.update_layout(height=420, margin={"l": 50, "r": 50, "t": 20, "b": 40})
        fig.update_yaxes(title_text="loss", row=1, col=1)
        fig.update_yaxes(title_text="lr", row=2, col=1)
        fig.update_yaxes(title_text="grad norm", row=2, col=1, secondary_y=True)
        fig.update_xaxes(title_text="step", row=2, col=1)
        return go.FigureWidget(fig)

    def _teaching_heatmap(self) -> Any:
        if not self.teaching:
            return None
        from workbench.widgets._layer_norms import LayerNormHeatmap

        return LayerNormHeatmap()

    def _subscribe(self, events: Any) -> None:
        self._unsubscribe = [
            events.on(TRAIN_LOG, self._on_log),
            events.on(TRAIN_STATE, self._on_state),
            events.on(TRAIN_PROBES, self._on_probes),
        ]
        if self.heatmap is not None:
            self._unsubscribe.append(events.on(TRAIN_LAYER_NORMS, self._on_layer_norms))

    # -- button handlers: one Run call each -----------------------------------------------
    def _saying_refusals(self, handler: Any) -> Any:
        """``handler`` for a button: a refusal (a run resumed elsewhere, forked...) is shown
        under the buttons; it went to the traitlets log, the click seemingly ignored."""

        def clicked(button: Any) -> None:
            self.refusal_html.value = ""
            try:
                handler(button)
            except WorkbenchError as err:
                self._pending = ""
                self.refusal_html.value = f'<span style="color:#b00;">{escape(str(err))}</span>'
                self._render_buttons()

        return clicked

    def _on_pause(self, _button: Any) -> None:
        self._pending = "pause"
        self.run.pause(wait=False)
        self._render_buttons()

    def _on_resume(self, _button: Any) -> None:
        # Until the worker reports running, the state still reads paused: no single step
        # then (the run would refuse it as resuming).
        self._pending = "resume"
        self.run.resume()
        self._render_buttons()

    def _on_stop(self, _button: Any) -> None:
        self.run.stop()
        self._render_buttons()

    def _on_step(self, _button: Any) -> None:
        self._pending = "step"  # cleared when the worker reports paused (or ended) again
        self.step_button.disabled = True
        try:
            self.run.step_once(wait=False)
        except SpecError:  # resumed or stopped from code meanwhile: the state event follows
            self._pending = ""
            self._render_buttons()

    def _on_evaluate(self, _button: Any) -> None:
        self.run.evaluate_now()

    def _on_save(self, _button: Any) -> None:
        self.run.save_now()

    def _on_fork(self, _button: Any) -> None:
        from workbench.train.fork import fork_label

        try:
            fork = self.run.fork(
                step=int(self.fork_step.value), lr=float(self.fork_lr.value), wait=False
            )
        except WorkbenchError as err:
            self.fork_html.value = f'<span style="color:#b00;">{escape(str(err))}</span>'
            return
        self.last_fork = fork
        with self._lock:
            self._load_family(self.run.run_dir)
        self.fork_html.value = escape(f"started {fork_label(fork.run_dir)}: its monitor is below")
        self.fork_box.children = (fork.monitor().widget,)
        self._dispatch(self.refresh)

    # -- event handlers (any thread): update arrays, then schedule a render ---------------
    def _mine(self, payload: Any) -> bool:
        return self.run is not None and payload.run == str(self.run.run_dir)

    def _on_log(self, payload: TrainLog) -> None:
        if self._mine(payload):
            self._add(payload.record)
            with self._lock:  # a log that waited on __init__'s lock is older than its status
                if self._status is None or payload.status.step >= self._status.step:
                    self._status = payload.status
            self._read_decided_packing()
            self._schedule()
            self._save_snapshot_now_and_then()
        elif payload.run in self._family:
            self._add_relative(payload.run, payload.record)
            self._schedule()

    def _on_state(self, payload: TrainState) -> None:
        if self._mine(payload):
            self._status = payload.status
            self._read_decided_packing()
            if payload.status.state.value != "running":
                self._pending = ""
            self._dispatch(self.refresh)
            self._snapshot_state(payload.status)
        elif self.run is not None and Path(payload.run).parent == self.run.run_dir.parent:
            if payload.run not in self._family:  # a new fork of this run (or of its parent)?
                with self._lock:
                    self._load_family(self.run.run_dir)
            if payload.run in self._family:
                self._dispatch(self.refresh)

    def _on_layer_norms(self, payload: TrainLayerNorms) -> None:
        if not self._mine(payload):
            return
        record = {
            "step": payload.step,
            "layers": list(payload.layers),
            "weight": list(payload.weight),
            "grad": list(payload.grad),
        }
        with self._lock:  # __init__ loads the run's earlier records under this lock
            added = self.heatmap.add(record)
        if added:
            self._schedule()

    def _on_probes(self, payload: TrainProbes) -> None:
        if self._mine(payload):
            with self._lock:
                self._add_probe_row(payload)
            self._dispatch(self.refresh)
            self._save_snapshot_now_and_then()

    def _save_snapshot_now_and_then(self) -> None:
        """Keep a displayed panel's saved form near the live one while the run trains (a
        notebook saved mid-run showed the status of the last pause or resume)."""
        try:
            _snapshot.save_snapshot(self, every=_snapshot.SNAPSHOT_EVERY)
        except Exception:  # the live panel and the run go on without a snapshot
            logging.getLogger(__name__).exception("could not update the monitor's snapshot")

    # -- state ----------------------------------------------------------------------------
    def _add(self, record: Any) -> None:
        with self._lock:
            data = self._data
            if record.kind == "train" and data["step"] and record.step <= data["step"][-1]:
                return
            if record.kind == "train" and record.loss is not None:
                ema, n = self._ema
                ema, n = SMOOTHING * ema + (1 - SMOOTHING) * record.loss, n + 1
                self._ema = (ema, n)
                data["step"].append(record.step)
                data["loss"].append(record.loss)
                data["smoothed"].append(ema / (1 - SMOOTHING**n))
                data["lr"].append(record.lr if record.lr is not None else math.nan)
                data["grad_norm"].append(
                    record.grad_norm if record.grad_norm is not None else math.nan
                )
            elif record.kind == "eval" and record.eval_loss is not None:
                data["eval_step"].append(record.step)
                data["eval_loss"].append(record.eval_loss)

    def _add_probe_row(self, payload: TrainProbes) -> None:
        self._probes["prompts"] = list(payload.prompts or self._probes["prompts"])
        self._probes["base"] = list(payload.base_outputs or self._probes["base"])
        if not payload.base:  # a step evaluated again replaces its column
            rows = [r for r in self._probes["rows"] if r["step"] != payload.step]
            self._probes["rows"] = [*rows, {"step": payload.step, "outputs": list(payload.outputs)}]

    def _load(
        self, history: list[Any], prompts: list[str], base: list[str], rows: list[dict[str, Any]]
    ) -> None:
        with self._lock:
            self._probes = {"prompts": list(prompts), "base": list(base), "rows": list(rows)}
            for record in history:
                self._add(record)

    def _load_family(self, run_dir: str | Path) -> None:
        """Read the parent's and forks' losses from their folders (new relatives only)."""
        from workbench.train import store
        from workbench.train.fork import forked_from, relatives
        from workbench.train.records import history_rows

        self._origin = forked_from(run_dir)
        for relative in relatives(run_dir):
            key = str(relative.run_dir)
            if key in self._family:
                continue
            self._family[key] = {"relative": relative, "step": [], "loss": []}
            for row in history_rows(Path(relative.run_dir) / store.HISTORY):
                if row.get("kind") == "train" and row.get("loss") is not None:
                    self._add_relative(key, row)

    def _add_relative(self, key: str, record: Any) -> None:
        get = record.get if isinstance(record, dict) else lambda name: getattr(record, name)
        with self._lock:
            member = self._family[key]
            if get("kind") != "train" or get("loss") is None:
                return
            if member["step"] and get("step") <= member["step"][-1]:
                return
            member["step"].append(get("step"))
            member["loss"].append(get("loss"))

    def _load_norms(self, records: list[dict[str, Any]]) -> None:
        if self.heatmap is not None:
            for record in list(records):
                self.heatmap.add(record)

    # -- rendering ------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Render now if the last render is ``min_interval`` old, else once when it is."""
        with self._lock:
            wait = self.min_interval - (time.monotonic() - self._last_render)
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._render_due)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._dispatch(self.refresh)

    def _render_due(self) -> None:
        try:
            self._dispatch(self.refresh)
        except Exception:  # a timer thread has nobody to tell but the log
            logger.exception("TrainingMonitor render failed")

    def _dispatch(self, fn: Any) -> None:
        """Run ``fn`` (a render) now, on the calling thread, one render at a time.

        Renders run on whichever thread has news (the training worker, the throttle's timer,
        the main thread): widget state goes out on the kernel's IOPub thread, so the panel
        follows the run even while a cell blocks the kernel's main thread.
        """
        with self._lock:
            fn()

    def refresh(self) -> None:
        """Render the arrays, status, buttons and probes now.

        Examples:
            >>> monitor = TrainingMonitor()
            >>> monitor.refresh()
            >>> monitor.status_html.value
            '<div class="wb-train-status" style="">no run</div>'
        """
        with self._lock:
            self._timer, self._last_render = None, time.monotonic()
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in self._data.items()}
            probes = {k: list(v) for k, v in self._probes.items()}
        with self.figure.batch_update():
            for name in ("loss", "smoothed", "lr", "grad_norm"):
                self.traces[name].x, self.traces[name].y = _shown(arrays["step"], arrays[name])
            self.traces["eval_loss"].x = arrays["eval_step"]
            self.traces["eval_loss"].y = arrays["eval_loss"]
        self._render_family(arrays)
        if self.heatmap is not None:
            self.heatmap.render()
        self.status_html.value = self._status_html()
        self.choices_html.value = self._choices_html()
        self.findings_html.value = self._findings_html()
        self.probes_html.value = self._probes_html(probes)
        self._render_buttons()

    def _findings_html(self) -> str:
        from workbench.widgets._findings import findings_html

        return findings_html(self.run.diagnostics) if self.run is not None else ""

    def _read_decided_packing(self) -> None:
        """Re-read ``run.json`` while another process decides packing (a launched run's rank
        0 records it just after its first step's record): until it is there, on each event."""
        if "packing" in self._saved or getattr(self.run.loop, "packing", None) is not None:
            return
        self._saved = self._read_saved(self.run.run_dir)

    @staticmethod
    def _read_saved(run_dir: Path) -> dict[str, Any]:
        from workbench.train import store

        try:
            return _saved_choices(store.read_meta(run_dir))
        except (WorkbenchError, OSError):  # a folder gone or half-written: nothing saved
            return {}

    def choices(self) -> dict[str, Any]:
        """What the run chose for itself, as the monitor shows it.

        ``"batch_size"``: ``(size, reason)`` when the run was started with
        ``batch_size="auto"``; ``"gradient_checkpointing"``: ``(True, reason)`` when
        ``"auto"`` turned it on; ``"packing"``: ``(on, reason)`` once the first step decided,
        ``None`` before it (a live run). A static view (:meth:`from_folder`) reads both from
        ``run.json``. See :attr:`workbench.train.Run.choices`.

        Examples:
            >>> TrainingMonitor().choices()
            {}
        """
        run = self.run
        if run is None:
            return dict(self._saved)
        found: dict[str, Any] = {
            name: (getattr(run.spec, name), why)
            for name, why in getattr(run, "start_choices", {}).items()
        }
        packing = getattr(run.loop, "packing", None)
        if packing is not None:
            found["packing"] = (packing.on, packing.reason)
        elif "packing" in self._saved:  # a launched run's rank 0, or the steps before a resume
            found["packing"] = self._saved["packing"]
        elif not self._status.done:
            found["packing"] = None  # the first step decides
        return found

    def choices_text(self) -> str:
        """The run's choices as one plain-text line (``""`` when it chose nothing).

        Examples:
            A run with ``batch_size="auto"`` on the CPU reads like ``batch size 8 (auto):
            its estimated peak ... · packing off: packing='auto' packs on CUDA only; ...``:

            >>> TrainingMonitor().choices_text()
            ''
        """
        return " · ".join(f"{what}: {why}" for what, why in _choice_lines(self.choices()))

    def _choices_html(self) -> str:
        lines = _choice_lines(self.choices())
        if not lines:
            return ""
        rows = "".join(f"<div><b>{escape(what)}</b>: {escape(why)}</div>" for what, why in lines)
        return f'<div class="wb-train-choices" style="font-size:0.9em;color:#555;">{rows}</div>'

    def _render_buttons(self) -> None:
        state = self._status.state.value if self._status is not None else "finished"
        live = self.run is not None and state in ("running", "paused")
        pausing = self._pending == "pause" and state == "running"
        stepping = self._pending == "step"
        resuming = self._pending == "resume" and state == "paused"
        self.pause_button.disabled = not live or state == "paused" or pausing or stepping
        self.step_button.disabled = state != "paused" or self.run is None or stepping or resuming
        self.pause_button.description = "Pausing…" if pausing else "Pause"
        can_resume = state == "paused" or (
            state == "stopped"
            and self.run is not None
            and self._status.step < self._status.total_steps
        )
        handed = getattr(self.run, "superseded_by", None) is not None
        self.resume_button.disabled = not can_resume or handed or resuming
        self.stop_button.disabled = not live
        self.eval_button.disabled = self.save_button.disabled = not live
        self._render_fork_row(state)

    def _render_fork_row(self, state: str) -> None:
        from workbench.train.fork import fork_steps

        can = self.run is not None and state in ("paused", "finished", "stopped", "failed")
        if can:
            folder = self.run.run_dir / "checkpoints"
            seen = (state, self._status.step, folder.stat().st_mtime_ns if folder.is_dir() else 0)
            steps = self._fork_steps if seen == self._fork_seen else fork_steps(self.run)
            self._fork_seen, self._fork_steps = seen, steps
            if list(self.fork_step.options) != steps:
                chosen = self.fork_step.value
                self.fork_step.options = steps
                self.fork_step.value = chosen if chosen in steps else (steps[-1] if steps else None)
        self.fork_step.disabled = not can
        self.fork_button.disabled = not can or not self.fork_step.options

    def _render_family(self, arrays: dict[str, Any]) -> None:
        """Overlay the relatives' losses and mark every fork point (traces made on first use)."""
        with self._lock:
            members = [
                (m["relative"], list(m["step"]), list(m["loss"])) for m in self._family.values()
            ]
        if not members and self._origin is None:
            return
        points: list[tuple[int, float, str]] = []
        if self._origin is not None:
            step = self._origin["step"]
            points.append((step, _loss_at(arrays["step"], arrays["loss"], step), f"fork @{step}"))
        curves = []
        for relative, step_list, loss_list in members:
            steps, losses = np.asarray(step_list, np.float64), np.asarray(loss_list, np.float64)
            if relative.fork_step is not None:
                shown = steps >= relative.fork_step
                steps, losses = steps[shown], losses[shown]
                at = relative.fork_step
                points.append((at, _loss_at(steps, losses, at), f"{relative.run_dir.name} @{at}"))
            curves.append(
                (self.overlays.get(relative.label) or self._overlay(relative), steps, losses)
            )
        marks = (self.overlays.get("fork points") or self._overlay(None)) if points else None
        with self.figure.batch_update():
            for trace, steps, losses in curves:
                trace.x, trace.y = _shown(steps, losses)
            if marks is not None:
                marks.x = [p[0] for p in points]
                marks.y = [p[1] for p in points]
                marks.text = [p[2] for p in points]
                self.figure.layout.shapes = [
                    _fork_line(step) for step in sorted({p[0] for p in points})
                ]

    def _overlay(self, relative: Any) -> Any:
        """Add the trace of a relative (``None``: the fork-point markers) to the loss chart."""
        import plotly.graph_objects as go

        if relative is None:
            name = "fork points"
            trace = go.Scatter(
                name=name,
                mode="markers+text",
                textposition="top center",
                marker={"symbol": "diamond", "size": 10, "color": "#444"},
            )
        else:
            name = relative.label
            dash = "dash" if relative.role == "parent" else "solid"
            trace = go.Scatter(name=name, mode="lines", line={"dash": dash, "width": 1.5})
        self.figure.add_trace(trace.update(xaxis="x", yaxis="y"))
        self.overlays[name] = self.figure.data[-1]
        return self.overlays[name]

    def status_text(self) -> str:
        """The status line as plain text.

        Examples:
            During a run it starts like ``running · step 12/60 · epoch 1.50 · loss 1.2345``
            (see the module example); without a run:

            >>> TrainingMonitor().status_text()
            'no run'
        """
        s = self._status
        if s is None:
            return "no run"
        rate = f"{s.tokens_per_s:,.0f} tok/s" if s.tokens_per_s else "- tok/s"
        parts = [
            s.state.value,
            f"step {s.step}/{s.total_steps}",
            f"epoch {s.epoch:.2f}",
            rate,
            f"elapsed {_clock(s.elapsed)}",
            *([] if s.done else [f"ETA {_clock(s.eta)}"]),  # an ended run has none
            f"memory {_memory(s.memory)}",
        ]
        if s.loss is not None:
            parts.insert(3, f"loss {s.loss:.4f}")
        if s.eval_loss is not None:
            parts.insert(4, f"eval {s.eval_loss:.4f}")
        text = " · ".join(parts)
        detail = s.error or (s.message if s.message not in ("", s.state.value) else "")
        return f"{text} — {detail}" if detail else text

    def _status_html(self) -> str:
        failed = self._status is not None and self._status.state.value == "failed"
        style = "color:#b00;" if failed else ""
        return f'<div class="wb-train-status" style="{style}">{escape(self.status_text())}</div>'

    def _probes_html(self, probes: dict[str, Any]) -> str:
        if not probes["prompts"]:
            return ""
        by_step = {r["step"]: r for r in probes["rows"]}  # one column per step, latest answers
        rows = [by_step[step] for step in sorted(by_step)]
        steps = [r["step"] for r in rows]
        picked = self._sync_probe_step(steps)
        at = steps.index(picked) if picked is not None else None
        shown = [rows[k] for k in _probe_spread(len(rows), at)]
        headers = ["prompt", "base", *[f"step {r['step']}" for r in shown]]
        body = []
        for i, prompt in enumerate(probes["prompts"]):
            base = probes["base"][i] if i < len(probes["base"]) else None  # None: not recorded
            outputs = [r["outputs"][i] if i < len(r["outputs"]) else None for r in shown]
            body.append([prompt, base, *outputs])
        note = _probe_note([r["step"] for r in shown], len(rows), picked)
        return f'<div class="wb-probe-steps">{escape(note)}</div>' + _probe_table(headers, body)

    def _probe_step_picker(self) -> Any:
        self._probe_syncing = False
        picker = w.Dropdown(
            description="show step",
            options=[(_SPREAD, _SPREAD_VALUE)],
            layout=w.Layout(width="320px", display="none"),
        )
        picker.observe(self._on_probe_step, names="value")
        return picker

    def _sync_probe_step(self, steps: list[int]) -> int | None:
        """Offer the evaluated steps in the picker (shown when not all fit); the one picked."""
        options = [(_SPREAD, _SPREAD_VALUE), *[(f"step {s}", s) for s in steps]]
        if list(self.probe_step.options) != options:
            chosen = self.probe_step.value
            self._probe_syncing = True
            try:
                self.probe_step.options = options
                self.probe_step.value = chosen if chosen in steps else _SPREAD_VALUE
            finally:
                self._probe_syncing = False
        fits = len(steps) <= PROBE_COLUMNS
        self.probe_step.layout.display = "none" if fits else ""
        return None if fits or self.probe_step.value == _SPREAD_VALUE else self.probe_step.value

    def _on_probe_step(self, _change: Any) -> None:
        if self._probe_syncing:
            return
        with self._lock:
            probes = {k: list(v) for k, v in self._probes.items()}
        self.probes_html.value = self._probes_html(probes)

    def text(self, last: int = 5) -> str:
        """Plain-text fallback: the status line, the run's choices and the last records.

        Examples:
            With a run, one ``step N/total  loss x`` line follows per record; without one:

            >>> print(TrainingMonitor().text())
            no run
        """
        from workbench.train.records import LogRecord, format_record

        with self._lock:
            steps = list(zip(self._data["step"], self._data["loss"], strict=True))[-last:]
        total = self._status.total_steps if self._status is not None else None
        lines = [
            format_record(
                LogRecord(kind="train", step=int(s), epoch=math.nan, loss=loss), total
            ).replace("  epoch nan", "")
            for s, loss in steps
        ]
        chosen = self.choices_text()
        return "\n".join([self.status_text(), *([chosen] if chosen else []), *lines])

    def close(self) -> None:
        """Unsubscribe from the run's events and close the widgets, every one of them (a
        closed monitor, and the run, model and optimizer it views, can be collected).

        Examples:
            >>> monitor = TrainingMonitor()
            >>> monitor.close()
            >>> monitor.widget.comm is None  # closed: the front end drops it
            True
        """
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._timer is not None:
            self._timer.cancel()
        self.fork_box.children = ()  # the fork's own monitor, which lives on: not this one's
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle.update(_snapshot.snapshot_bundle(self))  # static HTML + text: no kernel needed
        return bundle

    def _ipython_display_(self) -> None:
        _snapshot.show(self)

    def finalise(self) -> int:
        """Replace this monitor's notebook displays by its static snapshot (the run's end does).

        The snapshot (status, loss curves as an SVG image, probe table) shows without a
        kernel, in a saved notebook, nbconvert's HTML or GitHub; ``run.monitor()`` displays a
        live panel again. See :mod:`workbench.widgets._snapshot`.

        Returns:
            How many displays were updated.

        Examples:
            >>> TrainingMonitor().finalise()  # never displayed: nothing to update
            0
        """
        return _snapshot.finalise(self)

    def _snapshot_state(self, status: Any) -> None:
        """On a state change: the end finalises the displays, others refresh the snapshot."""
        try:
            if status.done:
                self.finalise()
            else:
                _snapshot.save_snapshot(self)
        except Exception:  # the live panel and the run go on without a snapshot
            logging.getLogger(__name__).exception("could not update the monitor's snapshot")
