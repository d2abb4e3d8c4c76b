"""One trainer per run folder: a lock file that the kernel releases when its holder dies.

:func:`~workbench.train.start_run` and :func:`~workbench.train.resume_run` take the lock of
the run folder before they write anything in it, and the :class:`~workbench.train.Run` gives it
back when its worker thread ends. Without it, resuming a folder that another process (or
another ``Run`` in the same notebook) still trains interleaves both runs' records in
``history.jsonl`` and both write the same checkpoints.

The lock is an OS lock (``flock``) on ``<run>/.workbench.lock``. The kernel drops it when the
process holding it exits, however it exits (SIGKILL, a crashed kernel), so a lock left by a
dead process is never in the way: the next :meth:`RunLock.acquire` simply gets it. The file
also holds the holder's pid, host and start time, only so that a refusal can say who holds it.
Within one process, a registry refuses a second holder of the same folder: ``flock`` locks
belong to an open file, so the kernel alone would not stop two ``RunLock`` objects sharing a
file descriptor, and the message can say that the holder is this very process.

Examples:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with RunLock(folder) as lock:
    ...     lock.held, lock_holder(folder)["pid"] == os.getpid()
    (True, True)
    >>> lock.held, lock_holder(folder)
    (False, None)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from workbench._io import open_lock_file, translated_write_errors
from workbench.errors import SpecError, WriteError

__all__ = ["LOCK_FILE", "RunLock", "is_held", "lock_holder"]

LOCK_FILE = ".workbench.lock"
# On Windows msvcrt locks a byte range and a locked range cannot be read by others, so the
# lock sits on one byte far past the owner text at offset 0, which stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 20

_registry_lock = threading.Lock()
_held: dict[str, RunLock] = {}  # resolved run folder -> the RunLock holding it in this process


def lock_holder(run_dir: str | Path) -> dict[str, Any] | None:
    """Who wrote the lock file of ``run_dir`` last (``pid``, ``host``, ``since``), or ``None``.

    The file outlives its holder, so this is a hint for messages: whether the lock is held
    is only known by trying :meth:`RunLock.acquire`.

    Examples:
        >>> lock_holder("/nonexistent-run") is None
        True
    """
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8")
        owner = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def is_held(run_dir: str | Path) -> bool:
    """Whether a live process (this one included) holds the lock of ``run_dir`` now.

    It tries the lock and gives it straight back, writing nothing: a run whose state says
    "running" in a folder nobody holds was ended without a word (killed, a kernel restart).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with RunLock(folder):
        ...     is_held(folder)
        True
        >>> is_held(folder), is_held("/nonexistent-run")
        (False, False)
    """
    path = Path(run_dir) / LOCK_FILE
    with _registry_lock:
        if str(Path(run_dir).resolve()) in _held:
            return True
    try:
        fd = open_lock_file(path, create=False)
    except OSError:
        return False  # no lock file (or none readable): nobody took it
    try:
        if not _try_lock(fd):
            return True
        _unlock(fd)
        return False
    except OSError:  # a lock this user cannot take (NFS without write access): no verdict
        return True  # a run said to be running is not called dead on no evidence
    finally:
        os.close(fd)


def _writable(fd: int) -> bool:
    """Whether ``fd`` was opened for writing (:func:`open_lock_file` falls back to read-only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows (untested): always opened for writing
        return True
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` without waiting; ``False`` when another open file holds the lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows (untested)
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows (untested)
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """The exclusive right to train in one run folder.

    Use :meth:`acquire` / :meth:`release`, or ``with RunLock(folder):``. Release may happen
    on another thread than acquire (the run's worker releases what ``resume_run`` acquired).

    Attributes:
        run_dir: The run folder (it must exist).
        path: The lock file, ``run_dir / ".workbench.lock"``.
        previous: The owner facts a dead holder left in the file when this lock took it over
            (``None`` if the file was new or released cleanly).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> first = RunLock(folder).acquire()
        >>> try:
        ...     RunLock(folder).acquire()
        ... except SpecError as err:
        ...     print("already being trained by this process" in str(err))
        True
        >>> first.release()
        >>> RunLock(folder).acquire().release()
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.previous: dict[str, Any] | None = None
        self._fd: int | None = None
        self._key = str(self.run_dir.resolve())

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now.

        Examples:
            >>> RunLock("/nonexistent-run").held
            False
        """
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or refuse at once; acquiring a lock this object holds does nothing.

        Returns:
            ``self``, so that ``lock = RunLock(folder).acquire()`` reads naturally.

        Raises:
            SpecError: another process, or another ``RunLock`` of this process, holds it (the
                message names the folder, the holder's pid and what to do), or the folder
                does not exist.
            WriteError: the lock file cannot be created or opened (a folder this user
                cannot write: another user's, read-only), or the holder's name cannot be
                written in it (a full disk); the lock is not taken.

        Examples:
            >>> import tempfile
            >>> RunLock(tempfile.mkdtemp()).acquire().held
            True
        """
        with _registry_lock:
            if self._fd is not None:
                return self
            if self._key in _held:
                raise SpecError(self._same_process_message())
            fd = self._open()
            try:
                if not self._locked(fd):
                    raise SpecError(self._other_process_message())
                self.previous = lock_holder(self.run_dir)
                if _writable(fd):  # a read-only lock file (another user's) names nobody
                    with translated_write_errors(self.path):
                        self._write_owner(fd)
            except BaseException:
                os.close(fd)  # gives the lock back: a lock nobody holds must not stay taken
                raise
            self._fd = fd
            _held[self._key] = self
        return self

    def release(self) -> None:
        """Give the lock back (does nothing if this object does not hold it).

        Examples:
            >>> import tempfile
            >>> lock = RunLock(tempfile.mkdtemp()).acquire()
            >>> lock.release(); lock.release(); lock.held
            False
        """
        with _registry_lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            _held.pop(self._key, None)
            try:
                if _writable(fd):
                    os.ftruncate(fd, 0)  # a released lock names nobody
                _unlock(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.run_dir)!r}, held={self.held})"

    def _locked(self, fd: int) -> bool:
        """Lock ``fd`` now (``False``: another holds it); a lock file open read-only that
        cannot be locked (NFS needs write access) is this user's unwritable folder."""
        try:
            return _try_lock(fd)
        except OSError as err:
            raise self._unwritable(err) from err

    def _open(self) -> int:
        try:
            return open_lock_file(self.path)
        except FileNotFoundError as err:
            msg = f"{self.run_dir} is not a folder: give a run folder (one holding run.json)."
            raise SpecError(msg) from err
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise self._unwritable(err) from err

    def _unwritable(self, err: OSError) -> WriteError:
        error = WriteError(
            f"cannot take the lock of {self.run_dir}: its lock file {self.path} cannot be "
            f"opened or locked ({os.strerror(err.errno).lower()}), so the folder is not "
            "writable by you (another user's run, or a read-only disk; where it is a shared "
            "folder, the lock file's owner can `chmod g+w` it). To go on training it, copy "
            "the run folder into a session folder of your own and resume the copy."
        )
        error.errno = err.errno
        return error

    def _write_owner(self, fd: int) -> None:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner).encode())

    def _same_process_message(self) -> str:
        return (
            f"{self.run_dir} is already being trained by this process (pid {os.getpid()}): "
            "a Run started or resumed here still holds it (an earlier Session's, if the "
            "notebook was run again). Use that Run, or stop it (its monitor's Stop button, "
            "or run.stop() and run.wait()); a paused one is stopped for you, with its step "
            "saved, when Session.resume() is asked for its folder."
        )

    def _other_process_message(self) -> str:
        owner = lock_holder(self.run_dir) or {}
        pid = owner.get("pid", "unknown")
        where = f" on {owner['host']}" if owner.get("host") else ""
        since = f" since {owner['since']}" if owner.get("since") else ""
        return (
            f"{self.run_dir} is being trained by another process (pid {pid}{where}{since}; "
            f"lock file {self.path}). Wait until that run ends, stop it, or end process "
            f"{pid} (e.g. `kill {pid}`); then resume the folder again. A lock left by a "
            "process that died is released by the system on its own."
        )
