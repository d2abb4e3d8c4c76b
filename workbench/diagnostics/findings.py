"""A :class:`Finding`: one thing noticed about a run, its data or its evaluation, in words.

Every finding says what was seen (``title``), the numbers behind it (``evidence``: steps,
losses, counts, rows) and one change to try (``suggestion``). ``severity`` is ``"warning"``
(the result is probably harmed) or ``"info"`` (worth a look, maybe noise).

Examples:
    >>> f = Finding("flat_loss", "warning", "The training loss is flat",
    ...             "after 8 of 40 steps the loss is 2.31, 0.1% from its start 2.31",
    ...             "raise lr", step=8)
    >>> print(f.text())
    [warning] The training loss is flat (step 8)
      evidence: after 8 of 40 steps the loss is 2.31, 0.1% from its start 2.31
      try: raise lr
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from workbench._display import printable
from workbench.errors import SpecError

__all__ = ["KINDS", "SEVERITIES", "Finding", "FindingKind", "Severity"]

Severity = Literal["warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)

FindingKind = Literal[
    "run_failed",
    "overfitting",
    "flat_loss",
    "grad_spikes",
    "end_of_turn_untrained",
    "answers_cut",
    "validation_leak",
    "worse_than_base",
]
KINDS: tuple[str, ...] = get_args(FindingKind)
"""The kinds the built-in rules produce (see :mod:`workbench.diagnostics.rules`)."""


@dataclass(frozen=True)
class Finding:
    """One diagnostic finding.

    Attributes:
        kind: What rule found it, e.g. ``"overfitting"`` (one of :data:`KINDS` for the
            built-in rules; other names are allowed).
        severity: ``"warning"`` or ``"info"``.
        title: One line for people.
        evidence: The numbers behind it (steps, losses, counts, rows, quoted data). It may
            quote data rows: escape it before putting it in HTML.
        suggestion: One change to try.
        step: The optimizer step it points at (``None`` for data and evaluation findings).

    Examples:
        >>> Finding("answers_cut", "warning", "t", "e", "s").step is None
        True
        >>> Finding("answers_cut", "error", "t", "e", "s")
        Traceback (most recent call last):
        workbench.errors.SpecError: Finding severity='error' must be 'warning' or 'info'
    """

    kind: str
    severity: Severity
    title: str
    evidence: str
    suggestion: str
    step: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            msg = f"Finding severity={self.severity!r} must be 'warning' or 'info'"
            raise SpecError(msg)

    @property
    def is_warning(self) -> bool:
        """True for ``severity="warning"``.

        Examples:
            >>> Finding("grad_spikes", "info", "t", "e", "s").is_warning
            False
        """
        return self.severity == "warning"

    def text(self) -> str:
        """The finding as three lines of plain text: title, evidence, suggestion.

        Examples:
            >>> print(Finding("validation_leak", "warning", "Leak", "2 rows", "drop them").text())
            [warning] Leak
              evidence: 2 rows
              try: drop them
        """
        where = f" (step {self.step})" if self.step is not None else ""
        return printable(
            f"[{self.severity}] {self.title}{where}\n"
            f"  evidence: {self.evidence}\n"
            f"  try: {self.suggestion}"
        )

    def __str__(self) -> str:
        return self.text()
