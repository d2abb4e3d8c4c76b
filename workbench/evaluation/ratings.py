"""Blind A/B human evaluation: pairs in seeded random order, ratings appended as they come.

``ratings.jsonl`` in the evaluation folder is the one source of truth. Nothing about which
rows are rated is kept in memory: every rater re-reads the file before it shows the next row
and, under a lock, before it writes, so two panels on one evaluation (or two kernels) never
rate the same row twice. The file is append-only: a deliberate change of a verdict is a new
record of ``kind="change"`` whose ``revises`` names the record it replaces, and
:func:`summarize` counts each row's latest verdict once.

Writes: each record is one JSON line appended while holding an OS lock (``flock``; msvcrt on
Windows) on ``.ratings.jsonl.lock`` beside the file, flushed and fsynced before the next row
is shown. The lock makes "is this row rated yet? then append" one step across processes (an
``O_APPEND`` write alone keeps lines whole but lets two writers both rate a row), and it
keeps lines whole however long a comment is. The kernel drops the lock when its holder dies,
so a killed kernel never blocks the others. A line cut short by a kill mid-write is skipped
with a :class:`~workbench.errors.WorkbenchWarning` naming the file and line, and the next
append starts on a line of its own.

Reads: a line that is not a rating (cut short, or edited by hand into something else) is
skipped, and the warning says why, naming the field and what it found (``field 'row' is
2.5``). It is given once while the damage stays as it is, not once per read (a panel reads
the file several times per click); a line that breaks anew is warned of again. A whole float
where a whole number goes (``"row": 8.0``, as pandas or a JSON round-trip through floats
writes it) is read as that number.

Examples:
    >>> s = summarize([Rating(0, "tuned", "A"), Rating(1, "base", "A"), Rating(2, "tuned", "tie")])
    >>> s.tuned_wins, s.base_wins, s.ties, round(s.win_rate, 2)
    (1, 1, 1, 0.5)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from workbench._io import append_jsonl, json_lines, open_lock_file
from workbench._numbers import plain_fields
from workbench.errors import EvaluationError, WorkbenchWarning
from workbench.evaluation.bootstrap import wilson_interval

__all__ = [
    "RATINGS_FILE",
    "BlindRater",
    "Rating",
    "RatingSummary",
    "Verdict",
    "append_rating",
    "latest_ratings",
    "read_ratings",
    "summarize",
    "wilson_interval",
]

RATINGS_FILE = "ratings.jsonl"
Verdict = Literal["A", "B", "tie"]
Side = Literal["base", "tuned"]
Kind = Literal["rating", "change"]


@dataclass(frozen=True)
class Rating:
    """One blind judgement of one row (one line of ``ratings.jsonl``).

    Attributes:
        row: Index of the row in ``Evaluation.rows``.
        a_is: Which model answer was shown as A (``"base"`` or ``"tuned"``).
        verdict: ``"A"``, ``"B"`` or ``"tie"``.
        score: Optional 1-5 score the rater gave the pair (their own scale).
        comment: Free text.
        time: Unix time of the rating.
        kind: ``"rating"`` (a first verdict) or ``"change"`` (a deliberate new verdict).
        revises: For a change, the ``id`` of the record it replaces.
        id: The record's id (given when written; ``"line-N"`` for records written without).

    Examples:
        >>> Rating(0, "tuned", "B").winner
        'base'
    """

    row: int
    a_is: Side
    verdict: Verdict
    score: int | None = None
    comment: str = ""
    time: float = 0.0
    kind: Kind = "rating"
    revises: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        plain_fields(self)  # row=np.int64(3) from a numpy index: an int, as JSON needs
        if isinstance(self.row, bool) or not isinstance(self.row, int) or self.row < 0:
            raise EvaluationError(f"row={self.row!r} must be a row index (an int >= 0)")
        if self.verdict not in get_args(Verdict):
            raise EvaluationError(f"verdict={self.verdict!r} must be one of 'A', 'B', 'tie'")
        if self.a_is not in get_args(Side):
            raise EvaluationError(f"a_is={self.a_is!r} must be 'base' or 'tuned'")
        if self.score is not None and self.score not in range(1, 6):
            raise EvaluationError(f"score={self.score!r} must be 1-5 or None")
        if self.kind not in get_args(Kind):
            raise EvaluationError(f"kind={self.kind!r} must be 'rating' or 'change'")

    @property
    def winner(self) -> Literal["base", "tuned", "tie"]:
        """The model the rater preferred, unblinded.

        Examples:
            >>> Rating(0, "base", "A").winner
            'base'
        """
        if self.verdict == "tie":
            return "tie"
        other = "base" if self.a_is == "tuned" else "tuned"
        return self.a_is if self.verdict == "A" else other


_FIELDS = {f.name for f in fields(Rating)}


# -- the file: a lock beside it, locked appends, reads that report damage --------------------


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold the ratings file's OS lock (shared for reading, exclusive for writing).

    A folder where the lock file cannot be made (read-only) is read without it: nobody can
    write there either.
    """
    if exclusive:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = open_lock_file(_lock_path(path))  # another user's 0644 one: read-only
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            while True:  # LK_LOCK gives up after ~10 s; a rating is written in milliseconds
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield  # closing the descriptor releases the lock
    finally:
        os.close(fd)


def _read_unlocked(target: Path) -> list[Rating]:
    if not target.is_file():
        return []
    lines = json_lines(target.read_text(encoding="utf-8", errors="replace"))
    ratings, bad = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed = _parse_line(line)
        if isinstance(parsed, str):
            bad[number, line] = parsed
            continue
        ratings.append(parsed if parsed.id else replace(parsed, id=f"line-{number}"))
    _report_damage(target, bad)
    return ratings


_REQUIRED = [f.name for f in fields(Rating) if f.default is MISSING]
_WHOLE = ("row", "score")  # 8.0 for 8: pandas' to_json, or a tool that keeps every number a float


def _parse_line(line: str) -> Rating | str:
    """The rating on one line of the file, or why the line is not one (said in the warning)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return "not whole JSON (a write cut short by a kill, or damage)"
    if not isinstance(data, dict):
        return f"not a JSON object: found {_shown(data)}"
    # Fields a later version may add are ignored; a record missing one is damage.
    data = {k: v for k, v in data.items() if k in _FIELDS}
    for name in _WHOLE:
        if isinstance(data.get(name), float) and data[name].is_integer():
            data[name] = int(data[name])
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        return "no " + ", ".join(f"'{name}'" for name in missing) + " field"
    row = data["row"]
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        return f"field 'row' is {_shown(row)}, not a row index (a whole number >= 0)"
    try:
        return Rating(**data)
    except EvaluationError as err:  # names the field and the value found
        return str(err)


def _shown(value: Any) -> str:
    text = repr(value)  # quotes a string, shows control characters as escapes
    return text if len(text) <= 60 else text[:57] + "..."


# Damage already warned of, by file: each damaged line as (number, text). A panel reads the
# file several times per click (the summary, the next pair, the progress), so a warning per
# read said the same thing three times; a line that changes or newly breaks is warned of again.
_WARNED: dict[str, frozenset[tuple[int, str]]] = {}
_WARNED_LOCK = threading.Lock()
_REASONS_SHOWN = 5


def _report_damage(target: Path, bad: dict[tuple[int, str], str]) -> None:
    """Warn of the damaged lines of ``target``, once for as long as each stays as it is."""
    key, damage = str(target.resolve()), frozenset(bad)
    with _WARNED_LOCK:
        new = damage - _WARNED.get(key, frozenset())
        if damage:
            _WARNED[key] = damage
        else:
            _WARNED.pop(key, None)  # repaired: the same damage again later is news
    if not new:
        return
    numbers = sorted(number for number, _ in bad)
    reasons = [f"Line {number}: {bad[number, line]}. " for number, line in sorted(bad)]
    more = len(reasons) - _REASONS_SHOWN
    listed = "".join(reasons[:_REASONS_SHOWN]) + (f"And {more} more. " if more > 0 else "")
    msg = (
        f"{target}: skipped line(s) {', '.join(map(str, numbers))}, which are not complete "
        f"ratings; every other rating is counted. {listed}(Said once while those lines stay "
        "as they are; a line fixed by hand counts from the next read.)"
    )
    warnings.warn(msg, WorkbenchWarning, stacklevel=4)


def _append_unlocked(target: Path, rating: Rating) -> Rating:
    if not rating.id:
        rating = replace(rating, id=uuid.uuid4().hex[:12])
    # append_jsonl ends a torn last line first, so a record cut by a kill costs only itself.
    append_jsonl(target, asdict(rating), sync=True)
    return rating


def append_rating(path: str | Path, rating: Rating) -> Rating:
    """Append ``rating`` as one line under the file's lock, fsynced; returns it with its ``id``.

    This appends whatever it is given; :class:`BlindRater` is what refuses to rate a rated row.

    Examples:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / RATINGS_FILE
        >>> len(append_rating(p, Rating(0, "tuned", "A")).id)
        12
        >>> [(r.row, r.verdict) for r in read_ratings(p)]
        [(0, 'A')]
    """
    target = Path(path)
    with _locked(target, exclusive=True):
        return _append_unlocked(target, rating)


def read_ratings(path: str | Path) -> list[Rating]:
    r"""Every complete rating, in the order written (read under the file's shared lock).

    A line that is not a complete rating (a kill mid-write, or damage) is skipped with a
    :class:`~workbench.errors.WorkbenchWarning` naming the file, the line and what is wrong
    with it, once while that line stays as it is (not on every read); writers hold the lock
    while they append, so a reader never sees a line being written. ``"row": 8.0`` is row 8.

    Examples:
        >>> read_ratings("/nonexistent/ratings.jsonl")
        []
        >>> import tempfile, warnings
        >>> p = Path(tempfile.mkdtemp()) / RATINGS_FILE
        >>> _ = p.write_text('{"row": 8.0, "a_is": "tuned", "verdict": "A"}\n'
        ...                  '{"row": 2.5, "a_is": "tuned", "verdict": "B"}\n')
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     rows = [[r.row for r in read_ratings(p)] for _ in range(3)]
        >>> rows, len(caught)
        ([[8], [8], [8]], 1)
        >>> print(str(caught[0].message).split("counted. ")[1])  # doctest: +ELLIPSIS
        Line 2: field 'row' is 2.5, not a row index (a whole number >= 0). (Said once ...)
    """
    target = Path(path)
    if not target.is_file():
        return []
    with _locked(target, exclusive=False):
        return _read_unlocked(target)


def latest_ratings(ratings: list[Rating]) -> dict[int, Rating]:
    """Each row's latest rating (a change replaces the verdict before it), by row.

    Examples:
        >>> first = Rating(3, "tuned", "A", id="r1")
        >>> change = Rating(3, "tuned", "tie", kind="change", revises="r1")
        >>> latest_ratings([first, change])[3].verdict
        'tie'
    """
    return {r.row: r for r in ratings}


@dataclass(frozen=True)
class RatingSummary:
    """Counts and the tuned model's win rate (a tie counts half), with a Wilson interval.

    ``n`` counts rated rows, each once by its latest verdict; ``changed`` is how many of those
    verdicts were changed deliberately.

    Examples:
        >>> print(summarize([Rating(0, "tuned", "A")]))
        tuned better 1, base better 0, ties 0 of 1 rated: tuned win rate 1.00 (95% CI 0.21-1.00)
    """

    n: int
    tuned_wins: int
    base_wins: int
    ties: int
    win_rate: float
    ci: tuple[float, float]
    changed: int = 0

    def __str__(self) -> str:
        if not self.n:
            return "no ratings yet"
        text = (
            f"tuned better {self.tuned_wins}, base better {self.base_wins}, ties {self.ties} "
            f"of {self.n} rated: tuned win rate {self.win_rate:.2f} "
            f"(95% CI {self.ci[0]:.2f}-{self.ci[1]:.2f})"
        )
        return text + (f"; {self.changed} verdict(s) changed" if self.changed else "")


def summarize(ratings: list[Rating]) -> RatingSummary:
    """Summarise ratings: each row counts once, by its latest verdict (a change replaces).

    Examples:
        >>> first = Rating(0, "tuned", "A", id="r1")
        >>> s = summarize([first, Rating(0, "tuned", "B", kind="change", revises="r1")])
        >>> s.n, s.base_wins, s.tuned_wins, s.changed
        (1, 1, 0, 1)
    """
    latest = latest_ratings(ratings)
    winners = [r.winner for r in latest.values()]
    tuned, base, ties = winners.count("tuned"), winners.count("base"), winners.count("tie")
    n = len(winners)
    rate = (tuned + ties / 2) / n if n else float("nan")
    changed = sum(r.kind == "change" for r in latest.values())
    return RatingSummary(n, tuned, base, ties, rate, wilson_interval(tuned + ties / 2, n), changed)


class BlindRater:
    """Drives a blind A/B session over an evaluation's rows (headless; the widget calls it).

    Rows come in a seeded random order, and each row's tuned answer is A or B by a seeded coin,
    so the rater never learns which is which. Which rows are rated is read from the ratings
    file every time (never remembered), so a session resumes where it stopped and two raters
    on one file (two panels, two kernels) skip each other's rows. :meth:`rate` records the
    pair :meth:`current` showed and refuses, writing nothing, when that row was rated
    meanwhile; :meth:`change` records a deliberate new verdict on a rated row.

    Args:
        rows: ``Evaluation.rows`` (each with ``prompt``, ``reference``, ``base``, ``tuned``).
        path: The ratings file (``<evaluation folder>/ratings.jsonl``).
        seed: Seed of the order and of the A/B assignment.
        in_evaluation: The file belongs in a saved evaluation's folder: a rating after that
            folder was deleted is refused rather than starting a folder of ratings alone.

    Examples:
        >>> from workbench.evaluation import EvalRow
        >>> rows = [EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"}),
        ...         EvalRow(1, "3+3?", "6", {"base": "six", "tuned": "6"})]
        >>> path = Path("/tmp/wb-doc-ratings/ratings.jsonl")
        >>> path.unlink(missing_ok=True)
        >>> rater = BlindRater(rows, path, seed=0)
        >>> row, prompt, a, b = rater.current()
        >>> prompt, sorted([a, b]) == sorted([rows[row].base, rows[row].tuned])
        ('3+3?', True)
        >>> rater.rate("A", score=4).winner == rater.a_is[row]
        True
        >>> len(read_ratings(path)), BlindRater(rows, path, seed=0).remaining
        (1, [0])
    """

    def __init__(
        self, rows: list, path: str | Path, seed: int = 0, in_evaluation: bool = False
    ) -> None:
        self.rows, self.path, self.seed = list(rows), Path(path), seed
        self.in_evaluation = in_evaluation
        self.evaluation: Any = None  # the Evaluation it rates, for its panel in a notebook
        rng = random.Random(seed)
        self.order = rng.sample(range(len(self.rows)), len(self.rows))
        self.a_is: dict[int, Side] = {
            i: rng.choice(("base", "tuned")) for i in range(len(self.rows))
        }
        self.shown: int | None = None  # the row current() returned last: what rate() records

    def latest(self) -> dict[int, Rating]:
        """Each rated row's latest rating, read from the file now.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(0, "Q", "A", {"base": "b", "tuned": "t"})]
            >>> BlindRater(rows, "/nonexistent/ratings.jsonl").latest()
            {}
        """
        ratings = read_ratings(self.path)
        return {i: r for i, r in latest_ratings(ratings).items() if i < len(self.rows)}

    @property
    def done(self) -> set[int]:
        """Rows rated so far (by anyone writing this file), read from the file now.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(0, "Q", "A", {"base": "b", "tuned": "t"})]
            >>> BlindRater(rows, "/nonexistent/ratings.jsonl").done
            set()
        """
        return set(self.latest())

    @property
    def remaining(self) -> list[int]:
        """Rows not rated yet, in presentation order (read from the file now).

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(i, "Q", "A", {"base": "b", "tuned": "t"}) for i in range(3)]
            >>> sorted(BlindRater(rows, "/nonexistent/ratings.jsonl").remaining)
            [0, 1, 2]
        """
        done = self.done
        return [i for i in self.order if i not in done]

    def progress(self) -> tuple[int, int]:
        """``(rated rows, all rows)`` as the file says now.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(i, "Q", "A", {"base": "b", "tuned": "t"}) for i in range(3)]
            >>> BlindRater(rows, "/nonexistent/ratings.jsonl").progress()
            (0, 3)
        """
        return len(self.done), len(self.rows)

    def pair(self, row: int, a_is: Side | None = None) -> tuple[int, str, str, str]:
        """Row ``row`` as ``(row, prompt, answer A, answer B)``; ``a_is`` overrides the coin.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})]
            >>> BlindRater(rows, "/nonexistent/ratings.jsonl").pair(0, a_is="base")
            (0, '2+2?', '5', '4')
        """
        if not 0 <= row < len(self.rows):
            raise EvaluationError(f"row {row}: the evaluation has {len(self.rows)} rows")
        item = self.rows[row]
        tuned_first = (a_is or self.a_is[row]) == "tuned"
        a, b = (item.tuned, item.base) if tuned_first else (item.base, item.tuned)
        return row, item.prompt, a, b

    def current(self) -> tuple[int, str, str, str] | None:
        """The next unrated pair as ``(row, prompt, answer A, answer B)``, or ``None`` when done.

        The file is re-read, so a row rated meanwhile by another rater is skipped.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})]
            >>> rater = BlindRater(rows, "/nonexistent/ratings.jsonl")
            >>> row, prompt, a, b = rater.current()
            >>> row, prompt, {a, b} == {"4", "5"}
            (0, '2+2?', True)
        """
        remaining = self.remaining
        self.shown = remaining[0] if remaining else None
        return None if self.shown is None else self.pair(self.shown)

    def rate(
        self, verdict: Verdict, score: int | None = None, comment: str = "", row: int | None = None
    ) -> Rating:
        """Record a first verdict on the pair shown (written to disk at once) and move on.

        The pair is ``row``, else the one :meth:`current` returned last, else the next unrated.
        Under the file's lock the file is re-read: a row rated meanwhile (another panel or
        kernel) is refused, nothing written.

        Raises:
            EvaluationError: Nothing left to rate, the row is already rated (use
                :meth:`change`), or an invalid verdict or score.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> path = Path("/tmp/wb-doc-ratings-rate/ratings.jsonl")
            >>> path.unlink(missing_ok=True)
            >>> rater = BlindRater([EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})], path)
            >>> rater.rate("tie", comment="both wrong").winner, rater.current()
            ('tie', None)
            >>> rater.rate("A")
            Traceback (most recent call last):
            workbench.errors.EvaluationError: every row is already rated
            >>> rater.rate("A", row=0)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: row 0 is already rated (verdict 'tie'), ...
        """
        target = row if row is not None else self.shown
        if target is None:
            if self.current() is None:
                raise EvaluationError("every row is already rated")
            target = self.shown
        self.pair(target)  # a row of this evaluation
        rating = Rating(target, self.a_is[target], verdict, score, comment, time.time())
        self.shown = None
        self._check_folder()
        with _locked(self.path, exclusive=True):
            before = latest_ratings(_read_unlocked(self.path)).get(target)
            if before is not None:
                msg = (
                    f"row {target} is already rated (verdict {before.verdict!r}), perhaps in "
                    f"another panel or kernel: nothing written; change({target}, ...) changes "
                    "its verdict"
                )
                raise EvaluationError(msg)
            return _append_unlocked(self.path, rating)

    def _ipython_display_(self) -> None:
        """In a notebook, the rating panel (:class:`~workbench.widgets.ab_rating.ABRating`)."""
        if self.evaluation is None:
            print(repr(self))
            return
        from IPython.display import display

        from workbench.widgets.ab_rating import ABRating

        display(ABRating(self.evaluation, self.seed))

    def __repr__(self) -> str:
        rated, total = self.progress()
        return f"BlindRater({rated} of {total} rated, {self.path})"

    def _check_folder(self) -> None:
        if self.in_evaluation and not self.path.parent.is_dir():
            msg = (
                f"the evaluation folder {self.path.parent} is gone (deleted since it was "
                "loaded): nothing written; ev.save(folder) writes the evaluation again, with "
                "its answers, and rating goes on there"
            )
            raise EvaluationError(msg)

    def change(
        self, row: int, verdict: Verdict, score: int | None = None, comment: str = ""
    ) -> Rating:
        """Record a deliberate new verdict on a rated row: a ``kind="change"`` record.

        The new record ``revises`` the row's latest one and keeps its A/B order (the pair is
        judged as it was shown); :func:`summarize` counts only the new verdict.

        Raises:
            EvaluationError: The row has no verdict yet, or an invalid verdict or score.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> path = Path("/tmp/wb-doc-ratings-change/ratings.jsonl")
            >>> path.unlink(missing_ok=True)
            >>> rater = BlindRater([EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})], path)
            >>> first = rater.rate("A")
            >>> change = rater.change(0, "tie", comment="on second thought")
            >>> change.kind, change.revises == first.id, len(read_ratings(path))
            ('change', True, 2)
            >>> summarize(read_ratings(path)).ties, summarize(read_ratings(path)).n
            (1, 1)
        """
        self.pair(row)
        Rating(row, "base", verdict, score, comment)  # invalid input fails before the lock
        self._check_folder()
        with _locked(self.path, exclusive=True):
            before = latest_ratings(_read_unlocked(self.path)).get(row)
            if before is None:
                raise EvaluationError(f"row {row} has no verdict yet to change: rate it first")
            rating = Rating(
                row, before.a_is, verdict, score, comment, time.time(), "change", before.id
            )
            return _append_unlocked(self.path, rating)
