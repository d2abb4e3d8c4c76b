"""A training run: the handle the notebook holds, with its controls and read-only views.

The steps run on a background thread, in a :class:`~workbench.train.worker.Worker`; the
:class:`Run` is the thin handle around it. Controls (pause, single step, stop, evaluate now,
save now) go to the worker through one request queue and one condition variable, on which
both sides wait: no polling. Each start of the worker gets a new ``Worker`` object, its
identity token, and the run accepts news (status, log records, probes, the terminal state)
only from the current one, so a worker that was replaced can never overwrite what its
successor publishes. The worker only publishes events (``train_log``, ``train_state``,
``train_probes``, ``train_checkpoint``, ``train_layer_norms``); it never touches a widget.

State machine (see :mod:`workbench.train.status`)::

    created -> running <-> paused        pause() / resume(); step_once() while paused
                  |          |
                  v          v
               stopping -> stopped -> running      stop(); resume() starts a new worker
    running -> finished | failed                   failed: a guard, a collapse, a bug

Examples:
    >>> from workbench.train.status import RunState
    >>> RunState.STOPPING in (RunState.RUNNING, RunState.STOPPING)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workbench._io import interrupts_deferred
from workbench.errors import SessionStateError, SpecError, WorkbenchError
from workbench.events import (
    TRAIN_CHECKPOINT,
    TRAIN_LAYER_NORMS,
    TRAIN_LOG,
    TRAIN_PROBES,
    TRAIN_STATE,
    EventHub,
    TrainCheckpoint,
    TrainLayerNorms,
    TrainLog,
    TrainProbes,
    TrainState,
)
from workbench.train import store
from workbench.train.checkpoint import (
    CHECKPOINTS,
    checkpoint_step,
    load_weights_into,
    set_rng_state,
)
from workbench.train.guards import EarlyStopping
from workbench.train.loop import TrainLoop
from workbench.train.packing import Packing
from workbench.train.records import LogRecord, format_record
from workbench.train.spec import TrainSpec
from workbench.train.status import TERMINAL, RunState, RunStatus
from workbench.train.worker import Worker

__all__ = [
    "EVENT_CHECKPOINT",
    "EVENT_LAYER_NORMS",
    "EVENT_LOG",
    "EVENT_PROBES",
    "EVENT_STATE",
    "Run",
    "block_until_ended",
    "stopped_if_interrupted",
]

logger = logging.getLogger(__name__)

# The run's events (names and payload types live in workbench.events).
EVENT_LOG, EVENT_STATE, EVENT_PROBES = TRAIN_LOG, TRAIN_STATE, TRAIN_PROBES
EVENT_CHECKPOINT, EVENT_LAYER_NORMS = TRAIN_CHECKPOINT, TRAIN_LAYER_NORMS


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
        fork_hooks: A :class:`~workbench.train.fork.ForkHooks` set by the Session (``None``
            for a run started without one): what :meth:`fork` asks of its owner.

    Examples:
        A run of 100 steps on the tiny model, paused, resumed and stopped:

        >>> import shutil
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-run-class", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-run-class", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=100, wait=False)
        >>> run.pause().state
        <RunState.PAUSED: 'paused'>
        >>> run.resume().done
        False
        >>> run.stop().state
        <RunState.STOPPING: 'stopping'>
        >>> run.wait().state
        <RunState.STOPPED: 'stopped'>
        >>> run  # doctest: +ELLIPSIS
        Run('/tmp/wb-doc-run-class/runs/run-001', state=stopped, step=.../100)
    """

    def __init__(
        self,
        run_dir: Path,
        events: EventHub,
        model: Any,
        tokenizer: Any,
        loop: TrainLoop,
        spec: TrainSpec,
        probes: list[str],
        history: list[LogRecord],
        probe_rows: list[dict[str, Any]],
        lock: Any = None,
    ) -> None:
        self.run_dir, self.events, self.spec, self.probes = run_dir, events, spec, probes
        self._model, self.tokenizer, self.loop = model, tokenizer, loop
        self._history = list(history)
        base = [r for r in probe_rows if r.get("base")]
        self.probe_base: list[str] = base[0]["outputs"] if base else []
        self.probe_history = [r for r in probe_rows if not r.get("base")]
        self.early = EarlyStopping(spec.early_stopping)
        self.eval_every, self.save_every = spec.every(loop.total_steps)
        self._lock = lock  # the run folder's RunLock: held while a worker trains
        # One condition guards the status and the requests; both threads wait on it.
        self._cond = threading.Condition()
        self._requests: deque[str] = deque()
        # States set but not yet written and emitted, and the thread writing them out.
        self._outbox: deque[RunStatus] = deque()
        self._publisher: threading.Thread | None = None
        self._pause = self._stop = False
        self._single_steps = 0  # step_once() calls the worker has not begun
        self._stepping = False  # the worker began a single step and is not paused again yet
        self._resumes = 0  # resume() calls so far: a blocked pause() or step_once() returns
        self._restarting = False  # a resume() is starting a new worker
        self._serving: threading.Thread | None = None  # evaluates or saves a stopped run
        self._worker: Worker | None = None  # the current worker: the only one heard
        self._ended_worker: Worker | None = None
        self._last_worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._saved_step = self._eval_step = -1
        # The step of the weights the model holds when early stopping put back the best
        # evaluation's (Worker.restore_best); None: the last step's.
        self._weights_step: int | None = None
        # The random generators as the last worker left them: a stopped run resumed here
        # draws the dropout masks it would have drawn without the stop, whatever ran between.
        self._rng_at_end: dict[str, Any] | None = None
        self._status = RunStatus(
            total_steps=loop.total_steps,
            step=loop.step,
            epoch=loop.epoch,
            elapsed=loop.elapsed,
            run_dir=str(run_dir),
        )
        self._monitor: Any = None
        self.fork_hooks: Any = None
        # What serves the run: a Worker trains in this process; a launched run's worker
        # follows the processes that train it (workbench.train.launch).
        self.worker_class: type = Worker
        # False where another process writes the run folder (the ranks of a launched run,
        # or the notebook following them): the status, history and probes stay in memory.
        self.writes_files = True
        self.launch: Any = None  # the LaunchSpec of a launched run (None: this process)
        # Whether the caller let the base run its shipped code: a launched run's ranks load
        # it again, told so by their launcher (never by run.json, which anyone can write).
        self.trust_remote_code = False
        self.probe_stops: list[str] = []  # end-of-turn strings that end a probe's answer
        self.probe_ids: list[list[int]] | None = None  # the probes as the data's tokens
        # why each setting given as "auto" was decided as it was when the run started
        self.start_choices: dict[str, str] = {}
        self._packing_kept = False  # the first step's packing decision is in run.json
        self._superseded_by: Run | None = None  # the fork its model was handed to
        self._let_go: str | None = None  # why its model and optimizer were let go of
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
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-model", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-model", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> run.wait().state
            <RunState.FINISHED: 'finished'>
            >>> type(run.model).__name__
            'PeftModelForCausalLM'
            >>> from workbench.models.generation import generate_text
            >>> len(generate_text(run.model, run.tokenizer, ["Hi", "Bye"], max_new_tokens=3))
            2
        """
        if self._let_go is not None:
            raise SessionStateError(self._let_go_message("run.model"))
        return self._model

    @property
    def choices(self) -> dict[str, str]:
        """Settings the run chose for itself, each with its reason.

        ``"batch_size"`` when the run was started with ``batch_size="auto"``
        (:mod:`workbench.train.batch_size`); ``"gradient_checkpointing"`` when ``"auto"``
        turned it on for a quantized base on CUDA
        (:func:`~workbench.train.prepare.choose_checkpointing`); ``"packing"`` once the first
        step decided whether to pack (``packing="auto"`` packs on CUDA only;
        :mod:`workbench.train.packing`), in this process or, for a launched run or one resumed
        from its folder, as ``run.json`` recorded it.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-choices", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-choices", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)])
            >>> run = s.train(max_steps=2, batch_size="auto", wait=False)
            >>> run.wait().state
            <RunState.FINISHED: 'finished'>
            >>> run.spec.batch_size, sorted(run.choices)
            (8, ['batch_size', 'packing'])
            >>> run.choices["packing"][:41]
            "packing='auto' packs on CUDA only; on cpu"
        """
        found = dict(self.start_choices)
        packing = getattr(self.loop, "packing", None) or self._saved_packing()
        if packing is not None:
            found["packing"] = packing.reason
        return found

    def _saved_packing(self) -> Packing | None:
        """The packing ``run.json`` records: the decision of a step this process did not
        run (a launched run's rank 0, or the run's steps before a resume from its folder)."""
        try:
            return Packing.recorded(store.read_meta(self.run_dir))
        except (OSError, WorkbenchError):  # a folder gone or damaged: nothing recorded
            return None

    @property
    def status(self) -> RunStatus:
        """The latest :class:`RunStatus` snapshot.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-status", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-status", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> status = run.wait()
            >>> status is run.status, status.state.value, status.step, status.total_steps
            (True, 'finished', 2, 2)
            >>> status.done, status.progress, status.eta
            (True, 1.0, 0.0)
        """
        return self._status

    @property
    def state(self) -> RunState:
        """The current :class:`RunState`.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-state", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-state", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.state
            <RunState.RUNNING: 'running'>
            >>> run.stop().state
            <RunState.STOPPING: 'stopping'>
            >>> _ = run.wait()
            >>> run.state
            <RunState.STOPPED: 'stopped'>
        """
        return self._status.state

    @property
    def resuming(self) -> bool:
        """``resume()`` was called on the paused run and its worker has not taken it up yet
        (tens of milliseconds): ``state`` still says paused, but the run trains from now on.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-resuming", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-resuming", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.pause().state, run.resuming
            (<RunState.PAUSED: 'paused'>, False)
            >>> _ = run.resume(); run.resuming or run.state.value == "running"
            True
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        with self._cond:
            paused = self._status.state is RunState.PAUSED
            return paused and not self._pause and not self._stop

    @property
    def pending_steps(self) -> int:
        """Single steps asked with :meth:`step_once` that the worker has not begun yet.

        Each ``step_once()`` on a paused run adds one; the worker takes them in order, so a
        cell that asked for three (``wait=False``) sees this count down to 0.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-pending", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-pending", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> _ = run.pause()
            >>> run.step_once().state, run.pending_steps
            (<RunState.PAUSED: 'paused'>, 0)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        with self._cond:
            return self._single_steps

    @property
    def history(self) -> list[LogRecord]:
        """Every logged record so far (train steps, evaluations, warnings), oldest first.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-history", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-history", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> _ = run.wait()
            >>> [(r.kind, r.step) for r in run.history]
            [('train', 1), ('eval', 1), ('train', 2), ('eval', 2)]
            >>> all(r.loss > 0 for r in run.history if r.kind == "train")
            True
        """
        with self._cond:
            return list(self._history)

    @property
    def diagnostics(self) -> Any:
        """Findings in words about this run so far (overfitting, a flat loss, gradient spikes).

        A :class:`~workbench.widgets._findings.Diagnosis` (a list of
        :class:`~workbench.diagnostics.Finding`, each with ``kind``, ``evidence`` and one
        ``suggestion``), recomputed from :attr:`history` on each call, live or finished.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-diagnostics", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-diagnostics", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=5, lr=1e-9, batch_size=8, wait=False)
            >>> _ = run.wait()
            >>> [(f.kind, f.step) for f in run.diagnostics]  # lr 1e-9 trains nothing
            [('flat_loss', 5)]
        """
        from workbench.diagnostics import diagnose
        from workbench.widgets._findings import Diagnosis

        failed = self._status.error if self._status.state is RunState.FAILED else None
        found = diagnose(
            self.history,
            total_steps=self._status.total_steps,
            early_stopping=self.spec.early_stopping,
            failed=failed,
            weights_step=self.weights_step,
        )
        return Diagnosis(found)

    # -- controls (called from the main thread) -------------------------------------------
    def pause(self, wait: bool = True, timeout: float | None = None) -> RunStatus:
        """Pause after the current step; with ``wait``, block until the worker is paused.

        Paused means settled: a single step asked for (:meth:`step_once`) is taken first.
        The wait also ends when the run ends, or when ``resume()`` is called meanwhile.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-pause", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-pause", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.pause().state
            <RunState.PAUSED: 'paused'>
            >>> run.status.step < 100
            True
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        with self._cond:
            if self._status.done or self._stop:
                return self._status
            self._pause = True
            self._cond.notify_all()
            if wait and not self._on_worker_thread():
                resumes = self._resumes
                self._cond.wait_for(lambda: self._settled() or self._resumes != resumes, timeout)
            return self._status

    def resume(self) -> RunStatus:
        """Continue a paused run, or a stopped one in this process, from where it was.

        Raises:
            SpecError: the run finished or failed, so there is nothing to continue.
            SessionStateError: the run is still stopping (``wait()`` for it first), it
                was forked and its model now trains the fork (:attr:`superseded_by`), or
                another Run resumed its folder since it stopped.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-resume", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-resume", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
            >>> run.resume().state  # a new worker goes on from the step it stopped at
            <RunState.RUNNING: 'running'>
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        if self._status.state is RunState.STOPPED:  # another Run went on: say that first
            self._check_folder_not_moved_on()
        self._check_not_superseded("resume")
        with self._cond:
            state = self._status.state
            if state in (RunState.FINISHED, RunState.FAILED):
                msg = (
                    f"the run is {state.value}; nothing to resume. Start a new run, or "
                    "Session.resume(folder) to continue from its last checkpoint."
                )
                raise SpecError(msg)
            if state is RunState.STOPPING:
                msg = (
                    "the run is still stopping (saving its checkpoint): call run.wait(), "
                    "then run.resume()."
                )
                raise SessionStateError(msg)
            me = threading.current_thread()
            if state is RunState.STOPPED and self._serving not in (None, me):
                # evaluate_now()/save_now() of the stopped run is using the model on another
                # thread: a new worker would train it under that evaluation or checkpoint.
                self._cond.wait_for(lambda: self._serving is None)
                state = self._status.state
            self._pause, self._single_steps = False, 0
            self._resumes += 1
            self._cond.notify_all()
            # One new worker, even when two threads resume a stopped run at once.
            restart = (
                state is RunState.STOPPED
                and self.loop.step < self.loop.total_steps
                and not self._restarting
            )
            self._restarting = self._restarting or restart
        if restart:
            try:
                self.start()
            finally:
                with self._cond:
                    self._restarting = False
        return self._status

    def step_once(self, wait: bool = True, timeout: float | None = None) -> RunStatus:
        """Run exactly one optimizer step on the worker thread, then stay paused.

        The worker publishes ``paused -> running -> paused`` (``-> finished`` when that was
        the last step); an evaluation or checkpoint due at that step happens as usual. Calls
        made before the worker takes the step each take one more. With ``wait``, block until
        the worker has taken this step (and any asked before it) and is paused again, or the
        run ended, or ``resume()`` was called meanwhile.

        Raises:
            SpecError: the run is not paused (or is resuming or stopping, its state still
                paused for a moment).

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-step-once", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-step-once", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> before = run.pause().step
            >>> run.step_once().step - before, run.state
            (1, <RunState.PAUSED: 'paused'>)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
            >>> run.step_once()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SpecError: step_once needs a paused run, but it is stopped: call ...
        """
        with self._cond:
            status = self._status
            state = status.state.value
            if status.state is RunState.PAUSED and (self._stop or not self._pause):
                # stop() or resume() was called and the worker has not yet said so: a step
                # asked now would be left over for a later pause.
                state = "stopping" if self._stop else "resuming"
            if state != "paused":
                msg = f"step_once needs a paused run, but it is {state}: call run.pause() first."
                raise SpecError(msg)
            self._single_steps += 1
            # After the step under way (begun, not yet logged) and those asked before.
            target = status.step + self._single_steps + int(self._stepping)
            resumes = self._resumes
            self._cond.notify_all()
            if wait and not self._on_worker_thread():
                self._cond.wait_for(
                    lambda: self._settled(target) or self._resumes != resumes, timeout
                )
            return self._status

    def _settled(self, step: int = 0) -> bool:
        """Ended, or paused at ``step`` or later with no single step asked or under way."""
        status = self._status
        return status.done or (
            status.state is RunState.PAUSED
            and status.step >= step
            and not self._single_steps
            and not self._stepping
        )

    def track_layer_norms(self, on: bool = True) -> None:
        """Record per-block adapter weight and gradient norms after every step from now on.

        Each record, ``{"step", "layers", "weight", "grad"}``, is appended to
        :attr:`layer_norms` and published as ``train_layer_norms``. Gradient norms are taken
        before clipping, weight norms after the update. ``TrainSpec(track_layer_norms=True)``
        turns this on from the first step.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-layer-norms", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-layer-norms", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.pause().state
            <RunState.PAUSED: 'paused'>
            >>> run.track_layer_norms()
            >>> step = run.step_once().step
            >>> record = run.layer_norms[-1]
            >>> record["step"] == step, record["layers"], len(record["grad"]), len(record["weight"])
            (True, [0, 1], 2, 2)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        self.loop.on_gradients = self._capture_grad_norms if on else None

    def stop(self) -> RunStatus:
        """Finish the current step, save a checkpoint and end (state stopped).

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-stop", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-stop", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.stop().state
            <RunState.STOPPING: 'stopping'>
            >>> status = run.wait()
            >>> status.state, status.message
            (<RunState.STOPPED: 'stopped'>, 'stopped by the user')
            >>> saved = [p.name for p in (run.run_dir / "checkpoints").iterdir()]
            >>> saved == [f"step-{status.step:08d}"]  # a checkpoint of the step it stopped at
            True
        """
        with self._cond:
            if self._status.done or self._worker is None or self._stop:
                return self._status  # a second stop() (a double click) publishes nothing
            self._stop = True
            self._cond.notify_all()  # wakes a paused worker, whatever the state below does
            # Set under the same lock as the flag: the worker may end the run as soon as it
            # wakes, and stop() must still report (and publish) the stopping it asked for.
            self._apply_state(self._worker, RunState.STOPPING)
            stopping = self._status
        self._publish_states()
        return stopping

    def evaluate_now(self) -> None:
        """Evaluate (and regenerate probes) at the next step boundary, even while paused.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-evaluate-now", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-evaluate-now", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> _ = run.wait()
            >>> evals = [r for r in run.history if r.kind == "eval"]
            >>> run.evaluate_now()  # the run has ended, so it is evaluated at once
            >>> len([r for r in run.history if r.kind == "eval"]) - len(evals)
            1
        """
        self._ask("eval")

    def save_now(self) -> None:
        """Write a checkpoint at the next step boundary, even while paused.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-save-now", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-save-now", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> _ = run.wait()
            >>> saved = []
            >>> off = s.on("train_checkpoint", saved.append)
            >>> run.save_now()  # the run has ended, so it is saved at once
            >>> [(event.step, Path(event.path).name) for event in saved]
            [(2, 'step-00000002')]
            >>> off()
        """
        self._ask("save")

    def wait(
        self, timeout: float | None = None, progress: bool = False, step: int | None = None
    ) -> RunStatus:
        """Block until the run ends; with ``progress``, print a line per logged record.

        It returns only once the worker has published its terminal state, which is its last
        act, so the model is free when it returns. Lines are printed by the calling thread,
        so they land in the caller's cell.

        In a notebook the monitor's buttons keep working while this blocks: the cell serves
        the widgets' messages every few hundredths of a second
        (:mod:`workbench.widgets._kernel`), so Pause, Stop or Evaluate now clicked during a
        ``run.wait()`` act at once.

        Args:
            timeout: Seconds to wait at most; then the status as it is.
            progress: Print a line per logged record.
            step: Return as soon as the run has reached this step (or ended), e.g. to pause
                it there.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-wait", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-wait", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=6, wait=False)
            >>> run.wait(step=3).step >= 3  # returns once step 3 is done
            True
            >>> status = run.wait()
            >>> status.state, status.step, run.wait().state
            (<RunState.FINISHED: 'finished'>, 6, <RunState.FINISHED: 'finished'>)
        """
        from workbench._display import notebook_kernel, print_line

        lines: list[str] = []
        unsubscribe = self._subscribe_lines(lines) if progress else (lambda: None)
        deadline = None if timeout is None else time.monotonic() + timeout

        def reached() -> bool:
            ended = self._ended() and self._published()
            return ended or (step is not None and self._status.step >= step)

        pump = None
        if notebook_kernel() is not None:  # serve the panels' buttons while this blocks
            from workbench.widgets._kernel import widget_pump

            pump = widget_pump()
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                with self._cond:
                    self._cond.wait_for(
                        lambda: lines or reached(), left if pump is None else pump.slice(left)
                    )
                    batch, lines[:] = list(lines), []
                    ended = reached()
                for line in batch:
                    print_line(line)
                if ended or (deadline is not None and time.monotonic() >= deadline):
                    if self._status.done and self._monitor is not None:
                        self._monitor.finalise()  # sent from this cell: nbclient applies it
                    return self._status
                if pump is not None:
                    pump.serve()
        finally:
            unsubscribe()
            if pump is not None:
                pump.close()

    def monitor(self, teaching: bool | None = None) -> Any:
        """The :class:`~workbench.widgets.TrainingMonitor` of this run (one per run).

        Args:
            teaching: Show the single-step button and the layer-norm heatmap (and track layer
                norms from now on). ``None``: keep the current monitor, or for a first one
                follow ``spec.track_layer_norms``. A different value builds a new monitor.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-monitor", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-monitor", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> _ = run.wait()
            >>> monitor = run.monitor()
            >>> monitor is run.monitor(), monitor.teaching
            (True, False)
            >>> monitor.status_text().split(" · ")[:2]
            ['finished', 'step 2/2']
            >>> teaching = run.monitor(teaching=True)
            >>> teaching is monitor, teaching.teaching
            (False, True)
            >>> teaching.close()
            >>> run.monitor(teaching=True) is teaching  # a closed monitor is built anew
            False
            >>> run.monitor().close()
            >>> monitor.close()
        """
        from workbench.widgets._closing import is_closed

        current = self._monitor
        if (
            current is None
            or is_closed(current)
            or (teaching is not None and current.teaching != teaching)
        ):
            from workbench.widgets.training_monitor import TrainingMonitor

            if teaching is None:
                teaching = self.spec.track_layer_norms
            if teaching:
                self.track_layer_norms()
            self._monitor = TrainingMonitor(self, teaching=teaching)
        return self._monitor

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.monitor()._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        # A run that has ended shows its static snapshot (run.monitor() shows a live panel),
        # unless it was stopped with steps left: its live panel has the Resume button.
        status = self._status
        resumable = status.state.value == "stopped" and status.step < status.total_steps
        show(self.monitor(), live=resumable or not (status.done and self._ended()))

    # -- forks ----------------------------------------------------------------------------
    def fork(self, step: int, wait: bool | None = None, **changes: Any) -> Run:
        """A new run from this run's checkpoint at ``step``, with ``changes`` to its settings.

        "What if I had lowered the learning rate here?": the fork starts from the weights,
        optimizer state, RNG and data position saved at ``step``, with the new settings (the
        new ``lr`` becomes the schedule's peak; the schedule is rebuilt for the fork's total
        steps), in a new run folder beside this one whose ``run.json`` records
        ``forked_from``. Unchanged settings reproduce this run's losses after ``step``. It
        trains this run's model, which it takes over (:attr:`superseded_by`), and in a
        Session it becomes ``s.run``. The details are in :mod:`workbench.train.fork`.

        Args:
            step: The step of a checkpoint; a paused run may also fork at the step it is
                paused at (it is stopped first, saving it). Keep more checkpoints with
                ``save_every=`` and ``keep_checkpoints="all"``.
            wait: Block until the fork ends, printing progress. By default, like
                ``Session.train``: block in a script, return at once in a notebook.
            **changes: ``lr``, ``epochs``, ``max_steps``, ``scheduler``, ``warmup``,
                ``early_stopping``, ``eval_every``, ``save_every``, ``keep_checkpoints``,
                ``max_grad_norm``, ``grad_norm_limit``, ``probe_max_new_tokens``,
                ``track_layer_norms``, ``fast_loss``, ``packing``, ``compile``, or the data
                cutoff ``max_length``.

        Raises:
            SpecError: no checkpoint at ``step`` (the message lists those there are), or a
                setting that defines the adapter's shape or the data order (``method``,
                ``lora``, ``quantization``, ``batch_size``...) would change.
            SessionStateError: the run is running or stopping: pause or stop it first.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-fork", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-fork", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=6, save_every=3, wait=False)
            >>> _ = run.wait()
            >>> fork = run.fork(step=3, lr=1e-4, wait=False)
            >>> fork.wait().state, fork.run_dir.name, s.run is fork
            (<RunState.FINISHED: 'finished'>, 'run-002', True)
            >>> [r.step for r in fork.history if r.kind == "train"]  # the parent's 1-3, its 4-6
            [1, 2, 3, 4, 5, 6]
            >>> fork.parent == run.run_dir, [p.name for p in run.forks], run.superseded_by is fork
            (True, ['run-002'], True)
        """
        from workbench.train.fork import fork_run

        if self._let_go is not None:  # its model, which the fork would train, is gone
            raise SessionStateError(self._let_go_message("fork()"))
        return fork_run(self, step, wait=wait, **changes)

    @property
    def forks(self) -> list[Path]:
        """The run folders forked from this run (read from the folders beside it), in order.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-forks", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-forks", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=4, save_every=2, wait=False)
            >>> run.wait().state, run.forks
            (<RunState.FINISHED: 'finished'>, [])
            >>> first = run.fork(step=2, lr=1e-4, wait=False)
            >>> _ = first.wait()
            >>> second = run.fork(step=4, max_steps=6, wait=False)
            >>> _ = second.wait()
            >>> [p.name for p in run.forks]
            ['run-002', 'run-003']
        """
        from workbench.train.fork import forks_of

        return forks_of(self.run_dir)

    @property
    def parent(self) -> Path | None:
        """The run folder this run was forked from (``None``: it was not forked).

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-parent", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-parent", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=4, save_every=2, wait=False)
            >>> run.wait().state, run.parent
            (<RunState.FINISHED: 'finished'>, None)
            >>> fork = run.fork(step=2, lr=1e-4, wait=False)
            >>> fork.parent.name, fork.wait().state
            ('run-001', <RunState.FINISHED: 'finished'>)
        """
        from workbench.train.fork import forked_from

        origin = forked_from(self.run_dir)
        return None if origin is None else self.run_dir.parent / origin["run"]

    @property
    def superseded_by(self) -> Run | None:
        """The fork that took over this run's model (``None``: the model is still this run's).

        The model in memory is shared, so once forked this run no longer resumes, evaluates
        or saves in this process; ``Session.resume(folder)`` continues it on a reloaded model.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-superseded", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-superseded", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, save_every=5, wait=False)
            >>> at = run.pause().step  # a paused run forks at the step it is paused at
            >>> fork = run.fork(step=at, lr=1e-4, max_steps=at + 2, wait=False)
            >>> run.state, run.superseded_by is fork, fork.wait().step == at + 2
            (<RunState.STOPPED: 'stopped'>, True, True)
            >>> run.save_now()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SessionStateError: save_now() is refused: run-001 handed its model ...
        """
        return self._superseded_by

    def _check_folder_not_moved_on(self) -> None:
        """Refuse to restart a stopped handle whose folder another Run has trained on since
        (a ``Session.resume`` of the folder, here or in another kernel): going on from this
        handle's step appended a second trajectory to the history and the checkpoints."""
        try:
            recorded = store.read_status(self.run_dir)
        except (OSError, WorkbenchError, ValueError):
            return  # unreadable: the restart itself says what is wrong with the folder
        step, state = recorded.get("step"), recorded.get("state")
        if not isinstance(step, int) or isinstance(step, bool) or step <= self._status.step:
            return  # not further on: this handle's own stop may still be being written
        msg = (
            f"resume() is refused: {self.run_dir.name} went on without this Run: its folder "
            f"says {state} at step {step}, where this Run stopped at step "
            f"{self._status.step} (another Run resumed it). Use that Run (s.run), or "
            f"Session.resume({str(self.run_dir)!r}) to go on from the folder's last checkpoint."
        )
        raise SessionStateError(msg)

    def _check_not_superseded(self, call: str) -> None:
        fork = self._superseded_by
        if fork is not None:
            msg = (
                f"{call}() is refused: {self.run_dir.name} handed its model to its fork "
                f"{fork.run_dir.name}, so it can no longer go on in this process. "
                f"Session.resume({str(self.run_dir)!r}) continues it on a reloaded model."
            )
            raise SessionStateError(msg)
        if self._let_go is not None:
            raise SessionStateError(self._let_go_message(f"{call}()"))

    def _let_go_message(self, call: str) -> str:
        return (
            f"{call} is refused: {self.run_dir.name}'s model and optimizer were let go of "
            f"when {self._let_go}. Its checkpoints keep them: "
            f"Session.resume({str(self.run_dir)!r}) continues it on a reloaded model."
        )

    def let_go(self, why: str) -> bool:
        """Drop the model, optimizer and data an ended run holds, once its session has moved
        on (``why``: "the session loaded another model"); its history, status and folder
        stay. Returns whether it let go (a run that is not ended keeps everything).

        A view of the run (its monitor, kept open in the notebook) otherwise kept a whole
        model and optimizer alive per run, all day. Afterwards :attr:`model`, ``resume()``,
        ``evaluate_now()`` and ``save_now()`` say why they cannot, and how to go on from the
        run's checkpoints.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-let-go", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-let-go", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> run.let_go("the session loaded another model")  # still training: kept
            False
            >>> _ = run.wait()
            >>> run.let_go("the session loaded another model"), run.status.step
            (True, 2)
            >>> run.model  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SessionStateError: run.model is refused: run-001's model and ...
        """
        with self._cond:
            if self._let_go is not None:
                return True  # let go already
            busy = self._serving is not None or self._restarting
            if not self._status.done or busy or not self._ended():
                return False
            self._let_go = why
            self._model = self._last_worker = self._ended_worker = self._worker = None
            self._norm_groups = None
        self.loop.let_go()
        return True

    def __repr__(self) -> str:
        s = self._status
        return f"Run({str(self.run_dir)!r}, state={s.state.value}, step={s.step}/{s.total_steps})"

    # -- thread plumbing ------------------------------------------------------------------
    def start(self) -> None:
        """Start a new worker thread (``start_run`` does this; ``resume()`` after ``stop()``).

        The state becomes ``running`` before this returns, so a ``wait()`` right after it
        waits for the new worker, never returns on the previous one's end.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-start", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-start", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, wait=False)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
            >>> run.start()  # what resume() does after stop()
            >>> run.state
            <RunState.RUNNING: 'running'>
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()  # the previous worker already published its end; let it exit
        self._back_to_last_step()  # before the lock: if it cannot, nothing is held
        if self._lock is not None:
            self._lock.acquire()
        worker = self.worker_class(self)
        # From here until the thread runs and the guards know it, a Ctrl-C waits: half-way,
        # the run would be "running" with no thread to end it, or training unknown to them.
        with interrupts_deferred():
            with self._cond:
                self._worker, self._stop, self._ended_worker = worker, False, None
                self._stepping = False
                self.error = None
            self._set_state(worker, RunState.RUNNING, message="", error=None)
            self._thread = threading.Thread(
                target=worker.main, name=f"train:{self.run_dir.name}", daemon=True
            )
            self._thread.start()
            for started in _open_guards():
                started.append(self)

    def _back_to_last_step(self) -> None:
        """A stopped run goes on as it stopped: with its last step's weights (early stopping
        ended it on its best) and random generators (others may have used them since)."""
        if self._weights_step is not None:
            last = self.run_dir / CHECKPOINTS / f"step-{self.loop.step:08d}"
            if not last.is_dir():
                msg = (
                    f"the run cannot go on from step {self.loop.step} here: that step's "
                    f"checkpoint {last} is gone, and the model holds step "
                    f"{self._weights_step}'s weights (early stopping's best). "
                    f"Session.resume({str(self.run_dir)!r}) goes on from its newest intact "
                    "checkpoint."
                )
                raise SpecError(msg)
            load_weights_into(last, self.model)
            self._weights_step = None
        if self._rng_at_end is not None:
            set_rng_state(self._rng_at_end)
            self._rng_at_end = None

    @property
    def weights_step(self) -> int:
        """The step whose weights the model holds: the last one trained, or with
        ``early_stopping`` the step of the lowest eval loss, which the run ends on.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-weights-step", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-weights-step", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.train(max_steps=2, wait=False).wait().step, s.run.weights_step
            (2, 2)
        """
        return self._weights_step if self._weights_step is not None else self.loop.step

    def _ask(self, request: str) -> None:
        """Queue a request for the worker, or serve it here when no worker runs.

        Served here one thread at a time, and a resume() from another thread waits for it: the
        model is never evaluated or saved while it trains or while another thread does so.
        """
        self._check_not_superseded("evaluate_now" if request == "eval" else "save_now")
        me = threading.current_thread()
        with self._cond:
            self._cond.wait_for(lambda: self._serving in (None, me))
            if (self._worker is not None and not self._status.done) or self._restarting:
                self._requests.append(request)  # the (new) worker serves it
                self._cond.notify_all()
                return
            outer, self._serving = self._serving, me
            worker = self._last_worker or self.worker_class(self)
        try:
            if request == "eval":
                worker.evaluate()
            else:
                worker.save()
        finally:
            with self._cond:
                self._serving = outer
                self._cond.notify_all()

    def _on_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _ended(self) -> bool:
        """The current worker published its terminal state (or none was ever started)."""
        return self._worker is None or self._ended_worker is self._worker

    def _next_action(self, worker: Worker, timeout: float | None = None) -> str:
        """What ``worker`` does next: ``eval``, ``save``, ``pause``, ``step``, ``stop``, ``go``.

        Blocks on the run's condition while the run is paused and nothing is asked; with a
        ``timeout``, returns ``hold`` (stay paused, ask again) when it passes first.
        """
        with self._cond:
            while True:
                if self._worker is not worker or self._stop:
                    return "stop"
                if self._requests:
                    return self._requests.popleft()
                if not self._pause:
                    self._stepping = False
                    return "go"
                if not worker.paused:
                    self._stepping = False  # a single step is over: pause again
                    return "pause"
                if self._single_steps:
                    self._single_steps -= 1
                    self._stepping = True
                    return "step"
                if not self._cond.wait(timeout):
                    return "hold"

    def _stop_requested(self, worker: Worker) -> bool:
        with self._cond:
            return self._stop or self._worker is not worker

    def _subscribe_lines(self, lines: list[str]) -> Any:
        total = self.loop.total_steps

        def add(line: str) -> None:
            with self._cond:
                lines.append(line)
                self._cond.notify_all()

        def on_log(payload: TrainLog) -> None:
            if payload.run == str(self.run_dir):
                add(format_record(payload.record, total))

        def on_state(payload: TrainState) -> None:
            status = payload.status
            if payload.run == str(self.run_dir):
                text = status.error or status.message
                add(f"{status.state.value}" + (f": {text}" if text else ""))

        offs = [self.events.on(TRAIN_LOG, on_log), self.events.on(TRAIN_STATE, on_state)]
        return lambda: [off() for off in offs]

    # -- publishing: only the current worker's news reaches the status and the events ------
    def _set_state(self, worker: Worker | None, state: RunState, **changes: Any) -> bool:
        with self._cond:
            applied = self._apply_state(worker, state, **changes)
        if applied:
            self._publish_states()
        return applied

    def _apply_state(self, worker: Worker | None, state: RunState, **changes: Any) -> bool:
        """Change the status and queue it for publishing; the caller holds ``_cond``."""
        current = self._status.state
        stale = worker is not self._worker
        # stop() wins over a worker's late running/paused; an ended run stays ended.
        if (
            stale
            or (current in TERMINAL and state is not RunState.RUNNING)
            or (current is RunState.STOPPING and state in (RunState.RUNNING, RunState.PAUSED))
        ):
            return False
        self._status = dataclasses.replace(self._status, state=state, **changes)
        self._outbox.append(self._status)
        self._cond.notify_all()
        return True

    def _publish_states(self) -> None:
        """Write ``status.json`` and emit ``train_state`` for each state set, in order.

        Two threads set states (``stop()`` the caller's, the worker the rest): whichever is
        publishing goes on with what the other set meanwhile, so neither the file nor the
        events ever go back to an older state, and no thread waits on another's listeners.
        """
        with self._cond:
            if self._publisher is not None:
                return  # the thread publishing now publishes this one too
            self._publisher = threading.current_thread()
        try:
            while True:
                with self._cond:
                    if not self._outbox:
                        self._publisher = None
                        self._cond.notify_all()
                        return
                    status = self._outbox.popleft()
                try:
                    if self.writes_files:
                        store.write_status(self.run_dir, status.to_dict())
                except OSError as err:  # the status in memory and the events stay the truth
                    logger.warning("could not write %s/status.json: %s", self.run_dir, err)
                self.events.emit(TRAIN_STATE, TrainState(str(self.run_dir), status))
        except BaseException:
            with self._cond:
                self._publisher = None
                self._cond.notify_all()
            raise

    def _published(self) -> bool:
        """No other thread is still writing out states (this one may be, from a listener)."""
        return self._publisher is None or self._publisher is threading.current_thread()

    def _end(
        self, worker: Worker, state: RunState, err: WorkbenchError | None = None, **changes: Any
    ) -> None:
        """The worker's last act: release the folder, then publish the terminal state.

        The end is marked even when publishing fails (a deleted folder), so ``wait()``
        always returns.
        """
        try:
            if self._lock is not None and worker is self._worker:
                self._lock.release()
            if worker is self._worker:
                self.error = err
            self._set_state(worker, state, **changes)
        finally:
            with self._cond:
                if worker is self._worker:
                    self._ended_worker, self._last_worker = worker, worker
                    self._cond.notify_all()

    def _log(self, worker: Worker, record: LogRecord) -> None:
        with self._cond:
            if worker is not self._worker:
                return
        if self.writes_files:  # on disk first: a waiter woken at this step finds it there
            store.append_jsonl(self.run_dir / store.HISTORY, record.to_dict())
            if record.kind == "train" and not self._packing_kept:
                self._keep_packing()
        with self._cond:  # the history and the status together: none is read ahead of the other
            self._history.append(record)
            if record.kind == "train":
                self._status = dataclasses.replace(
                    self._status,
                    step=record.step,
                    epoch=record.epoch,
                    loss=record.loss,
                    tokens_per_s=record.tokens_per_s,
                    memory=record.memory,
                    elapsed=record.elapsed or 0.0,
                )
            elif record.kind == "eval":
                self._status = dataclasses.replace(self._status, eval_loss=record.eval_loss)
            status = self._status
            self._cond.notify_all()
        self.events.emit(TRAIN_LOG, TrainLog(str(self.run_dir), record, status))

    def _keep_packing(self) -> None:
        """Record the first step's packing decision in ``run.json`` (``packing_choice``).

        A folder read later (``TrainingMonitor.from_folder``) shows it; a resumed run's first
        step records its own decision when it differs.
        """
        packing = getattr(self.loop, "packing", None)
        if packing is None:
            return
        self._packing_kept = True
        try:
            meta = store.read_meta(self.run_dir)
            if Packing.recorded(meta) != packing:
                store.write_meta(self.run_dir, {**meta, "packing_choice": packing.record()})
        except (OSError, SpecError) as err:  # the run goes on; run.choices still says it
            logger.warning("could not record packing in %s/run.json: %s", self.run_dir, err)

    def _publish_probes(self, worker: Worker, row: dict[str, Any]) -> None:
        with self._cond:
            if worker is not self._worker and worker is not self._last_worker:
                return
            # A second evaluation at one step (Evaluate now while paused at a scheduled one)
            # replaces that step's answers, here and on disk: one row per step.
            same = [] if row.get("base") else [r["step"] for r in self.probe_history]
            if row.get("base"):
                self.probe_base = row["outputs"]
            elif row["step"] in same:
                self.probe_history[same.index(row["step"])] = row
            else:
                self.probe_history.append(row)
        if not self.writes_files:
            pass
        elif row["step"] in same:
            rows = store.read_jsonl(self.run_dir / store.PROBES)
            gone = [
                k for k, r in enumerate(rows) if not r.get("base") and r.get("step") == row["step"]
            ]
            rows = [r for k, r in enumerate(rows) if k not in gone]
            rows.insert(gone[0] if gone else len(rows), row)  # where the step's row was
            store.rewrite_jsonl(self.run_dir / store.PROBES, rows)
        else:
            store.append_jsonl(self.run_dir / store.PROBES, row)
        self.events.emit(
            TRAIN_PROBES,
            TrainProbes(
                str(self.run_dir),
                row["step"],
                bool(row.get("base")),
                tuple(row["outputs"]),
                tuple(self.probes),
                tuple(self.probe_base),
            ),
        )

    def _publish_layer_norms(self, worker: Worker, record: dict[str, Any]) -> None:
        with self._cond:
            if worker is not self._worker:
                return
            self.layer_norms.append(record)
        self.events.emit(
            TRAIN_LAYER_NORMS,
            TrainLayerNorms(
                str(self.run_dir),
                record["step"],
                tuple(record["layers"]),
                tuple(record["weight"]),
                tuple(record["grad"]),
            ),
        )

    def _checkpoint_saved(self, worker: Worker, path: Path) -> None:
        self.events.emit(
            TRAIN_CHECKPOINT, TrainCheckpoint(str(self.run_dir), checkpoint_step(path), str(path))
        )

    def _capture_grad_norms(self) -> None:
        from workbench.train.norms import group_norms, layer_groups

        if self._norm_groups is None:
            self._norm_groups = layer_groups(self._model)
        self._grad_norms = group_norms(self._norm_groups, "grad")

    # -- checkpoint state -----------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything besides tensors that a checkpoint must restore.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-checkpoint-state", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-checkpoint-state", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> _ = run.wait()
            >>> state = run.checkpoint_state()
            >>> sorted(state)
            ['early_bad', 'early_best', 'early_best_step', 'elapsed', 'eval_step', 'micro', 'step']
            >>> state["step"], state["eval_step"]
            (2, 2)
        """
        return {
            **self.loop.state(),
            "early_best": self.early.best,
            "early_bad": self.early.bad,
            # its checkpoint is kept from pruning: the run ends on its weights
            "early_best_step": self.early.best_step if self.spec.early_stopping else -1,
            "eval_step": self._eval_step,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` stored (the loop's position included).

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-run-restore-state", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-run-restore-state", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> from workbench.train.checkpoint import list_checkpoints, load_checkpoint
            >>> _ = run.wait()
            >>> first = list_checkpoints(run.run_dir)[0]
            >>> first.name
            'step-00000001'
            >>> loop = run.loop
            >>> run.restore_state(load_checkpoint(first, run.model, loop.optimizer, loop.scheduler))
            >>> run.status.step, loop.step
            (1, 1)
        """
        self.loop.restore(state)
        self.early.best, self.early.bad = float(state["early_best"]), int(state["early_bad"])
        self.early.best_step = int(state.get("early_best_step", -1))  # older checkpoints lack it
        self._eval_step = int(state.get("eval_step", -1))
        self._saved_step = self.loop.step
        with self._cond:
            self._status = dataclasses.replace(
                self._status,
                step=self.loop.step,
                epoch=self.loop.epoch,
                elapsed=self.loop.elapsed,
                **self._last_logged(self.loop.step),
            )

    def _last_logged(self, step: int) -> dict[str, Any]:
        """The status figures the history logged up to ``step`` (a resumed run shows its
        checkpoint's loss until it logs a step, and a finished one resumed keeps its own)."""
        trained = [r for r in self._history if r.kind == "train" and r.step <= step]
        evals = [
            r
            for r in self._history
            if r.kind == "eval" and r.step <= step and r.eval_loss is not None
        ]
        last = trained[-1] if trained else None
        figures = {
            "loss": last.loss if last else None,
            "tokens_per_s": last.tokens_per_s if last else None,
            "memory": last.memory if last else None,
        }
        return {**figures, "eval_loss": evals[-1].eval_loss if evals else None}


def block_until_ended(run: Run, progress: bool = True) -> Run:
    """Block until ``run`` ends, printing progress (a line per step with ``progress``), as
    ``train``, ``resume`` and ``fork`` do when they wait.

    An interrupt (Ctrl-C, a notebook's stop button) while blocked stops the run as
    ``run.stop()`` does, saving the step it reached, before it goes on: a script would
    otherwise exit under a training thread, and a notebook keep a run training that it no
    longer waits for. (A plain ``run.wait()`` interrupted leaves the run training.)

    Examples:
        >>> import shutil
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-run-block", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-run-block", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-run-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=2, wait=False)
        >>> block_until_ended(run, progress=False) is run, run.state.value
        (True, 'finished')
    """
    try:
        run.wait(progress=progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_stopped_by_interrupt([run])) from None
    return run


def _stopped_by_interrupt(runs: list[Run]) -> str:
    """Stop ``runs`` as ``run.stop()`` does, wait for their ends, and say where the first is
    (the cell's ``run = s.train(...)`` never got its value)."""
    for run in runs:
        run.stop()
    statuses = [run.wait() for run in runs]  # every run waited for, the first one said
    status = statuses[0]
    return (
        f"interrupted: {runs[0].run_dir.name} {status.state.value} at step {status.step} of "
        f"{status.total_steps}; Session.run holds it (s.run), s.run.resume() goes on"
    )


_GUARDS = threading.local()  # per thread: the run lists of the open stopped_if_interrupted


def _open_guards() -> list[list[Run]]:
    if not hasattr(_GUARDS, "stack"):
        _GUARDS.stack = []
    return _GUARDS.stack


@contextlib.contextmanager
def stopped_if_interrupted(adopt: Callable[[Run], None] | None = None) -> Iterator[list[Run]]:
    """An interrupt (Ctrl-C, a notebook's stop button) inside the block stops each run this
    thread started in it, as ``run.stop()`` does, saving the step it reached.

    ``train``, ``resume`` and ``fork`` hold one from before the run starts until they
    return or :func:`block_until_ended` waits: an interrupt in between (the rest of the
    start, the session's bookkeeping) otherwise left the run training with nobody waiting.
    ``adopt(run)`` is called first for every run started in the block, so that a session
    holds its run even when the interrupt came before the start returned it.

    Yields:
        The runs started in the block so far (a list that grows as they start).

    Examples:
        >>> with stopped_if_interrupted() as started:
        ...     pass
        >>> started
        []
    """
    started: list[Run] = []
    _open_guards().append(started)
    try:
        yield started
    except KeyboardInterrupt:
        for run in started if adopt is not None else ():
            adopt(run)
        live = [run for run in started if not run.status.done]
        if not live:
            raise  # none started, or already stopped and said (block_until_ended)
        raise KeyboardInterrupt(_stopped_by_interrupt(live)) from None
    finally:
        _open_guards().pop()
