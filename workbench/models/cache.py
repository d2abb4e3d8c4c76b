"""The model cache: converted models stored as verified safetensors folders.

A cache entry is a folder written under a temporary name and renamed when complete. Its
``workbench-cache.json`` manifest, written last, lists every file with its size and SHA-256.
An entry whose manifest is missing or whose files don't match it is treated as absent, removed,
and rebuilt; it is never loaded.

Examples:
    >>> import os
    >>> from unittest import mock
    >>> from workbench.models.cache import cached_folder, verify_entry
    >>> with mock.patch.dict(os.environ, {"WORKBENCH_CACHE": "/tmp/wb-doc-cache"}):
    ...     folder = cached_folder("module-demo", lambda tmp: (tmp / "x.txt").write_text("1"), {})
    >>> sorted(p.name for p in folder.iterdir())
    ['workbench-cache.json', 'x.txt']
    >>> verify_entry(folder) is None
    True
    >>> (folder / "x.txt").write_text("2")  # damage it: the next use removes and rebuilds it
    1
    >>> verify_entry(folder)
    'x.txt does not match its SHA-256'
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from workbench._io import (
    staging_folder,
    temporaries,
    translated_write_errors,
    verify_manifest,
    write_manifest,
)
from workbench.errors import CacheError, WriteError

__all__ = [
    "MANIFEST",
    "cache_root",
    "cached_folder",
    "entries_built_from",
    "remove_superseded",
    "verify_entry",
]

MANIFEST = "workbench-cache.json"
CACHE_ENV = "WORKBENCH_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$WORKBENCH_CACHE``, else the user cache folder + ``/workbench``.

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORKBENCH_CACHE": "/tmp/wb-doc-cache"}):
        ...     str(cache_root())
        '/tmp/wb-doc-cache'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV]))
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("workbench"))


def verify_entry(folder: Path) -> str | None:
    """Return why ``folder`` is not a complete cache entry, or None when it is.

    Examples:
        >>> verify_entry(Path("/nonexistent-entry"))
        'no manifest'
    """
    return verify_manifest(folder, MANIFEST)


def cached_folder(
    key: str,
    build: Callable[[Path], None],
    source: dict,
    on_event: Callable[[str], None] = lambda message: None,
) -> Path:
    """Return the verified cache folder for ``key``, building it with ``build(tmp)`` if needed.

    A complete entry is returned without taking a lock, so a read-only shared cache serves
    what it holds. Otherwise a process-wide file lock keeps two processes from building the
    same entry at once, so the staging folder of a build that was killed (a kernel restart
    while converting) is removed by the next build rather than left in the cache.

    Args:
        key: Folder name inside the cache root.
        build: Writes the entry's files into the temporary folder it is given.
        source: Facts about where the entry came from, stored in the manifest.
        on_event: Receives progress messages.

    Returns:
        The complete, verified folder.

    While another process builds the same entry, this one says so once through
    ``on_event`` (naming the entry and its lock file) and waits for it.

    Raises:
        CacheError: The entry is missing or incomplete and the cache folder can't be
            written, or its disk fills up while building (the message names it and
            ``WORKBENCH_CACHE``; nothing of the build is left behind).

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORKBENCH_CACHE": "/tmp/wb-doc-cache"}):
        ...     folder = cached_folder("demo", lambda tmp: (tmp / "x.txt").write_text("1"), {})
        >>> folder
        PosixPath('/tmp/wb-doc-cache/demo')
        >>> (folder / "x.txt").read_text()
        '1'
    """
    root = cache_root()
    folder = root / key
    if folder.is_dir() and verify_entry(folder) is None:
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot create the model cache {root}: {err}. Set {CACHE_ENV} to a writable folder."
        raise CacheError(msg) from err
    with _entry_lock(root, key, on_event):
        # Holding the key's lock, any staging folder of it is a killed build's: remove it.
        for leftover in temporaries(folder, "staging"):
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists():
            problem = verify_entry(folder)
            if problem is None:
                return folder
            on_event(f"cache entry {folder} is incomplete or corrupted ({problem}); rebuilding")
            shutil.rmtree(folder)
        try:
            with staging_folder(folder) as tmp, translated_write_errors(root):
                build(tmp)
                write_manifest(tmp, MANIFEST, {"source": source})
        except WriteError as err:  # a full disk; a cache that became read-only mid-build
            raise _cache_write_error(root, key, err) from err
    return folder


def _cache_write_error(root: Path, key: str, err: WriteError) -> CacheError:
    """The :class:`CacheError` (with ``err``'s ``errno``) for a build of ``key`` that could
    not write into the cache ``root``: it names the folder and ``WORKBENCH_CACHE``."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        msg = (
            f"cannot cache {key}: the disk of the model cache {root} is full (no space left "
            f"on device). Free some space there, or set {CACHE_ENV} to a folder on a disk "
            "with more room."
        )
    else:
        msg = f"cannot cache {key} in the model cache {root}: {err} Or set {CACHE_ENV} to one."
    cache_error = CacheError(msg)
    cache_error.errno = code
    return cache_error


@contextlib.contextmanager
def _entry_lock(
    root: Path, key: str, on_event: Callable[[str], None] = lambda message: None
) -> Iterator[None]:
    """Hold the lock of entry ``key``; a cache folder where its lock file cannot be made
    (read-only, another user's) is a :class:`CacheError` naming it. When another process
    holds it (building that entry), say so once through ``on_event``, then wait."""
    from filelock import FileLock, Timeout

    lock_file = root / f".{key}.lock"
    lock = FileLock(str(lock_file))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            on_event(
                f"waiting for another process that is building {key} in the model cache "
                f"(it holds {lock_file}); this load goes on when it is done"
            )
            lock.acquire()
    except OSError as err:
        msg = (
            f"cannot build {key} in the model cache {root}: its lock file cannot be "
            f"created ({err.strerror or err}); the folder is not writable. Set {CACHE_ENV} "
            "to a folder you can write to."
        )
        raise CacheError(msg) from err
    try:
        yield
    finally:
        lock.release()


def remove_superseded(keep: Path, field: str, value: str) -> list[Path]:
    """Remove the cache entries, other than ``keep``, built from the same source: those whose
    manifest's ``source[field]`` is ``value`` (conversions of a file that has changed since,
    which would otherwise stay on disk, a full copy of the model each).

    An entry another process is building or rebuilding (its lock is held) is left alone.

    Returns:
        The folders removed.

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORKBENCH_CACHE": "/tmp/wb-doc-superseded"}):
        ...     old = cached_folder("v1", lambda tmp: None, {"gguf": "/m.gguf"})
        ...     new = cached_folder("v2", lambda tmp: None, {"gguf": "/m.gguf"})
        ...     removed = remove_superseded(new, "gguf", "/m.gguf")
        >>> removed == [old], old.exists(), new.exists()
        (True, False, True)
    """
    from filelock import FileLock, Timeout

    removed = []
    for entry, _ in entries_built_from(keep.parent, field, value):
        if entry == keep:
            continue
        try:
            with FileLock(str(keep.parent / f".{entry.name}.lock"), timeout=0):
                shutil.rmtree(entry, ignore_errors=True)
        except (Timeout, OSError):  # being built, or a cache this user cannot change
            continue
        removed.append(entry)
    return removed


def entries_built_from(root: Path, field: str, value: str) -> list[tuple[Path, dict]]:
    """The entries of the cache ``root`` whose manifest's ``source[field]`` is ``value``, each
    with its ``source`` facts (an entry without a readable manifest has none: left out).

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORKBENCH_CACHE": "/tmp/wb-doc-built-from"}):
        ...     entry = cached_folder("m-1", lambda tmp: None, {"gguf": "/m.gguf", "size": 3})
        >>> found = entries_built_from(entry.parent, "gguf", "/m.gguf")
        >>> found == [(entry, {"gguf": "/m.gguf", "size": 3})]
        True
    """
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        source = {} if entry.name.startswith(".") else _source_of(entry)
        if source.get(field) == value:
            found.append((entry, source))
    return found


def _source_of(entry: Path) -> dict:
    """The ``source`` facts in an entry's manifest (empty when it has none or is damaged)."""
    try:
        source = json.loads((entry / MANIFEST).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return {}
    return source if isinstance(source, dict) else {}
