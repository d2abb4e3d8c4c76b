"""A training run on a background thread, controlled from the notebook's main thread.

The worker thread runs :class:`~workbench.train.loop.TrainLoop` steps and, between steps,
serves requests (pause, single step, stop, evaluate now, save now) that the control methods
set as ``threading.Event`` flags. It only publishes events (``train_log``, ``train_state``,
``train_probes``, ``train_checkpoint``, ``train_layer_norms``); it never touches a widget.

While paused the worker waits with the model in eval mode and the torch RNG state saved; on
resume it restores both, so generating with ``run.model`` while paused leaves the rest of the
run identical to an uninterrupted one.

Examples:
    >>> # run = start_run(...); run.pause(); generate_text(run.model, tok, ["Hi"]); run.resume()
    >>> # run.wait().state -> RunState.FINISHED
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from workbench.errors import SpecError, WorkbenchError
from workbench.events import EventHub
from workbench.train import store
from workbench.train.checkpoint import save_checkpoint
from workbench.train.guards import EarlyStopping, TrainingError
from workbench.train.loop import TrainLoop
from workbench.train.records import LogRecord, format_record
from workbench.train.spec import TrainSpec
from workbench.train.status import TERMINAL, RunState, RunStatus

__all__ = ["EVENT_CHECKPOINT", "EVENT_LAYER_NORMS", "EVENT_LOG", "EVENT_PROBES", "EVENT_STATE",
           "Run"]

logger = logging.getLogger(__name__)

EVENT_LOG, EVENT_STATE = "train_log", "train_state"
EVENT_PROBES, EVENT_CHECKPOINT = "train_probes", "train_checkpoint"
EVENT_LAYER_NORMS = "train_layer_norms"
_POLL = 0.2  # seconds a paused worker sleeps between checks for requests


class Run:
    """One training run: its model, history, status and controls.

    Create it with :func:`~workbench.train.start_run` or :func:`~workbench.train.resume_run`.

    Attributes:
        run_dir: The run folder.
        spec: The :class:`~workbench.train.TrainSpec`.
        probes: Probe prompts regenerated at each evaluation.
        probe_base: The base model's answers to the probes.
        probe_history: ``[{"step": int, "outputs": [str, ...]}, ...]`` per evaluation.
        layer_norms: ``[{"step", "layers", "weight", "grad"}, ...]`` per step while layer
            norms are tracked (see :meth:`track_layer_norms`).

    Examples:
        >>> # run = start_run(model, tok, train, val, TrainSpec(max_steps=20), Path("runs/a"),
        >>> #                 EventHub(), {"spec": "gemma-3-270m"}, wait=False)
        >>> # run.pause(); run.state -> RunState.PAUSED; run.resume(); run.wait()
    """

    def __init__(self, run_dir: Path, events: EventHub, model: Any, tokenizer: Any,
                 loop: TrainLoop, spec: TrainSpec, probes: list[str],
                 history: list[LogRecord], probe_rows: list[dict[str, Any]]) -> None:
        self.run_dir, self.events, self.spec, self.probes = run_dir, events, spec, probes
        self._model, self.tokenizer, self.loop = model, tokenizer, loop
        self._history = list(history)
        base = [r for r in probe_rows if r.get("base")]
        self.probe_base: list[str] = base[0]["outputs"] if base else []
        self.probe_history = [r for r in probe_rows if not r.get("base")]
        self.early = EarlyStopping(spec.early_stopping)
        self.eval_every, self.save_every = spec.every(loop.total_steps)
        self._lock = threading.Lock()
        self._flags = {n: threading.Event() for n in ("pause", "step", "stop", "eval", "save")}
        self._wake, self._done = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_step = self._eval_step = -1
        self._status = RunStatus(total_steps=loop.total_steps, step=loop.step,
                                 epoch=loop.epoch, elapsed=loop.elapsed, run_dir=str(run_dir))
        self._monitor: Any = None
        self.error: WorkbenchError | None = None
        self.layer_norms: list[dict[str, Any]] = []
        self._grad_norms: list[float] | None = None
        self._norm_groups: dict[int, list[Any]] | None = None
        self.track_layer_norms(spec.track_layer_norms)

    # -- read-only views ------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The model being trained (a ``PeftModel`` for lora/qlora): the adapter as it is now.

        Examples:
            >>> # run.pause(); generate_text(run.model, run.tokenizer, ["Hi"])
        """
        return self._model

    @property
    def status(self) -> RunStatus:
        """The latest :class:`RunStatus` snapshot.

        Examples:
            >>> # run.status.step, run.status.eta
        """
        return self._status

    @property
    def state(self) -> RunState:
        """The current :class:`RunState`.

        Examples:
            >>> # run.state -> RunState.RUNNING
        """
        return self._status.state

    @property
    def history(self) -> list[LogRecord]:
        """Every logged record so far (train steps, evaluations, warnings), oldest first.

        Examples:
            >>> # [r.loss for r in run.history if r.kind == "train"]
        """
        with self._lock:
            return list(self._history)

    # -- controls (called from the main thread) -------------------------------------------
    def pause(self, wait: bool = True, timeout: float | None = None) -> RunStatus:
        """Pause after the current step; with ``wait``, block until the worker is paused.

        Examples:
            >>> # run.pause(); run.state -> RunState.PAUSED
        """
        if self._status.done:
            return self._status
        self._request("pause")
        if wait and threading.current_thread() is not self._thread:
            self._wait_for(lambda s: s.state is RunState.PAUSED or s.done, timeout)
        return self._status

    def resume(self) -> RunStatus:
        """Continue a paused run, or a stopped one in this process, from where it was.

        Raises:
            SpecError: the run finished or failed, so there is nothing to continue.

        Examples:
            >>> # run.resume(); run.state -> RunState.RUNNING
        """
        self._flags["pause"].clear()
        self._flags["step"].clear()
        self._wake.set()
        if self._status.state is RunState.STOPPED and self.loop.step < self.loop.total_steps:
            self._flags["stop"].clear()
            self.start()
        elif self._status.state in (RunState.FINISHED, RunState.FAILED):
            msg = (f"the run is {self._status.state.value}; nothing to resume. Start a new "
                   "run, or resume_run(run_dir) to continue from its last checkpoint.")
            raise SpecError(msg)
        return self._status

    def step_once(self, wait: bool = True, timeout: float | None = None) -> RunStatus:
        """Run exactly one optimizer step on the worker thread, then stay paused.

        The worker publishes ``paused -> running -> paused`` (``-> finished`` when that was
        the last step); an evaluation or checkpoint due at that step happens as usual. Calls
        made before the worker picks the request up count once. With ``wait``, block until
        the worker is paused again (or the run ended).

        Raises:
            SpecError: the run is not paused.

        Examples:
            >>> # run.pause(); run.step_once().step -> one more than before; run.state -> PAUSED
        """
        status = self._status
        if status.state is not RunState.PAUSED:
            msg = (f"step_once needs a paused run, but it is {status.state.value}: call "
                   "run.pause() first.")
            raise SpecError(msg)
        target = status.step + 1
        self._request("step")
        if wait and threading.current_thread() is not self._thread:
            self._wait_for(lambda s: s.done or (s.step >= target and s.state is RunState.PAUSED),
                           timeout)
        return self._status

    def track_layer_norms(self, on: bool = True) -> None:
        """Record per-block adapter weight and gradient norms after every step from now on.

        Each record, ``{"step", "layers", "weight", "grad"}``, is appended to
        :attr:`layer_norms` and published as ``train_layer_norms``. Gradient norms are taken
        before clipping, weight norms after the update. ``TrainSpec(track_layer_norms=True)``
        turns this on from the first step.

        Examples:
            >>> # run.track_layer_norms(); run.step_once(); run.layer_norms[-1]["grad"]
        """
        self.loop.on_gradients = self._capture_grad_norms if on else None

    def stop(self) -> RunStatus:
        """Finish the current step, save a checkpoint and end (state stopped).

        Examples:
            >>> # run.stop(); run.wait().state -> RunState.STOPPED
        """
        if not self._status.done:
            self._set_state(RunState.STOPPING)
            self._request("stop")
        return self._status

    def evaluate_now(self) -> None:
        """Evaluate (and regenerate probes) at the next step boundary, even while paused.

        Examples:
            >>> # run.evaluate_now()
        """
        if self._status.done:
            self._evaluate()
        else:
            self._request("eval")

    def save_now(self) -> None:
        """Write a checkpoint at the next step boundary, even while paused.

        Examples:
            >>> # run.save_now()
        """
        if self._status.done:
            self._save()
        else:
            self._request("save")

    def wait(self, timeout: float | None = None, progress: bool = False) -> RunStatus:
        """Block until the run ends; with ``progress``, print a line per logged record.

        Lines are printed by the calling thread, so they land in the caller's cell.

        Examples:
            >>> # run.wait(progress=True).state -> RunState.FINISHED
        """
        if not progress:
            self._done.wait(timeout)
            return self._status
        lines: queue.Queue[str] = queue.Queue()
        unsubscribe = self._subscribe_lines(lines)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._done.is_set() and (deadline is None or time.monotonic() < deadline):
                self._print_lines(lines, block=True)
        finally:
            unsubscribe()
        self._print_lines(lines, block=False)
        return self._status

    def monitor(self, teaching: bool | None = None) -> Any:
        """The :class:`~workbench.widgets.TrainingMonitor` of this run (one per run).

        Args:
            teaching: Show the single-step button and the layer-norm heatmap (and track layer
                norms from now on). ``None``: keep the current monitor, or for a first one
                follow ``spec.track_layer_norms``. A different value builds a new monitor.

        Examples:
            >>> # run.monitor().status_html.value
            >>> # run.monitor(teaching=True).step_button.click()
        """
        current = self._monitor
        if current is None or (teaching is not None and current.teaching != teaching):
            from workbench.widgets.training_monitor import TrainingMonitor

            if teaching is None:
                teaching = self.spec.track_layer_norms
            if teaching:
                self.track_layer_norms()
            self._monitor = TrainingMonitor(self, teaching=teaching)
        return self._monitor

    def to_script(self, path: str | Path, fsdp: bool = False) -> Path:
        """Write a standalone ``accelerate`` script reproducing this run on several GPUs.

        See :func:`workbench.deploy.script.write_training_script` for the folder's contents.

        Examples:
            >>> # folder = run.to_script("scale-out", fsdp=True)
            >>> # accelerate launch --config_file scale-out/accelerate_config.yaml \\
            >>> #     scale-out/train.py --out out
        """
        from workbench.deploy.script import write_training_script

        return write_training_script(self.run_dir, path, fsdp)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.monitor()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        s = self._status
        return f"Run({str(self.run_dir)!r}, state={s.state.value}, step={s.step}/{s.total_steps})"

    # -- thread plumbing ------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (``start_run`` does this).

        Examples:
            >>> # run.start()
        """
        self._done.clear()
        self._thread = threading.Thread(target=self._main, name=f"train:{self.run_dir.name}",
                                        daemon=True)
        self._thread.start()

    def _request(self, name: str) -> None:
        self._flags[name].set()
        self._wake.set()

    def _wait_for(self, predicate: Any, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not predicate(self._status) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)

    def _subscribe_lines(self, lines: queue.Queue[str]) -> Any:
        total = self.loop.total_steps

        def on_log(payload: dict[str, Any]) -> None:
            if payload["run"] == str(self.run_dir):
                lines.put(format_record(payload["record"], total))

        def on_state(payload: dict[str, Any]) -> None:
            status = payload["status"]
            if payload["run"] == str(self.run_dir):
                text = status.error or status.message
                lines.put(f"{status.state.value}" + (f": {text}" if text else ""))

        offs = [self.events.on(EVENT_LOG, on_log), self.events.on(EVENT_STATE, on_state)]
        return lambda: [off() for off in offs]

    @staticmethod
    def _print_lines(lines: queue.Queue[str], block: bool) -> None:
        try:
            print(lines.get(timeout=_POLL) if block else lines.get_nowait(), flush=True)
            while True:
                print(lines.get_nowait(), flush=True)
        except queue.Empty:
            return

    # -- status ---------------------------------------------------------------------------
    def _update(self, **changes: Any) -> RunStatus:
        with self._lock:
            self._status = dataclasses.replace(self._status, **changes)
            return self._status

    def _set_state(self, state: RunState, **changes: Any) -> None:
        with self._lock:
            current = self._status.state
            # stop() wins over a worker's late running/paused; an ended run stays ended.
            if (current in TERMINAL and state is not RunState.RUNNING) or (
                current is RunState.STOPPING and state in (RunState.RUNNING, RunState.PAUSED)):
                return
            self._status = dataclasses.replace(self._status, state=state, **changes)
            status = self._status
        store.write_status(self.run_dir, status.to_dict())
        self.events.emit(EVENT_STATE, {"run": str(self.run_dir), "status": status})

    def _log(self, record: LogRecord) -> None:
        with self._lock:
            self._history.append(record)
        store.append_jsonl(self.run_dir / store.HISTORY, record.to_dict())
        if record.kind == "train":
            status = self._update(step=record.step, epoch=record.epoch, loss=record.loss,
                                  tokens_per_s=record.tokens_per_s, memory=record.memory,
                                  elapsed=record.elapsed or 0.0)
        elif record.kind == "eval":
            status = self._update(eval_loss=record.eval_loss)
        else:
            status = self._status
        self.events.emit(EVENT_LOG, {"run": str(self.run_dir), "record": record,
                                     "status": status})

    # -- the worker -----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._set_state(RunState.RUNNING, message="", error=None)
            self._train()
        except WorkbenchError as err:
            self._fail(err)
        except Exception as err:  # any bug must end the run visibly, not kill the thread
            logger.exception("training run %s failed", self.run_dir)
            self._fail(TrainingError(f"training failed: {type(err).__name__}: {err}"))
        finally:
            self._done.set()

    def _fail(self, err: WorkbenchError) -> None:
        self.error = err
        self._model.train(False)
        self._set_state(RunState.FAILED, error=str(err), message="failed")

    def _train(self) -> None:
        if self.probes and not self.probe_base:
            self._base_probes()
        message = ""
        while self.loop.step < self.loop.total_steps:
            if not self._between_steps():
                break
            self._log(self.loop.train_step())
            self._publish_layer_norms()
            step = self.loop.step
            if step % self.eval_every == 0 and self._evaluate():
                message = self.early.message()
                break
            if step % self.save_every == 0:
                self._save()
        self._finish(message)

    def _finish(self, message: str) -> None:
        ended_early = bool(message) or self._flags["stop"].is_set()
        if not ended_early and self._eval_step != self.loop.step:
            self._evaluate()
        if self._saved_step != self.loop.step:
            self._save()
        self._model.train(False)
        if ended_early:
            self._set_state(RunState.STOPPED, message=message or "stopped by the user")
        else:
            self._set_state(RunState.FINISHED, message="")

    def _between_steps(self) -> bool:
        """Serve requests and hold while paused; ``False`` when the run should stop."""
        saved_rng = None
        while True:
            self._serve_requests()
            if self._flags["stop"].is_set() or not self._flags["pause"].is_set():
                break
            if saved_rng is not None and self._flags["step"].is_set():
                self._flags["step"].clear()  # step_once: leave the pause for one step
                break
            if saved_rng is None:
                saved_rng = self._enter_pause()
            self._wake.wait(_POLL)
            self._wake.clear()
        if saved_rng is not None:
            self._leave_pause(saved_rng)
        return not self._flags["stop"].is_set()

    def _enter_pause(self) -> Any:
        import torch

        self._model.train(False)  # generation while paused must not apply dropout
        self._flags["step"].clear()  # a step_once that raced a resume() must not count here
        self._set_state(RunState.PAUSED)
        return torch.get_rng_state()

    def _leave_pause(self, saved_rng: Any) -> None:
        import torch

        torch.set_rng_state(saved_rng)  # sampling while paused must not change the run
        self._model.train(True)
        self._set_state(RunState.RUNNING)

    def _capture_grad_norms(self) -> None:
        from workbench.train.norms import group_norms, layer_groups

        if self._norm_groups is None:
            self._norm_groups = layer_groups(self._model)
        self._grad_norms = group_norms(self._norm_groups, "grad")

    def _publish_layer_norms(self) -> None:
        from workbench.train.norms import group_norms

        grads, self._grad_norms = self._grad_norms, None
        if grads is None or self._norm_groups is None:
            return
        record = {"step": self.loop.step, "layers": list(self._norm_groups),
                  "weight": group_norms(self._norm_groups, "weight"), "grad": grads}
        with self._lock:
            self.layer_norms.append(record)
        self.events.emit(EVENT_LAYER_NORMS, {"run": str(self.run_dir), **record})

    def _serve_requests(self) -> None:
        if self._flags["eval"].is_set():
            self._flags["eval"].clear()
            if self._evaluate():
                self._flags["stop"].set()
                self._update(message=self.early.message())
        if self._flags["save"].is_set():
            self._flags["save"].clear()
            self._save()

    def _evaluate(self) -> bool:
        """Evaluate and run the probes; ``True`` when early stopping says stop."""
        import torch

        saved_rng = torch.get_rng_state()
        was_training = self._model.training
        try:
            eval_loss = self.loop.evaluate()
            if eval_loss is not None:
                self._log(LogRecord(kind="eval", step=self.loop.step, epoch=round(
                    self.loop.epoch, 4), eval_loss=eval_loss, elapsed=self.loop.elapsed))
            if self.probes:
                self._probe_step()
        finally:
            torch.set_rng_state(saved_rng)
            self._model.train(was_training)
        self._eval_step = self.loop.step
        return eval_loss is not None and self.early.update(eval_loss)

    def _generate(self) -> list[str]:
        from workbench.models.generation import generate_text

        self._model.train(False)
        return generate_text(self._model, self.tokenizer, self.probes,
                             max_new_tokens=self.spec.probe_max_new_tokens)

    def _base_probes(self) -> None:
        import contextlib

        import torch

        saved_rng = torch.get_rng_state()
        disable = getattr(self._model, "disable_adapter", contextlib.nullcontext)
        try:
            with disable():
                self.probe_base = self._generate()
        finally:
            torch.set_rng_state(saved_rng)
            self._model.train(True)
        self._publish_probes({"step": self.loop.step, "base": True, "outputs": self.probe_base})

    def _probe_step(self) -> None:
        row = {"step": self.loop.step, "base": False, "outputs": self._generate()}
        self.probe_history.append(row)
        self._publish_probes(row)

    def _publish_probes(self, row: dict[str, Any]) -> None:
        store.append_jsonl(self.run_dir / store.PROBES, row)
        self.events.emit(EVENT_PROBES, {"run": str(self.run_dir), **row,
                                        "prompts": self.probes, "base_outputs": self.probe_base})

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything besides tensors that a checkpoint must restore.

        Examples:
            >>> # run.checkpoint_state()["step"] -> 10
        """
        return {**self.loop.state(), "early_best": self.early.best, "early_bad": self.early.bad,
                "eval_step": self._eval_step}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` stored (the loop's position included).

        Examples:
            >>> # run.restore_state(load_checkpoint(path, model, opt, sched))
        """
        self.loop.restore(state)
        self.early.best, self.early.bad = float(state["early_best"]), int(state["early_bad"])
        self._eval_step = int(state.get("eval_step", -1))
        self._saved_step = self.loop.step
        self._update(step=self.loop.step, epoch=self.loop.epoch, elapsed=self.loop.elapsed)

    def _save(self) -> Path:
        path = save_checkpoint(self.run_dir, self._model, self.loop.optimizer,
                               self.loop.scheduler, self.checkpoint_state(),
                               self.spec.keep_checkpoints)
        self._saved_step = self.loop.step
        self.events.emit(EVENT_CHECKPOINT, {"run": str(self.run_dir), "step": self.loop.step,
                                            "path": str(path)})
        return path
