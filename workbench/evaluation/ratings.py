"""Blind A/B human evaluation: pairs in seeded random order, ratings appended as they come.

Each rating is one JSON line appended to ``ratings.jsonl`` in the evaluation folder, flushed
and fsynced before the next one is shown, so a crash or a kill loses nothing already rated;
a torn last line (killed mid-write) is skipped on read.

Examples:
    >>> s = summarize([Rating(0, "tuned", "A"), Rating(1, "base", "A"), Rating(2, "tuned", "tie")])
    >>> s.tuned_wins, s.base_wins, s.ties, round(s.win_rate, 2)
    (1, 1, 1, 0.5)
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from workbench._io import append_jsonl
from workbench.errors import EvaluationError

__all__ = [
    "RATINGS_FILE",
    "BlindRater",
    "Rating",
    "RatingSummary",
    "Verdict",
    "append_rating",
    "read_ratings",
    "summarize",
    "wilson_interval",
]

RATINGS_FILE = "ratings.jsonl"
Verdict = Literal["A", "B", "tie"]
Side = Literal["base", "tuned"]


@dataclass(frozen=True)
class Rating:
    """One blind judgement of one row.

    Attributes:
        row: Index of the row in ``Evaluation.rows``.
        a_is: Which model answer was shown as A (``"base"`` or ``"tuned"``).
        verdict: ``"A"``, ``"B"`` or ``"tie"``.
        score: Optional 1-5 score the rater gave the pair (their own scale).
        comment: Free text.
        time: Unix time of the rating.

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

    def __post_init__(self) -> None:
        if self.verdict not in get_args(Verdict):
            raise EvaluationError(f"verdict={self.verdict!r} must be one of 'A', 'B', 'tie'")
        if self.a_is not in get_args(Side):
            raise EvaluationError(f"a_is={self.a_is!r} must be 'base' or 'tuned'")
        if self.score is not None and self.score not in range(1, 6):
            raise EvaluationError(f"score={self.score!r} must be 1-5 or None")

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


def append_rating(path: str | Path, rating: Rating) -> None:
    """Append ``rating`` as one line, flushed and fsynced before returning.

    Examples:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / RATINGS_FILE
        >>> append_rating(p, Rating(0, "tuned", "A"))
        >>> len(read_ratings(p))
        1
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(target, asdict(rating), sync=True)


def read_ratings(path: str | Path) -> list[Rating]:
    """Read every complete rating; unreadable lines (a torn write) are skipped.

    Examples:
        >>> read_ratings("/nonexistent/ratings.jsonl")
        []
    """
    target = Path(path)
    if not target.exists():
        return []
    ratings = []
    for line in target.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ratings.append(Rating(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, EvaluationError):
            continue  # a line cut by a kill mid-write
    return ratings


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default).

    Examples:
        >>> [round(x, 3) for x in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class RatingSummary:
    """Counts and the tuned model's win rate (a tie counts half), with a Wilson interval.

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

    def __str__(self) -> str:
        if not self.n:
            return "no ratings yet"
        return (
            f"tuned better {self.tuned_wins}, base better {self.base_wins}, ties {self.ties} "
            f"of {self.n} rated: tuned win rate {self.win_rate:.2f} "
            f"(95% CI {self.ci[0]:.2f}-{self.ci[1]:.2f})"
        )


def summarize(ratings: list[Rating]) -> RatingSummary:
    """Summarise ratings; a row rated twice counts its latest rating.

    Examples:
        >>> summarize([]).n
        0
    """
    latest = {r.row: r for r in ratings}
    winners = [r.winner for r in latest.values()]
    tuned, base, ties = winners.count("tuned"), winners.count("base"), winners.count("tie")
    n = len(winners)
    rate = (tuned + ties / 2) / n if n else float("nan")
    return RatingSummary(n, tuned, base, ties, rate, wilson_interval(tuned + ties / 2, n))


class BlindRater:
    """Drives a blind A/B session over an evaluation's rows (headless; the widget calls it).

    Rows come in a seeded random order, and each row's tuned answer is A or B by a seeded coin,
    so the rater never learns which is which. Rows already in ``ratings.jsonl`` are skipped,
    so a session resumes where it stopped.

    Args:
        rows: ``Evaluation.rows`` (each with ``prompt``, ``reference``, ``base``, ``tuned``).
        path: The ratings file (``<evaluation folder>/ratings.jsonl``).
        seed: Seed of the order and of the A/B assignment.

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

    def __init__(self, rows: list, path: str | Path, seed: int = 0) -> None:
        self.rows, self.path = list(rows), Path(path)
        rng = random.Random(seed)
        self.order = rng.sample(range(len(self.rows)), len(self.rows))
        self.a_is: dict[int, Side] = {
            i: rng.choice(("base", "tuned")) for i in range(len(self.rows))
        }
        self.done = {r.row for r in read_ratings(self.path)}

    @property
    def remaining(self) -> list[int]:
        """Rows not rated yet, in presentation order.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(i, "Q", "A", {"base": "b", "tuned": "t"}) for i in range(3)]
            >>> sorted(BlindRater(rows, "/nonexistent/ratings.jsonl").remaining)
            [0, 1, 2]
        """
        return [i for i in self.order if i not in self.done]

    def current(self) -> tuple[int, str, str, str] | None:
        """The next pair as ``(row, prompt, answer A, answer B)``, or ``None`` when all are done.

        Examples:
            >>> from workbench.evaluation import EvalRow
            >>> rows = [EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})]
            >>> rater = BlindRater(rows, "/nonexistent/ratings.jsonl")
            >>> row, prompt, a, b = rater.current()
            >>> row, prompt, {a, b} == {"4", "5"}
            (0, '2+2?', True)
        """
        if not self.remaining:
            return None
        i = self.remaining[0]
        row = self.rows[i]
        a, b = (row.tuned, row.base) if self.a_is[i] == "tuned" else (row.base, row.tuned)
        return i, row.prompt, a, b

    def rate(self, verdict: Verdict, score: int | None = None, comment: str = "") -> Rating:
        """Record a verdict on the current pair (written to disk at once) and move on.

        Raises:
            EvaluationError: Nothing left to rate, or an invalid verdict or score.

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
        """
        pair = self.current()
        if pair is None:
            raise EvaluationError("every row is already rated")
        rating = Rating(pair[0], self.a_is[pair[0]], verdict, score, comment, time.time())
        append_rating(self.path, rating)
        self.done.add(pair[0])
        return rating
