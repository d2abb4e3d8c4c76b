"""``transformers serve`` as the workbench starts it (:func:`main`), in its own process.

What it changes of transformers' server, each in its own module:

- :mod:`~workbench.deploy._serving_requests`: a request samples when its ``temperature`` asks
  for it, and is checked before it is answered (fields, media, text past the context);
- :mod:`~workbench.deploy._serving_answers`: answers end as OpenAI's do (``stop`` text cut,
  within the context, ``/v1/responses`` incomplete when cut);
- :mod:`~workbench.deploy._serving_guards`: ``Host`` and body-size guards, and errors in
  OpenAI's shape.

Here: told to stop (SIGTERM), the server ends at once (:func:`stop_promptly`): the answers it
is still sending have their connections closed, where uvicorn waited for them to be sent
whole; and it ends when the process that started it ends (:func:`exit_with_parent`).

If a transformers or uvicorn release moves the methods these wrap, the server runs as they
wrote it (each installer returns ``False``).

Examples:
    >>> stop_promptly()  # installs the wrapper, once
    True
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from workbench.deploy._serving_answers import end_answers_as_openai
from workbench.deploy._serving_guards import guard_requests
from workbench.deploy._serving_requests import check_requests, sample_when_asked
from workbench.deploy._serving_wrap import wrap_once

__all__ = [
    "SCRATCH_PREFIX",
    "close_answers_in_progress",
    "exit_with_parent",
    "main",
    "stop_promptly",
]


def stop_promptly() -> bool:
    """Make the server end at once when told to stop (SIGTERM, as ``Server.stop()`` sends it),
    closing the connections of the answers it is still sending; ``False`` when uvicorn has no
    such method to wrap.

    uvicorn's graceful shutdown waits, with no limit, until every response in progress has been
    sent whole, and a stream lasts as long as its generation, or for ever when its client
    stopped reading it: ``stop()`` waited out its grace and killed the server. A connection
    closed here is a client gone to transformers (its ``CancelOnDisconnect``), which ends the
    answer's handling; the client sees its stream break off.

    Examples:
        >>> stop_promptly(), stop_promptly()  # wraps once
        (True, True)
    """
    try:
        import uvicorn
    except ImportError:
        return False

    def closing_first(shutdown: Any) -> Any:
        async def shutting_down(self: Any, *args: Any, **kwargs: Any) -> None:
            close_answers_in_progress(self.server_state.connections)
            await shutdown(self, *args, **kwargs)

        return shutting_down

    return wrap_once(uvicorn.Server, "shutdown", "stops_promptly", closing_first)


def close_answers_in_progress(connections: Any) -> int:
    """Close the ``connections`` (uvicorn's HTTP protocols) whose response is still being sent,
    without sending what waits in their buffers (a client that stopped reading would never take
    it, and a close would wait for it); how many there were, said in the log.

    Examples:
        >>> class Transport:
        ...     def abort(self):
        ...         print("aborted")
        >>> class Connection:
        ...     def __init__(self, complete):
        ...         self.cycle = type("Cycle", (), {"response_complete": complete})()
        ...         self.transport = Transport()
        >>> close_answers_in_progress([Connection(True), Connection(False)])
        aborted
        1
    """
    busy = [
        connection
        for connection in list(connections)
        if getattr(connection, "cycle", None) is not None and not connection.cycle.response_complete
    ]
    for connection in busy:
        connection.transport.abort()
    if busy:
        logging.getLogger("uvicorn.error").info(
            "Closing %d connection(s) with an answer in progress: the server is stopping",
            len(busy),
        )
    return len(busy)


def _listening_host(argv: list[str]) -> str:
    """The host a ``transformers serve`` command line listens on (its default: localhost).

    Examples:
        >>> _listening_host(["serve", "m", "--host", "0.0.0.0"]), _listening_host(["--host=::1"])
        ('0.0.0.0', '::1')
        >>> _listening_host(["serve", "m"])
        'localhost'
    """
    for k, arg in enumerate(argv):
        if arg == "--host" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return "localhost"


def main(
    parent: int | None = None,
    tools: bool = True,
    control_text: str = "split",
    turn_end: str | None = None,
) -> None:
    """Run ``transformers serve`` with the arguments of this process, sampling when asked;
    with ``parent``, the id of the process that started it, until that process ends; with
    ``tools=False`` (a chat template that does not write them), refusing requests that
    offer tools; ``control_text`` as the model was trained (``"split"``: a control token
    typed in a message is text; ``"keep"``: it is the token); ``turn_end``: the text that
    ends a chat answer where no token does. Requests naming another ``Host`` than loopback,
    the ``--host`` it listens on or one :data:`HOSTS_ENV` names, and bodies over
    :data:`MAX_BODY_BYTES`, are refused (:func:`guard_app`)."""
    if parent is not None:
        exit_with_parent(parent)
    sample_when_asked()
    stop_promptly()
    guard_requests(_listening_host(sys.argv))
    check_requests(tools_written=tools, control_text=control_text)
    end_answers_as_openai(turn_end=turn_end)
    from transformers.cli.transformers import main as transformers_main

    transformers_main()


SCRATCH_PREFIX = "workbench-serve-"
"""The name :func:`~workbench.deploy.serve.serve_model` gives a server's own ``TMPDIR``."""


def _remove_own_scratch(environ: Any = None) -> None:
    """Remove this server's ``TMPDIR`` when serve_model made it (its parent, which removes
    it on ``stop()``, has ended).

    Examples:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
        >>> _remove_own_scratch({"TMPDIR": folder}), os.path.exists(folder)
        (None, False)
        >>> _remove_own_scratch({"TMPDIR": "/tmp"}), os.path.exists("/tmp")  # not ours: kept
        (None, True)
    """
    import shutil

    folder = (os.environ if environ is None else environ).get("TMPDIR", "")
    if os.path.basename(folder.rstrip("/")).startswith(SCRATCH_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def exit_with_parent(parent: int, every: float = 0.5) -> threading.Thread:
    """End this process once process ``parent`` has ended, however it ended: a kernel killed
    by SIGTERM or SIGKILL runs no atexit, and left its server holding the port and the
    model's memory. This process is then handed to another parent, which is how it knows
    (on Linux and macOS alike); the model's process transformers started ends with it.

    Examples:
        A process told that its parent is process 1 (which it is not) ends at once:

        >>> import subprocess
        >>> code = "import time; from workbench.deploy._serving import exit_with_parent as e; "
        >>> code += "e(1); time.sleep(60)"
        >>> subprocess.run([sys.executable, "-c", code], capture_output=True).returncode
        1
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        print(f"the process that started this server ({parent}) has ended", file=sys.stderr)
        _remove_own_scratch()
        os._exit(1)

    watcher = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    watcher.start()
    return watcher
