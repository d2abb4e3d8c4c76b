"""An evaluation's results: scores with intervals, rows side by side, saved and reloadable.

A folder holds ``settings.json``, ``scores.json``, ``rows.jsonl`` (and ``probes.jsonl``,
``ratings.jsonl`` when there are some). :meth:`Evaluation.load` brings the panel back
without the model: per-token losses are stored in the rows.

Examples:
    >>> rows = (EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"},
    ...                 {"exact_match": {"base": 0.0, "tuned": 1.0}}),
    ...         EvalRow(1, "3+3?", "6", {"base": "6", "tuned": "6"},
    ...                 {"exact_match": {"base": 1.0, "tuned": 1.0}}))
    >>> nan = float("nan")  # two rows are too few for an interval (it takes ten)
    >>> scores = {"exact_match": {"base": 0.5, "base_ci": (nan, nan), "tuned": 1.0,
    ...                           "tuned_ci": (nan, nan), "higher_is_better": True}}
    >>> Evaluation(scores, rows, {"columns": ["base", "tuned"]}).save("/tmp/wb-doc-results")
    Evaluation(rows=2, scores=['exact_match'], path=/tmp/wb-doc-results)
    >>> ev = Evaluation.load("/tmp/wb-doc-results")
    >>> print(ev)
    Evaluation of 2 examples saved in /tmp/wb-doc-results
    score        base  base 95% CI  tuned  tuned 95% CI  gain
    exact_match  0.5   [-, -]       1      [-, -]        0.5
    no 95% intervals: 2 rows are too few (they need 10)
    >>> ev.sorted_rows("exact_match")[0].prompt, ev.ratings_summary().n
    ('2+2?', 0)
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from workbench._display import text_table
from workbench._io import (
    atomic_write_text,
    json_lines,
    read_jsonl,
    staging_folder,
    translated_write_errors,
)
from workbench.errors import EvaluationError, WorkbenchWarning
from workbench.evaluation.bootstrap import MIN_ROWS_FOR_AN_INTERVAL
from workbench.evaluation.ratings import RATINGS_FILE, RatingSummary, read_ratings, summarize

__all__ = ["FILES", "EvalRow", "Evaluation"]

FILES = ("settings.json", "scores.json", "rows.jsonl")
_NAN = float("nan")
# The file a save writes last, for each kind of evaluation folder: its other kind's, what that
# kind is, and the class that loads it.
_WRITTEN_LAST = {
    "settings.json": ("grid.json", "a checkpoint grid", "CheckpointEvaluation"),
    "grid.json": ("settings.json", "a single evaluation", "Evaluation"),
}


@dataclass(frozen=True)
class EvalRow:
    """One example: prompt, reference, each model's output, scores and losses.

    Attributes:
        index: Position in the evaluation.
        prompt: The prompt as rendered for inference.
        reference: The expected answer.
        outputs: ``{"base": text, "tuned": text}`` (the columns evaluated).
        scores: ``{score_name: {"base": x, "tuned": y}}`` per-example scores.
        losses: ``{"base": nll, "tuned": nll}``: mean token NLL of the reference.
        tokens: The reference's tokens, decoded one by one.
        token_losses: ``{"base": [...], "tuned": [...]}``: NLL of each reference token.
        id: The row's ``id`` if the input had one.

    Examples:
        >>> row = EvalRow(0, "Q", "A", {"base": "B", "tuned": "A"}, {"em": {"base": 0, "tuned": 1}})
        >>> row.tuned, row.gain("em")
        ('A', 1.0)
    """

    index: int
    prompt: str
    reference: str
    outputs: dict[str, str]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()
    token_losses: dict[str, tuple[float, ...]] = field(default_factory=dict)
    id: str | None = None

    @property
    def base(self) -> str | None:
        """The base model's output (``None`` when the base was not evaluated).

        Examples:
            >>> EvalRow(0, "", "", {"tuned": "x"}).base is None
            True
        """
        return self.outputs.get("base")

    @property
    def tuned(self) -> str | None:
        """The tuned model's output.

        Examples:
            >>> EvalRow(0, "", "", {"tuned": "x"}).tuned
            'x'
        """
        return self.outputs.get("tuned")

    def gain(self, score: str, higher_is_better: bool = True) -> float:
        """Tuned minus base for ``score`` (``"loss"`` allowed), positive when tuned is better.

        Examples:
            >>> EvalRow(0, "", "", {}, losses={"base": 2.0, "tuned": 0.5}).gain("loss", False)
            1.5
        """
        values = self.losses if score == "loss" else self.scores.get(score, {})
        if "base" not in values or "tuned" not in values:
            return _NAN
        diff = float(values["tuned"]) - float(values["base"])
        return diff if higher_is_better else -diff

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``rows.jsonl``).

        Examples:
            >>> EvalRow(0, "p", "r", {"tuned": "t"}).to_dict()["outputs"]
            {'tuned': 't'}
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRow:
        """Inverse of :meth:`to_dict`.

        Examples:
            >>> EvalRow.from_dict(EvalRow(1, "p", "r", {}).to_dict()).index
            1
        """
        data = dict(data)
        data["tokens"] = tuple(data.get("tokens", ()))
        data["token_losses"] = {k: tuple(v) for k, v in data.get("token_losses", {}).items()}
        return cls(**data)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _ci(pair: Any) -> str:
    return "-" if pair is None else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


@dataclass(frozen=True)
class Evaluation:
    """Scores (with bootstrap intervals) and rows of one evaluation.

    Attributes:
        scores: ``{score: {"base": x, "tuned": y, "base_ci": (lo, hi), "tuned_ci": (lo, hi),
            "higher_is_better": bool}}``; only the evaluated columns appear.
        rows: One :class:`EvalRow` per example.
        settings: How it was made (metrics, columns, generation settings, sizes).
        path: The folder it is saved in (``None`` until saved).
        probes: Probe-prompt records ``{step, prompt, output, base}`` from training, if any.

    Examples:
        >>> scores = {"em": {"tuned": 1.0, "tuned_ci": (1.0, 1.0)}}
        >>> ev = Evaluation(scores, (), {"columns": ["tuned"]})
        >>> ev.columns
        ('tuned',)
    """

    scores: dict[str, dict[str, Any]]
    rows: tuple[EvalRow, ...]
    settings: dict[str, Any]
    path: Path | None = None
    probes: tuple[dict, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The models evaluated: ``("base", "tuned")``, ``("tuned",)`` or ``("base",)``.

        Examples:
            >>> Evaluation({}, (), {"columns": ["base", "tuned"]}).columns
            ('base', 'tuned')
        """
        return tuple(self.settings.get("columns", ("tuned",)))

    def higher_is_better(self, score: str) -> bool:
        """Whether a larger ``score`` is better (``False`` for perplexity and loss).

        Examples:
            >>> Evaluation({}, (), {}).higher_is_better("loss")
            False
        """
        if score == "loss":
            return False
        return bool(self.scores.get(score, {}).get("higher_is_better", True))

    def sort_keys(self) -> list[str]:
        """Keys :meth:`sorted_rows` accepts: ``"index"``, ``"loss"`` and every score name.

        Examples:
            >>> Evaluation({"em": {}}, (), {}).sort_keys()
            ['index', 'loss', 'em']
        """
        return ["index", "loss", *self.scores]

    def row_key(self, row: EvalRow, by: str) -> float:
        """The number a row is sorted by: the gain (improvement) with two columns, else the value.

        For ``"loss"`` with two columns this is the drop in loss (positive = tuned better).

        Examples:
            >>> ev = Evaluation({}, (), {"columns": ["tuned"]})
            >>> ev.row_key(EvalRow(0, "", "", {}, losses={"tuned": 0.3}), "loss")
            0.3
        """
        if by == "index":
            return float(row.index)
        if len(self.columns) == 2:
            return row.gain(by, self.higher_is_better(by))
        values = row.losses if by == "loss" else row.scores.get(by, {})
        return float(values.get(self.columns[0], _NAN))

    def sorted_rows(self, by: str = "index", descending: bool = True) -> list[EvalRow]:
        """Rows sorted by ``by`` (see :meth:`sort_keys`); rows without a value go last.

        Raises:
            EvaluationError: ``by`` is not a sort key.

        Examples:
            >>> Evaluation({}, (), {}).sorted_rows("nope")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: cannot sort by 'nope'; choose one of [...]
        """
        if by not in self.sort_keys():
            raise EvaluationError(f"cannot sort by {by!r}; choose one of {self.sort_keys()}")
        keyed = [(self.row_key(r, by), r) for r in self.rows]
        valid = [kr for kr in keyed if not math.isnan(kr[0])]
        missing = [r for k, r in keyed if math.isnan(k)]
        valid.sort(
            key=lambda kr: (kr[0], -kr[1].index) if descending else (kr[0], kr[1].index),
            reverse=descending,
        )
        return [r for _, r in valid] + missing

    # -- human evaluation -------------------------------------------------------------------
    @property
    def ratings_path(self) -> Path | None:
        """``ratings.jsonl`` in the evaluation folder (``None`` until saved).

        Examples:
            >>> Evaluation({}, (), {}).ratings_path is None
            True
        """
        return None if self.path is None else self.path / RATINGS_FILE

    def ratings_summary(self) -> RatingSummary:
        """Blind A/B results so far: wins, ties and the tuned win rate with a Wilson interval.

        Examples:
            >>> Evaluation({}, (), {}).ratings_summary().n
            0
        """
        ratings = read_ratings(self.ratings_path) if self.ratings_path else []
        return summarize([r for r in ratings if r.row < len(self.rows)])

    def rater(self, seed: int = 0) -> Any:
        """A :class:`~workbench.evaluation.ratings.BlindRater` writing to :attr:`ratings_path`.

        Raises:
            EvaluationError: The evaluation is not saved, or it lacks a base or tuned column.

        Examples:
            >>> Evaluation({}, (), {"columns": ["tuned"]}).rater()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: blind A/B rating needs base and tuned ...
        """
        from workbench.evaluation.ratings import BlindRater

        if self.ratings_path is None or len(self.columns) != 2:
            msg = (
                "blind A/B rating needs base and tuned outputs and a saved evaluation "
                "(call save(path) first)"
            )
            raise EvaluationError(msg)
        rater = BlindRater(list(self.rows), self.ratings_path, seed, in_evaluation=True)
        rater.evaluation = self  # a bare ev.rater() in a notebook shows the rating panel
        return rater

    # -- files ------------------------------------------------------------------------------
    def _texts(self) -> dict[str, str]:
        # A missing value (NaN) is written as null: NaN is not JSON to JSON.parse or jq.
        texts = {
            "settings.json": json.dumps(self.settings, indent=2, default=str) + "\n",
            "scores.json": json.dumps(_nulls(self.scores), indent=2) + "\n",
            "rows.jsonl": "".join(
                json.dumps(_nulls(r.to_dict()), ensure_ascii=False) + "\n" for r in self.rows
            ),
        }
        if self.probes:
            texts["probes.jsonl"] = "".join(json.dumps(p) + "\n" for p in self.probes)
        return texts

    def save(self, path: str | Path | None = None) -> Evaluation:
        """Write the evaluation to ``path`` (default: where it was loaded from), atomically.

        A new folder, or an empty one (the session reserves ``evaluations/eval-NNN`` so), is
        written under a temporary name beside it and renamed in, so a process killed while
        saving never leaves a half-written evaluation; an existing one (which may hold
        ``ratings.jsonl``) has each file replaced atomically, settings last.
        Ratings follow the answers they judged: saved elsewhere, the evaluation takes its
        ratings along; saved over an evaluation whose prompts or answers differ, that one's
        ratings are kept aside as ``ratings.replaced-<time>.jsonl`` (with a warning), never
        counted for answers nobody rated.

        Returns:
            The evaluation with ``path`` set.

        Examples:
            >>> import tempfile
            >>> ev = Evaluation({}, (), {"columns": ["tuned"]}).save(tempfile.mkdtemp() + "/e")
            >>> sorted(p.name for p in ev.path.iterdir())
            ['rows.jsonl', 'scores.json', 'settings.json']
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise EvaluationError("save(path): give a folder; this evaluation was never saved")
        texts = self._texts()
        if unwritten(target):  # staged and renamed in: complete at once, or not there
            with translated_write_errors(target), staging_folder(target, replace=True) as tmp:
                for name in sorted(texts, key=lambda n: n == "settings.json"):
                    (tmp / name).write_text(texts[name], encoding="utf-8")
                self._take_ratings_to(tmp)
        else:
            self._set_aside_ratings_of_other_answers(target)
            for name in sorted(texts, key=lambda n: n == "settings.json"):
                atomic_write_text(target / name, texts[name])
            if not (target / RATINGS_FILE).exists():
                self._take_ratings_to(target)
        return replace(self, path=target)

    def _rated(self) -> list[tuple]:
        """What a rating judges, row by row: the prompt, the reference and the answers."""
        return [(r.prompt, r.reference, r.outputs) for r in self.rows]

    def _judges_these_answers(self, folder: Path) -> bool:
        """Whether the ratings in ``folder`` judged this evaluation's answers (only its
        ``rows.jsonl`` is read; without one, its ratings cannot be matched to answers)."""
        if not (folder / "rows.jsonl").is_file():
            return False
        rows = [r for r in read_jsonl(folder / "rows.jsonl") if isinstance(r, dict)]
        rated = [(r.get("prompt"), r.get("reference"), r.get("outputs")) for r in rows]
        return rated == self._rated()

    def _take_ratings_to(self, folder: Path) -> None:
        """Copy the ratings of these answers, from where this evaluation was saved, along."""
        source = self.ratings_path
        if source is None or not source.is_file() or source.parent.resolve() == folder.resolve():
            return
        if self._judges_these_answers(source.parent):
            atomic_write_text(folder / RATINGS_FILE, source.read_text(encoding="utf-8"))

    def _set_aside_ratings_of_other_answers(self, folder: Path) -> None:
        ratings = folder / RATINGS_FILE
        if not ratings.is_file() or self._judges_these_answers(folder):
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside = folder / f"ratings.replaced-{stamp}.jsonl"
        os.replace(ratings, aside)
        msg = (
            f"{folder} held ratings of other answers than this evaluation's; they are kept in "
            f"{aside.name}, and this evaluation starts with none"
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=3)

    @classmethod
    def load(cls, path: str | Path, *, lazy: bool = False) -> Evaluation:
        """Read an evaluation folder written by :meth:`save` (no model needed).

        Args:
            path: The evaluation folder.
            lazy: Read ``rows.jsonl`` only when :attr:`rows` is first asked for (scores,
                intervals and settings are read now). What needs only the scores (``compare``'s
                table of many runs) then never reads rows that can run to tens of MB; a
                damaged ``rows.jsonl`` is refused at that first ask, with the same error.

        Raises:
            EvaluationError: The folder or one of its files is missing or unreadable (with
                ``lazy``, a damaged ``rows.jsonl`` when its rows are asked for).

        Examples:
            >>> Evaluation.load("/nonexistent")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: /nonexistent is not an evaluation...
            >>> scores = {"em": {"tuned": 1.0, "tuned_ci": (1.0, 1.0)}}
            >>> rows = (EvalRow(0, "Q", "A", {"tuned": "A"}),)
            >>> folder = Evaluation(scores, rows, {"rows": 1}).save("/tmp/wb-doc-lazy").path
            >>> _ = (folder / "rows.jsonl").write_text("damaged\\n")
            >>> ev = Evaluation.load(folder, lazy=True)
            >>> ev.scores  # one row is too few for an interval: none, as an eager load says
            {'em': {'tuned': 1.0, 'tuned_ci': (nan, nan)}}
            >>> ev.rows  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: /tmp/wb-doc-lazy/rows.jsonl is damaged at line 1: ...
        """
        folder = Path(path)
        for name in FILES:
            if not (folder / name).is_file():
                raise EvaluationError(f"{folder} {unsaved_reason(folder, name)}")
        settings = _json_object(folder / "settings.json")
        scores = _read_scores(folder / "scores.json")
        rows = None if lazy else _read_rows(folder / "rows.jsonl", settings.get("rows"))
        if _fewer_rows(folder / "rows.jsonl", settings, rows, MIN_ROWS_FOR_AN_INTERVAL):
            scores = _without_intervals(scores)  # earlier versions saved one (0 wide)
        probes = tuple(read_jsonl(folder / "probes.jsonl"))
        if rows is None:
            return _RowsOnDemand.of(scores, settings, folder, probes)
        return cls(scores, rows, settings, folder, probes)

    # -- display ----------------------------------------------------------------------------
    def measured(self) -> str:
        """What the scores measured, where it is not the plain case: the data (when not the
        validation split), the adapter's strength (when not 1) and the base column's model
        (when not the model as loaded: an adapter trained on a merged one); ``""``
        otherwise. Every view of the scores (``print``, the panel, the report) says it next
        to them.

        Examples:
            >>> Evaluation({}, (), {"data": "tickets.jsonl", "adapter_strength": 0.0}).measured()
            'on tickets.jsonl; tuned column at adapter strength 0'
            >>> Evaluation({}, (), {"base": "the loaded model with run-001 merged in"}).measured()
            'base column: the loaded model with run-001 merged in'
            >>> Evaluation({}, (), {"data": "validation split"}).measured()
            ''
        """
        parts = []
        data = self.settings.get("data")
        if data and data != "validation split":
            parts.append(f"on {data}")
        strength = self.settings.get("adapter_strength")
        if isinstance(strength, (int, float)) and strength != 1:
            parts.append(f"tuned column at adapter strength {strength:g}")
        base = self.settings.get("base")
        if isinstance(base, str) and base:
            parts.append(f"base column: {base}")
        return "; ".join(parts)

    def score_table(self) -> list[tuple[str, ...]]:
        """Rows of (score, base, base CI, tuned, tuned CI, gain) as text.

        Examples:
            >>> Evaluation({"em": {"tuned": 0.5, "tuned_ci": (0.2, 0.8)}}, (), {}).score_table()
            [('em', '-', '-', '0.5', '[0.2, 0.8]', '-')]
        """
        table = []
        for name, s in self.scores.items():
            gain = _NAN
            if "base" in s and "tuned" in s:
                sign = 1 if s.get("higher_is_better", True) else -1
                gain = (s["tuned"] - s["base"]) * sign + 0.0
            table.append(
                (
                    name,
                    _fmt(s.get("base")),
                    _ci(s.get("base_ci")),
                    _fmt(s.get("tuned")),
                    _ci(s.get("tuned_ci")),
                    _fmt(gain),
                )
            )
        return table

    def __str__(self) -> str:
        head = ("score", "base", "base 95% CI", "tuned", "tuned 95% CI", "gain")
        where = f" saved in {self.path}" if self.path else ""
        measured = f" ({said})" if (said := self.measured()) else ""
        lines = [
            f"Evaluation of {len(self.rows)} examples{measured}{where}",
            text_table(self.score_table(), header=head),
        ]
        shown = [_ci(s.get(f"{c}_ci")) for s in self.scores.values() for c in ("base", "tuned")]
        if 0 < len(self.rows) < MIN_ROWS_FOR_AN_INTERVAL and "[-, -]" in shown:
            lines.append(
                f"no 95% intervals: {len(self.rows)} rows are too few "
                f"(they need {MIN_ROWS_FOR_AN_INTERVAL})"
            )
        summary = self.ratings_summary()
        if summary.n:
            lines.append(f"human (blind A/B): {summary}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Evaluation(rows={len(self.rows)}, scores={list(self.scores)}, path={self.path})"

    def wait(self, timeout: float | None = None) -> Evaluation:
        """This evaluation: it is complete. Code written for ``evaluate(wait=False)``'s
        handle (``ev.wait()``) works unchanged on a blocking evaluation too.

        Examples:
            >>> ev = Evaluation({}, (), {})
            >>> ev.wait() is ev
            True
        """
        return self

    def panel(self) -> Any:
        """The :class:`~workbench.widgets.eval_panel.EvalPanel` of this evaluation.

        Examples:
            In a notebook it shows tabs of scores, examples, tokens, probes and human eval:

            >>> panel = Evaluation({}, (EvalRow(0, "Q", "A", {"tuned": "A"}),), {}).panel()
            >>> panel.order, [panel.tabs.get_title(i) for i in range(2)]
            ([0], ['Scores', 'Examples'])
        """
        from workbench.widgets.eval_panel import EvalPanel

        return EvalPanel(self)

    def _ipython_display_(self) -> None:
        self.panel()._ipython_display_()  # live tabs plus a static snapshot for saved files


class _RowsOnDemand(Evaluation):
    """A loaded evaluation that reads its ``rows.jsonl`` the first time :attr:`rows` is
    asked for, and keeps them (``Evaluation.load(path, lazy=True)``); otherwise the same."""

    @functools.cached_property
    def rows(self) -> tuple[EvalRow, ...]:  # type: ignore[override]
        # a non-data descriptor: an instance's own ``rows`` (set by __init__, as replace()
        # does, or cached here) is found first
        assert self.path is not None
        return _read_rows(self.path / "rows.jsonl", self.settings.get("rows"))

    @classmethod
    def of(
        cls, scores: dict, settings: dict, folder: Path, probes: tuple[dict, ...]
    ) -> _RowsOnDemand:
        evaluation = cls.__new__(cls)
        fields_ = {"scores": scores, "settings": settings, "path": folder, "probes": probes}
        for name, value in fields_.items():
            object.__setattr__(evaluation, name, value)  # frozen: as dataclasses do
        return evaluation

    def __eq__(self, other: object) -> bool:
        # equal to an Evaluation of the same content, as an eagerly loaded one is
        if not isinstance(other, Evaluation):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(Evaluation))

    __hash__ = Evaluation.__hash__

    def __repr__(self) -> str:
        if "rows" in self.__dict__:
            return super().__repr__()
        count = self.settings.get("rows", "not read yet")
        return f"Evaluation(rows={count}, scores={list(self.scores)}, path={self.path})"


def unwritten(folder: str | Path) -> bool:
    """Whether ``folder`` is absent or empty (as the session reserves an evaluation folder):
    a save stages its content beside it and renames it in whole.

    Examples:
        >>> import tempfile
        >>> unwritten(tempfile.mkdtemp()), unwritten("/nonexistent-eval"), unwritten("/tmp")
        (True, True, False)
    """
    path = Path(folder)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def unsaved_reason(folder: str | Path, missing: str) -> str:
    """What ``folder``, which lacks the file ``missing``, is (for a message that names it):
    empty, half-written, the other kind of evaluation, or no evaluation at all.

    Examples:
        >>> import tempfile
        >>> unsaved_reason(tempfile.mkdtemp(), "settings.json")[:40]
        'holds no saved evaluation: it is empty ('
    """
    path = Path(folder)
    if not path.is_dir():
        return f"is not an evaluation folder: {missing} is missing"
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        return (
            "holds no saved evaluation: it is empty (an evaluation still running saves into "
            "it when done; one whose process was killed before it saved leaves it so, and "
            "the session removes it when it next evaluates)"
        )
    if missing not in _WRITTEN_LAST:
        return f"is not an evaluation folder: {missing} is missing"
    other, kind, loader = _WRITTEN_LAST[missing]
    if (path / other).is_file():
        return f"is {kind}: load it with {loader}.load(folder)"
    return (
        f"is a half-written evaluation: {missing}, which a save writes last, is missing "
        "(the process saving it was killed); evaluate again"
    )


def _nulls(value: Any) -> Any:
    """``value`` with every non-finite float as ``None`` (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(v) for v in value]
    return value


def _number(value: Any) -> float:
    """A saved score as a float: null (a missing value) reads as NaN."""
    if value is None:
        return _NAN
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number or null, got {value!r}"[:120])
    return float(value)


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationError(f"{path} is damaged: unreadable JSON ({err}).") from err
    if not isinstance(data, dict):
        msg = f"{path} is damaged: it holds a {type(data).__name__}, not a JSON object."
        raise EvaluationError(msg)
    return data


def _read_scores(path: Path) -> dict[str, dict[str, Any]]:
    scores = _json_object(path)
    try:
        for name, entry in scores.items():
            if not isinstance(entry, dict):
                raise TypeError(f"score {name!r} is a {type(entry).__name__}, not an object")
            for key in list(entry):
                if key.endswith("_ci"):
                    low, high = entry[key]
                    entry[key] = (_number(low), _number(high))
                elif key in ("base", "tuned"):
                    entry[key] = _number(entry[key])
    except (TypeError, ValueError) as err:
        raise EvaluationError(f"{path} is damaged: {err}.") from err
    return scores


def _without_intervals(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The scores with every 95% interval unknown, as this version computes them for too few
    rows (:data:`~workbench.evaluation.bootstrap.MIN_ROWS_FOR_AN_INTERVAL`)."""
    return {
        name: {k: (_NAN, _NAN) if k.endswith("_ci") else v for k, v in entry.items()}
        for name, entry in scores.items()
    }


def _read_rows(path: Path, expected: Any) -> tuple[EvalRow, ...]:
    """Every row of ``rows.jsonl``; the file is written whole, so any damage is refused
    rather than leaving rows out (ratings and the panel find rows by their index)."""
    try:
        lines = json_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path} is damaged: {err}.") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(_row(json.loads(line)))
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            msg = f"{path} is damaged at line {number}: {str(err)[:200]}."
            raise EvaluationError(msg) from err
    if isinstance(expected, int) and len(rows) != expected:
        msg = f"{path} is damaged: it holds {len(rows)} rows, settings.json says {expected}."
        raise EvaluationError(msg)
    if [r.index for r in rows] != list(range(len(rows))):
        raise EvaluationError(f"{path} is damaged: its rows are not numbered 0, 1, 2, ...")
    return tuple(rows)


def _fewer_rows(path: Path, settings: dict, rows: tuple | None, than: int) -> bool:
    """Whether an evaluation has fewer than ``than`` rows: its rows, else the count its
    settings keep, else (saved before they kept one) its first non-blank lines, counted."""
    if rows is not None:
        return len(rows) < than
    count = settings.get("rows")
    if isinstance(count, int) and not isinstance(count, bool):
        return count < than
    seen = 0
    try:
        with path.open("rb") as file:  # split at \n only, as json_lines does
            for line in file:
                seen += bool(line.strip())
                if seen >= than:
                    return False
    except OSError as err:
        raise EvaluationError(f"{path} is damaged: {err}.") from err
    return True


def _row(data: Any) -> EvalRow:
    if not isinstance(data, dict):
        raise TypeError(f"a row is a {type(data).__name__}, not an object")
    row = EvalRow.from_dict(data)
    numbers = {
        "scores": {n: {k: _number(v) for k, v in c.items()} for n, c in row.scores.items()},
        "losses": {k: _number(v) for k, v in row.losses.items()},
        "token_losses": {k: tuple(map(_number, v)) for k, v in row.token_losses.items()},
    }
    return replace(row, **numbers)
