"""Percentile bootstrap confidence intervals over examples.

One matrix of resampled example indices is drawn per evaluation and shared by every metric
and by both columns (base, tuned), so the intervals are paired and reproducible (seeded).

Examples:
    >>> idx = resample_indices(4, n_resamples=200, seed=0)
    >>> lo, hi = mean_ci([0.0, 1.0, 1.0, 1.0], idx)
    >>> 0.0 <= lo <= 0.75 <= hi <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["CONFIDENCE", "N_RESAMPLES", "mean_ci", "percentile_ci", "resample_indices"]

N_RESAMPLES = 1000
CONFIDENCE = 0.95


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Draw ``n_resamples`` bootstrap samples of ``n`` example indices, shape ``(R, n)``.

    Examples:
        >>> resample_indices(3, n_resamples=2, seed=1).shape
        (2, 3)
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(n, 1), size=(n_resamples, n))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_ci(
    values: Sequence[float], indices: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Interval of the mean of ``values`` over the resamples in ``indices``.

    Examples:
        >>> mean_ci([2.0, 2.0], resample_indices(2, 10))
        (2.0, 2.0)
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return (float("nan"), float("nan"))
    return _interval(array[indices].mean(axis=1), confidence)


def percentile_ci(
    statistic: Callable[[np.ndarray], float],
    indices: np.ndarray,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Interval of any corpus ``statistic(index_array)`` (e.g. corpus BLEU) over resamples.

    Examples:
        >>> data = np.array([1.0, 3.0])
        >>> percentile_ci(lambda idx: float(data[idx].max()), resample_indices(2, 50))
        (1.0, 3.0)
    """
    if indices.shape[1] == 0:
        return (float("nan"), float("nan"))
    return _interval(np.array([statistic(row) for row in indices], dtype=float), confidence)
