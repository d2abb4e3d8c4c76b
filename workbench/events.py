"""A small publish/subscribe hub: the Session publishes, widgets and tests listen.

Examples:
    >>> from workbench.events import EventHub
    >>> hub = EventHub()
    >>> seen = []
    >>> unsubscribe = hub.on("model_loaded", seen.append)
    >>> hub.emit("model_loaded", {"name": "tiny"})
    >>> unsubscribe()
    >>> hub.emit("model_loaded", {"name": "again"})
    >>> seen
    [{'name': 'tiny'}]
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["ALL_EVENTS", "EventHub"]

logger = logging.getLogger(__name__)

ALL_EVENTS = "*"
"""Subscribe to this name to receive every event as ``fn(name, payload)``."""

Listener = Callable[..., Any]


class EventHub:
    """Thread-safe registry of listeners keyed by event name.

    Listeners run on the thread that emits. A listener that raises is logged and
    skipped, so one broken view never stops a training run.

    Examples:
        >>> hub = EventHub()
        >>> off = hub.on("*", lambda name, payload: print(name, payload))
        >>> hub.emit("state", "ready")
        state ready
        >>> off()
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()

    def on(self, name: str, fn: Listener) -> Callable[[], None]:
        """Call ``fn(payload)`` each time ``name`` is emitted; returns the unsubscribe.

        With ``name="*"`` the listener is called as ``fn(name, payload)`` for every event.

        Examples:
            >>> hub = EventHub()
            >>> off = hub.on("step", print)
            >>> hub.emit("step", 1)
            1
            >>> off()
        """
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
            >>> EventHub().emit("nobody_listens", 42)
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
