"""Atomic file and folder writes: what the workbench writes is complete or absent."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import SpecError, WorkbenchError, WorkbenchWarning, WriteError

__all__ = [
    "STALE_AFTER_S",
    "append_jsonl",
    "atomic_write_text",
    "check_free_space",
    "expand_home",
    "file_in_the_way",
    "json_lines",
    "make_folder",
    "open_lock_file",
    "process_alive",
    "read_jsonl",
    "rewrite_jsonl",
    "sha256_file",
    "staging_folder",
    "stale",
    "temporaries",
    "temporary_stem",
    "translated_write_errors",
    "verify_manifest",
    "write_error",
    "write_manifest",
]

_MB = 1024 * 1024
STALE_AFTER_S = 3600.0  # unmodified this long, a temporary file's writer was killed
# A little room beyond the estimate: file system metadata, a JSON file or two, the card.
_SPACE_MARGIN = 1.05
_NAME_MAX = 255  # bytes in one path component, on Linux and macOS file systems
# The most a temporary adds to a name: "." before, ".partial-" and mkdtemp's 8 characters after.
_TEMPORARY_AFFIXES = 18
# What mkstemp and mkdtemp add after a prefix: 8 of tempfile's characters, no other shape.
_RANDOM_PART = "[a-z0-9_]{8}"
_KIND_INFIX = {"file": "", "staging": "partial-", "aside": "old-"}


def temporary_stem(name: str) -> str:
    """The part of ``name`` that the temporaries of a file or folder ``name`` start with
    (after a dot): ``name`` itself, or for a name too long to take their affixes within 255
    bytes, its start, a ``~`` and a hash of it (the same for the same name, so a cleanup of
    ``.{temporary_stem(name)}.partial-*`` finds what a killed writer left).

    Examples:
        >>> temporary_stem("report.html")
        'report.html'
        >>> short = temporary_stem("x" * 246)
        >>> len(short), short[-10:]
        (237, 'x~8cc53d63')
    """
    limit = _NAME_MAX - _TEMPORARY_AFFIXES
    if len(os.fsencode(name)) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    head = name
    while len(os.fsencode(head)) > limit - len(digest) - 1:
        head = head[:-1]
    return f"{head}~{digest}"


def temporaries(target: str | Path, kind: str) -> list[Path]:
    """The temporaries of one ``kind`` that writers of ``target`` made beside it, in the
    exact shape they are made, so that a cleanup never takes a user's file: ``"file"``,
    :func:`atomic_write_text`'s ``.{stem}.XXXXXXXX``; ``"staging"``, :func:`staging_folder`'s
    ``.{stem}.partial-XXXXXXXX``; ``"aside"``, the previous folder it moves aside,
    ``.{stem}.old-XXXXXXXX`` (``stem``: :func:`temporary_stem`; ``XXXXXXXX``: tempfile's 8
    random characters).

    Examples:
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in (".a.partial-k1ll3d00", ".a.partial-x.partial-k1ll3d00", ".a.old-backup"):
        ...     (folder / name).mkdir()
        >>> temporaries(folder / "a", "staging") == [folder / ".a.partial-k1ll3d00"]
        True
        >>> temporaries(folder / "a", "aside")  # the user's .a.old-backup is not one
        []
    """
    final = Path(target)
    prefix = f".{temporary_stem(final.name)}.{_KIND_INFIX[kind]}"
    shape = re.compile(re.escape(prefix) + _RANDOM_PART)
    try:
        return sorted(p for p in final.parent.iterdir() if shape.fullmatch(p.name))
    except OSError:  # no folder there (yet, or any more)
        return []


def expand_home(path: str | Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded, for a user's path argument; a
    name such as ``~old-runs`` that names no user is a relative name, as the shell takes it
    (``Path.expanduser`` raises RuntimeError on it).

    Examples:
        >>> expand_home("~old-runs/model"), expand_home("~") == Path.home()
        (PosixPath('~old-runs/model'), True)
    """
    return Path(os.path.expanduser(os.fspath(path)))


def _dangling_link(path: Path) -> Path | None:
    """``path`` or the parent of it that is a symbolic link to something missing, if any."""
    return next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)


def file_in_the_way(folder: str | Path) -> Path | None:
    """The file standing where ``folder`` or one of its parents should be (``None``: none).

    Examples:
        >>> _ = Path("/tmp/wb-doc-io-way").write_text("x")
        >>> file_in_the_way("/tmp/wb-doc-io-way/a/b"), file_in_the_way("/tmp")
        (PosixPath('/tmp/wb-doc-io-way'), None)
    """
    path = expand_home(folder)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def stale(path: Path) -> bool:
    """Whether ``path`` went unmodified for :data:`STALE_AFTER_S`: a writer touches its file
    as it writes, so one this old was left by a writer that was killed.

    Examples:
        >>> stale(Path("/nonexistent-wb-doc"))
        False
    """
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def make_folder(path: str | Path) -> Path:
    """Create folder ``path`` (and its parents), or say plainly why it cannot be.

    Raises:
        SpecError: a file stands where the folder or one of its parents should be.
        WriteError: a read-only file system, no permission to write there, or the folder
            is a link to a folder that no longer exists.

    Examples:
        >>> make_folder("/tmp/wb-doc-io-folder/a/b").is_dir()
        True
        >>> _ = Path("/tmp/wb-doc-io-file").write_text("x")
        >>> make_folder("/tmp/wb-doc-io-file/sub")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /tmp/wb-doc-io-file is a file, so /tmp/wb-doc-io-file/sub ...
    """
    folder = expand_home(path)
    blocking = file_in_the_way(folder)
    if blocking is not None:
        msg = f"{blocking} is a file, so {folder} cannot be a folder; give a folder path."
        raise SpecError(msg)
    dangling = _dangling_link(folder)
    if dangling is not None:
        raise _write_error(
            errno.EEXIST,
            f"{dangling} is a link to {os.readlink(dangling)}, a folder that no longer "
            f"exists, so {folder} cannot be created there: remove the link or point it at "
            "an existing folder.",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, folder) from err
    return folder


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user counts as alive).

    Examples:
        >>> process_alive(os.getpid()), process_alive(999_999_999)
        (True, False)
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


_FILE_MODE, _FOLDER_MODE = 0o666, 0o777  # before the umask, as open() and mkdir() create


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask now: read at every call, as a notebook may change it at any time.

    Linux shows it in /proc/self/status; elsewhere it is read by setting it and setting it
    back, under a lock so that two of these reads never see each other's setting.
    """
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/status", encoding="ascii", errors="replace") as status,
    ):
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _as_created(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``open``/``mkdir`` would
    under the umask: a staged folder and files written through temporaries (mkdtemp,
    mkstemp, safetensors' writer) are private, so another user (a server in a container,
    a second machine of a run on a shared disk) could read config.json but not the weights.

    Examples:
        >>> import stat, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "weights.bin").write_bytes(b"x"); (folder / "weights.bin").chmod(0o600)
        >>> _as_created(folder)
        >>> oct(stat.S_IMODE((folder / "weights.bin").stat().st_mode)) == oct(0o666 & ~_umask())
        True
    """
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        runnable = path.is_dir() or path.stat().st_mode & 0o111  # a script stays runnable
        path.chmod((_FOLDER_MODE if runnable else _FILE_MODE) & ~mask)


def atomic_write_text(path: str | Path, text: str, parents: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    With ``parents=False`` a missing folder is an error, not created: a file that belongs in
    a folder someone deleted must not bring the folder back.

    A full disk, a read-only file system or a refused permission is a
    :class:`~workbench.errors.WriteError` naming ``path`` (not the temporary file).

    Examples:
        >>> p = atomic_write_text("/tmp/wb-doc.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    target = Path(path)
    try:
        if parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{temporary_stem(target.name)}.", dir=target.parent)
    except OSError as err:
        _raise_as_write_error(err, target, len(text.encode()))
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE & ~_umask())  # mkstemp makes it private (0600)
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            _raise_as_write_error(err, target, len(text.encode()))
        raise
    return target


def _clear_stale_temporaries(target: Path) -> None:
    """Delete the temporary files that writers of ``target`` killed mid-write left (a
    55 MB report page stayed for good), leaving any a live writer may be filling."""
    for leftover in temporaries(target, "file"):
        if leftover.is_file() and stale(leftover):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _raise_as_write_error(err: OSError, path: Path, needed_bytes: int | None) -> None:
    """Raise ``err``'s :class:`WriteError` when it is a full disk or a refused write."""
    translated = write_error(err, path, needed_bytes)
    if translated is not err:
        raise translated from err


@contextlib.contextmanager
def staging_folder(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` and rename it to ``target`` on success.

    On any error the temporary folder is removed and ``target`` is left as it was. A name
    too long for the file system, or a folder that cannot be written, is a
    :class:`~workbench.errors.WriteError` naming ``target``, raised before anything is written.

    Examples:
        >>> with staging_folder("/tmp/wb-doc-folder", replace=True) as tmp:
        ...     _ = (tmp / "a.txt").write_text("x")
        >>> (Path("/tmp/wb-doc-folder") / "a.txt").read_text()
        'x'
    """
    final = Path(target)
    try:
        if len(os.fsencode(final.name)) > _NAME_MAX:  # refused before anything is written
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(final))
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{temporary_stem(final.name)}.partial-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    except OSError as err:
        _raise_as_write_error(err, final, None)
        raise
    try:
        yield tmp
        if final.exists() and not replace:
            raise FileExistsError(final)
        _as_created(tmp)  # mkdtemp (and some writers' own temporaries) make them private
        with interrupts_deferred():  # the new folder in place and the old one gone, or not
            _place(tmp, final)
    except BaseException:
        with interrupts_deferred(drop=True):
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def interrupts_deferred(drop: bool = False) -> Iterator[None]:
    """Hold a Ctrl-C that comes inside the block until the block ends (``drop``: forget it,
    for the clean-up of a call that is ending with an exception anyway: a second Ctrl-C
    must not leave it half done).

    Python runs signal handlers in the main thread only, so only there is anything held.

    Examples:
        >>> with interrupts_deferred(drop=True):
        ...     pass  # a clean-up that must run to its end
    """
    handler = signal.getsignal(signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()
    if not main or handler is None:  # a handler not set from Python cannot be put back
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if caught and not drop:
            signal.raise_signal(signal.SIGINT)  # delivered now, to the handler put back


def _place(new: Path, final: Path) -> None:
    """Rename the complete folder ``new`` to ``final``, replacing what is there so that
    ``final`` is never missing: the two are exchanged in one step where the system can
    (Linux's ``renameat2``), else the old one is renamed aside first and put back on
    failure; either way the old one is removed once the new one is in place. (Removing the
    old folder first left nothing at ``final`` for a process killed in between.)"""
    if not final.exists():
        new.rename(final)
        return
    if _exchange(new, final):
        if new.is_symlink():  # a link was in the way: it goes, what it points to stays
            new.unlink()
        else:
            shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    aside = final.with_name(f".{temporary_stem(final.name)}.old-{new.name.rsplit('-', 1)[-1]}")
    final.rename(aside)
    try:
        new.rename(final)
    except BaseException:
        aside.rename(final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; ``False`` where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # not on this file system (or kernel): the fallback
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _renameat2():
    """libc's ``renameat2``, or ``None`` off Linux and on a libc without it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


def sha256_file(path: str | Path, block: int = 4 * 1024 * 1024) -> str:
    """Return the hex SHA-256 of a file, read in blocks.

    Examples:
        >>> sha256_file(atomic_write_text("/tmp/wb-doc.txt", ""))[:8]
        'e3b0c442'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _write_error(code: int, message: str) -> WriteError:
    """A WriteError that prints as its message alone, with ``errno`` still set."""
    err = WriteError(message)
    err.errno = code
    return err


def _existing_parent(path: Path) -> Path:
    """The path itself or its nearest existing ancestor (where a new folder would go)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(path: str | Path, needed_bytes: int, what: str = "this write") -> None:
    """Raise :class:`WriteError` unless the disk holding ``path`` has room for ``needed_bytes``.

    ``path`` may not exist yet; its nearest existing parent is checked. Also refuses a
    read-only or non-writable place, before anything is written.

    Examples:
        >>> check_free_space("/tmp/wb-doc-new/folder", 1024)
        >>> try:
        ...     check_free_space("/tmp", 10**18, "the export")
        ... except WriteError as err:
        ...     print(str(err)[:35])
        no space left on device at /tmp for
    """
    place = _existing_parent(Path(path))
    if not os.access(place, os.W_OK):
        raise _write_error(
            errno.EACCES,
            f"{place} is not writable (read-only or no permission) "
            f"for {what}: choose a folder you can write to.",
        )
    free = shutil.disk_usage(place).free
    if needed_bytes * _SPACE_MARGIN > free:
        raise _write_error(
            errno.ENOSPC,
            f"no space left on device at {place} for {what}: "
            f"{needed_bytes * _SPACE_MARGIN / _MB:.1f} MB needed, "
            f"{free / _MB:.1f} MB free. Free some space or write elsewhere.",
        )


def write_error(err: OSError, path: str | Path, needed_bytes: int | None = None) -> OSError:
    """Translate a low-level write failure into a :class:`WriteError` naming ``path``.

    Errors other than a full disk, a read-only file system or a refused permission are
    returned unchanged.

    Examples:
        >>> str(write_error(OSError(errno.ENOSPC, "No space left"), "/x", 3 * 1024 * 1024))
        'no space left on device at /x (3.0 MB needed). Free some space or write elsewhere.'
    """
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        need = f" ({needed_bytes / _MB:.1f} MB needed)" if needed_bytes else ""
        return _write_error(
            code, f"no space left on device at {path}{need}. Free some space or write elsewhere."
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return _write_error(
            code,
            f"cannot write to {path}: {os.strerror(code).lower()}. "
            "Choose a folder you can write to.",
        )
    if code == errno.ENAMETOOLONG:
        return _write_error(
            code,
            f"cannot write to {path}: its name is too long (at most {_NAME_MAX} bytes a "
            "name, 4096 a whole path). Choose a shorter name.",
        )
    return err


# Rust libraries (safetensors, tokenizers) report an OS error in their message only, as
# "(os error 28)"; Arrow as "[errno 28]".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def _os_error_of(err: BaseException) -> OSError | None:
    """``err`` as an OSError with its errno: itself, or one rebuilt from the number a
    library's message gives ("(os error N)", "[errno N]")."""
    if isinstance(err, OSError) and err.errno is not None:
        return err
    found = _RUST_OS_ERROR.search(str(err))
    if found:
        return OSError(int(found[1] or found[2]), str(err))
    return err if isinstance(err, OSError) else None


@contextlib.contextmanager
def translated_write_errors(path: str | Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Re-raise full-disk and read-only failures inside the block as :class:`WriteError`.

    Libraries report a full disk in their own words (safetensors: "unexpected pos ..."); the
    cause is found on the exception's chain, or by checking the free space when the message
    is not an ``OSError`` at all.

    Examples:
        >>> with translated_write_errors("/tmp/wb-doc-io-out"):  # doctest: +ELLIPSIS
        ...     raise RuntimeError("unexpected pos (os error 28)")  # a Rust library's words
        Traceback (most recent call last):
        workbench.errors.WriteError: no space left on device at /tmp/wb-doc-io-out. ...
    """
    try:
        yield
    except WorkbenchError:
        raise  # already says what went wrong (a WriteError, or a SpecError met mid-write)
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None:
            translated = _os_error_of(cause)
            if (
                translated is not None
                and write_error(translated, path, needed_bytes) is not translated
            ):
                raise write_error(translated, path, needed_bytes) from err
            cause = cause.__cause__ or cause.__context__
        place = _existing_parent(Path(path))
        if needed_bytes and shutil.disk_usage(place).free < needed_bytes * _SPACE_MARGIN:
            raise write_error(OSError(errno.ENOSPC, "no space"), path, needed_bytes) from err
        raise


def write_manifest(folder: str | Path, name: str, extra: dict | None = None) -> Path:
    """Write ``folder/name``: the size and SHA-256 of every file under ``folder``.

    Write it last: a folder whose manifest is present and matches was written completely.
    Files in subfolders are listed by their relative POSIX path.

    Examples:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.txt").write_text("x")
        >>> manifest = json.loads(write_manifest(folder, "manifest.json").read_text())
        >>> manifest["files"]["a.txt"]["size"]
        1
    """
    root = Path(folder)
    files = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != name
    }
    text = json.dumps({**(extra or {}), "files": files}, indent=1)
    (root / name).write_text(text, encoding="utf-8")
    return root / name


def verify_manifest(folder: str | Path, name: str, hashes: bool = True) -> str | None:
    """Why the files under ``folder`` don't match its manifest ``name``, or ``None`` if they do.

    Args:
        folder: The folder :func:`write_manifest` described.
        name: The manifest's file name.
        hashes: Also compare SHA-256 (``False``: sizes only, without reading the files).

    Examples:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.txt").write_text("x")
        >>> _ = write_manifest(folder, "manifest.json")
        >>> verify_manifest(folder, "manifest.json") is None
        True
        >>> _ = (folder / "a.txt").write_text("y")
        >>> verify_manifest(folder, "manifest.json")
        'a.txt does not match its SHA-256'
    """
    path = Path(folder) / name
    if not path.is_file():
        return "no manifest"
    try:
        expected = _manifest_files(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        return f"unreadable manifest ({err})"
    for rel, (size, digest) in expected.items():
        file = Path(folder) / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != size:
            return f"{rel} has {file.stat().st_size} bytes, expected {size}"
        if hashes and sha256_file(file) != digest:
            return f"{rel} does not match its SHA-256"
    return None


def _manifest_files(manifest: object) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha256)}`` from a parsed manifest; raises if it has another shape.

    A manifest is valid JSON of the wrong shape when a tool or a person rewrote it; it must
    read as damaged (and the folder be rebuilt or skipped), never as a TypeError on every load.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise TypeError("expected an object with a 'files' object")
    files = {}
    for name, facts in manifest["files"].items():
        parts = str(name).replace("\\", "/").split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file name {name!r} is not a plain relative path")
        if not isinstance(facts, dict):
            raise TypeError(f"entry {name!r} is not an object with size and sha256")
        size, digest = facts.get("size"), facts.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or not isinstance(digest, str):
            raise TypeError(f"entry {name!r} needs an int size and a sha256 string")
        files[name] = (size, digest)
    if not files:
        raise ValueError("it lists no files")
    return files


def _end_torn_line(path: Path) -> None:
    """End a last line cut short by a kill, so the next record starts on a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
        if last != b"\n":
            with open(path, "ab") as handle:
                handle.write(b"\n")


def append_jsonl(path: str | Path, row: dict, sync: bool = False) -> None:
    """Append one JSON line and flush it (``sync``: and fsync it, for records users make).

    A torn last line left by a killed writer is ended first, so it costs only itself.

    Examples:
        >>> import warnings
        >>> p = Path(tempfile.mkdtemp()) / "log.jsonl"
        >>> _ = p.write_text('{"step": 1}' + chr(10) + '{"st')  # a writer killed mid-line
        >>> append_jsonl(p, {"step": 2})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     rows = read_jsonl(p)
        >>> rows
        [{'step': 1}, {'step': 2}]
        >>> caught[0].category.__name__, str(caught[0].message).split(": ", 1)[1][:32]
        ('WorkbenchWarning', 'skipped line(s) 2, which are not')
    """
    target = Path(path)
    with translated_write_errors(target):  # a read-only folder, a full disk: named
        _end_torn_line(target)
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            if sync:
                os.fsync(handle.fileno())


def json_lines(text: str) -> list[str]:
    r"""The lines of a JSON-lines text, split at ``\n`` only.

    ``str.splitlines`` also splits at U+2028, U+2029, U+0085 and other separators that JSON
    written with ``ensure_ascii=False`` keeps raw inside a string (text pasted from a PDF or
    a web page), which would tear such a record in two.

    Examples:
        >>> text = json.dumps({"a": "x\u2028y"}, ensure_ascii=False) + "\n" + '{"a": 2}\n'
        >>> len(text.splitlines()), [json.loads(line) for line in json_lines(text)]
        (3, [{'a': 'x\u2028y'}, {'a': 2}])
    """
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; torn lines (writes cut by a kill) are skipped.

    A torn line before the last one (a writer killed, then appended to again) is skipped with
    a :class:`~workbench.errors.WorkbenchWarning` naming the file and line, so damage never
    passes unseen and never makes the rest of the file unreadable.

    Examples:
        >>> read_jsonl(Path("/nonexistent.jsonl"))
        []
    """
    target = Path(path)
    if not target.is_file():
        return []
    lines = json_lines(target.read_text(encoding="utf-8", errors="replace"))
    rows, torn = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:  # torn, or JSON that is no record (a number, a list): damage
            torn.append(number)
    if [n for n in torn if n != len(lines)]:
        warnings.warn(
            f"{target}: skipped line(s) {', '.join(map(str, torn))}, which are not "
            "JSON objects (writes cut short by a kill, or damage).",
            WorkbenchWarning,
            stacklevel=2,
        )
    return rows


def rewrite_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Replace a JSON-lines file atomically.

    Examples:
        >>> p = Path(tempfile.mkdtemp()) / "log.jsonl"
        >>> rewrite_jsonl(p, [{"a": 1}]); read_jsonl(p)
        [{'a': 1}]
    """
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def open_lock_file(path: Path, create: bool = True) -> int:
    """Open a lock file for ``flock``: for writing where this user may, else read-only.

    ``flock`` needs no write access, so a lock file another user made 0644 (an earlier
    version's, or under umask 022) in a group-shared folder still locks for the group: it
    was read as "nobody holds it" and a paused run shown as killed, and a teammate could not
    resume or rate. Its holder's name is then not written.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / ".lock"
        >>> fd = open_lock_file(path); _ = os.write(fd, b"x"); os.close(fd)
        >>> path.chmod(0o444)
        >>> os.close(open_lock_file(path))  # as any user: read-only (root could write)
    """
    flags = os.O_CREAT if create else 0
    try:
        # No O_TRUNC: a refused opener must not erase the holder's pid. 0o666 less the
        # umask, as open() makes files: a group-shared folder's teammate can resume.
        return os.open(path, os.O_RDWR | flags, 0o666)
    except PermissionError:
        if not path.exists():
            raise
        return os.open(path, os.O_RDONLY)
