"""The duplicate scan in the background: idle CPU while rows tokenize, a fair share once awaited.

Loading starts the scan in a thread at the lowest priority (nice 19, Linux), so it runs on
the CPU the tokenizer's own threads leave idle instead of preempting them (100k alpaca rows:
load + report 1.21x the plain ``datasets`` pipeline at normal priority, 1.08x so). That
priority would starve the scan on a machine other processes keep busy (a workshop server,
a second kernel training: 20k rows waited 56 s instead of 4 s), so when someone waits for
the result and the scan is not done, a second scan starts at normal priority and the first
to finish wins; the other stops at its next step (see ``stop`` in
:func:`~workbench.data.duplicates.duplicate_problems`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from workbench.data.duplicates import ScanStoppedError

__all__ = ["BackgroundScan"]

THREAD_NAME = "workbench-duplicates"


class BackgroundScan:
    """``scan(stop)`` run in a low-priority thread; :meth:`result` waits for it (racing a
    normal-priority run when it is not done yet).

    Examples:
        >>> scan = BackgroundScan(lambda stop: ["found"])
        >>> scan.result()
        ['found']
    """

    def __init__(self, scan: Callable[[Callable[[], bool]], list[Any]]) -> None:
        self._scan = scan
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._found: list[Any] = []
        self._error: BaseException | None = None
        self._raced = False
        self._start(low_priority=True)

    def _start(self, low_priority: bool) -> None:
        name = f"{THREAD_NAME}-{'idle' if low_priority else 'awaited'}"
        # not a daemon: interpreter exit waits for the step in progress instead of freezing
        # a thread inside numpy or Arrow
        threading.Thread(target=self._run, args=(low_priority,), name=name).start()

    def _run(self, low_priority: bool) -> None:
        if low_priority:
            _lower_thread_priority()
        try:
            found = self._scan(self._done.is_set)
        except ScanStoppedError:  # the other run finished first
            return
        except BaseException as err:  # handed to the caller of result()
            self._finish([], err)
        else:
            self._finish(found, None)

    def _finish(self, found: list[Any], error: BaseException | None) -> None:
        with self._lock:
            if not self._done.is_set():
                self._found, self._error = found, error
                self._done.set()

    def result(self) -> list[Any]:
        """The scan's result (its error raised), racing a normal-priority run if not done.

        Examples:
            >>> def broken(stop):
            ...     raise MemoryError("no room")
            >>> BackgroundScan(broken).result()
            Traceback (most recent call last):
            MemoryError: no room
        """
        with self._lock:
            race = not self._done.is_set() and not self._raced
            self._raced = self._raced or race
        if race:
            self._start(low_priority=False)
        self._done.wait()
        if self._error is not None:
            raise self._error
        return list(self._found)


def _lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19), on Linux only: there a
    thread has its own nice value; elsewhere ``setpriority`` would take the id for a process's.
    Threads it starts inherit the value: the scan starts none (a test checks it in a fresh
    process)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # a sandbox may forbid it: then normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
