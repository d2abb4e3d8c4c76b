"""The error evaluation raises on bad input."""

from __future__ import annotations

from workbench.errors import WorkbenchError

__all__ = ["EvaluationError"]


class EvaluationError(WorkbenchError, ValueError):
    """Evaluation input or a metric is unusable; the message names the metric, row and field.

    Examples:
        >>> issubclass(EvaluationError, ValueError)
        True
    """
