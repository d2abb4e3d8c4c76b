"""What each checkpoint fixed and broke: several checkpoints of a run on the same held-out rows.

:func:`evaluate_checkpoints` loads each chosen checkpoint's trained weights into the live model
in turn, generates for the rows and scores them (the base model, adapter off, only once), then
puts the model's weights back exactly as they were. The result, a
:class:`CheckpointEvaluation`, is a grid of examples x checkpoints: whether each row is right
at each step, when it first became right, whether it broke again later, and which step gets
the most rows right. ``Session.evaluate(checkpoints="all")`` makes one from the latest run
(this package never imports ``train/``: the Session hands over a reader per checkpoint).

On disk (the sweep's evaluation folder)::

    grid.json              steps, the rule for "right", per-step scores, the grid itself
    step-00000010/         a normal evaluation of that checkpoint (settings, scores, rows)
    step-00000020/         ...

Examples:
    A grid built by hand (``evaluate_checkpoints`` makes one from a model):

    >>> result = CheckpointEvaluation(
    ...     steps=(10, 20, 30),
    ...     grid=((False, True, True), (True, True, False), (False, False, False)),
    ...     base=(False, True, False),
    ...     prompts=("2+2?", "3+3?", "4+4?"),
    ... )
    >>> result.first_right, result.broke_again, result.best_step
    ((20, 10, None), (False, True, False), 20)
    >>> result.fixed_by(20), result.broken_by(30)
    ([0], [1])
    >>> print(result.text())  # doctest: +NORMALIZE_WHITESPACE
    Checkpoints: 3 examples, right = exact_match >= 1; best step 20 (2/3 right)
    example  base  10   20 best  30   input
    right    1/3   1/3  2/3      1/3
    #0       ✗     ✗    ✓▲       ✓    2+2?
    #1       ✓     ✓▲   ✓        ✗▼   3+3?
    #2       ✗     ✗    ✗        ✗    4+4?
    ▲ first right  ▼ broke again (right before, wrong here)
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from workbench._display import text_table
from workbench._io import atomic_write_text, staging_folder, translated_write_errors
from workbench._numbers import plain_number
from workbench.errors import EvaluationError, SpecError
from workbench.evaluation.metrics import resolve_metrics
from workbench.evaluation.results import EvalRow, Evaluation, unsaved_reason, unwritten
from workbench.evaluation.run import EvalSpec, evaluate_with_spec, validate_rows
from workbench.events import PROGRESS

__all__ = [
    "GRID_FILE",
    "CheckpointEvaluation",
    "SwappedWeights",
    "choose_steps",
    "evaluate_checkpoints",
    "short_input",
    "step_folder",
    "weights_loaded",
]

GRID_FILE = "grid.json"
FIRST, BROKE = "▲", "▼"  # the grid's markers: first right here; right before, wrong here
Correct = str | tuple[str, float] | Callable[[str, str], bool]
WeightReader = Callable[[], Mapping[str, Any]]  # returns {parameter name: tensor}


def step_folder(step: int) -> str:
    """The name of a step's evaluation folder inside a sweep's folder.

    Examples:
        >>> step_folder(40)
        'step-00000040'
    """
    return f"step-{int(step):08d}"


def choose_steps(
    checkpoints: Any, available: Sequence[int], purpose: str = "evaluate"
) -> list[int]:
    """The steps to evaluate (or to ``purpose``), sorted: ``"all"``, a list of steps, or one.

    Raises:
        SpecError: no checkpoints at all, a step without a checkpoint (the message lists the
            available steps), or a value that is neither ``"all"`` nor steps.

    Examples:
        >>> choose_steps("all", [20, 10]), choose_steps([20, 10, 20], [10, 20, 30])
        ([10, 20], [10, 20])
        >>> choose_steps([15], [10, 20])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: no checkpoint at step 15; ... at steps [10, 20] (older ones ...
    """
    if checkpoints is None:
        msg = (
            "checkpoints=None: give 'all' or a list of steps (correct= says when a row is "
            "right across the checkpoints of a run, so it needs checkpoints= too)."
        )
        raise SpecError(msg)
    steps = sorted(set(available))
    if not steps:
        msg = (
            f"no checkpoints to {purpose}: the latest run has none that are complete; train "
            "first (a checkpoint is written every save_every steps and at the end)."
        )
        raise SpecError(msg)
    if isinstance(checkpoints, str):
        if checkpoints != "all":
            raise SpecError(f"checkpoints={checkpoints!r}: give 'all' or a list of steps.")
        return steps
    if hasattr(checkpoints, "tolist"):  # numpy's steps (an array or one) or a pandas column
        checkpoints = checkpoints.tolist()
    if isinstance(checkpoints, int) and not isinstance(checkpoints, bool):
        checkpoints = [checkpoints]
    if not isinstance(checkpoints, Sequence) or not checkpoints:
        raise SpecError(f"checkpoints={checkpoints!r}: give 'all' or a non-empty list of steps.")
    wanted = []
    for step in map(plain_number, checkpoints):  # list(np.arange(...)) holds np.int64
        if not isinstance(step, int) or isinstance(step, bool):
            raise SpecError(f"checkpoints: {step!r} is not a step number; give ints.")
        if step not in steps:
            msg = (
                f"no checkpoint at step {step}; the run has checkpoints at steps {steps} "
                "(older ones are pruned unless keep_checkpoints is raised)."
            )
            raise SpecError(msg)
        wanted.append(step)
    return sorted(set(wanted))


class SwappedWeights:
    """Load weights into a model's parameters by name; :meth:`restore` puts the originals back.

    Only the parameters named in the loaded weights are touched (a checkpoint's trained ones:
    the adapter, or everything for full fine-tuning). Each is copied to the CPU the first time
    it is replaced, and copied back bit for bit on :meth:`restore` (or leaving the ``with``).

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> with SwappedWeights(layer) as swap:
        ...     swap.load({"weight": torch.zeros(2, 2)})
        ...     float(layer.weight.detach().abs().sum())
        0.0
        >>> torch.equal(layer.weight, before)
        True
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._params = dict(model.named_parameters())
        self._saved: dict[str, Any] = {}

    def load(self, weights: Mapping[str, Any], what: str = "checkpoint") -> None:
        """Copy ``weights`` (``{parameter name: tensor}``) into the model's parameters.

        Raises:
            EvaluationError: a name the model lacks or a shape that differs (nothing is
                changed then); ``what`` names the weights in the message.

        Examples:
            >>> import torch
            >>> SwappedWeights(torch.nn.Linear(2, 2)).load({"lora_A": torch.zeros(1)}, "step 5")
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: step 5 does not match the model's weights ...
        """
        import torch

        wrong = sorted(
            name
            for name, tensor in weights.items()
            if name not in self._params or tuple(self._params[name].shape) != tuple(tensor.shape)
        )
        if wrong:
            msg = (
                f"{what} does not match the model's weights (e.g. {wrong[:3]}): was it written "
                "for another model or adapter, or was the adapter merged since?"
            )
            raise EvaluationError(msg)
        with torch.no_grad():
            for name, tensor in weights.items():
                param = self._params[name]
                if name not in self._saved:
                    self._saved[name] = param.detach().to("cpu", copy=True)
                param.copy_(tensor)

    def restore(self) -> None:
        """Put back every parameter replaced so far, exactly as it was.

        Examples:
            >>> import torch
            >>> layer = torch.nn.Linear(1, 1)
            >>> swap = SwappedWeights(layer)
            >>> swap.load({"bias": torch.tensor([7.0])})
            >>> swap.restore()
            >>> layer.bias.item() != 7.0
            True
        """
        import torch

        with torch.no_grad():
            for name, saved in self._saved.items():
                self._params[name].copy_(saved)
        self._saved.clear()

    def __enter__(self) -> SwappedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


@contextlib.contextmanager
def weights_loaded(model: Any, weights: Mapping[str, Any], what: str = "checkpoint") -> Iterator:
    """Within the block the model holds ``weights``; afterwards its own, bit for bit.

    ``Session.export(checkpoint=step)`` exports a checkpoint this way.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(1, 1)
        >>> with weights_loaded(layer, {"bias": torch.tensor([3.0])}):
        ...     layer.bias.item()
        3.0
        >>> layer.bias.item() == 3.0
        False
    """
    with SwappedWeights(model) as swap:
        swap.load(weights, what)
        yield model


_MARKUP = re.compile(
    r"<\|[^|<>]{0,40}\|>|</?s>|<bos>|<eos>|<start_of_turn>|<end_of_turn>|\[/?INST\]"
)
_ROLES = {"user", "assistant", "model", "system"}


def short_input(prompt: str, limit: int = 60) -> str:
    """A prompt as a short line: chat markup and role names dropped, the end kept.

    The end is kept because a rendered conversation ends with the question asked.

    Examples:
        >>> short_input("<|im_start|>user\\n1 4 dog<|im_end|>\\n<|im_start|>assistant\\n")
        '1 4 dog'
        >>> short_input("word " * 20, limit=12)
        '… word word'
    """
    lines = [line.strip() for line in _MARKUP.sub("\n", str(prompt)).splitlines()]
    text = " ".join(line for line in lines if line and line.lower() not in _ROLES)
    text = " ".join(text.split())
    return text if len(text) <= limit else "… " + text[-(limit - 2) :].lstrip()


def _right_to_wrong(row: Sequence[bool]) -> list[int]:
    """Positions where a row is wrong right after being right."""
    return [j for j in range(1, len(row)) if row[j - 1] and not row[j]]


@dataclass(frozen=True)
class CheckpointEvaluation:
    """Held-out rows x checkpoints: where each row is right, first right, and broke again.

    Attributes:
        steps: The checkpoints' steps, ascending.
        grid: Per row, whether it is right at each step (``grid[i][j]``: row ``i``, ``steps[j]``).
        base: Per row, whether the base model (adapter off) got it right; ``None`` entries
            when the base was not evaluated.
        prompts: The rows' prompts.
        references: The rows' expected answers.
        correct: The rule for "right", in words (``"exact_match >= 1"``).
        metric: The score the rule reads, or ``None`` for a function.
        scores: ``{step: {score: mean over rows}}``, ``"loss"`` (mean reference NLL) included.
        base_scores: The same for the base model.
        evaluations: ``{step: Evaluation}``: each checkpoint's full evaluation.
        path: The folder it is saved in (``None`` until saved).
        exporter: ``Session.export`` when made by a Session (see :meth:`export`).

    Examples:
        >>> r = CheckpointEvaluation((5, 10), ((True, False), (False, True)))
        >>> r.right_counts, r.best_step, r.base
        ({5: 1, 10: 1}, 5, (None, None))
    """

    steps: tuple[int, ...]
    grid: tuple[tuple[bool, ...], ...]
    base: tuple[bool | None, ...] = ()
    prompts: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    correct: str = "exact_match >= 1"
    metric: str | None = "exact_match"
    scores: dict[int, dict[str, float]] = field(default_factory=dict)
    base_scores: dict[str, float] = field(default_factory=dict)
    evaluations: dict[int, Evaluation] = field(default_factory=dict, repr=False, compare=False)
    path: Path | None = None
    exporter: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(int(s) for s in self.steps)
        grid = tuple(tuple(bool(c) for c in row) for row in self.grid)
        n = len(grid)
        if not steps or list(steps) != sorted(set(steps)):
            raise EvaluationError(f"steps={self.steps!r} must be ascending, distinct and given")
        if any(len(row) != len(steps) for row in grid):
            raise EvaluationError(f"every grid row needs one value per step ({len(steps)})")
        base = tuple(self.base) if self.base else (None,) * n
        prompts = tuple(self.prompts) if self.prompts else ("",) * n
        references = tuple(self.references) if self.references else ("",) * n
        if not len(base) == len(prompts) == len(references) == n:
            raise EvaluationError("base, prompts and references need one entry per grid row")
        for name, value in (
            ("steps", steps),
            ("grid", grid),
            ("base", base),
            ("prompts", prompts),
            ("references", references),
        ):
            object.__setattr__(self, name, value)

    # -- what the grid says ------------------------------------------------------------------
    @property
    def first_right(self) -> tuple[int | None, ...]:
        """Per row, the first step at which it is right (``None``: never).

        Examples:
            >>> CheckpointEvaluation((1, 2), ((False, True), (False, False))).first_right
            (2, None)
        """
        return tuple(
            next((s for s, ok in zip(self.steps, row, strict=True) if ok), None)
            for row in self.grid
        )

    @property
    def broke_again(self) -> tuple[bool, ...]:
        """Per row, whether it was right at some step and wrong at a later one.

        Examples:
            >>> CheckpointEvaluation((1, 2, 3), ((True, False, True), (False, True, True))
            ...                      ).broke_again
            (True, False)
        """
        return tuple(bool(_right_to_wrong(row)) for row in self.grid)

    @property
    def broke_at(self) -> tuple[int | None, ...]:
        """Per row, the first step at which it was wrong again after being right.

        Examples:
            >>> CheckpointEvaluation((1, 2, 3), ((True, True, False),)).broke_at
            (3,)
        """
        return tuple(
            self.steps[found[0]] if (found := _right_to_wrong(row)) else None for row in self.grid
        )

    @property
    def right_counts(self) -> dict[int, int]:
        """``{step: rows right}``.

        Examples:
            >>> CheckpointEvaluation((1, 2), ((True, True), (False, True))).right_counts
            {1: 1, 2: 2}
        """
        return {s: sum(row[j] for row in self.grid) for j, s in enumerate(self.steps)}

    @property
    def best_step(self) -> int:
        """The step with the most rows right (the earlier one on a tie).

        Examples:
            >>> CheckpointEvaluation((1, 2, 3), ((False, True, True),)).best_step
            2
        """
        counts = self.right_counts
        return max(self.steps, key=lambda s: (counts[s], -s))

    @property
    def marked_best(self) -> int | None:
        """:attr:`best_step` where a step gets any example right; ``None`` where none does
        (no column is called best then).

        Examples:
            >>> CheckpointEvaluation((1, 2), ((False, False),)).marked_best is None
            True
        """
        best = self.best_step
        return best if self.right_counts[best] else None

    def _column(self, step: int) -> int:
        if step not in self.steps:
            raise SpecError(f"step {step!r} was not evaluated; the steps are {list(self.steps)}")
        return self.steps.index(step)

    def _before(self, j: int) -> list[bool | None]:
        """Each row's value before column ``j``: the previous step, or the base for the first."""
        if j > 0:
            return [row[j - 1] for row in self.grid]
        return [None if b is None else bool(b) for b in self.base]

    def fixed_by(self, step: int) -> list[int]:
        """Rows right at ``step`` but wrong just before (the previous step; for the first step,
        the base model, or nothing when the base was not evaluated).

        Examples:
            >>> r = CheckpointEvaluation((1, 2), ((False, True), (True, True)), base=(True, False))
            >>> r.fixed_by(1), r.fixed_by(2)
            ([1], [0])
        """
        j = self._column(step)
        before = self._before(j)
        return [i for i, row in enumerate(self.grid) if row[j] and not before[i]]

    def broken_by(self, step: int) -> list[int]:
        """Rows wrong at ``step`` but right just before (see :meth:`fixed_by`).

        Examples:
            >>> r = CheckpointEvaluation((1, 2), ((True, False), (False, False)), base=(True, True))
            >>> r.broken_by(1), r.broken_by(2)
            ([1], [0])
        """
        j = self._column(step)
        before = self._before(j)
        return [i for i, row in enumerate(self.grid) if not row[j] and before[i]]

    def marker(self, i: int, j: int) -> str:
        """The grid marker of row ``i`` at column ``j``: ``"▲"`` first right, ``"▼"`` broke.

        Examples:
            >>> r = CheckpointEvaluation((1, 2, 3), ((False, True, False),))
            >>> [r.marker(0, j) for j in range(3)]
            ['', '▲', '▼']
        """
        row = self.grid[i]
        if row[j] and not any(row[:j]):
            return FIRST
        return BROKE if j > 0 and row[j - 1] and not row[j] else ""

    def output(self, i: int, step: int | None = None) -> str | None:
        """Row ``i``'s answer at ``step`` (``None``: the base's), if the evaluations are kept.

        Examples:
            >>> CheckpointEvaluation((1,), ((True,),)).output(0, 1) is None
            True
        """
        if step is None:
            source = self.evaluations.get(self.steps[0])
            return None if source is None else source.rows[i].base
        source = self.evaluations.get(step)
        return None if source is None else source.rows[i].tuned

    def step_summary(self, step: int) -> str:
        """One line on what ``step`` fixed and broke, compared with the column before it.

        Examples:
            >>> r = CheckpointEvaluation((1, 2), ((False, True), (True, False)))
            >>> r.step_summary(2)
            'step 2: 1/2 right; fixed #0; broke #1'
        """
        fixed, broken = self.fixed_by(step), self.broken_by(step)
        parts = [f"step {step}: {self.right_counts[step]}/{len(self.grid)} right"]
        parts.append("fixed " + (", ".join(f"#{i}" for i in fixed) or "nothing"))
        parts.append("broke " + (", ".join(f"#{i}" for i in broken) or "nothing"))
        return "; ".join(parts)

    # -- display -----------------------------------------------------------------------------
    def header(self) -> str:
        """The first line of :meth:`text` and of the panel: size, rule, best step.

        Examples:
            >>> CheckpointEvaluation((1,), ((True,),), correct="f(prediction, reference)").header()
            'Checkpoints: 1 examples, right = f(prediction, reference); best step 1 (1/1 right)'
        """
        best = self.marked_best
        found = (
            f"best step {best} ({self.right_counts[best]}/{len(self.grid)} right)"
            if best is not None
            else "no step gets an example right"
        )
        return f"Checkpoints: {len(self.grid)} examples, right = {self.correct}; {found}"

    def score_rows(self) -> list[tuple[str, list[str]]]:
        """The grid's score lines: rows right, the rule's metric mean and the loss, per column.

        The first value of each line is the base's (``"-"`` when not evaluated).

        Examples:
            >>> r = CheckpointEvaluation((1,), ((True,),), scores={1: {"exact_match": 1.0}})
            >>> r.score_rows()
            [('right', ['-', '1/1']), ('exact_match', ['-', '1'])]
        """
        n = len(self.grid)
        has_base = any(b is not None for b in self.base)
        base_right = f"{sum(bool(b) for b in self.base)}/{n}" if has_base else "-"
        lines = [("right", [base_right] + [f"{c}/{n}" for c in self.right_counts.values()])]
        for name in (self.metric, "loss"):
            values = [self.scores.get(s, {}).get(name) for s in self.steps]
            if name is None or all(v is None for v in values):
                continue
            lines.append((name, [_fmt(self.base_scores.get(name)), *map(_fmt, values)]))
        return lines

    def text(self) -> str:
        """The grid as text: ``✓``/``✗`` per row and step, ``▲`` first right, ``▼`` broke again.

        Examples:
            >>> print(CheckpointEvaluation((1, 2), ((False, True),), prompts=("Q?",)).text())
            Checkpoints: 1 examples, right = exact_match >= 1; best step 2 (1/1 right)
            example  base  1    2 best  input
            right    -     0/1  1/1
            #0       -     ✗    ✓▲      Q?
            ▲ first right  ▼ broke again (right before, wrong here)
        """
        best = self.marked_best
        head = ["example", "base", *[f"{s} best" if s == best else str(s) for s in self.steps]]
        table: list[list[str]] = [[name, *values, ""] for name, values in self.score_rows()]
        for i, row in enumerate(self.grid):
            base = "-" if self.base[i] is None else ("✓" if self.base[i] else "✗")
            cells = [("✓" if ok else "✗") + self.marker(i, j) for j, ok in enumerate(row)]
            table.append([f"#{i}", base, *cells, short_input(self.prompts[i])])
        legend = f"{FIRST} first right  {BROKE} broke again (right before, wrong here)"
        return "\n".join([self.header(), text_table(table, [*head, "input"]), legend])

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return (
            f"CheckpointEvaluation(rows={len(self.grid)}, steps={list(self.steps)}, "
            f"best_step={self.best_step}, path={self.path})"
        )

    def panel(self, on_export: Callable[[int], Any] | None = None) -> Any:
        """The :class:`~workbench.widgets.checkpoint_grid.CheckpointGrid` of this sweep.

        Its Export button calls ``on_export(step)``; by default :meth:`export` into
        ``export/checkpoint-<step>`` when the sweep came from a Session (else no button).

        Examples:
            >>> panel = CheckpointEvaluation((1, 2), ((False, True),)).panel()
            >>> panel.step_select.value, panel.export_button.disabled
            (2, True)
        """
        from workbench.widgets.checkpoint_grid import CheckpointGrid

        if on_export is None and self.exporter is not None:

            def on_export(step: int) -> Any:
                return self.export(step, overwrite=True)

        return CheckpointGrid(self, on_export=on_export)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.panel()._repr_mimebundle_(**kwargs)

    # -- export ------------------------------------------------------------------------------
    def export(
        self, step: int, path: str | Path | None = None, format: str = "safetensors", **options: Any
    ) -> Path:
        """Export checkpoint ``step`` through the Session (``Session.export(checkpoint=step)``).

        ``path`` defaults to ``export/checkpoint-<step>`` in the session folder; ``format`` and
        the other keywords are those of ``Session.export``.

        Raises:
            EvaluationError: the sweep was loaded from disk or built by hand (no Session):
                call ``session.export(path, checkpoint=step)`` instead.
            SpecError: ``step`` was not evaluated in this sweep.

        Examples:
            >>> CheckpointEvaluation((1,), ((True,),)).export(1)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: this grid has no Session to export with: call ...
        """
        self._column(step)
        if self.exporter is None:
            msg = (
                "this grid has no Session to export with: call "
                f"session.export(path, checkpoint={step}) with the run loaded instead."
            )
            raise EvaluationError(msg)
        target = path if path is not None else f"export/checkpoint-{step}"
        return self.exporter(target, format=format, checkpoint=step, **options)

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content of ``grid.json`` (derived columns included for reading).

        Examples:
            >>> d = CheckpointEvaluation((1, 2), ((False, True),)).to_dict()
            >>> d["steps"], d["best_step"], d["rows"][0]["right"], d["rows"][0]["first_right"]
            ([1, 2], 2, [False, True], 2)
        """
        firsts, broke = self.first_right, self.broke_again
        return {
            "format": 1,
            "steps": list(self.steps),
            "correct": self.correct,
            "metric": self.metric,
            "best_step": self.best_step,
            "right_counts": {str(s): c for s, c in self.right_counts.items()},
            "scores": {str(s): v for s, v in self.scores.items()},
            "base_scores": self.base_scores,
            "evaluations": {str(s): step_folder(s) for s in self.evaluations},
            "rows": [
                {
                    "index": i,
                    "prompt": self.prompts[i],
                    "reference": self.references[i],
                    "base": self.base[i],
                    "right": list(row),
                    "first_right": firsts[i],
                    "broke_again": broke[i],
                }
                for i, row in enumerate(self.grid)
            ],
        }

    def save(self, path: str | Path | None = None) -> CheckpointEvaluation:
        """Write each step's evaluation (``step-NNNNNNNN/``) and then ``grid.json``.

        A new or empty folder (the session's reserved ``eval-NNN``) is written beside it and
        renamed in whole, so a process killed while saving leaves no half-written grid.

        Examples:
            >>> import shutil
            >>> shutil.rmtree("/tmp/wb-doc-checkpoints-save", ignore_errors=True)
            >>> r = CheckpointEvaluation((1,), ((True,),)).save("/tmp/wb-doc-checkpoints-save")
            >>> sorted(p.name for p in r.path.iterdir())
            ['grid.json']
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise EvaluationError("save(path): give a folder; this grid was never saved")
        if not unwritten(target):
            return replace(self, evaluations=self._write(target), path=target)
        with translated_write_errors(target), staging_folder(target, replace=True) as tmp:
            staged = self._write(tmp)
        evaluations = {s: replace(ev, path=target / step_folder(s)) for s, ev in staged.items()}
        return replace(self, evaluations=evaluations, path=target)

    def _write(self, folder: Path) -> dict[int, Evaluation]:
        """Write the steps' evaluations into ``folder``, then ``grid.json``, the mark of a
        complete grid; returns the evaluations as saved."""
        evaluations = {
            step: ev.save(folder / step_folder(step)) for step, ev in self.evaluations.items()
        }
        atomic_write_text(folder / GRID_FILE, _grid_json(self.to_dict()))
        return evaluations

    @classmethod
    def load(cls, path: str | Path) -> CheckpointEvaluation:
        """Read a sweep written by :meth:`save` (no model needed; :meth:`export` is then off).

        Raises:
            EvaluationError: no readable ``grid.json`` in the folder.

        Examples:
            >>> CheckpointEvaluation((1, 2), ((True, False),)).save("/tmp/wb-doc-ckpt-load").steps
            (1, 2)
            >>> CheckpointEvaluation.load("/tmp/wb-doc-ckpt-load").broke_again
            (True,)
        """
        folder = Path(path)
        try:
            data = json.loads((folder / GRID_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise EvaluationError(f"{folder} {unsaved_reason(folder, GRID_FILE)}") from err
        except (OSError, ValueError) as err:
            msg = f"{folder} is not a checkpoint grid: {GRID_FILE} is missing or unreadable"
            raise EvaluationError(f"{msg} ({type(err).__name__})") from err
        rows = data["rows"]
        evaluations = {
            int(s): Evaluation.load(folder / name) for s, name in data["evaluations"].items()
        }
        return cls(
            steps=tuple(data["steps"]),
            grid=tuple(tuple(r["right"]) for r in rows),
            base=tuple(r["base"] for r in rows),
            prompts=tuple(r["prompt"] for r in rows),
            references=tuple(r["reference"] for r in rows),
            correct=data["correct"],
            metric=data["metric"],
            scores={int(s): v for s, v in data["scores"].items()},
            base_scores=data["base_scores"],
            evaluations=evaluations,
            path=folder,
        )


def _grid_json(data: dict[str, Any]) -> str:
    """``grid.json``'s text: indented, with one line per example so the grid reads as one."""
    head = json.dumps({k: v for k, v in data.items() if k != "rows"}, indent=1)
    rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in data["rows"])
    return head[:-2] + (f',\n "rows": [\n{rows}\n ]\n}}\n' if rows else ',\n "rows": []\n}\n')


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


def _judge(correct: Any, evaluation: Evaluation) -> tuple[Callable[[EvalRow, str], bool], str, Any]:
    """``(is_right(row, role), the rule in words, the metric read or None)``.

    The default reads ``exact_match`` when it was scored, else the first score of the first
    metric; a name means "that per-row score >= 1.0", ``(name, threshold)`` any threshold.
    """
    if callable(correct):
        name = getattr(correct, "__name__", "correct")

        def by_function(row: EvalRow, role: str) -> bool:
            try:
                said = correct(row.outputs[role], row.reference)
            except Exception as err:
                msg = f"correct={name} raised on example {row.index}: {type(err).__name__}: {err}"
                raise EvaluationError(msg) from err
            if isinstance(said, (bool, np.bool_)) or (isinstance(said, int) and said in (0, 1)):
                return bool(said)
            msg = (  # bool("no") and bool(nan) are True: every answer would count as right
                f"correct={name} returned {said!r} on example {row.index}: it must return "
                "True or False"
            )
            raise EvaluationError(msg)

        return by_function, f"{name}(prediction, reference)", None
    scores = list(evaluation.scores)
    if correct is None:
        correct = "exact_match" if "exact_match" in scores else (scores or [None])[0]
    metric, threshold = correct if isinstance(correct, tuple) else (correct, 1.0)
    if metric not in evaluation.scores:
        msg = (
            f"correct={metric!r} is not a score of this evaluation; choose one of {scores}, "
            "give (score, threshold), or a function(prediction, reference) -> bool."
        )
        raise SpecError(msg)
    if not evaluation.higher_is_better(metric):
        msg = f"correct={metric!r} is lower-is-better: give a function(prediction, reference)."
        raise SpecError(msg)

    def by_score(row: EvalRow, role: str) -> bool:
        value = row.scores.get(metric, {}).get(role, math.nan)
        return not math.isnan(value) and value >= threshold

    return by_score, f"{metric} >= {threshold:g}", metric


def _check_correct(correct: Any) -> None:
    ok = (
        correct is None
        or callable(correct)
        or isinstance(correct, str)
        or (
            isinstance(correct, tuple)
            and len(correct) == 2
            and isinstance(correct[0], str)
            and isinstance(correct[1], (int, float))
        )
    )
    if not ok:
        msg = (
            f"correct={correct!r}: give a score name ('exact_match'), (score, threshold), or a "
            "function(prediction, reference) -> bool."
        )
        raise SpecError(msg)


def _with_base(evaluation: Evaluation, first: Evaluation) -> Evaluation:
    """``evaluation`` (tuned only) with the base column of ``first`` (same rows, same base)."""
    rows = []
    for row, b in zip(evaluation.rows, first.rows, strict=True):
        rows.append(
            replace(
                row,
                outputs={"base": b.outputs["base"], **row.outputs},
                scores={
                    name: {"base": b.scores.get(name, {}).get("base", math.nan), **values}
                    for name, values in row.scores.items()
                },
                losses={"base": b.losses.get("base", math.nan), **row.losses},
                token_losses={"base": b.token_losses.get("base", ()), **row.token_losses},
            )
        )
    scores = {}
    for name, entry in evaluation.scores.items():
        base = first.scores.get(name, {})
        scores[name] = {
            "higher_is_better": entry.get("higher_is_better", True),
            "base": base.get("base", math.nan),
            "base_ci": base.get("base_ci"),
            **{k: v for k, v in entry.items() if k != "higher_is_better"},
        }
    settings = {**evaluation.settings, "columns": ["base", "tuned"]}
    return replace(evaluation, scores=scores, rows=tuple(rows), settings=settings)


def _means(evaluation: Evaluation, role: str) -> dict[str, float]:
    means = {name: float(s[role]) for name, s in evaluation.scores.items() if role in s}
    losses = [r.losses.get(role, math.nan) for r in evaluation.rows]
    finite = [x for x in losses if not math.isnan(x)]
    means["loss"] = sum(finite) / len(finite) if finite else math.nan
    return means


def evaluate_checkpoints(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    available: Mapping[int, WeightReader],
    checkpoints: Any = "all",
    correct: Correct | None = None,
    metrics: Any = ("exact_match",),
    compare_base: bool = True,
    max_new_tokens: int = 64,
    generation: dict | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 8,
    events: Any = None,
    exporter: Callable[..., Any] | None = None,
    seed: int = 0,
) -> CheckpointEvaluation:
    """Evaluate checkpoints of a run on ``rows``: which rows each one gets right.

    For each chosen step, ascending, the checkpoint's weights (``available[step]()``: its
    trained tensors by parameter name) are loaded into ``model``, the rows are generated and
    scored as :func:`~workbench.evaluation.run_evaluation` does, and each row is judged right
    or wrong. The base model (adapter off) is generated once, with the first checkpoint, and
    its column is shared by every step's evaluation. Afterwards ``model``'s weights are what
    they were before the call, bit for bit, whatever happened in between.

    Args:
        model: The live model (a peft model for a base column) the checkpoints were saved from.
        tokenizer: Its tokenizer.
        rows: ``[{"prompt": ..., "reference": ...}, ...]`` as for ``run_evaluation``.
        available: ``{step: reader}`` of the run's complete checkpoints.
        checkpoints: ``"all"``, a list of steps, or one step.
        correct: When a row is right: a score name (right when its per-row value is >= 1.0;
            default ``exact_match`` when scored, else the first score of the first metric),
            ``(score name, threshold)``, or ``function(prediction, reference) -> bool``.
        metrics: As for ``run_evaluation``.
        compare_base: Also generate with the adapter off (once).
        max_new_tokens: Tokens generated per answer at most.
        generation: Extra ``generate`` keywords (greedy by default).
        limit: Only the first ``limit`` rows.
        out_dir: Save the sweep there (``grid.json`` and a folder per step).
        stop_strings: Texts that end an answer.
        batch_size: Prompts per batch.
        events: An ``EventHub`` or ``fn(name, payload)``: ``eval_progress`` per column and
            a ``progress`` line per step.
        exporter: ``Session.export``, for :meth:`CheckpointEvaluation.export` and the panel.
        seed: Seed of the bootstrap intervals.

    Raises:
        SpecError: unknown steps (the message lists the available ones) or a bad ``correct``.
        EvaluationError: a checkpoint that does not fit the model, or bad rows.

    Examples:
        Two "checkpoints" of a tiny model's bias, read from memory instead of a run folder:

        >>> import torch
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-ckpt-model")), on_event=len)
        >>> model, tok = loaded.model, loaded.tokenizer
        >>> name, param = next(iter(model.named_parameters()))
        >>> before = param.detach().clone()
        >>> available = {5: lambda: {name: before}, 10: lambda: {name: before * 2}}
        >>> rows = [{"prompt": "Hello", "reference": "x"}]
        >>> result = evaluate_checkpoints(model, tok, rows, available, "all",
        ...                               correct=lambda p, r: True, max_new_tokens=2)
        >>> result.steps, result.grid, result.first_right, torch.equal(param, before)
        ((5, 10), ((True, True),), (5,), True)
        >>> evaluate_checkpoints(model, tok, rows, available, [7])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: no checkpoint at step 7; the run has checkpoints at ...
    """
    steps = choose_steps(checkpoints, list(available))
    _check_correct(correct)
    rows = validate_rows(rows, limit)
    resolved = resolve_metrics(metrics)
    spec = EvalSpec(
        compare_base,
        max_new_tokens,
        dict(generation or {}),
        None,
        tuple(stop_strings or ()),
        batch_size,
        seed=seed,
    )
    emit = (events.emit if hasattr(events, "emit") else events) if events else None
    evaluations: dict[int, Evaluation] = {}
    grid: list[list[bool]] = [[] for _ in rows]
    judge = first = None
    with SwappedWeights(model) as swap:
        for j, step in enumerate(steps):
            swap.load(available[step](), f"the checkpoint at step {step}")
            ev = evaluate_with_spec(
                model,
                tokenizer,
                rows,
                resolved,
                replace(spec, compare_base=spec.compare_base and j == 0),
                events,
            )
            if first is None:
                first = ev
                judge, rule, metric = _judge(correct, ev)
            elif "base" in first.columns:
                ev = _with_base(ev, first)
            ev = replace(ev, settings={**ev.settings, "checkpoint_step": step})
            evaluations[step] = ev
            for i, row in enumerate(ev.rows):
                grid[i].append(judge(row, "tuned"))
            if emit:
                right = sum(g[-1] for g in grid)
                emit(PROGRESS, f"checkpoint step {step}: {right}/{len(rows)} right ({rule})")
    has_base = "base" in first.columns
    result = CheckpointEvaluation(
        steps=tuple(steps),
        grid=tuple(tuple(g) for g in grid),
        base=tuple(judge(r, "base") if has_base else None for r in first.rows),
        prompts=tuple(r["prompt"] for r in rows),
        references=tuple(r["reference"] for r in rows),
        correct=rule,
        metric=metric,
        scores={step: _means(ev, "tuned") for step, ev in evaluations.items()},
        base_scores=_means(first, "base") if has_base else {},
        evaluations=evaluations,
        exporter=exporter,
    )
    return result.save(out_dir) if out_dir is not None else result
