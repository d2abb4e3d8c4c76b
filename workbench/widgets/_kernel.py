"""Keep a notebook's widgets answering while a cell blocks (``run.wait()`` in a kernel).

**The problem.** A button click in JupyterLab reaches the kernel as a ``comm_msg`` on the
shell channel, and a kernel runs shell messages one at a time on its main thread: while a
cell blocks (``run.wait()``, or any long call), clicks queue up and run only after the cell,
so "Pause" clicked during ``run.wait()`` did nothing until the run had ended.

**What a** :class:`WidgetPump` **does** (jupyter-ui-poll's idea, adapted to ipykernel 7). In
ipykernel 7 a "shell channel" thread reads the shell socket and forwards each message meant
for the main shell to the main thread through an in-process ZMQ socket pair
(``kernel.shell_channel_thread.manager._shell_channel_to_main``); the main thread reads its
end (``to_socket``) with a ``ZMQStream`` on its event loop, which is not running while a cell
blocks. A blocking call on the main thread asks :meth:`WidgetPump.serve` now and then (every
``INTERVAL`` seconds); it reads that socket itself and

- runs ``comm_open``, ``comm_msg`` and ``comm_close`` at once with the kernel's own handlers
  (the widget's click or value change), with the message as the shell parent for the time of
  the handler, then the cell's parent again; like ipykernel 7.4 does for comms that arrive
  while an async cell awaits, a click is served before cells queued earlier;
- keeps every other message (the next cells' ``execute_request`` of a "Run All", a
  ``kernel_info_request``, ipykernel's "stop aborting" marker...) untouched and hands it to the
  stream's own callback, in arrival order, when the blocking call ends (:meth:`close`): they
  queue on the main shell's lock behind the running cell, exactly where they would have been.

So the handlers run on the main thread, between two waits of the blocking call; a handler must
not block for long (the workbench's buttons call :class:`~workbench.train.Run` methods that
return at once). A wait inside a handler does not serve messages again (no nesting).

**Limits.** It needs ipykernel 7's shell channel thread (``shell_channel_thread`` with its
socket pair, present from 7.0; checked: 7.4), and the calling thread must be the kernel's main
thread; subshells and other threads just block. Anywhere else (a script, a test, plain
IPython, ipykernel 6, a thread) :func:`widget_pump` gives an inactive pump: ``serve`` does
nothing and the blocking call blocks as before; inside a kernel where the pump cannot work
it says so once, in the cell's output. A click is served at most ``INTERVAL`` seconds after
it arrives. Requests with replies (``comm_info_request``...) wait for the cell's end, so a
page reloaded during the wait shows its widgets only then.

Rendering needs none of this: widget state goes out on IOPub, which ipykernel sends from its
own thread, so the :class:`~workbench.widgets.TrainingMonitor` renders from the training
thread (throttled) whatever the main thread is doing.

Examples:
    Outside a kernel the pump is inactive, and waiting with it is plain waiting:

    >>> pump = widget_pump()
    >>> pump.active, pump.serve(), pump.slice(None), pump.slice(3.0)
    (False, 0, None, 3.0)
    >>> pump.close()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

__all__ = ["INTERVAL", "WidgetPump", "widget_pump"]

logger = logging.getLogger(__name__)

INTERVAL = 0.05  # seconds between two reads of the shell messages while a call blocks
COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})

_local = threading.local()  # .serving: a pump of this thread is running a handler
_told = False  # the "cannot serve widgets here" note was shown
_handed_back: set[asyncio.Task] = set()  # tasks of messages handed back, until they are done


class WidgetPump:
    """Serves widget messages on the kernel's main thread while it blocks (see module doc).

    Get one with :func:`widget_pump`; call :meth:`serve` between short waits (:meth:`slice`
    says how long each may be), and :meth:`close` at the end, also on an error.

    Attributes:
        active: Whether it serves anything (``False``: outside a kernel, on another thread,
            an ipykernel without a shell channel thread, or nested in a handler).
        served: How many widget messages it has run so far.

    Examples:
        >>> pump = WidgetPump(None)
        >>> pump.active, pump.served
        (False, 0)
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel, self.served = kernel, 0
        self._deferred: list[Any] = []
        self._socket = self._callback = self._stream = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if kernel is not None:
            manager = kernel.shell_channel_thread.manager
            pair = manager._shell_channel_to_main  # the main thread reads its to_socket
            self._socket = pair.to_socket
            self._callback = pair.to_stream._recv_callback
            self._stream = manager.get_subshell_to_shell_channel_socket(None)
            self._loop = asyncio.get_running_loop()
        self.active = self._socket is not None and self._callback is not None

    def slice(self, timeout: float | None) -> float | None:
        """How long the caller may wait before the next :meth:`serve` (at most ``timeout``).

        Examples:
            >>> WidgetPump(None).slice(10.0)  # inactive: the whole timeout
            10.0
        """
        if not self.active:
            return timeout
        return INTERVAL if timeout is None else max(0.0, min(INTERVAL, timeout))

    def serve(self) -> int:
        """Run the widget messages that arrived, keep the others for :meth:`close`.

        Returns:
            How many widget messages were run.

        Examples:
            >>> WidgetPump(None).serve()
            0
        """
        if not self.active:
            return 0
        import zmq

        count = 0
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return count
            if self._run_if_comm(frames):
                count += 1
            else:
                self._deferred.append(frames)

    def close(self) -> None:
        """Read what is left and hand every kept message back to the kernel, in order.

        Examples:
            >>> WidgetPump(None).close()
        """
        if not self.active:
            return
        self.active = False
        import zmq

        while True:  # drain, so no message is left where the stream may not look again
            try:
                self._deferred.append(self._socket.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
        deferred, self._deferred = self._deferred, []
        for frames in deferred:
            # As the ZMQStream would have: the callback's coroutine becomes a task, which
            # queues on the main shell's lock behind the running cell.
            task = self._loop.create_task(self._callback(frames))
            _handed_back.add(task)
            task.add_done_callback(_handed)

    def _run_if_comm(self, frames: list[Any]) -> bool:
        """Run ``frames`` if it is a widget message (True); False leaves it unread."""
        kernel = self.kernel
        session = kernel.session
        if len(frames) < 2:
            return False
        try:
            idents, parts = session.feed_identities(frames, copy=False)
            # Peek at the header only: a full read records the signature, and the kernel
            # would refuse a message kept for later as a replay.
            header = session.deserialize(parts, content=False, copy=False)["header"]
        except Exception:  # not ours to judge: the kernel reads it later and logs
            return False
        msg_type = header.get("msg_type")
        handler = kernel.shell_handlers.get(msg_type)
        if msg_type not in COMM_MESSAGES or handler is None:
            return False
        try:
            msg = session.deserialize(parts, content=True, copy=False)
        except Exception:
            logger.exception("invalid %s message while a cell was blocking", msg_type)
            return True  # read (and so dropped), as the kernel would after logging it
        parent = kernel.get_parent("shell")
        ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
        kernel.set_parent(idents, msg, channel="shell")
        _local.serving = True
        try:
            handler(self._stream, idents, msg)
        except Exception:  # as the kernel does: log it, keep going
            logger.exception("widget handler for %s raised", msg_type)
        finally:
            _local.serving = False
            kernel.set_parent(ident, parent, channel="shell")
        self.served += 1
        return True

    def __enter__(self) -> WidgetPump:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _handed(task: asyncio.Task) -> None:
    _handed_back.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("a shell message handed back raised", exc_info=task.exception())


def widget_pump() -> WidgetPump:
    """A pump for a blocking call on this thread: active in a kernel's main thread, else not.

    Examples:
        A blocking loop that keeps widgets alive (``done`` stands for what it waits for):

        >>> import threading
        >>> done = threading.Event()
        >>> threading.Timer(0.1, done.set).start()
        >>> with widget_pump() as pump:
        ...     while not done.wait(pump.slice(5.0)):
        ...         _ = pump.serve()
        >>> done.is_set()
        True
    """
    from workbench._display import notebook_kernel

    kernel = notebook_kernel()
    channel = getattr(kernel, "shell_channel_thread", None)
    main = getattr(channel, "parent_thread", threading.main_thread())
    if (
        kernel is None
        or getattr(_local, "serving", False)
        or threading.current_thread() is not main
    ):
        return WidgetPump(None)  # nothing to serve, a handler waits, or the main thread is free
    reason = _unsupported(kernel)
    if reason:
        _tell_once(reason)
        return WidgetPump(None)
    try:
        return WidgetPump(kernel)
    except Exception as err:  # an ipykernel whose insides moved: block as before
        _tell_once(f"{type(err).__name__}: {err}")
        return WidgetPump(None)


def _unsupported(kernel: Any) -> str:
    """Why a pump cannot serve this kernel from this thread ("" when it can)."""
    if getattr(kernel, "shell_channel_thread", None) is None:
        return "this ipykernel has no shell channel thread (ipykernel 7 has one)"
    needed = ("session", "shell_handlers", "set_parent", "_get_shell_context_var")
    missing = [name for name in (*needed, "_shell_parent_ident") if not hasattr(kernel, name)]
    if missing:
        return f"this ipykernel has no {', '.join(missing)}"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "the kernel's event loop is not running on this thread"
    return ""


def _tell_once(reason: str) -> None:
    global _told  # noqa: PLW0603
    if not _told:
        _told = True
        print(
            "Note: the panels' buttons wait until this cell ends (the workbench cannot serve "
            f"them while it blocks here: {reason}).",
            flush=True,
        )
