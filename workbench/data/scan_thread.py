"""The duplicate scan in the background: idle CPU while rows tokenize, a fair share once awaited.

Loading starts the scan in a thread at the lowest priority (nice 19, Linux), so it runs on
the CPU the tokenizer's own threads leave idle instead of preempting them (100k alpaca rows:
load + report 1.21x the plain ``datasets`` pipeline at normal priority, 1.08x so). That
priority would starve the scan on a machine other processes keep busy (a workshop server,
a second kernel training: 20k rows waited 56 s instead of 4 s), so while someone waits for
the result, the scan's share of a core is watched: once it gets less than a quarter, a
second scan starts at normal priority and the first to finish wins; the other stops at its
next step (see ``stop`` in :func:`~workbench.data.duplicates.duplicate_problems`). A scan
that is getting the CPU is not raced: two would hold twice the memory (about 4 MB per 1000
rows of 50 words). The background scan also gives way when the program ends (a script that
never asks for the report does not wait for it at exit; a report still awaited then gets a
scan of its own), and every run stops once nothing holds the scan any more (see :meth:`hold`:
a notebook cell that loads data again leaves no scans of the dropped data running, each
holding its rows' memory).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from workbench.data.duplicates import ScanStoppedError

__all__ = ["BackgroundScan"]

THREAD_NAME = "workbench-duplicates"
LOOK_EVERY = 0.25
"""Seconds between looks at a waited-for scan's CPU time."""
STARVED_SHARE = 0.25
"""A low-priority scan given less than this share of a core between two looks is starved."""


class BackgroundScan:
    """``scan(stop)`` run in a low-priority thread; :meth:`result` waits for it (racing a
    normal-priority run if it starves). Given a ``holder``, the scan stops once it and every
    later one (:meth:`hold`) have been collected.

    Examples:
        >>> scan = BackgroundScan(lambda stop: ["found"])
        >>> scan.result()
        ['found']
    """

    def __init__(
        self, scan: Callable[[Callable[[], bool]], list[Any]], holder: object | None = None
    ) -> None:
        self._scan = scan
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._found: list[Any] = []
        self._error: BaseException | None = None
        self._raced = False
        # None: never held, so never abandoned (see hold)
        self._holders = None if holder is None else weakref.WeakSet([holder])
        self._clock: int | None = None  # the low-priority thread's CPU clock, once lowered
        self._idle = self._start(low_priority=True)

    def _start(self, low_priority: bool) -> threading.Thread:
        name = f"{THREAD_NAME}-{'idle' if low_priority else 'awaited'}"
        # not a daemon: interpreter exit waits for the step in progress instead of freezing
        # a thread inside numpy or Arrow
        thread = threading.Thread(target=self._run, args=(low_priority,), name=name)
        thread.start()
        return thread

    def _run(self, low_priority: bool) -> None:
        if low_priority and _lower_thread_priority():
            self._clock = time.pthread_getcpuclockid(threading.get_ident())
        # the background run also gives way to the program ending; a waited-for one does not
        stop = self._unwanted if low_priority else self._settled
        try:
            found = self._scan(stop)
        except ScanStoppedError:  # the other run finished first, or the program is ending
            return
        except BaseException as err:  # handed to the caller of result()
            self._finish([], err)
        else:
            self._finish(found, None)

    def hold(self, holder: object) -> None:
        """Keep the scan running while ``holder`` lives: once every holder has been collected,
        each run stops at its next step (no one is left to ask for the result).

        Examples:
            >>> import threading
            >>> class Data: ...
            >>> def endless(stop):
            ...     while not stop():
            ...         threading.Event().wait(0.01)
            ...     raise ScanStoppedError
            >>> data = Data()
            >>> scan = BackgroundScan(endless)
            >>> scan.hold(data)
            >>> del data
            >>> scan._idle.join(10)
            >>> scan._idle.is_alive()
            False
        """
        # a weak set, not counts kept by finalizers: those could run from a collection inside
        # a section holding the lock they would need; made holding its first member, so a
        # scan never sees it empty before that
        if self._holders is None:
            self._holders = weakref.WeakSet([holder])
        else:
            self._holders.add(holder)

    def _settled(self) -> bool:
        """Whether a run is no longer needed: one has finished, or no holder is left."""
        return self._done.is_set() or (self._holders is not None and not self._holders)

    def _unwanted(self) -> bool:
        # The main thread is marked ended before exit joins the other threads: a script (or a
        # kernel shutting down) does not wait for a scan no one will read.
        return self._settled() or not threading.main_thread().is_alive()

    def _finish(self, found: list[Any], error: BaseException | None) -> None:
        with self._lock:
            if not self._done.is_set():
                self._found, self._error = found, error
                self._done.set()

    def result(self) -> list[Any]:
        """The scan's result (its error raised), racing a normal-priority run if it starves.

        Examples:
            >>> def broken(stop):
            ...     raise MemoryError("no room")
            >>> BackgroundScan(broken).result()
            Traceback (most recent call last):
            MemoryError: no room
        """
        seen = self._cpu_seconds(), time.monotonic()
        while not self._done.wait(LOOK_EVERY):
            now = self._cpu_seconds(), time.monotonic()
            if _starved(seen, now) or not self._idle.is_alive():  # starved, or gave way
                self._race()
                break
            seen = now
        self._done.wait()
        if self._error is not None:
            raise self._error
        return list(self._found)

    def _cpu_seconds(self) -> float | None:
        """CPU time of the low-priority thread; None while unknown (not lowered, ended)."""
        if self._clock is None:
            return None
        try:  # the clock names the thread by its kernel id: an ended one is an error, not UB
            return time.clock_gettime(self._clock)
        except OSError:
            return None

    def _race(self) -> None:
        with self._lock:
            race = not self._done.is_set() and not self._raced
            self._raced = self._raced or race
        if race:
            self._start(low_priority=False)


def _starved(seen: tuple[float | None, float], now: tuple[float | None, float]) -> bool:
    """Whether a thread's CPU time grew by less than :data:`STARVED_SHARE` of the wall time
    between two ``(cpu seconds, monotonic seconds)`` looks (unknown CPU time: not starved)."""
    (cpu_before, wall_before), (cpu_now, wall_now) = seen, now
    if cpu_before is None or cpu_now is None:
        return False
    return cpu_now - cpu_before < STARVED_SHARE * (wall_now - wall_before)


def _lower_thread_priority() -> bool:
    """Give the calling thread the lowest CPU priority (nice 19); whether it did. Linux only:
    there a thread has its own nice value; elsewhere ``setpriority`` would take the id for a
    process's. Threads it starts inherit the value: the scan starts none (a test checks it in
    a fresh process)."""
    if sys.platform != "linux":
        return False
    with contextlib.suppress(OSError):  # a sandbox may forbid it: then normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return True
    return False
