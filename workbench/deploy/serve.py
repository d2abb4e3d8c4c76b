"""Serve an exported model over an OpenAI-compatible HTTP API with ``transformers serve``.

The server is transformers' own (FastAPI + Uvicorn), started as a child process bound to
loopback. :class:`Server` waits until it answers, says how to call it, and stops it on
``stop()`` or when the Python process (the kernel) exits. It is started through
:mod:`workbench.deploy._serving`, so a request with ``temperature`` above 0 samples even when
the model's ``generation_config.json`` answers greedily, and ``n`` above 1 is refused.

Examples:
    Serving loads the model in a new process and takes tens of seconds, so it is shown here,
    not run (``tests/test_deploy.py`` runs it on the tiny model)::

        server = serve_model("runs/demo/export/merged", port=8000)
        server.url               # 'http://127.0.0.1:8000/v1'
        print(server)            # how to call it: curl, the openai client, TGI or vLLM
        server.chat("Hello!")    # the model's answer
        server.stop()

    The checks made before anything starts run at once:

    >>> check_port(8000), port_is_free(0)
    (8000, True)
    >>> serve_model("/tmp/wb-doc-deploy-serve-absent", port=0)
    Traceback (most recent call last):
    workbench.errors.SpecError: port=0 is not a valid port: give an int from 1 to 65535, \
e.g. port=8000.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import operator
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from workbench.deploy._serving import SCRATCH_PREFIX
from workbench.errors import DependencyError, ServeError, SpecError

__all__ = [
    "KILLED_LINE",
    "ServeError",
    "Server",
    "check_port",
    "failure_cause",
    "listens_on",
    "open_log",
    "port_is_free",
    "serve_model",
    "serves_on",
    "stop_serving_process",
    "template_writes_tools",
]

LOOPBACK = "127.0.0.1"
_LAUNCHER = "workbench.deploy._serving"
KILLED_LINE = "workbench: the server did not end"
"""How the line :meth:`Server.stop` adds to the server's log when it had to kill it begins."""


def check_port(port: object) -> int:
    """Return ``port`` if it is a TCP port a server can listen on (1-65535), else refuse it.

    Port 0 would make the server pick a port nobody is told about, and ``True`` is an int to
    Python but surely not meant as port 1; both are refused with the other wrong values.

    Raises:
        SpecError: ``port`` is not an int from 1 to 65535; the message names the value.

    Examples:
        >>> check_port(8000)
        8000
        >>> check_port("8000")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: port='8000' is not a valid port: give an int from 1 to 65535...
    """
    whole = not isinstance(port, bool) and hasattr(type(port), "__index__")  # int, numpy int
    if not whole or not 1 <= operator.index(port) <= 65535:
        msg = f"port={port!r} is not a valid port: give an int from 1 to 65535, e.g. port=8000."
        raise SpecError(msg)
    return operator.index(port)


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port``.

    Examples:
        >>> port_is_free(0)
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: connections lingering in TIME_WAIT don't make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def serves_on(pid: int, port: int) -> bool:
    """True when process ``pid`` is a ``transformers serve`` on ``port`` (read from /proc).

    A process that cannot be identified (gone, or no /proc: not Linux) is not one: it is
    never stopped on a guess.

    Examples:
        >>> serves_on(os.getpid(), 8000)  # this Python process is no server
        False
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    after = args[args.index("--port") + 1] if "--port" in args[:-1] else None
    ours = any("transformers" in a or _LAUNCHER in a for a in args)
    return "serve" in args and after == str(port) and ours


# This process's servers by process id: stopped (and reaped) at exit, or by
# stop_serving_process when a re-run session stops its earlier server by pid.
_STARTED: dict[int, Server] = {}


@atexit.register
def _stop_started_servers() -> None:
    for server in list(_STARTED.values()):
        server.stop()


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` (or a process it started) holds the listening socket of
    ``port`` (read from /proc; ``True`` where no table lists it, as on macOS or WSL1: it
    cannot be told).

    Examples:
        >>> import socket
        >>> listener = socket.create_server((LOOPBACK, 0))
        >>> port = listener.getsockname()[1]
        >>> other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        >>> listens_on(os.getpid(), port), listens_on(other.pid, port)
        (True, False)
        >>> other.kill(), other.wait() != 0, listener.close()
        (None, True, None)
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        return True
    inodes = set()
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                listening = fields[3] == "0A"
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return True  # no table lists it (WSL1): it cannot be told
    sockets = {f"socket:[{inode}]" for inode in inodes}
    return any(_holds_socket(each, sockets) for each in (pid, *_descendants(pid)))


def _holds_socket(pid: int, sockets: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone
        return False
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                return True
    return False


def _descendants(pid: int) -> list[int]:
    """Processes started by ``pid``, and by them (read from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def stop_serving_process(pid: int, port: int) -> bool:
    """Stop process ``pid`` (SIGTERM, then SIGKILL) until ``port`` is free; True when it is.

    For a server started by an earlier kernel: check it with :func:`serves_on` first. One
    this process started (an earlier session object's) is stopped through its ``Server``,
    which also reaps it: a killed child nobody waits for stays a zombie.

    Examples:
        >>> server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        >>> stop_serving_process(server.pid, 1), server.wait(5) != 0  # port 1 is never held
        (True, True)
    """
    started = _STARTED.get(pid)
    if started is not None:  # stopped and reaped: its pid may be another process's now
        started.stop()
        return _freed(port, 15)
    for sig, seconds in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _freed(port, seconds):
            return True
    return False


def _freed(port: int, seconds: float) -> bool:
    """Whether ``port`` is free within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    return port_is_free(port)


@dataclass
class Server:
    """A running ``transformers serve`` process for one model folder.

    Attributes:
        folder: The served model folder.
        port: The loopback port.
        process: The child process.
        log: File holding the server's output.
        scratch: The folder the process writes its temporary files in (its ``TMPDIR``),
            removed when it stops: a server ended by SIGTERM cleans up nothing itself, and
            left a ``pymp-*`` folder in the system's temporary folder per start.

    Examples:
        :func:`serve_model` starts the process and returns its ``Server``; one built by hand
        around a stand-in process shows the parts that need no model:

        >>> server = Server(Path("/srv/tiny"), 8000,
        ...                 subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
        ...                 Path("/srv/serve-8000.log"))
        >>> server.url, server.running
        ('http://127.0.0.1:8000/v1', True)
        >>> server.stop()
        >>> server.running
        False
    """

    folder: Path
    port: int
    process: subprocess.Popen
    log: Path
    scratch: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """The OpenAI-style base URL.

        Examples:
            >>> Server(Path("/srv/tiny"), 8000, None, Path("/srv/serve-8000.log")).url
            'http://127.0.0.1:8000/v1'
        """
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """True while the server process is alive.

        Examples:
            >>> process = subprocess.Popen([sys.executable, "-c", "pass"])
            >>> server = Server(Path("/srv/tiny"), 8000, process, Path("/srv/serve-8000.log"))
            >>> process.wait(), server.running
            (0, False)
        """
        return self.process.poll() is None

    def chat(self, message: str, max_tokens: int = 64, timeout: float = 120) -> str:
        """Send one chat completion request and return the answer text.

        It needs a running server (see the module docstring): for example
        ``server.chat("Say hi", max_tokens=8)`` returns the model's answer as a string, a
        request the server refuses raises :class:`ServeError` with the server's reason
        (``max_tokens=0`` must be 1 or more), and a server that is not running raises
        ``urllib.error.URLError``.
        """
        body = {
            "model": str(self.folder),
            "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens,
        }
        reply = _post(f"{self.url}/chat/completions", body, timeout)
        return reply["choices"][0]["message"]["content"]

    def usage(self) -> str:
        """How to call this server with curl and the openai client, and how to serve the
        same folder with Text Generation Inference or vLLM on a GPU host.

        Examples:
            >>> server = Server(Path("/srv/tiny"), 8000, None, Path("/srv/serve-8000.log"))
            >>> lines = server.usage().splitlines()
            >>> lines[0]
            'Serving /srv/tiny at http://127.0.0.1:8000/v1'
            >>> [line for line in lines if line.endswith(":")]
            ['curl:', 'openai client:', 'On a GPU host:']
            >>> lines[-1]
            '  vLLM: vllm serve /srv/tiny --port 8000'
        """
        model = json.dumps(str(self.folder))
        folder = shlex.quote(str(self.folder))
        request = json.dumps(
            {"model": str(self.folder), "messages": [{"role": "user", "content": "Hello"}]}
        )
        return "\n".join(
            [
                f"Serving {self.folder} at {self.url}",
                "",
                "curl:",
                f"  curl {self.url}/chat/completions -H 'Content-Type: application/json' \\",
                f"       -d {shlex.quote(request)}",
                "",
                "openai client:",
                "  from openai import OpenAI",
                f"  client = OpenAI(base_url={self.url!r}, api_key='unused')",
                f"  client.chat.completions.create(model={model},",
                "      messages=[{'role': 'user', 'content': 'Hello'}])",
                "",
                "On a GPU host:",
                f"  Text Generation Inference: docker run --gpus all -p 8080:80 -v {folder}:/model "
                "ghcr.io/huggingface/text-generation-inference --model-id /model",
                f"  vLLM: vllm serve {folder} --port 8000",
            ]
        )

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (terminate, then kill after ``timeout`` seconds).

        The server ends at once, answers in progress included: their connections are closed
        (a client reading a stream sees it break off). One that has to be killed says so in
        its log (:data:`KILLED_LINE`).

        Examples:
            >>> process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            >>> server = Server(Path("/srv/tiny"), 8000, process, Path("/srv/serve-8000.log"))
            >>> import signal
            >>> server.stop()
            >>> server.running, process.returncode == -signal.SIGTERM
            (False, True)
            >>> server.stop()  # a second stop does nothing

            A process that ignores SIGTERM is killed, and the log says so:

            >>> import tempfile
            >>> log = Path(tempfile.mkdtemp()) / "serve-8000.log"
            >>> _ = log.write_text("INFO:     Shutting down")
            >>> code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            >>> code += "print(flush=True); time.sleep(60)"
            >>> stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
            >>> _ = stubborn.stdout.readline()  # SIGTERM is ignored from now on
            >>> Server(Path("/srv/tiny"), 8000, stubborn, log).stop(timeout=0.5)
            >>> log.read_text().splitlines()[-1], stubborn.stdout.close()
            ('workbench: the server did not end within 0.5s of SIGTERM: killed (SIGKILL)', None)
        """
        if self._stopped:
            return
        self._stopped = True
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._log_line(f"{KILLED_LINE} within {timeout:g}s of SIGTERM: killed (SIGKILL)")
        _STARTED.pop(self.process.pid, None)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __str__(self) -> str:
        return self.usage()

    def _log_line(self, line: str) -> None:
        """Add ``line`` to the server's log (its process has ended: nothing else writes it)."""
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        with contextlib.suppress(OSError), os.fdopen(os.open(self.log, flags), "a") as log:
            log.write(f"\n{line}\n")


def _post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as refused:
        why = _refusal_reason(refused.read().decode(errors="replace"))
        msg = f"the server refused the request (HTTP {refused.code}): {why}"
        raise ServeError(msg) from refused


def _refusal_reason(body: str) -> str:
    """The explanation in an error response: FastAPI's ``detail``, OpenAI's
    ``error.message``, else the body itself.

    Examples:
        >>> _refusal_reason('{"detail": "max_tokens=0 must be an integer of 1 or more"}')
        'max_tokens=0 must be an integer of 1 or more'
        >>> _refusal_reason('{"error": {"message": "no such model"}}')
        'no such model'
        >>> _refusal_reason("Internal Server Error")
        'Internal Server Error'
    """
    try:
        reply = json.loads(body)
    except ValueError:
        return body[:500]
    error = reply.get("error") if isinstance(reply, dict) else None
    reason = reply.get("detail") if isinstance(reply, dict) else None
    reason = reason or (error.get("message") if isinstance(error, dict) else error)
    return str(reason or body)[:500]


def _check_serving_installed() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        msg = "serving needs FastAPI and Uvicorn: pip install 'transformers[serving]'"
        raise DependencyError(msg) from err


def _not_servable(folder: Path) -> str:
    """Why ``folder`` cannot be served, with what to serve instead."""
    if (folder / "adapter_config.json").is_file():
        return (
            f"{folder} is an adapter export: the server takes a merged model folder. Serve "
            "the session's model with s.serve() (it exports one), or "
            "s.export(path, format='safetensors') and serve that path."
        )
    if folder.suffix == ".gguf" or any(folder.glob("*.gguf")):
        return (
            f"{folder} holds a GGUF file: this server (transformers serve) takes a merged "
            "model folder; serve the GGUF with llama.cpp's llama-server, or serve "
            "s.export(path, format='safetensors')."
        )
    return f"{folder} is not a model folder (no config.json): export the model first."


def serve_model(
    folder: str | Path,
    port: int = 8000,
    timeout: float = 300,
    control_text: str = "split",
    turn_end: str | None = None,
) -> Server:
    """Start ``transformers serve`` for ``folder`` on loopback and wait until it answers.

    Args:
        folder: An exported model folder (safetensors, with tokenizer and chat template).
        port: The loopback port; it must be free (no other port is picked silently).
        timeout: Seconds to wait for the model to load and answer.
        control_text: What a control token typed in a message is, as the model was trained
            (the data's ``special_tokens_in_text``): ``"split"``, plain text; ``"keep"``, the
            control token (transformers' own way).
        turn_end: The training template's end of turn where no token of the tokenizer
            writes it (:func:`workbench.data.templates.text_only_stop`): chat answers stop
            at that text, as ``s.generate`` does, instead of writing on to ``max_tokens``.

    Raises:
        SpecError: the port is not an int from 1 to 65535 or is in use, or the folder is not a
            model folder.
        ServeError: the server exited (the message leads with the cause and names the log)
            or did not answer in time.

    Examples:
        >>> serve_model("/tmp/absent-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /tmp/absent-model is not a model folder (no config.json): ...
    """
    port = check_port(port)
    folder = Path(folder).resolve()
    if not (folder / "config.json").is_file():
        raise SpecError(_not_servable(folder))
    if not port_is_free(port):
        raise SpecError(f"port {port} on {LOOPBACK} is in use; choose another port.")
    _check_serving_installed()
    log = folder.parent / f"serve-{port}.log"
    command = [
        sys.executable,
        "-c",
        # transformers serve, sampling when asked, ending when this process ends
        f"from {_LAUNCHER} import main; "
        f"main(parent={os.getpid()}, tools={template_writes_tools(folder)}, "
        f"control_text={control_text!r}, turn_end={turn_end!r})",
        "serve",
        str(folder),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    with _interrupts_held(), open_log(log) as out:  # none between the start and the record
        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{port}-"))
        environment = {**os.environ, "TMPDIR": str(scratch)}
        try:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=environment
            )
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        server = Server(folder, port, process, log, scratch)
        _STARTED[process.pid] = server
    try:
        _wait_until_ready(server, timeout)
    except BaseException:  # an interrupt too: a server nobody holds would serve on unseen
        server.stop()
        raise
    return server


def open_log(path: str | Path) -> BinaryIO:
    """Open ``path`` to write a server log afresh, never through a link: a symlink or hard
    link in its place is removed (a handed session folder held ``serve-8123.log -> ~/notes``,
    and the server's log replaced the notes), the file it pointed to left as it was.

    Raises:
        OSError: something else took the place meanwhile (``ELOOP``: a new symlink).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "notes.txt").write_text("keep me")
        7
        >>> (folder / "serve-8000.log").symlink_to(folder / "notes.txt")
        >>> with open_log(folder / "serve-8000.log") as log:
        ...     _ = log.write(b"INFO: started")
        >>> (folder / "notes.txt").read_text(), (folder / "serve-8000.log").is_symlink()
        ('keep me', False)
    """
    with contextlib.suppress(FileNotFoundError):
        found = os.lstat(path)
        if not S_ISREG(found.st_mode) or found.st_nlink > 1:
            os.unlink(path)
    no_follow = getattr(os, "O_NOFOLLOW", 0)  # not on Windows
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | no_follow
    return os.fdopen(os.open(path, flags, 0o666), "wb")


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold an interrupt (SIGINT: Ctrl-C, Jupyter's stop button) until the block ends, then
    raise it: one landing inside ``Popen`` left a started server that nothing recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, None)


def template_writes_tools(folder: str | Path) -> bool:
    """Whether the chat template saved in ``folder`` writes the tools a request offers (a
    template without tool support leaves them out, and the model never sees them).

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> template_writes_tools(build_tiny_model("/tmp/wb-doc-serve-tools"))  # plain ChatML
        False
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception:  # a damaged folder: the server's own start says why, naming the cause
        return True
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe = {
        "type": "function",
        "function": {
            "name": "workbench_probe_tool",
            "description": "a tool offered to see whether the template writes it",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    turns = [{"role": "user", "content": "Hello"}]
    try:
        text = tokenizer.apply_chat_template(
            turns, tools=[probe], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that refuses tools outright (TemplateError, and others)
        return False
    return "workbench_probe_tool" in text


def _wait_until_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running:
            cause = failure_cause(server.log.read_text(errors="replace"))
            raise ServeError(
                f"the server exited with code {server.process.returncode}: {cause}\n"
                f"The server's log, with the whole traceback: {server.log}"
            )
        with contextlib.suppress(urllib.error.URLError, OSError):
            health = f"http://{LOOPBACK}:{server.port}/health"
            with urllib.request.urlopen(health, timeout=2) as response:
                # another program that took the port meanwhile answers too: not ready
                if response.status == 200 and listens_on(server.process.pid, server.port):
                    return
        time.sleep(0.5)
    server.stop()
    raise ServeError(f"the server did not answer within {timeout:.0f}s; see {server.log}")


# An exception's line (a traceback ends with it), or a logged error (uvicorn's
# "ERROR:    [Errno 98] ... address already in use", which no traceback follows)
_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|(ERROR|CRITICAL):\s+\S).*"
)


def failure_cause(log: str) -> str:
    """The line of a failed process's ``log`` that says why it failed: its last exception
    line (a traceback ends with it) or logged error, else its last line.

    Examples:
        >>> failure_cause('''Traceback (most recent call last):
        ...   File "serve.py", line 3, in load
        ...     raise message
        ... RuntimeError: SafetensorError: invalid header length
        ... ''')
        'RuntimeError: SafetensorError: invalid header length'
        >>> failure_cause("INFO: starting\\nKilled")
        'Killed'
        >>> failure_cause("ERROR:    [Errno 98] address already in use\\n  warnings.warn(")
        'ERROR:    [Errno 98] address already in use'
    """
    lines = [line for line in log.splitlines() if line.strip()]
    causes = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (causes or lines or ["(the log is empty)"])[-1][:500]
