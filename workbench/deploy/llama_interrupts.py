"""Interrupts that land while llama.cpp runs in this process: kept, not lost.

llama-cpp-python hands each of llama.cpp's log lines to a Python function that C calls. A
KeyboardInterrupt (Ctrl-C, Jupyter's interrupt button) that Python delivers while that
function runs is raised inside a ctypes callback, where ctypes prints "Exception ignored"
(to nowhere when the log is silenced) and drops it. llama.cpp logs every step of loading a
model and of freeing it, so an interrupt during the export's load check was lost and the
export ran on to the end. Inside :func:`keeping_interrupts` such an interrupt is kept and
raised when the block ends; one that lands anywhere else raises at once, as usual.

Examples:
    >>> with keeping_interrupts():
    ...     pass  # llama.cpp's work goes here
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["keeping_interrupts"]


@contextlib.contextmanager
def keeping_interrupts() -> Iterator[None]:
    """Run the block with interrupts that land in llama-cpp-python's log callback kept.

    The interrupt is raised (by the handler that was in place, so a kernel's own handling
    stands) when the block ends, after llama.cpp's call returned. Outside the main thread,
    or where no Python handler takes SIGINT, the block runs as it is.

    Examples:
        An interrupt that lands outside the callback raises at once, as without the block:

        >>> import os
        >>> try:
        ...     with keeping_interrupts():
        ...         os.kill(os.getpid(), signal.SIGINT)
        ...         print("not reached")
        ... except KeyboardInterrupt:
        ...     print("interrupted")
        interrupted
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    kept: list[int] = []

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if _in_log_callback(frame):
            kept.append(signum)  # raising here would be swallowed by ctypes
            return
        previous(signum, frame)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if kept:
        previous(signal.SIGINT, None)


_LOG_CALLBACK_FILE = os.sep + str(Path("llama_cpp", "_logger.py"))


def _in_log_callback(frame: FrameType | None) -> bool:
    """Whether ``frame``, or one it was called from, runs llama-cpp-python's log callback."""
    while frame is not None:
        if frame.f_code.co_filename.endswith(_LOG_CALLBACK_FILE):
            return True
        frame = frame.f_back
    return False
