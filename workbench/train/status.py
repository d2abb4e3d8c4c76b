"""Run states and the immutable status snapshot a run publishes.

State machine (``resume()`` after ``stop()`` continues in the same process; ``step_once()``
goes paused -> running -> paused for one optimizer step)::

    created -> running <-> paused
                  |          |
                  v          v
               stopping -> stopped -> running
    running -> finished | failed

Examples:
    >>> s = RunStatus(state=RunState.RUNNING, step=5, total_steps=20, elapsed=10.0)
    >>> s.active, s.done, s.progress, s.eta
    (True, False, 0.25, 30.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["TERMINAL", "RunState", "RunStatus"]


class RunState(str, Enum):
    """Where a run is in its life.

    Examples:
        >>> RunState("paused") is RunState.PAUSED, RunState.PAUSED == "paused"
        (True, True)
    """

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({RunState.FINISHED, RunState.STOPPED, RunState.FAILED})


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run, replaced whole on every change.

    Attributes:
        state: The :class:`RunState`.
        step: Optimizer steps done.
        total_steps: Steps planned.
        epoch: Fractional epochs done.
        loss: Latest training loss.
        eval_loss: Latest validation loss.
        tokens_per_s: Throughput of the latest step.
        elapsed: Seconds spent training (pauses excluded).
        memory: Bytes in use (CUDA peak or RSS).
        message: Why the run ended, or what it is doing.
        error: The error text when ``state`` is failed.
        run_dir: The run folder.

    Examples:
        >>> RunStatus(state=RunState.FAILED, error="nan").done
        True
    """

    state: RunState = RunState.CREATED
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed: float = 0.0
    memory: int | None = None
    message: str = ""
    error: str | None = None
    run_dir: str = ""

    @property
    def done(self) -> bool:
        """The run has ended (finished, stopped or failed).

        Examples:
            >>> RunStatus(state=RunState.STOPPED).done
            True
        """
        return self.state in TERMINAL

    @property
    def active(self) -> bool:
        """A worker thread is running or paused.

        Examples:
            >>> RunStatus(state=RunState.PAUSED).active
            True
        """
        return self.state in (RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)

    @property
    def progress(self) -> float:
        """Fraction of planned steps done.

        Examples:
            >>> RunStatus(step=1, total_steps=4).progress
            0.25
        """
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the average pace so far (``None`` before the first step).

        Examples:
            >>> RunStatus(step=0, total_steps=4).eta is None
            True
        """
        if not self.step:
            return None
        return self.elapsed / self.step * (self.total_steps - self.step)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``status.json``).

        Examples:
            >>> RunStatus().to_dict()["state"]
            'created'
        """
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        """Read :meth:`to_dict` output back.

        Examples:
            >>> RunStatus.from_dict({"state": "finished", "step": 3}).done
            True
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["state"] = RunState(values.get("state", "created"))
        return cls(**values)
