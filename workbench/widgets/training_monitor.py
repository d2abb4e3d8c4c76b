"""TrainingMonitor: a live view of a :class:`~workbench.train.Run`, testable headless.

It subscribes to the run's events (``train_log``, ``train_state``, ``train_probes``), keeps
plain arrays, and renders them into one plotly ``FigureWidget`` (updated in place, batched,
at most a few times per second), a status line, control buttons and a probe timeline. Button
handlers call one :class:`~workbench.train.Run` method each. All text is escaped.

Teaching mode (``teaching=True``) adds a "Single step" button (one optimizer step while
paused) and a heatmap of each transformer block's adapter gradient or weight norm per step
(``train_layer_norms`` events), updated in place with the same throttle as the loss plot.

Renders are handed to the kernel's event loop when there is one, so widgets are only
touched from the main thread; headless (tests, scripts) they run at once.

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

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

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
from workbench.widgets._html import escape, table

__all__ = ["TrainingMonitor"]

SMOOTHING = 0.9  # EMA weight, debiased like TensorBoard's smoothing
MIN_INTERVAL = 0.25  # seconds between renders: a few updates per second at most
PROBE_COLUMNS = 4  # latest evaluations shown in the probe timeline
TRACES = ("loss", "smoothed", "eval_loss", "lr", "grad_norm")


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _memory(n: int | None) -> str:
    from workbench._display import format_bytes

    return format_bytes(n)


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
        pause_button, resume_button, stop_button, eval_button, save_button: Controls.
        step_button: "Single step" (shown in teaching mode; enabled only while paused).
        heatmap: The :class:`~workbench.widgets._layer_norms.LayerNormHeatmap` in teaching
            mode, else ``None``.
        probes_html: The probe timeline next to the base model's answers.
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
        self._status: Any = run.status if run is not None else None
        self._probes: dict[str, Any] = {"prompts": [], "base": [], "rows": []}
        self._last_render, self._timer, self._pending = 0.0, None, ""
        self._unsubscribe: list[Any] = []
        self._build()
        if run is not None:
            # Subscribe, then load the history, under the lock: events that arrive meanwhile
            # wait, and _add drops a step it has already seen.
            with self._lock:
                self._subscribe(run.events)
                self._load(run.history, run.probes, run.probe_base, run.probe_history)
                self._load_norms(getattr(run, "layer_norms", []))
        self.refresh()

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
        from workbench.train.records import LogRecord
        from workbench.train.status import RunStatus

        run_dir = Path(run_dir)
        meta = store.read_meta(run_dir)
        status_file = run_dir / store.STATUS
        data = (
            json.loads(status_file.read_text())
            if status_file.is_file()
            else {"total_steps": meta["total_steps"], "run_dir": str(run_dir)}
        )
        rows = store.read_jsonl(run_dir / store.PROBES)
        base = next((r["outputs"] for r in rows if r.get("base")), [])
        history = [LogRecord.from_dict(r) for r in store.read_jsonl(run_dir / store.HISTORY)]
        monitor = cls(None)
        monitor._status = RunStatus.from_dict(data)
        monitor._load(history, meta.get("probes", []), base, [r for r in rows if not r.get("base")])
        monitor.refresh()
        return monitor

    def _build(self) -> None:
        self.figure = self._figure()
        self.traces = dict(zip(TRACES, self.figure.data, strict=True))
        self.status_html = w.HTML()
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
        self.pause_button.on_click(self._on_pause)
        self.resume_button.on_click(self._on_resume)
        self.stop_button.on_click(self._on_stop)
        self.eval_button.on_click(self._on_evaluate)
        self.save_button.on_click(self._on_save)
        self.step_button.on_click(self._on_step)
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
        self.widget = w.VBox([self.status_html, w.HBox(buttons), *plots, self.probes_html])
        self.widget.add_class("wb-training-monitor")  # a stable hook for browser tests

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
    def _on_pause(self, _button: Any) -> None:
        self._pending = "pause"
        self.run.pause(wait=False)
        self._render_buttons()

    def _on_resume(self, _button: Any) -> None:
        self._pending = ""
        self.run.resume()
        self._render_buttons()

    def _on_stop(self, _button: Any) -> None:
        self.run.stop()
        self._render_buttons()

    def _on_step(self, _button: Any) -> None:
        self._pending = "step"  # cleared when the worker reports paused (or ended) again
        self.step_button.disabled = True
        self.run.step_once(wait=False)

    def _on_evaluate(self, _button: Any) -> None:
        self.run.evaluate_now()

    def _on_save(self, _button: Any) -> None:
        self.run.save_now()

    # -- event handlers (any thread): update arrays, then schedule a render ---------------
    def _mine(self, payload: Any) -> bool:
        return self.run is not None and payload.run == str(self.run.run_dir)

    def _on_log(self, payload: TrainLog) -> None:
        if self._mine(payload):
            self._add(payload.record)
            self._status = payload.status
            self._schedule()

    def _on_state(self, payload: TrainState) -> None:
        if self._mine(payload):
            self._status = payload.status
            if payload.status.state.value != "running":
                self._pending = ""
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
        if not payload.base:
            self._probes["rows"].append({"step": payload.step, "outputs": list(payload.outputs)})

    def _load(
        self, history: list[Any], prompts: list[str], base: list[str], rows: list[dict[str, Any]]
    ) -> None:
        with self._lock:
            self._probes = {"prompts": list(prompts), "base": list(base), "rows": list(rows)}
            for record in history:
                self._add(record)

    def _load_norms(self, records: list[dict[str, Any]]) -> None:
        if self.heatmap is not None:
            for record in list(records):
                self.heatmap.add(record)

    # -- rendering ------------------------------------------------------------------------
    def _schedule(self) -> None:
        wait = self.min_interval - (time.monotonic() - self._last_render)
        if wait <= 0:
            self._dispatch(self.refresh)
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._dispatch, (self.refresh,))
            self._timer.daemon = True
            self._timer.start()

    @staticmethod
    def _dispatch(fn: Any) -> None:
        """Run ``fn`` on the kernel's event loop if there is one (the main thread), else now."""
        from workbench._display import notebook_kernel

        io_loop = getattr(notebook_kernel(), "io_loop", None)
        if io_loop is not None and threading.current_thread() is not threading.main_thread():
            io_loop.add_callback(fn)
        else:
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
                self.traces[name].x, self.traces[name].y = arrays["step"], arrays[name]
            self.traces["eval_loss"].x = arrays["eval_step"]
            self.traces["eval_loss"].y = arrays["eval_loss"]
        if self.heatmap is not None:
            self.heatmap.render()
        self.status_html.value = self._status_html()
        self.probes_html.value = self._probes_html(probes)
        self._render_buttons()

    def _render_buttons(self) -> None:
        state = self._status.state.value if self._status is not None else "finished"
        live = self.run is not None and state in ("running", "paused")
        pausing = self._pending == "pause" and state == "running"
        stepping = self._pending == "step"
        self.pause_button.disabled = not live or state == "paused" or pausing or stepping
        self.step_button.disabled = state != "paused" or self.run is None or stepping
        self.pause_button.description = "Pausing…" if pausing else "Pause"
        can_resume = state == "paused" or (
            state == "stopped"
            and self.run is not None
            and self._status.step < self._status.total_steps
        )
        self.resume_button.disabled = not can_resume
        self.stop_button.disabled = not live
        self.eval_button.disabled = self.save_button.disabled = not live

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
            f"ETA {_clock(s.eta)}",
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

    @staticmethod
    def _probes_html(probes: dict[str, Any]) -> str:
        if not probes["prompts"]:
            return ""
        rows = probes["rows"][-PROBE_COLUMNS:]
        headers = ["prompt", "base", *[f"step {r['step']}" for r in rows]]
        body = []
        for i, prompt in enumerate(probes["prompts"]):
            base = probes["base"][i] if i < len(probes["base"]) else ""
            body.append([prompt, base, *[r["outputs"][i] for r in rows]])
        return '<div style="white-space:pre-wrap">' + table(headers, body) + "</div>"

    def text(self, last: int = 5) -> str:
        """Plain-text fallback: the status line and the last records.

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
        return "\n".join([self.status_text(), *lines])

    def close(self) -> None:
        """Unsubscribe from the run's events and close the widgets.

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
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        return bundle
