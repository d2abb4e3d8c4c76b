"""Atomic file and folder writes: what the workbench writes is complete or absent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write_text", "sha256_file", "staging_folder"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    Examples:
        >>> p = atomic_write_text("/tmp/wb-doc.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


@contextlib.contextmanager
def staging_folder(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` and rename it to ``target`` on success.

    On any error the temporary folder is removed and ``target`` is left as it was.

    Examples:
        >>> with staging_folder("/tmp/wb-doc-folder", replace=True) as tmp:
        ...     _ = (tmp / "a.txt").write_text("x")
        >>> (Path("/tmp/wb-doc-folder") / "a.txt").read_text()
        'x'
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            shutil.rmtree(final)
        tmp.chmod(0o755)  # mkdtemp makes it private; the final folder should not be
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
