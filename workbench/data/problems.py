"""Problems found in a data set, one :class:`Problem` per row and kind.

Examples:
    >>> p = Problem(3, "duplicate", "same text as train row 1", "train")
    >>> p.clickable, str(p)
    (True, '[duplicate] train row 3: same text as train row 1')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from workbench.errors import SpecError

__all__ = ["PROBLEM_KINDS", "SMALL_DATASET_ROWS", "Problem", "ProblemKind"]

ProblemKind = Literal[
    "malformed",
    "empty_field",
    "duplicate",
    "near_duplicate",
    "leak",
    "no_trained_tokens",
    "unanswered_turn",
    "tool_mismatch",
    "truncated_answer",
    "too_long",
    "template_mismatch",
    "special_token_text",
    "invisible_text",
    "small_dataset",
]
PROBLEM_KINDS: tuple[str, ...] = get_args(ProblemKind)
ProblemSplit = Literal["train", "validation", "source"]

SMALL_DATASET_ROWS = 100
"""Rule of thumb behind ``small_dataset``: with fewer training examples than this, a LoRA
fine-tune mostly learns the output format and tends to memorise; teaching a new skill
usually takes a thousand or more."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in the data.

    Attributes:
        row: Index in ``split`` (0-based, as in ``data.example(row, split)``); for
            ``split="source"`` the 1-based line/row in the source file (the row was skipped);
            ``None`` for a problem of the whole data set.
        kind: One of :data:`PROBLEM_KINDS`.
        message: What is wrong, for people.
        split: ``"train"``, ``"validation"``, ``"source"`` or ``None``.

    Examples:
        >>> Problem(None, "small_dataset", "only 12 rows", None).clickable
        False
    """

    row: int | None
    kind: ProblemKind
    message: str
    split: ProblemSplit | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            msg = f"Problem kind={self.kind!r} is not one of {PROBLEM_KINDS}"
            raise SpecError(msg)
        if self.split not in (None, "train", "validation", "source"):
            msg = f"Problem split={self.split!r} must be 'train', 'validation', 'source' or None"
            raise SpecError(msg)

    @property
    def clickable(self) -> bool:
        """True when the problem points at an example that ``data.example`` can show.

        Examples:
            >>> Problem(4, "malformed", "bad JSON", "source").clickable
            False
        """
        return self.row is not None and self.split in ("train", "validation")

    @property
    def where(self) -> str:
        """Where the problem is, e.g. ``"train row 3"`` or ``"source line 7"``.

        Examples:
            >>> Problem(7, "malformed", "x", "source").where
            'skipped source row 7'
        """
        if self.row is None:
            return "data set"
        if self.split == "source":
            return f"skipped source row {self.row}"
        return f"{self.split} row {self.row}"

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.message}"
