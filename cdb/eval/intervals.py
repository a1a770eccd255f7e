"""Interval estimates for the evaluation's numbers, and paired changes against the base model.

    mean_interval(values)              mean over items, bootstrap interval over items (BCa)
    share_interval(successes, n)       share of items, Wilson score interval
    combined_interval(columns, f)      f of the columns' means (e.g. StereoSet's ICAT of lms and ss),
                                       bootstrap over items (rows)
    paired_change(base, tuned)         mean of tuned - base over the same items, paired bootstrap
    paired_binary_change(base, tuned)  change of a 0/1 share over the same items, exact McNemar
    paired_combined_change(b, t, f)    f(tuned means) - f(base means) over the same items, paired bootstrap
    detectable(change)                 whether the change's interval excludes 0

Every estimate carries its n: the number of items it used. NaN items (an item the metric could not
score, e.g. a summary without entities) are left out of n and of the estimate; in a paired change
a pair is left out when either side is NaN. With n = 0 the value and interval are NaN; when the
items cannot vary the estimate (n = 1, or all values equal) the interval is the value itself.
Bootstrap intervals are deterministic given the seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
# Resamples per vectorised batch: bounds the bootstrap's memory at BATCH x n floats.
BATCH = 1000


@dataclass(frozen=True)
class Estimate:
    value: float
    """The point estimate (mean, share, or change tuned - base)."""
    n: int
    """Items the estimate used (pairs, for a change)."""
    low: float
    """Lower end of the interval at the requested confidence."""
    high: float
    """Upper end of the interval."""


@dataclass(frozen=True)
class Change(Estimate):
    p_value: float | None = None
    """Exact McNemar p-value (paired 0/1 outcomes); None for a bootstrap change."""


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    return array[~np.isnan(array)]


def _bootstrap_interval(columns: tuple[np.ndarray, ...], statistic, confidence: float, seed: int,
                        method: str) -> tuple[float, float]:
    with warnings.catch_warnings():  # scipy warns where BCa is undefined; the caller checks for NaN
        warnings.simplefilter("ignore")
        interval = stats.bootstrap(columns, statistic, n_resamples=RESAMPLES, batch=BATCH, vectorized=True,
                                   paired=len(columns) > 1, confidence_level=confidence, method=method,
                                   rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def _bootstrap(columns: tuple[np.ndarray, ...], statistic, confidence: float, seed: int) -> Estimate:
    """statistic(*columns, axis=-1) over the items (rows, resampled jointly across the columns)."""
    n = len(columns[0])
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan)
    value = float(statistic(*columns, axis=-1))
    if all(np.ptp(c) == 0 for c in columns):
        return Estimate(value, n, value, value)
    low, high = _bootstrap_interval(columns, statistic, confidence, seed, "BCa")
    if not (math.isfinite(low) and math.isfinite(high)):
        # BCa is undefined when (almost) every resample falls on one side of the estimate, as with
        # heavily skewed few-valued data; the percentile interval is then the honest fallback.
        low, high = _bootstrap_interval(columns, statistic, confidence, seed, "percentile")
    return Estimate(value, n, low, high)


def _bootstrap_mean(values: np.ndarray, confidence: float, seed: int) -> Estimate:
    return _bootstrap((values,), np.mean, confidence, seed)


def _rows(columns: Sequence[Sequence[float]]) -> tuple[np.ndarray, ...]:
    """The columns as arrays of equal length, without the rows where any column is NaN."""
    arrays = [np.asarray(c, dtype=float).reshape(-1) for c in columns]
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"columns of unequal length {[len(a) for a in arrays]}: each row is one item")
    keep = ~np.any([np.isnan(a) for a in arrays], axis=0)
    return tuple(a[keep] for a in arrays)


def _of_means(combine: Callable[..., np.ndarray], columns: int):
    """The vectorised statistic combine(means of the first `columns` arrays) [- combine(means of the rest)]."""
    def statistic(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        means = [np.mean(a, axis=axis) for a in arrays]
        value = combine(*means[:columns])
        return value - combine(*means[columns:]) if len(means) > columns else value
    return statistic


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """The mean of `values` with a bootstrap interval over items (BCa; percentile where BCa is undefined)."""
    return _bootstrap_mean(_finite(values), confidence, seed)


def combined_interval(columns: Sequence[Sequence[float]], combine: Callable[..., np.ndarray],
                      confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """combine(mean of each column) with a bootstrap interval over items: row i of every column is
    item i, resampled together. `combine` works elementwise on arrays (np.minimum, not min)."""
    rows = _rows(columns)
    return _bootstrap(rows, _of_means(combine, len(rows)), confidence, seed)


def share_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """successes / n with a Wilson score interval."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"share: successes={successes} must lie in 0..n (n={n})")
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan)
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, n, float(interval.low), float(interval.high))


def _pairs(base: Sequence[float], tuned: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    base_array = np.asarray(base, dtype=float).reshape(-1)
    tuned_array = np.asarray(tuned, dtype=float).reshape(-1)
    if len(base_array) != len(tuned_array):
        raise ValueError(f"paired change: base has {len(base_array)} items but tuned has "
                         f"{len(tuned_array)}; both must score the same items in the same order")
    keep = ~(np.isnan(base_array) | np.isnan(tuned_array))
    return base_array[keep], tuned_array[keep]


def paired_change(base: Sequence[float], tuned: Sequence[float], confidence: float = CONFIDENCE,
                  seed: int = 0) -> Change:
    """Mean of tuned - base over the same items with a paired bootstrap interval: items are resampled
    jointly, which for the mean difference is the bootstrap of the per-item differences. Pairing
    removes the spread between items, so a small consistent change is seen where two separate
    intervals would overlap."""
    base_array, tuned_array = _pairs(base, tuned)
    estimate = _bootstrap_mean(tuned_array - base_array, confidence, seed)
    return Change(estimate.value, estimate.n, estimate.low, estimate.high)


def paired_binary_change(base: Sequence[float], tuned: Sequence[float],
                         confidence: float = CONFIDENCE) -> Change:
    """Share(tuned) - share(base) for 0/1 outcomes on the same items, with the exact McNemar test:
    only discordant pairs carry information, and under no change each is equally likely to go
    either way, so the count of 0 -> 1 pairs among the m discordant ones is Binomial(m, 1/2).
    The interval is the exact (Clopper-Pearson) interval of that binomial's p, mapped to the change
    m * (2p - 1) / n; it excludes 0 exactly when the two-sided p-value is below 1 - confidence.
    Being conditional on m, it never reaches beyond the discordant share m / n."""
    base_array, tuned_array = _pairs(base, tuned)
    for name, array in (("base", base_array), ("tuned", tuned_array)):
        if not np.isin(array, (0.0, 1.0)).all():
            raise ValueError(f"paired binary change: {name} holds values other than 0 and 1")
    n = len(base_array)
    if n == 0:
        return Change(math.nan, 0, math.nan, math.nan, math.nan)
    gained = int(np.sum((base_array == 0) & (tuned_array == 1)))
    lost = int(np.sum((base_array == 1) & (tuned_array == 0)))
    discordant = gained + lost
    value = (gained - lost) / n
    if discordant == 0:
        return Change(value, n, value, value, 1.0)
    test = stats.binomtest(gained, discordant, 0.5)
    interval = test.proportion_ci(confidence_level=confidence, method="exact")
    return Change(value, n, discordant * (2 * interval.low - 1) / n, discordant * (2 * interval.high - 1) / n,
                  float(test.pvalue))


def paired_combined_change(base_columns: Sequence[Sequence[float]], tuned_columns: Sequence[Sequence[float]],
                           combine: Callable[..., np.ndarray], confidence: float = CONFIDENCE,
                           seed: int = 0) -> Change:
    """combine(tuned column means) - combine(base column means) over the same items, with a paired
    bootstrap: an item's base and tuned rows are resampled together."""
    if len(base_columns) != len(tuned_columns):
        raise ValueError(f"paired change: base has {len(base_columns)} columns but tuned has {len(tuned_columns)}")
    rows = _rows([*tuned_columns, *base_columns])
    estimate = _bootstrap(rows, _of_means(combine, len(tuned_columns)), confidence, seed)
    return Change(estimate.value, estimate.n, estimate.low, estimate.high)


def detectable(change: Estimate) -> bool:
    """Whether the change's interval excludes 0 (False when it is NaN: nothing was measured)."""
    return change.low > 0 or change.high < 0
