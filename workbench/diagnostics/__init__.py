"""Plain-language diagnostics: findings in words, each with its evidence and one suggestion.

Rules read a run's history, the prepared data and an evaluation, and say what they see:
overfitting, a flat loss, gradient-norm spikes, an end-of-turn token never trained, answers
cut by ``max_length``, a validation split that leaks training rows, a tuned model worse than
the base. The rules and their thresholds are in :mod:`workbench.diagnostics.rules`;
``Session.diagnose()`` and ``run.diagnostics`` call them, and
:func:`workbench.widgets._findings.findings_html` shows them in the panels.

This package reads records, data and evaluations; it never imports the Session or a widget.

Examples:
    >>> from workbench.train.records import LogRecord
    >>> history = [LogRecord("train", s, s / 10, loss=2.0, lr=1e-9) for s in range(1, 11)]
    >>> [(f.kind, f.severity, f.step) for f in diagnose(history, total_steps=10)]
    [('flat_loss', 'warning', 10)]
"""

from __future__ import annotations

from workbench.diagnostics.facts import CutAnswer, DataFacts, Leak, data_facts
from workbench.diagnostics.findings import KINDS, SEVERITIES, Finding, FindingKind, Severity
from workbench.diagnostics.rules import (
    answers_cut,
    diagnose,
    diagnose_data,
    diagnose_evaluation,
    diagnose_run,
    end_of_turn_untrained,
    flat_loss,
    grad_spikes,
    overfitting,
    run_failed,
    validation_leak,
    worse_than_base,
)

__all__ = [
    "KINDS",
    "SEVERITIES",
    "CutAnswer",
    "DataFacts",
    "Finding",
    "FindingKind",
    "Leak",
    "Severity",
    "answers_cut",
    "data_facts",
    "diagnose",
    "diagnose_data",
    "diagnose_evaluation",
    "diagnose_run",
    "end_of_turn_untrained",
    "flat_loss",
    "grad_spikes",
    "overfitting",
    "run_failed",
    "validation_leak",
    "worse_than_base",
]
