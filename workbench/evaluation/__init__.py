"""Evaluation: base vs tuned on the same weights, offline metrics, intervals, human A/B.

Examples:
    >>> from workbench.evaluation import METRICS, run_evaluation, Evaluation, compare
    >>> sorted(METRICS)
    ['bleu', 'chrf', 'exact_match', 'perplexity', 'rouge']
    >>> # ev = run_evaluation(model, tokenizer, rows, metrics=["rouge", "bleu", "exact_match"],
    >>> #                     stop_strings=["<|im_end|>"], out_dir="runs/demo/evaluations/e1")
    >>> # ev.scores["exact_match"]; ev.panel(); Evaluation.load(ev.path); ev.ratings_summary()
    >>> # compare(["runs/lr-1e-4", "runs/lr-5e-4"])
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
