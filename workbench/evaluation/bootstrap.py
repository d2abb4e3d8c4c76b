"""Confidence intervals over examples: percentile bootstrap, and Wilson for 0/1 scores.

One matrix of resampled example indices is drawn per evaluation and shared by every metric
and by both columns (base, tuned), so the intervals are paired and reproducible (seeded).
A score that is a proportion (exact match, a pass/fail function: its scorer says so) gets a
Wilson score interval instead: a bootstrap of 20 rows that all scored 1 says [1, 1], as if no
21st row could fail; Wilson says [0.84, 1]. A continuous score that happens to be 0 or 1 on
every row keeps its bootstrap.

Under :data:`MIN_ROWS_FOR_AN_INTERVAL` examples there is no interval (NaN): a bootstrap of
a handful of rows that all scored alike gives a zero-width "95% interval" such as [0, 0].
Examples without a value (NaN: a reference without tokens has no perplexity) are left out
of each mean.

Examples:
    >>> idx = resample_indices(12, n_resamples=200, seed=0)
    >>> lo, hi = mean_ci([0.0, 1.0, 1.0, 1.0] * 3, idx)
    >>> 0.0 <= lo <= 0.75 <= hi <= 1.0
    True
    >>> mean_ci([1.0, 1.0, 1.0], resample_indices(3, 50))  # too few rows for an interval
    (nan, nan)
    >>> [round(x, 3) for x in mean_ci([1.0] * 20, resample_indices(20), proportion=True)]
    [0.839, 1.0]
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CONFIDENCE",
    "MIN_ROWS_FOR_AN_INTERVAL",
    "N_RESAMPLES",
    "mean_ci",
    "nan_mean",
    "percentile_ci",
    "resample_indices",
    "wilson_interval",
]

N_RESAMPLES = 1000
CONFIDENCE = 0.95
MIN_ROWS_FOR_AN_INTERVAL = 10
"""Fewer examples than this get no interval, and no verdict is "significant": a bootstrap
of 1-9 rows that all went one way gives an interval that excludes 0 without meaning it."""
_NO_INTERVAL = (float("nan"), float("nan"))


def nan_mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is).

    Examples:
        >>> nan_mean([1.0, float("nan"), 3.0]), nan_mean([float("nan")])
        (2.0, nan)
    """
    finite = [v for v in values if not math.isnan(v)]
    return math.fsum(finite) / len(finite) if finite else float("nan")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default).

    None right has 0 as its lower bound and all right 1 as its upper, exactly (rounding left
    2.8e-17 and 0.9999999999999999, shown as such).

    Examples:
        >>> [round(x, 3) for x in wilson_interval(8, 10)]
        [0.49, 0.943]
        >>> wilson_interval(0, 10)[0], wilson_interval(10, 10)[1]
        (0.0, 1.0)
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Draw ``n_resamples`` bootstrap samples of ``n`` example indices, shape ``(R, n)``.

    Examples:
        >>> resample_indices(3, n_resamples=2, seed=1).shape
        (2, 3)
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(n, 1), size=(n_resamples, n))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if np.isnan(values).all():
        return _NO_INTERVAL
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_ci(
    values: Sequence[float],
    indices: np.ndarray,
    confidence: float = CONFIDENCE,
    proportion: bool = False,
) -> tuple[float, float]:
    """Interval of the mean of ``values`` over the resamples in ``indices``; a Wilson
    interval for a ``proportion`` (every value that is not NaN 0 or 1).

    Examples:
        >>> mean_ci([2.0, float("nan")] * 5, resample_indices(10, 10))
        (2.0, 2.0)
        >>> halves = [0.0, 1.0, float("nan")] * 10
        >>> [round(x, 2) for x in mean_ci(halves, resample_indices(30), proportion=True)]
        [0.3, 0.7]
    """
    array = np.asarray(values, dtype=float)
    if array.size < MIN_ROWS_FOR_AN_INTERVAL:
        return _NO_INTERVAL
    scored = array[~np.isnan(array)]
    if proportion and scored.size and np.isin(scored, (0.0, 1.0)).all():
        z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
        return wilson_interval(float(scored.sum()), int(scored.size), z)
    with warnings.catch_warnings():  # a resample of NaNs only has no mean: it is skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(array[indices], axis=1)
    return _interval(means, confidence)


def percentile_ci(
    statistic: Callable[[np.ndarray], float],
    indices: np.ndarray,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Interval of any corpus ``statistic(index_array)`` (e.g. corpus BLEU) over resamples.

    Examples:
        >>> data = np.full(10, 3.0)
        >>> percentile_ci(lambda idx: float(data[idx].max()), resample_indices(10, 50))
        (3.0, 3.0)
    """
    if indices.shape[1] < MIN_ROWS_FOR_AN_INTERVAL:
        return _NO_INTERVAL
    return _interval(np.array([statistic(row) for row in indices], dtype=float), confidence)
