"""The events the workbench publishes, their payload types, and the hub that delivers them.

The Session, a Run and an evaluation publish; widgets, tests and your own code subscribe with
``session.on(NAME, fn)``, which returns the function that unsubscribes. Every event name is
a constant here and every payload a frozen type, so a typo fails at once instead of never
firing:

====================  ======================================================================
event                 payload
====================  ======================================================================
``progress``          ``str``: a progress message (model conversion, loading, exports)
``model_loaded``      :class:`~workbench.models.info.ModelInfo`
``data_loaded``       :class:`~workbench.data.DataReport`
``train_log``         :class:`TrainLog`: a logged record (step, evaluation, warning)
``train_state``       :class:`TrainState`: the run's new :class:`~workbench.train.RunStatus`
``train_probes``      :class:`TrainProbes`: the probe prompts' answers at an evaluation
``train_checkpoint``  :class:`TrainCheckpoint`: a checkpoint was written
``train_layer_norms`` :class:`TrainLayerNorms`: per-block adapter norms (teaching mode)
``eval_progress``     :class:`EvalProgress`: answers generated so far, and the batch's answers
``eval_done``         :class:`~workbench.evaluation.Evaluation`
====================  ======================================================================

Examples:
    >>> from workbench.events import EventHub, MODEL_LOADED
    >>> hub = EventHub()
    >>> seen = []
    >>> unsubscribe = hub.on(MODEL_LOADED, seen.append)
    >>> hub.emit(MODEL_LOADED, {"name": "tiny"})
    >>> unsubscribe()
    >>> hub.emit(MODEL_LOADED, {"name": "again"})
    >>> seen
    [{'name': 'tiny'}]
    >>> hub.on("model_loded", print)
    Traceback (most recent call last):
    workbench.errors.SpecError: unknown event 'model_loded': one of data_loaded, eval_done, ...
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.errors import SpecError

__all__ = [
    "ALL_EVENTS",
    "DATA_LOADED",
    "EVAL_DONE",
    "EVAL_PROGRESS",
    "EVENTS",
    "MODEL_LOADED",
    "PROGRESS",
    "TRAIN_CHECKPOINT",
    "TRAIN_LAYER_NORMS",
    "TRAIN_LOG",
    "TRAIN_PROBES",
    "TRAIN_STATE",
    "EvalProgress",
    "EventHub",
    "TrainCheckpoint",
    "TrainLayerNorms",
    "TrainLog",
    "TrainProbes",
    "TrainState",
]

logger = logging.getLogger(__name__)

PROGRESS, MODEL_LOADED, DATA_LOADED = "progress", "model_loaded", "data_loaded"
TRAIN_LOG, TRAIN_STATE, TRAIN_PROBES = "train_log", "train_state", "train_probes"
TRAIN_CHECKPOINT, TRAIN_LAYER_NORMS = "train_checkpoint", "train_layer_norms"
EVAL_PROGRESS, EVAL_DONE = "eval_progress", "eval_done"
EVENTS = frozenset(
    {
        PROGRESS,
        MODEL_LOADED,
        DATA_LOADED,
        TRAIN_LOG,
        TRAIN_STATE,
        TRAIN_PROBES,
        TRAIN_CHECKPOINT,
        TRAIN_LAYER_NORMS,
        EVAL_PROGRESS,
        EVAL_DONE,
    }
)

ALL_EVENTS = "*"
"""Subscribe to this name to receive every event as ``fn(name, payload)``."""

Listener = Callable[..., Any]


@dataclass(frozen=True)
class TrainLog:
    """A run logged a record.

    Attributes:
        run: The run folder (as a string), to tell runs apart on one hub.
        record: The :class:`~workbench.train.LogRecord` (``kind`` train, eval or warning).
        status: The run's status after it.

    Examples:
        >>> TrainLog("runs/a", record=None, status=None).run
        'runs/a'
    """

    run: str
    record: Any
    status: Any


@dataclass(frozen=True)
class TrainState:
    """A run changed state (running, paused, stopping, finished, stopped, failed).

    Examples:
        >>> TrainState("runs/a", status=None).run
        'runs/a'
    """

    run: str
    status: Any


@dataclass(frozen=True)
class TrainProbes:
    """The probe prompts' answers at one evaluation (``base``: the base model's, first).

    Examples:
        >>> TrainProbes("runs/a", 0, True, ("hi",), ("Hello",), ("hi",)).base
        True
    """

    run: str
    step: int
    base: bool
    outputs: tuple[str, ...]
    prompts: tuple[str, ...]
    base_outputs: tuple[str, ...]


@dataclass(frozen=True)
class TrainCheckpoint:
    """A checkpoint was written at ``path``.

    Examples:
        >>> TrainCheckpoint("runs/a", 10, "runs/a/checkpoints/step-00000010").step
        10
    """

    run: str
    step: int
    path: str


@dataclass(frozen=True)
class TrainLayerNorms:
    """Per-block adapter weight and gradient norms after one step (teaching mode).

    Examples:
        >>> TrainLayerNorms("runs/a", 1, (0, 1), (0.5, 0.4), (0.1, 0.2)).layers
        (0, 1)
    """

    run: str
    step: int
    layers: tuple[int, ...]
    weight: tuple[float, ...]
    grad: tuple[float, ...]


@dataclass(frozen=True)
class EvalProgress:
    """An evaluation generated ``done`` of ``total`` answers for ``column`` (base or tuned).

    ``outputs`` are the answers of the batch just generated: rows ``done - len(outputs)``
    to ``done - 1`` (untrusted model text: escape it before showing it as HTML).

    Examples:
        >>> p = EvalProgress("tuned", 4, 16, ("red", "blue"))
        >>> p.done, p.first
        (4, 2)
    """

    column: str
    done: int
    total: int
    outputs: tuple[str, ...] = ()

    @property
    def first(self) -> int:
        """The row index of ``outputs[0]``.

        Examples:
            >>> EvalProgress("base", 8, 16, ("a",)).first
            7
        """
        return self.done - len(self.outputs)


class EventHub:
    """Thread-safe registry of listeners keyed by event name.

    Listeners run on the thread that emits. A listener that raises is logged and
    skipped, so one broken view never stops a training run.

    Examples:
        >>> hub = EventHub()
        >>> off = hub.on("*", lambda name, payload: print(name, payload))
        >>> hub.emit("progress", "ready")
        progress ready
        >>> off()
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()

    def on(self, name: str, fn: Listener) -> Callable[[], None]:
        """Call ``fn(payload)`` each time ``name`` is emitted; returns the unsubscribe.

        With ``name="*"`` the listener is called as ``fn(name, payload)`` for every event.

        Raises:
            SpecError: ``name`` is not one of :data:`EVENTS` (or ``"*"``).

        Examples:
            >>> hub = EventHub()
            >>> off = hub.on("progress", print)
            >>> hub.emit("progress", 1)
            1
            >>> off()
        """
        if name not in EVENTS and name != ALL_EVENTS:
            known = ", ".join(sorted(EVENTS))
            raise SpecError(f"unknown event {name!r}: one of {known}, or '*' for every event.")
        with self._lock:
            self._listeners[name].append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners.get(name, []):
                    self._listeners[name].remove(fn)

        return unsubscribe

    def emit(self, name: str, payload: Any = None) -> None:
        """Deliver ``payload`` to every listener of ``name`` and of ``"*"``.

        Examples:
            >>> EventHub().emit("progress", "nobody listens")
        """
        with self._lock:
            direct = list(self._listeners.get(name, []))
            catch_all = list(self._listeners.get(ALL_EVENTS, []))
        for fn in direct:
            self._call(fn, name, payload)
        for fn in catch_all:
            self._call(fn, name, payload, with_name=True)

    @staticmethod
    def _call(fn: Listener, name: str, payload: Any, with_name: bool = False) -> None:
        try:
            fn(name, payload) if with_name else fn(payload)
        except Exception:  # a broken listener must not break the publisher
            logger.exception("listener %r for event %r raised", fn, name)
