"""Where exports go (inside the run folder unless a path is absolute) and how they are written.

Examples:
    >>> from pathlib import Path
    >>> export_target(Path("/tmp/run"), "out/model")
    PosixPath('/tmp/run/out/model')
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from workbench._io import (
    expand_home,
    file_in_the_way,
    staging_folder,
    temporaries,
    translated_write_errors,
)
from workbench.errors import SpecError, WriteError

__all__ = [
    "SESSION_OWNED",
    "check_overwrite",
    "check_writable_target",
    "export_target",
    "refuse_session_folders",
    "remove_abandoned_stages",
    "staged_write",
]

SESSION_OWNED = ("runs", "evaluations", "data-cache")
"""Folders of a session folder that the session itself writes: no export goes in them."""


def export_target(run_dir: Path, path: str | Path) -> Path:
    """Resolve ``path``: relative paths live in ``run_dir`` and may not climb out of it.

    A symbolic link on the way is followed: the export is written where the link points
    (on that disk), and the link stays as it was.

    Raises:
        SpecError: ``path`` is not a path, or a relative one uses ``..`` to leave the run
            folder.

    Examples:
        >>> export_target(Path("/tmp/run"), "../elsewhere")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: path '../elsewhere' leaves the run folder /tmp/run ...
        >>> export_target(Path("/tmp/run"), 123)
        Traceback (most recent call last):
        workbench.errors.SpecError: path=123 is not a folder path: give a str or a pathlib.Path
    """
    if not isinstance(path, (str, os.PathLike)):
        msg = f"path={path!r} is not a folder path: give a str or a pathlib.Path"
        raise SpecError(msg)
    given = expand_home(path)  # "~exp" names no user: a folder in the run folder
    if given.is_absolute():
        return given.resolve()
    root = run_dir.resolve()
    lexical = Path(os.path.normpath(root / given))  # where the words say, before any link
    if lexical != root and root not in lexical.parents:
        msg = (
            f"path {str(path)!r} leaves the run folder {run_dir} through '..'. Give a path "
            "inside it, or an absolute path if you mean another place."
        )
        raise SpecError(msg)
    return lexical.resolve()


def refuse_session_folders(run_dir: Path, target: Path) -> None:
    """Refuse an export into the session folder itself, a folder holding it, or one of the
    folders it writes (:data:`SESSION_OWNED`): replacing any of them, even with
    ``overwrite=True``, would delete the session's runs, evaluations and data.

    Examples:
        >>> refuse_session_folders(Path("/tmp/s"), Path("/tmp/s/export/merged"))
        >>> refuse_session_folders(Path("/tmp/s"), Path("/tmp/s"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /tmp/s is the session folder /tmp/s: an export there ...
        >>> refuse_session_folders(Path("/tmp/s"), Path("/tmp/s/runs/run-001"))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /tmp/s/runs/run-001 is inside runs/, which the session ...
    """
    root, resolved = run_dir.resolve(), target.resolve()
    if resolved == root or resolved in root.parents:
        where = "is the session folder" if resolved == root else "holds the session folder"
        msg = (
            f"{target} {where} {run_dir}: an export there would replace its runs, evaluations "
            "and data. Give a folder of its own, such as 'export/merged'."
        )
        raise SpecError(msg)
    for name in SESSION_OWNED:
        owned = root / name
        if resolved == owned or owned in resolved.parents:
            msg = (
                f"{target} is inside {name}/, which the session writes itself; give a folder "
                "of its own, such as 'export/merged'."
            )
            raise SpecError(msg)


def check_writable_target(target: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder (or any file) unless ``overwrite`` is set.

    Examples:
        >>> check_writable_target(Path("/nonexistent/out"), overwrite=False)
    """
    check_overwrite(overwrite)
    if target.is_file():
        raise SpecError(f"{target} is a file; give a folder path to export to.")
    blocking = file_in_the_way(target.parent)
    if blocking is not None:
        msg = f"{blocking} is a file, so {target} cannot be made in it; give a folder path."
        raise SpecError(msg)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        msg = f"{target} exists and is not empty; pass overwrite=True to replace it."
        raise SpecError(msg)


def check_overwrite(overwrite: object) -> None:
    """Refuse an ``overwrite`` that is not a bool: ``overwrite="no"`` is truthy, and replaced
    a folder of the user's own files.

    Examples:
        >>> check_overwrite(True)
        >>> check_overwrite("no")
        Traceback (most recent call last):
        workbench.errors.SpecError: overwrite='no' must be True or False
    """
    if not isinstance(overwrite, bool):
        raise SpecError(f"overwrite={overwrite!r} must be True or False")


@contextlib.contextmanager
def staged_write(
    target: Path,
    needed_bytes: int | None = None,
    before_placing: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Yield a staging folder renamed to ``target`` on success, removed on any failure.

    ``before_placing(staging_folder)`` runs once the folder is complete, just before the
    rename (to record it where a process killed after the rename still finds the record;
    the writer's lock file in it is not part of the export).

    A full disk or a read-only file system met while writing becomes a :class:`WriteError`
    naming ``target`` (and the MB needed), whichever library reported it and in whatever
    words: an ``OSError`` on the chain, a Rust "(os error 28)", or a disk found full while the
    partial files are still on it.

    An existing ``target`` (the caller decided it may be replaced) is kept until the new
    folder is complete: then the two are exchanged in one step (where the file system
    cannot, the old one is renamed aside first), and only then the old one removed. On any
    failure before that the old folder is left as it was, and ``target`` is never missing.

    Examples:
        >>> import shutil; shutil.rmtree("/tmp/wb-staged-doc", ignore_errors=True)
        >>> with staged_write(Path("/tmp/wb-staged-doc")) as tmp:
        ...     _ = (tmp / "a.txt").write_text("x")
        >>> with staged_write(Path("/tmp/wb-staged-doc")) as tmp:
        ...     _ = (tmp / "b.txt").write_text("y")
        >>> sorted(p.name for p in Path("/tmp/wb-staged-doc").iterdir())
        ['b.txt']
    """
    from workbench.train.lock import RunLock

    target = Path(target)
    remove_abandoned_stages(target)
    held: list[RunLock] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(translated_write_errors(target, needed_bytes))
        # The writer's lock in the stage is given back only after the stage is placed (its
        # file goes along and is removed there): a writer killed at any moment before leaves
        # a stage whose free lock says it is abandoned. Removed before placing, the stage of
        # a writer killed right then looked like an old version's, kept for an hour.
        stack.callback(lambda: [lock.release() for lock in held])
        tmp = stack.enter_context(staging_folder(target, replace=True))
        held.append(RunLock(tmp).acquire())
        stack.enter_context(translated_write_errors(target, needed_bytes))  # partial files count
        yield tmp
        if before_placing is not None:
            before_placing(tmp)
    _remove_free_lock_file(target)


# A staging folder without a writer's lock file (one made before writers held locks) is
# taken as abandoned once nobody has touched it for this long.
_UNLOCKED_STAGE_AGE_S = 3600


def remove_abandoned_stages(target: Path) -> list[Path]:
    """Remove what killed exports to ``target`` left beside it; returns the folders removed.

    An export killed while writing (a kernel restart, a crash) leaves its staging folder
    (``.NAME.partial-XXXXXXXX``, as :func:`~workbench._io.temporaries` matches them) beside
    ``target``, as large as the export. Each writer holds a lock in its own staging folder
    (the run folders' :class:`~workbench.train.lock.RunLock`: the kernel drops it when the
    writer dies, however it dies), so a folder whose lock can be taken is abandoned, and
    one that a live export in another process is writing is left alone. An export killed
    while swapping its folder in leaves the previous export moved aside
    (``.NAME.old-XXXXXXXX``): it is removed when ``target`` exists, and put back as
    ``target`` when nothing else is (and no live export is about to).

    Examples:
        >>> remove_abandoned_stages(Path("/nonexistent-parent/export"))
        []
    """
    if not target.parent.is_dir():
        return []
    stages = temporaries(target, "staging")
    removed = [stage for stage in stages if _abandoned(stage)]
    for stage in removed:
        shutil.rmtree(stage, ignore_errors=True)
    live = len(stages) > len(removed)
    _remove_free_lock_file(target)  # a writer killed right after placing its folder
    for aside in temporaries(target, "aside"):
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(aside)
        elif not live:
            aside.rename(target)  # the previous export, where it was
    return removed


def _remove_free_lock_file(folder: Path) -> None:
    """Remove the writer's lock file a placed folder brought along, once nobody holds it."""
    from workbench.train.lock import LOCK_FILE, is_held

    if (folder / LOCK_FILE).is_file() and not is_held(folder):
        (folder / LOCK_FILE).unlink(missing_ok=True)


def _abandoned(stage: Path) -> bool:
    """Whether no live writer holds the staging folder ``stage``."""
    from workbench.train.lock import LOCK_FILE, RunLock

    if not (stage / LOCK_FILE).is_file():  # not yet locked, or made before writers locked
        return time.time() - stage.stat().st_mtime >= _UNLOCKED_STAGE_AGE_S
    try:
        RunLock(stage).acquire().release()
    except (SpecError, WriteError):  # held by a live export, or unknown on a full disk
        return False
    return True
