"""Evaluation: base vs tuned on the same weights, offline metrics, intervals, human A/B.

Examples:
    >>> from workbench.evaluation import METRICS, EvalRow, Evaluation
    >>> sorted(METRICS)
    ['bleu', 'chrf', 'exact_match', 'perplexity', 'rouge', 'tool_calls']

    With a model, :func:`run_evaluation` makes an :class:`Evaluation` (its docstring runs
    one on the tiny model); here one is built by hand, saved and read back without a model:

    >>> row = EvalRow(0, "Capital of France?", "Paris", {"base": "Lyon", "tuned": "Paris"},
    ...               {"exact_match": {"base": 0.0, "tuned": 1.0}})
    >>> scores = {"exact_match": {"base": 0.0, "tuned": 1.0, "higher_is_better": True}}
    >>> ev = Evaluation(scores, (row,), {"columns": ["base", "tuned"]})
    >>> ev = ev.save("/tmp/wb-doc-evaluation-init")
    >>> Evaluation.load(ev.path).rows[0].gain("exact_match"), ev.ratings_summary().n
    (1.0, 0)

    In a notebook, ``ev.panel()`` (or a bare ``ev``) shows it, and ``compare([run folders])``
    puts training runs side by side.
"""

from __future__ import annotations

from workbench.errors import EvaluationError
from workbench.evaluation.compare import Comparison, compare
from workbench.evaluation.metrics import METRICS, Metric, module_path, register_metric
from workbench.evaluation.ratings import BlindRater, Rating, RatingSummary
from workbench.evaluation.results import EvalRow, Evaluation
from workbench.evaluation.run import EvalSpec, run_evaluation

__all__ = [
    "METRICS",
    "BlindRater",
    "Comparison",
    "EvalRow",
    "EvalSpec",
    "Evaluation",
    "EvaluationError",
    "Metric",
    "Rating",
    "RatingSummary",
    "compare",
    "module_path",
    "register_metric",
    "run_evaluation",
]
