"""The notebook's side of a launched run: start the ranks, follow their files, relay controls.

:class:`LaunchedWorker` takes the place of the :class:`~workbench.train.worker.Worker` in the
notebook's :class:`~workbench.train.run.Run`. Instead of training, it starts
``accelerate launch`` of :mod:`workbench.train.launch.rank` (machine 0's share) and, every
quarter second, publishes what rank 0 wrote (history records, probe answers, status,
checkpoints) through the same run methods a worker uses, so the TrainingMonitor, ``wait()``
and the Session cannot tell the difference. The run's controls (pause, resume, step, stop,
evaluate now, save now) set the run's usual fields, which this worker copies into
``control.json`` for rank 0.

When the ranks end, the newest valid checkpoint (the last step, as every run saves at its
end) is loaded into the notebook's model, optimizer and scheduler: the Session then holds the
tuned model exactly as after a run in one process, to evaluate, merge or export, and
``run.resume()`` after a stop launches the ranks again from there.

When a rank dies, the launcher (torchrun) stops the others; the run fails with a message that
names the rank, how it ended and its last output lines, and says which checkpoint is intact.

Examples:
    >>> text = '''Root Cause (first observed failure):
    ... [0]:
    ...   rank      : 1 (local_rank: 1)
    ...   exitcode  : -9 (pid: 4242)
    ...   traceback : Signal 9 (SIGKILL) received by PID 4242'''
    >>> failed_rank(text)
    (1, -9, 'Signal 9 (SIGKILL) received by PID 4242')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from workbench.events import TRAIN_CHECKPOINT, TrainCheckpoint
from workbench.train import store
from workbench.train.checkpoint import (
    checkpoint_problem,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
)
from workbench.train.guards import TrainingError
from workbench.train.launch.control import Control, write_control
from workbench.train.launch.rank import RANKS
from workbench.train.launch.spec import rank_command, rank_environment
from workbench.train.records import LogRecord
from workbench.train.status import RunState
from workbench.train.worker import Worker, checkpoint_note

__all__ = ["LAUNCHER_LOG", "LaunchedWorker", "failed_rank"]

logger = logging.getLogger(__name__)

LAUNCHER_LOG = "launcher.log"  # <run>/ranks/launcher.log: accelerate launch's own output
_ROOT_CAUSE = re.compile(r"Root Cause.*", re.S)
_FIELD = {
    "rank": re.compile(r"^\s*rank\s*:\s*(\d+)", re.M),
    "exitcode": re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M),
    "traceback": re.compile(r"^\s*traceback\s*:\s*(.+)$", re.M),
}


def failed_rank(launcher_output: str) -> tuple[int | None, int | None, str]:
    """The first failed rank, its exit code and reason, from torchrun's failure summary.

    Examples:
        >>> failed_rank("no summary")
        (None, None, '')
    """
    found = _ROOT_CAUSE.search(launcher_output)
    if not found:
        return None, None, ""
    text = found.group(0)
    values = {name: pattern.search(text) for name, pattern in _FIELD.items()}
    rank = int(values["rank"].group(1)) if values["rank"] else None
    code = int(values["exitcode"].group(1)) if values["exitcode"] else None
    reason = values["traceback"].group(1).strip() if values["traceback"] else ""
    return rank, code, reason


def _tail(path: Path, lines: int = 8) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _exit_reason(code: int | None, reason: str) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    if reason and not reason.startswith("<") and "enable traceback" not in reason:
        return reason
    return f"exit code {code}" if code is not None else "it ended"


class LaunchedWorker(Worker):
    """Follows the ranks of a launched run for the notebook's :class:`Run`.

    Evaluate-now and save-now on a run that has ended work as with any worker, on the
    notebook's model (which holds the final weights by then).

    Examples:
        :meth:`Session.train` with ``processes=2`` starts the ranks and follows them with one
        (``tests/test_launch.py`` runs pauses, kills and resumes through it):

        >>> import shutil
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-launched", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-launched", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-launched-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=2, processes=2)
        >>> run.state.value, run.launch.processes, [r.step for r in run.history][-1]
        ('finished', 2, 2)
    """

    poll_seconds = 0.25

    def __init__(self, run: Any) -> None:
        super().__init__(run)
        self.launch = run.launch
        self.run_dir: Path = run.run_dir
        self._control = Control()
        self._history_at = 0
        self._probes: dict[tuple[bool, int], list[str]] = {}
        self._checkpoints: set[str] = set()
        self._status_mtime = 0.0
        self._probes_stamp: tuple[int, int] | None = None
        self._loaded_step = self._asked_save_at = -1
        self.process: subprocess.Popen | None = None

    # -- the thread -----------------------------------------------------------------------
    def main(self) -> None:
        """Start the ranks, publish their news until they end, then end the run."""
        try:
            self._start()
            while self.process.poll() is None:
                self._sync_control()
                self._read_news()
                time.sleep(self.poll_seconds)
            self._read_news()
            self._finish_launch(self.process.returncode)
        except TrainingError as err:
            self.run.writes_files = True
            self._fail(err)
        except Exception as err:  # any bug must end the run visibly, not kill the thread
            logger.exception("following run %s failed", self.run_dir)
            self._stop_ranks()
            self.run.writes_files = True
            self._fail(TrainingError(f"following the launched run failed: {err}"))

    def _start(self) -> None:
        self.run.writes_files = False  # rank 0 writes the folder while the ranks live
        folder = self.run_dir / RANKS
        folder.mkdir(exist_ok=True)
        for old in folder.glob("rank-*.json"):
            old.unlink()  # pids of an earlier launch
        write_control(self.run_dir, self._control)
        self._mark_known_files()
        self.launch.write_configs(self.run_dir)
        env = rank_environment(os.getpid(), self.run.trust_remote_code)
        if self.launch.on_cpu:  # one share of the cores each, not all of them each
            share = max(1, (os.cpu_count() or 1) // self.launch.processes)
            env.setdefault("OMP_NUM_THREADS", str(share))
        with open(folder / LAUNCHER_LOG, "ab") as log:
            self.process = subprocess.Popen(
                rank_command(self.run_dir, 0),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _mark_known_files(self) -> None:
        """Everything already in the folder was published by the run before this launch."""
        history = self.run_dir / store.HISTORY
        self._history_at = history.stat().st_size if history.exists() else 0
        for row in store.read_jsonl(self.run_dir / store.PROBES):
            self._probes[(bool(row.get("base")), int(row.get("step", 0)))] = row.get("outputs")
        self._checkpoints = {p.name for p in list_checkpoints(self.run_dir)}

    # -- controls -------------------------------------------------------------------------
    def _sync_control(self) -> None:
        run = self.run
        with run._cond:
            requests, run._requests = list(run._requests), type(run._requests)()
            steps, run._single_steps = run._single_steps, 0
            wanted = Control(
                pause=run._pause,
                stop=run._stop,
                eval=self._control.eval + requests.count("eval"),
                save=self._control.save + requests.count("save"),
                step=self._control.step + steps,
            )
        if wanted != self._control:
            write_control(self.run_dir, wanted)
            self._control = wanted

    # -- news from rank 0 -----------------------------------------------------------------
    def _read_news(self) -> None:
        # The status first: rank 0 writes "running" before the steps that follow a resume,
        # so a wait(step=...) woken by those steps' records sees the run running.
        self._read_status()
        self._read_history()
        self._read_probes()
        self._read_checkpoints()

    def _read_history(self) -> None:
        path = self.run_dir / store.HISTORY
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._history_at:
                    self._history_at = 0  # rewritten (rank 0 dropped records after a restart)
                    return
                handle.seek(self._history_at)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._history_at += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                record = LogRecord.from_dict(json.loads(line))
                if record.kind == "train":
                    self.loop.step = record.step
                self.run._log(self, record)

    def _read_probes(self) -> None:
        path = self.run_dir / store.PROBES
        try:
            info = path.stat()
        except OSError:
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._probes_stamp:  # read again only when rank 0 has written
            return
        self._probes_stamp = stamp
        for row in store.read_jsonl(path):
            key = (bool(row.get("base")), int(row.get("step", 0)))
            if self._probes.get(key) != row.get("outputs"):
                self._probes[key] = row.get("outputs")
                self.run._publish_probes(self, row)

    def _read_status(self) -> None:
        path = self.run_dir / store.STATUS
        try:
            mtime = path.stat().st_mtime
            if mtime == self._status_mtime:
                return
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        state = RunState(status.get("state", "running"))
        if state is RunState.PAUSED and not self._weights_at(int(status.get("step", 0))):
            return  # paused only once this notebook's model holds the paused weights
        self._status_mtime = mtime
        if state in (RunState.RUNNING, RunState.PAUSED) and state is not self.run.state:
            self.paused = state is RunState.PAUSED
            self.run._set_state(self, state, message=status.get("message") or "")

    def _weights_at(self, step: int) -> bool:
        """Whether the notebook's model holds the ranks' weights of ``step``; if not, ask
        rank 0 for a checkpoint of it (once) and load it when it is complete.

        So a paused launched run is like a paused run in one process: ``generate``,
        ``evaluate`` and ``export`` see the model as it is at the pause.
        """
        if self._loaded_step == step:
            return True
        path = self.run_dir / "checkpoints" / f"step-{step:08d}"
        if path.is_dir() and checkpoint_problem(path, full=False) is None:
            self._load(path)
            return True
        if self._asked_save_at != step:
            self._asked_save_at = step
            self._control = dataclasses.replace(self._control, save=self._control.save + 1)
            write_control(self.run_dir, self._control)
        return False

    def _read_checkpoints(self) -> None:
        for path in list_checkpoints(self.run_dir):
            if path.name in self._checkpoints or checkpoint_problem(path, full=False):
                continue
            self._checkpoints.add(path.name)
            self.run.events.emit(
                TRAIN_CHECKPOINT,
                TrainCheckpoint(str(self.run_dir), checkpoint_step(path), str(path)),
            )

    # -- the end --------------------------------------------------------------------------
    def _finish_launch(self, returncode: int) -> None:
        # The ranks are gone: from here on this process writes the folder (the end, and an
        # Evaluate now or Save now on the ended run, served with the notebook's model).
        self.run.writes_files = True
        try:
            status = json.loads((self.run_dir / store.STATUS).read_text())
        except (OSError, ValueError):
            status = {}
        state = status.get("state")
        if returncode == 0 and state in ("finished", "stopped"):
            self._load_newest_checkpoint()
            self.restore_best()  # rank 0's status message says so already
            self.run._end(self, RunState(state), message=status.get("message") or "")
            return
        rank, code, _ = failed_rank(self._launcher_output())
        another_died = rank not in (None, 0) or (code is not None and code < 0)
        if another_died and code is not None and code > 0 and status.get("error"):
            # A guard fails every rank at the same step; whichever exits first, the reason
            # is rank 0's when that rank's last line says the same.
            last = _tail(self.run_dir / RANKS / f"rank-{rank}.log", 1)
            another_died = not (last and last[0].endswith(status["error"]))
        if state == "failed" and status.get("error") and not another_died:
            # rank 0 said why (a guard, a bug); when another rank died first, rank 0 only
            # saw its connection close, and the dead rank is the story.
            self._stop_ranks()
            self._load_newest_checkpoint()
            err = TrainingError(status["error"])
            self.run._end(self, RunState.FAILED, error=str(err), message="failed", err=err)
            return
        self._stop_ranks()
        err = self._rank_failure(returncode)
        with contextlib.suppress(OSError):  # rank 0 is gone: the notebook tells the folder
            store.write_status(self.run_dir, {**status, "state": "failed", "error": str(err)})
        self._load_newest_checkpoint()
        self.run._end(self, RunState.FAILED, error=str(err), message="failed", err=err)

    def _launcher_output(self) -> str:
        try:
            return (self.run_dir / RANKS / LAUNCHER_LOG).read_text(errors="replace")
        except OSError:
            return ""

    def _rank_failure(self, returncode: int) -> TrainingError:
        folder = self.run_dir / RANKS
        rank, code, reason = failed_rank(self._launcher_output())
        world = self.launch.world_size
        if rank is None:
            lines = _tail(folder / LAUNCHER_LOG)
            head = f"the launcher (accelerate launch) ended with exit code {returncode}"
            source = folder / LAUNCHER_LOG
        else:
            lines = _tail(folder / f"rank-{rank}.log")
            ended = "died" if code is not None and code < 0 else "failed"
            head = f"rank {rank} of {world} {ended} ({_exit_reason(code, reason)})"
            source = folder / f"rank-{rank}.log"
        shown = "\n".join(f"    {line}" for line in lines) or "    (nothing)"
        checkpoint, _ = newest_valid_checkpoint(self.run_dir)
        return TrainingError(
            f"{head}; the other ranks were stopped. Its last lines ({source}):\n{shown}\n"
            f"{checkpoint_note(checkpoint)}"
        )

    def _stop_ranks(self) -> None:
        """Kill what is left of the launch: the launcher, then any rank still alive."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for info in (self.run_dir / RANKS).glob("rank-*.json"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                pid = int(json.loads(info.read_text())["pid"])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"workbench.train.launch.rank" in cmdline:
                    os.kill(pid, signal.SIGKILL)

    def _load_newest_checkpoint(self) -> None:
        """Bring the notebook's model, optimizer and scheduler to the ranks' last checkpoint."""
        checkpoint, _ = newest_valid_checkpoint(self.run_dir)
        if checkpoint is not None:
            self._load(checkpoint)

    def _load(self, checkpoint: Path) -> None:
        loop, model = self.loop, self.run.model
        self.run.restore_state(load_checkpoint(checkpoint, model, loop.optimizer, loop.scheduler))
        self.run.model.train(False)
        self._loaded_step = checkpoint_step(checkpoint)
