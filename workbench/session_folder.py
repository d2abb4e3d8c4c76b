"""The session's folder on disk: numbered run and evaluation folders, and ``session.json``.

Layout::

    <session>/session.json          what the session loaded and exported (merged, atomically)
                                    and the folders it wrote (``written``: their files, so a
                                    rerun may replace them; see :meth:`SessionFolder.remember`)
    <session>/runs/run-001/         one folder per training run (see workbench.train.store)
    <session>/evaluations/eval-001/ one folder per evaluation

A new numbered folder takes the highest existing number + 1 and is created exclusively
(``mkdir`` fails if the name exists), so a deleted folder never makes a later call reuse or
overwrite a name, and two processes on one session folder never get the same number. An
evaluation folder stays empty until its save renames the complete content in; one that a
killed process left empty is removed when the session next reserves an evaluation folder.

Examples:
    >>> import tempfile
    >>> folder = SessionFolder(tempfile.mkdtemp())
    >>> folder.reserve("runs").name, folder.reserve("runs").name
    ('run-001', 'run-002')
    >>> folder.record({"model": {"spec": "tiny"}}); folder.state()["model"]["spec"]
    'tiny'
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from workbench._io import atomic_write_text, make_folder, stale
from workbench.errors import WorkbenchWarning, WriteError

__all__ = ["FolderKind", "SessionFolder"]

FolderKind = Literal["runs", "evaluations"]
_PREFIX: dict[str, str] = {"runs": "run", "evaluations": "eval"}
STATE_FILE = "session.json"
WRITTEN = "written"  # the key in session.json of the folders the session wrote
UNTIL_PLACED = "until_placed"  # a written folder's record while its replacement is renamed in
NUMBERED = "numbered"  # the key in session.json of the highest number used, per kind
# What an evaluation folder's save writes last (a checkpoint grid's: grid.json): with neither,
# the folder holds no complete evaluation.
WRITTEN_LAST = ("settings.json", "grid.json")


def _listing(folder: Path) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of every file under ``folder`` (a staged
    folder's writer lock is not one: it is gone before the folder is placed)."""
    from workbench.train.lock import LOCK_FILE

    listing = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() != LOCK_FILE:
            try:
                stat = path.stat()
            except FileNotFoundError:  # another writer's temporary, renamed since the listing
                continue
            listing[path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return listing


def _highest_used(state: dict[str, Any], kind: str) -> int:
    """The highest number ``session.json`` says a folder of ``kind`` was given (0: none)."""
    used = state.get(NUMBERED)
    kept = used.get(kind) if isinstance(used, dict) else None
    return kept if isinstance(kept, int) else 0


def _writer_lock_folder(folder: Path) -> Path:
    """Where the writer of the evaluation folder ``folder`` holds its lock: beside it, so the
    folder stays empty until its complete content is renamed in."""
    return folder.with_name(f".{folder.name}.writer")


@contextlib.contextmanager
def _writer_held(folder: Path, kind: str) -> Iterator[None]:
    """Hold the writer's lock of the evaluation folder ``folder`` while the block runs."""
    if kind != "evaluations":  # a run folder holds its own lock (workbench.train.lock)
        yield
        return
    from workbench.train.lock import RunLock

    lock_folder = _writer_lock_folder(folder)
    try:
        lock_folder.mkdir(exist_ok=True)
        lock: RunLock | None = RunLock(lock_folder).acquire()
    except (OSError, WriteError):  # a full disk: the evaluation goes on, its folder kept
        # until it is stale (with no lock file beside it: a free one says its writer died)
        shutil.rmtree(lock_folder, ignore_errors=True)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
        shutil.rmtree(lock_folder, ignore_errors=True)


def _untouched_for_an_hour(paths: list[Path]) -> bool:
    """Whether nothing in ``paths`` (folders, walked) was modified for an hour."""
    return all(stale(p) for path in paths for p in (path, *path.rglob("*")))


def _abandoned_evaluation(folder: Path) -> bool:
    """Whether the evaluation folder ``folder`` will never be completed: no live writer and
    nothing written last. The writer is asked first: it places its complete folder before
    it lets go of its lock, so a folder seen unlocked and then incomplete stays so."""
    from workbench.train.lock import LOCK_FILE, is_held

    lock_folder = _writer_lock_folder(folder)
    if is_held(lock_folder) or any((folder / name).exists() for name in WRITTEN_LAST):
        return False
    if (lock_folder / LOCK_FILE).exists():  # its writer died holding it
        return True
    # an earlier version's (no lock): once nobody touched it for long, and only files it wrote
    known = {"scores.json", "rows.jsonl", "probes.jsonl"}
    return stale(folder) and all(
        p.is_file() and (p.name in known or p.name.startswith(".")) for p in folder.iterdir()
    )


class SessionFolder:
    """A session's root folder and what lives in it.

    Args:
        root: The folder (created if missing).

    Examples:
        >>> SessionFolder("/tmp/wb-doc-folder-a").root.name
        'wb-doc-folder-a'
    """

    def __init__(self, root: str | Path) -> None:
        # made absolute once: a relative folder followed a later os.chdir (a notebook cell),
        # splitting the session between two folders and failing a run training meanwhile
        self.root = make_folder(root).absolute()  # a file in the way, a read-only disk: said
        # the highest number this object gave to a block that succeeded, per kind: kept even
        # when the whole folder (session.json with it) is deleted under a live session
        self._given: dict[str, int] = {}

    def numbered(self, kind: FolderKind) -> list[Path]:
        """The existing numbered folders of ``kind``, lowest number first.

        Examples:
            >>> SessionFolder("/tmp/wb-doc-folder-empty").numbered("evaluations")
            []
        """
        pattern = re.compile(rf"^{_PREFIX[kind]}-(\d+)$")
        parent = self.root / kind
        found = [
            (int(m.group(1)), p)
            for p in (parent.iterdir() if parent.is_dir() else [])
            if (m := pattern.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def reserve(self, kind: FolderKind) -> Path:
        """Create the next numbered folder of ``kind`` exclusively (empty) and return it.

        Numbers go on from the highest folder there is or ever was (``session.json`` keeps
        the highest one used, :meth:`reserved` when its block succeeds, and this object the
        highest it gave, should the whole folder be deleted), so a deleted run's name is
        never given to another run, whose records would be taken for its.

        Examples:
            >>> SessionFolder("/tmp/wb-doc-folder-b").reserve("evaluations").parent.name
            'evaluations'
        """
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        existing = self.numbered(kind)
        highest = int(existing[-1].name.rsplit("-", 1)[1]) if existing else 0
        number = max(highest, _highest_used(self.state(), kind), self._given.get(kind, 0)) + 1
        while True:
            folder = parent / f"{_PREFIX[kind]}-{number:03d}"
            try:
                folder.mkdir()
            except FileExistsError:
                number += 1  # another process took it a moment ago
                continue
            return folder

    @contextlib.contextmanager
    def reserved(self, kind: FolderKind) -> Iterator[Path]:
        """:meth:`reserve` a folder; remove it again if the block fails and left it empty.

        An evaluation folder's writer holds a lock beside it while the block runs, and the
        evaluations killed before they saved are removed
        (:meth:`remove_abandoned_evaluations`).

        Examples:
            >>> with SessionFolder("/tmp/wb-doc-folder-c").reserved("runs") as folder:
            ...     folder.is_dir()
            True
        """
        folder = self.reserve(kind)
        try:
            with _writer_held(folder, kind):
                if kind == "evaluations":  # after reserving: numbers go on past theirs
                    self.remove_abandoned_evaluations()
                else:
                    self.remove_abandoned_run_starts()
                yield folder
        except BaseException:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds while empty: nothing written is ever removed
            raise
        number = int(folder.name.rsplit("-", 1)[1])
        self._given[kind] = max(number, self._given.get(kind, 0))
        try:
            self._keep_highest(kind, number)
        except WriteError as err:  # a full disk must not cost the block's result (the
            # folder itself, and this session's memory, keep the number from being reused)
            warnings.warn(
                f"{folder.name} could not be recorded in session.json: {err}",
                WorkbenchWarning,
                stacklevel=3,
            )

    def remove_abandoned_run_starts(self) -> list[Path]:
        """Remove what ``train()`` calls killed while writing their run folder left: the
        reserved run folder, still empty, and its staging folder (``.run-NNN.partial-*``, a
        copy of the tokenized data), once nothing in them changed for an hour (a start in
        another process writes into its staging folder; it holds no lock before its folder
        is placed). Returns the run folders removed.

        Examples:
            >>> import os, tempfile, time
            >>> from workbench._io import STALE_AFTER_S
            >>> folder = SessionFolder(tempfile.mkdtemp())
            >>> left = folder.reserve("runs")  # a start killed before it wrote anything
            >>> old = time.time() - 2 * STALE_AFTER_S
            >>> os.utime(left, (old, old))
            >>> [p.name for p in folder.remove_abandoned_run_starts()], left.exists()
            (['run-001'], False)
        """
        removed = []
        for run in self.numbered("runs"):
            stages = list(run.parent.glob(f".{run.name}.partial-*"))
            if _untouched_for_an_hour([run, *stages]) and not any(run.iterdir()):
                for stage in stages:
                    shutil.rmtree(stage, ignore_errors=True)
                with contextlib.suppress(OSError):
                    run.rmdir()  # only while still empty
                    removed.append(run)
        return removed

    def remove_abandoned_evaluations(self) -> list[Path]:
        """Remove the evaluation folders that processes killed before they saved left behind
        (empty, or half-written by an earlier version), with their staging folders; returns
        the folders removed.

        A folder holding its ``settings.json`` (or a checkpoint grid's ``grid.json``) is
        complete and never removed, nor one whose evaluation still runs: its writer holds a
        lock beside it while it runs (``.eval-NNN.writer``), which the system releases when
        the writer dies, however it dies.

        Examples:
            >>> import tempfile
            >>> folder = SessionFolder(tempfile.mkdtemp())
            >>> with folder.reserved("evaluations") as running:
            ...     folder.remove_abandoned_evaluations(), running.is_dir()
            ([], True)
        """
        parent = self.root / "evaluations"
        removed = [f for f in self.numbered("evaluations") if _abandoned_evaluation(f)]
        for folder in removed:
            for leftover in parent.glob(f".{folder.name}.*"):  # its staging folder and lock
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
        return removed

    def _keep_highest(self, kind: FolderKind, number: int) -> None:
        def raise_to(state: dict[str, Any]) -> None:
            used = state.get(NUMBERED)
            used = dict(used) if isinstance(used, dict) else {}
            used[kind] = max(number, _highest_used(state, kind))
            state[NUMBERED] = used

        self.update(raise_to)

    def latest_run(self) -> Path | None:
        """The newest run folder that holds a run (``run.json``), or ``None``.

        Examples:
            >>> SessionFolder("/tmp/wb-doc-folder-empty").latest_run() is None
            True
        """
        runs = [p for p in self.numbered("runs") if (p / "run.json").is_file()]
        return runs[-1] if runs else None

    def state(self) -> dict[str, Any]:
        """The contents of ``session.json`` (empty when absent).

        A damaged file (not a JSON object) is moved aside to ``session.json.damaged`` with a
        warning, and the session starts a fresh one: it only records what was loaded.

        Examples:
            >>> SessionFolder("/tmp/wb-doc-folder-empty").state()
            {}
        """
        path = self.root / STATE_FILE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            state = None
        if isinstance(state, dict):
            return state
        aside = path.with_name(STATE_FILE + ".damaged")
        copies = 1
        while aside.exists():  # an earlier damaged copy is kept too
            copies += 1
            aside = path.with_name(f"{STATE_FILE}.damaged-{copies}")
        path.replace(aside)
        warnings.warn(
            f"{path} was damaged (not a JSON object); kept it as {aside.name} and "
            "started a new one.",
            WorkbenchWarning,
            stacklevel=3,
        )
        return {}

    def remember(
        self, folder: str | Path, by: str, what: str, staged: str | Path | None = None
    ) -> None:
        """Record in ``session.json`` that this session folder wrote ``folder``, as it is now.

        The record keeps the size and modification time of each of its files, so
        :meth:`written_earlier` can tell whether the folder is still exactly what was written.
        Records of folders that no longer exist are dropped.

        ``staged``: the complete folder about to be renamed to ``folder`` (its files keep
        their sizes and times through the rename). Recorded before the rename, a process
        killed just after it leaves an export the next run still knows as its own; the
        folder standing there until then stays this session's too.

        Examples:
            >>> import tempfile
            >>> folder = SessionFolder(tempfile.mkdtemp())
            >>> (folder.root / "export").mkdir(); _ = (folder.root / "export" / "a").write_text("x")
            >>> folder.remember(folder.root / "export", by="run-001", what="safetensors export")
            >>> folder.state()["written"]["export"]["by"]
            'run-001'
        """
        path = Path(folder)
        listing = _listing(Path(staged or path))
        entry: dict[str, Any] = {"by": by, "what": what, "files": listing, "pid": os.getpid()}
        standing = self.written_earlier(path) if staged is not None else None
        if standing is not None:
            entry[UNTIL_PLACED] = {key: standing.get(key) for key in ("by", "what", "files")}

        def add(state: dict[str, Any]) -> None:
            earlier = state.get(WRITTEN, {})
            written = {
                key: kept
                for key, kept in (earlier.items() if isinstance(earlier, dict) else [])
                if isinstance(kept, dict) and self._path(key).is_dir()
            }
            written[self._key(path)] = entry
            state[WRITTEN] = written

        self.update(add)

    @staticmethod
    def written_by_another_kernel(record: dict[str, Any] | None) -> int | None:
        """The process that wrote ``record``'s folder (:meth:`written_earlier`) when it is
        another one still running (a second kernel on the same session folder), else ``None``.

        Examples:
            >>> SessionFolder.written_by_another_kernel({"by": "run-001", "pid": os.getpid()})
            >>> SessionFolder.written_by_another_kernel({"by": "run-001"}) is None  # older record
            True
        """
        from workbench._io import process_alive

        pid = (record or {}).get("pid")
        if isinstance(pid, int) and pid != os.getpid() and process_alive(pid):
            return pid
        return None

    def written_earlier(self, folder: str | Path) -> dict[str, Any] | None:
        """The record of ``folder`` if this session folder wrote it and nobody changed it since.

        ``None`` when it was never written from here (another tool's, another session
        folder's, or a person's), or when a file in it was added, removed or changed since:
        then it is not this session's to replace without ``overwrite=True``.

        Examples:
            >>> import tempfile
            >>> folder = SessionFolder(tempfile.mkdtemp())
            >>> out = folder.root / "export"; out.mkdir(); _ = (out / "a").write_text("x")
            >>> folder.written_earlier(out) is None
            True
            >>> folder.remember(out, by="run-001", what="adapter export")
            >>> folder.written_earlier(out)["by"]
            'run-001'
            >>> _ = (out / "notes.txt").write_text("mine")
            >>> folder.written_earlier(out) is None
            True
        """
        path = Path(folder)
        entry = self._written().get(self._key(path))
        if not isinstance(entry, dict) or not path.is_dir():
            return None
        listing = _listing(path)
        return next(
            (
                kept
                for kept in (entry, entry.get(UNTIL_PLACED))
                if isinstance(kept, dict) and kept.get("files") == listing
            ),
            None,
        )

    def _written(self) -> dict[str, Any]:
        """``session.json``'s records of the folders written from here (none when its field
        has another shape: then none is this session's to replace, which is the safe way)."""
        written = self.state().get(WRITTEN, {})
        if isinstance(written, dict):
            return written
        msg = (
            f"{self.root / STATE_FILE} is damaged: {WRITTEN!r} is a {type(written).__name__}, "
            "not an object, so which folders this session wrote is not known; none is "
            "replaced unless you ask (overwrite=True), and the next record repairs the field."
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=4)
        return {}

    def _key(self, path: Path) -> str:
        """``path`` relative to the root when inside it (the folder may move), else absolute."""
        resolved, root = path.resolve(), self.root.resolve()
        if resolved == root or root in resolved.parents:
            return resolved.relative_to(root).as_posix()
        return str(resolved)

    def _path(self, key: str) -> Path:
        return Path(key) if Path(key).is_absolute() else self.root / key

    def record(self, facts: dict[str, Any]) -> None:
        """Merge ``facts`` into ``session.json``, atomically.

        Examples:
            >>> folder = SessionFolder("/tmp/wb-doc-folder-d")
            >>> folder.record({"a": 1}); folder.record({"b": 2}); sorted(folder.state())
            ['a', 'b']
        """
        self.update(lambda state: state.update(facts))

    def update(self, change: Callable[[dict[str, Any]], Any]) -> None:
        """Apply ``change`` to the contents of ``session.json`` and write them, atomically and
        under a lock: two processes sharing the folder never lose each other's records.

        Examples:
            >>> folder = SessionFolder("/tmp/wb-doc-folder-e")
            >>> folder.update(lambda state: state.update(n=state.get("n", 0) + 1))
            >>> folder.state()["n"] >= 1
            True
        """
        with self._locked():
            state = self.state()
            change(state)
            atomic_write_text(self.root / STATE_FILE, json.dumps(state, indent=2))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the session folder itself (``flock`` on its directory:
        no lock file is left in the user's folder). Without ``fcntl`` (Windows), no lock."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        handle = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock
