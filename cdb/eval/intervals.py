"""Interval estimates for the evaluation's numbers, and paired changes against the base model, each
method chosen by its simulated coverage on data shaped like the metric it serves
(tests/test_intervals.py; docs/METHOD.md, "Intervals"):

    share_interval(successes, n)       share of 0/1 items: Clopper-Pearson
    mean_interval(values, bounds)      mean of bounded scores: Clopper-Pearson on the mean below
                                       LARGE_N items, Hall's skewness-corrected t from LARGE_N on
    combined_interval(columns, f)      f of the columns' means (StereoSet's ICAT of lms and ss): the
                                       range of f over the box of the columns' t intervals
    paired_binary_change(base, tuned)  change of a 0/1 share over the same items: Tango's score
                                       interval, exact McNemar p-value
    paired_change(base, tuned, bounds) mean of tuned - base over the same items: Newcombe's
                                       square-and-add (MOVER) of the two Clopper-Pearson intervals
                                       below LARGE_N items, Hall's t on the differences from LARGE_N on
    paired_combined_change(b, t, f)    f(tuned means) - f(base means): square-and-add of the two
                                       combined intervals, correlated by a paired bootstrap
    pooled_seeds(per_seed)             mean over S training seeds: Student t over the seeds (S - 1
                                       df) square-added to the seeds' mean interval
    detectable(change)                 whether the change's interval excludes 0

Why these: a mean over a few dozen bounded, skewed items (per-prompt toxicity: most near 0, a few
high) often holds none of the rare high items, so any interval from the items' spread alone (t,
BCa, percentile) is far too narrow; the Clopper-Pearson interval of the mean, taking the items'
total on their bounds as the successes, uses the bound instead (Var X <= m (1 - m) on [0, 1], the
Bernoulli's): conservative, never zero width. With LARGE_N items or more, at least MIN_OFF_MEDIAN
of them off the median (the normal approximation's n p >= 10), the tail is seen and Hall's (1992)
transformation of Student's t, which corrects for skewness, holds its level in less width (about
half, for per-prompt toxicity at 900 prompts). Shares keep Clopper-Pearson at every n: Wilson's
dips to 85-94% at some true shares.

Every estimate carries its n: the number of items it used. NaN items (an item the metric could not
score, e.g. a summary without entities) are left out of n and of the estimate; in a paired change
a pair is left out when either side is NaN. With n = 0 the value and interval are NaN. Where no
method holds its level at the given n (an unbounded mean below LARGE_N items, a combined
estimate over fewer than MIN_COMBINED items), the interval is NaN and `note` says why. The
bootstrap is deterministic given the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
RESAMPLES = 9999
# Resamples per vectorised batch: bounds the bootstrap's memory at BATCH x n floats.
BATCH = 1000
LARGE_N = 500
"""From this many items on, a mean's interval is Hall's t (simulated >= 93.7% for skewed scores
with 1% of items in a high tail); below, the Clopper-Pearson bound."""
MIN_OFF_MEDIAN = 10
"""Items that must differ from the median for the normal approximation (else the bound is used)."""
MIN_COMBINED = 20
"""Items (rows) a combined estimate needs for its interval (ICAT: StereoSet targets)."""
GRID = 201
"""Points per column of the grid on which combined_interval finds the range of f."""

TOO_FEW = "too few items for a reliable interval"


@dataclass(frozen=True)
class Estimate:
    value: float
    """The point estimate (mean, share, or change tuned - base)."""
    n: int
    """Items the estimate used (pairs, for a change)."""
    low: float
    """Lower end of the interval at the requested confidence (NaN: no interval, see note)."""
    high: float
    """Upper end of the interval."""
    note: str = ""
    """Why there is no interval (low and high NaN) though there is a value; empty otherwise."""


@dataclass(frozen=True)
class Change(Estimate):
    p_value: float | None = None
    """Exact McNemar p-value (paired 0/1 outcomes); None otherwise."""


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    return array[~np.isnan(array)]


def _alpha(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return 1.0 - confidence


def _check_bounds(values: np.ndarray, bounds: tuple[float, float] | None) -> None:
    if bounds is None:
        return
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"bounds {bounds}: the lower bound must be below the upper one")
    outside = values[(values < lo) | (values > hi)]
    if len(outside):
        raise ValueError(f"value {float(outside[0])!r} lies outside the metric's bounds [{lo}, {hi}] (Items.bounds)")


def _clopper_pearson(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """The exact binomial interval from beta quantiles; `successes` may be fractional (a bounded
    mean's total on [0, 1]), where it is the interval of a binomial with that many successes."""
    low = 0.0 if successes <= 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes >= n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def _bounded_interval(values: np.ndarray, bounds: tuple[float, float], alpha: float) -> tuple[float, float]:
    lo, hi = bounds
    n = len(values)
    low, high = _clopper_pearson(float(np.sum(values - lo)) / (hi - lo), n, alpha)
    return lo + (hi - lo) * low, lo + (hi - lo) * high


def normal_approximation_holds(values: np.ndarray) -> bool:
    """Enough items, and enough of them off the median, for the normal approximation."""
    return len(values) >= LARGE_N and int(np.sum(values != np.median(values))) >= MIN_OFF_MEDIAN


def _hall_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Student's t after Hall's (1992) cubic transformation, which removes the statistic's skewness:
    g(T) = T + a T^2 + a^2 T^3 / 3 + gamma / (6 sqrt n), a = gamma / (3 sqrt n), gamma the sample
    skewness; the interval inverts g at the t quantiles."""
    n = len(values)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    gamma = float(np.mean((values - mean) ** 3)) / sd ** 3
    a, b = gamma / (3 * math.sqrt(n)), gamma / (6 * math.sqrt(n))

    def inverse(y: float) -> float:  # g^-1, in closed form: g(T) = ((1 + a T)^3 - 1) / (3 a) + b
        return y - b if abs(a) < 1e-12 else (np.cbrt(1 + 3 * a * (y - b)) - 1) / a

    q = float(stats.t.ppf(1 - alpha / 2, n - 1))
    se = sd / math.sqrt(n)
    return float(mean - se * inverse(q)), float(mean - se * inverse(-q))


def share_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """successes / n with the Clopper-Pearson interval: at least `confidence` at every true share
    (10 of 10: [0.69, 1.0])."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"share: successes={successes} must lie in 0..n (n={n})")
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan)
    low, high = _clopper_pearson(successes, n, _alpha(confidence))
    return Estimate(successes / n, n, low, high)


def mean_interval(values: Sequence[float], bounds: tuple[float, float] | None = (0.0, 1.0),
                  confidence: float = CONFIDENCE) -> Estimate:
    """The mean of `values`, each within `bounds` (None: unbounded), with the Clopper-Pearson
    interval of the mean on its bounds below LARGE_N items, Hall's t from there on (see the module
    docstring). An unbounded mean below LARGE_N items has no interval."""
    array = _finite(values)
    _check_bounds(array, bounds)
    alpha = _alpha(confidence)
    n = len(array)
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan)
    value = float(np.mean(array))
    if normal_approximation_holds(array):
        low, high = _hall_interval(array, alpha)
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        return Estimate(value, n, low, high)
    if bounds is None:
        return Estimate(value, n, math.nan, math.nan, f"{TOO_FEW}: an unbounded mean needs {LARGE_N} items, "
                                                      f"{MIN_OFF_MEDIAN} of them off the median ({n} here)")
    low, high = _bounded_interval(array, bounds, alpha)
    return Estimate(value, n, low, high)


def _rows(columns: Sequence[Sequence[float]]) -> tuple[np.ndarray, ...]:
    """The columns as arrays of equal length, without the rows where any column is NaN."""
    arrays = [np.asarray(c, dtype=float).reshape(-1) for c in columns]
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"columns of unequal length {[len(a) for a in arrays]}: each row is one item")
    keep = ~np.any([np.isnan(a) for a in arrays], axis=0)
    return tuple(a[keep] for a in arrays)


def combined_interval(columns: Sequence[Sequence[float]], combine: Callable[..., np.ndarray],
                      bounds: tuple[float, float] | None = None, confidence: float = CONFIDENCE) -> Estimate:
    """combine(mean of each column) over items (row i of every column is item i). The interval is
    the range of `combine` over the box of the k columns' Student t intervals, each at
    1 - alpha / k (Bonferroni), clipped to `bounds`: valid wherever the t intervals are, kinks of
    `combine` included (ICAT's min(ss, 100 - ss) at ss = 50, where the bootstrap covers 70%).
    The range is taken on a grid of GRID points per column. `combine` works elementwise on arrays
    (np.minimum, not min). Fewer than MIN_COMBINED items: no interval."""
    rows = _rows(columns)
    for column in rows:
        _check_bounds(column, bounds)
    n = len(rows[0])
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan)
    value = float(combine(*(np.mean(c) for c in rows)))
    if n < MIN_COMBINED:
        return Estimate(value, n, math.nan, math.nan, f"{TOO_FEW}: needs {MIN_COMBINED} items ({n} here)")
    alpha = _alpha(confidence) / len(rows)
    q = float(stats.t.ppf(1 - alpha / 2, n - 1))
    axes = []
    for column in rows:
        half = q * float(np.std(column, ddof=1)) / math.sqrt(n)
        low, high = float(np.mean(column)) - half, float(np.mean(column)) + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        axes.append(np.linspace(low, high, GRID))
    surface = combine(*np.meshgrid(*axes, indexing="ij"))
    return Estimate(value, n, float(np.min(surface)), float(np.max(surface)))


def _pairs(base: Sequence[float], tuned: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    base_array = np.asarray(base, dtype=float).reshape(-1)
    tuned_array = np.asarray(tuned, dtype=float).reshape(-1)
    if len(base_array) != len(tuned_array):
        raise ValueError(f"paired change: base has {len(base_array)} items but tuned has "
                         f"{len(tuned_array)}; both must score the same items in the same order")
    keep = ~(np.isnan(base_array) | np.isnan(tuned_array))
    return base_array[keep], tuned_array[keep]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r, 0 where either side does not vary."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def paired_change(base: Sequence[float], tuned: Sequence[float], bounds: tuple[float, float] | None = (0.0, 1.0),
                  confidence: float = CONFIDENCE) -> Change:
    """Mean of tuned - base over the same items, each within `bounds` (None: unbounded). Below
    LARGE_N items: Newcombe's square-and-add (MOVER, Zou & Donner 2008) of the two sides'
    Clopper-Pearson intervals with the items' correlation r,
        low  = d - sqrt((t - l_t)^2 + (u_b - b)^2 - 2 r (t - l_t)(u_b - b)),
        high = d + sqrt((u_t - t)^2 + (b - l_b)^2 - 2 r (u_t - t)(b - l_b)),
    which inherits their use of the bounds; from LARGE_N items on, Hall's t on the per-item
    differences. Pairing removes the spread between items, so a small consistent change is seen
    where two separate intervals would overlap. An unbounded mean below LARGE_N items has no interval."""
    base_array, tuned_array = _pairs(base, tuned)
    for array in (base_array, tuned_array):
        _check_bounds(array, bounds)
    alpha = _alpha(confidence)
    n = len(base_array)
    if n == 0:
        return Change(math.nan, 0, math.nan, math.nan)
    differences = tuned_array - base_array
    value = float(np.mean(differences))
    if normal_approximation_holds(differences):
        low, high = _hall_interval(differences, alpha)
        if bounds is not None:
            span = bounds[1] - bounds[0]
            low, high = max(low, -span), min(high, span)
        return Change(value, n, low, high)
    if bounds is None:
        return Change(value, n, math.nan, math.nan, f"{TOO_FEW}: an unbounded change needs {LARGE_N} items, "
                                                    f"{MIN_OFF_MEDIAN} of them off the median ({n} here)")
    t, b = float(np.mean(tuned_array)), float(np.mean(base_array))
    l_t, u_t = _bounded_interval(tuned_array, bounds, alpha)
    l_b, u_b = _bounded_interval(base_array, bounds, alpha)
    r = _correlation(base_array, tuned_array)
    below = math.sqrt(max((t - l_t) ** 2 + (u_b - b) ** 2 - 2 * r * (t - l_t) * (u_b - b), 0.0))
    above = math.sqrt(max((u_t - t) ** 2 + (b - l_b) ** 2 - 2 * r * (u_t - t) * (b - l_b), 0.0))
    return Change(value, n, value - below, value + above)


def _tango_statistic(delta: float, gained: int, lost: int, n: int) -> float:
    """Tango's (1998) score statistic for a change `delta` in a paired share, with the restricted
    maximum-likelihood estimate of the lost-pair probability under that change."""
    numerator = gained - lost - n * delta
    if numerator == 0:
        return 0.0
    a, b, c = 2 * n, -gained - lost + (2 * n - gained + lost) * delta, -lost * delta * (1 - delta)
    lost_probability = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
    variance = n * (2 * lost_probability + delta * (1 - delta))
    return numerator / math.sqrt(variance) if variance > 0 else math.copysign(math.inf, numerator)


def paired_binary_change(base: Sequence[float], tuned: Sequence[float],
                         confidence: float = CONFIDENCE) -> Change:
    """Share(tuned) - share(base) for 0/1 outcomes on the same items, with Tango's score interval
    (unconditional: it can reach past the discordant share m / n, which the exact McNemar interval,
    conditional on m, cannot) and the exact McNemar p-value (the count of 0 -> 1 pairs among the m
    discordant ones is Binomial(m, 1/2) under no change). With no discordant pair the interval is
    still +- z^2 / (n + z^2) wide."""
    base_array, tuned_array = _pairs(base, tuned)
    for name, array in (("base", base_array), ("tuned", tuned_array)):
        if not np.isin(array, (0.0, 1.0)).all():
            raise ValueError(f"paired binary change: {name} holds values other than 0 and 1")
    alpha = _alpha(confidence)
    n = len(base_array)
    if n == 0:
        return Change(math.nan, 0, math.nan, math.nan, p_value=math.nan)
    gained = int(np.sum((base_array == 0) & (tuned_array == 1)))
    lost = int(np.sum((base_array == 1) & (tuned_array == 0)))
    value = (gained - lost) / n
    z = float(stats.norm.ppf(1 - alpha / 2))
    edge = 1 - 1e-12

    def solve(target: float, start: float, end: float) -> float:
        # the statistic falls as delta rises: the end of the interval is where it crosses `target`
        if (_tango_statistic(end, gained, lost, n) - target) * (_tango_statistic(start, gained, lost, n) - target) > 0:
            return end
        return float(optimize.brentq(lambda d: _tango_statistic(d, gained, lost, n) - target,
                                     min(start, end), max(start, end), xtol=1e-12))

    low = -1.0 if value <= -edge else solve(z, value, -edge)
    high = 1.0 if value >= edge else solve(-z, value, edge)
    p_value = float(stats.binomtest(gained, gained + lost, 0.5).pvalue) if gained + lost else 1.0
    return Change(value, n, low, high, p_value=p_value)


def _replicates(rows: tuple[np.ndarray, ...], combine: Callable[..., np.ndarray], columns: int, seed: int,
                resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """combine of the first `columns` rows' means and of the rest's, over the same bootstrap resamples of items."""
    rng = np.random.default_rng(seed)
    n = len(rows[0])
    tuned, base = [], []
    for start in range(0, resamples, BATCH):
        index = rng.integers(0, n, (min(BATCH, resamples - start), n))
        means = [np.mean(r[index], axis=-1) for r in rows]
        tuned.append(combine(*means[:columns]))
        base.append(combine(*means[columns:]))
    return np.concatenate(tuned), np.concatenate(base)


def paired_combined_change(base_columns: Sequence[Sequence[float]], tuned_columns: Sequence[Sequence[float]],
                           combine: Callable[..., np.ndarray], bounds: tuple[float, float] | None = None,
                           confidence: float = CONFIDENCE, seed: int = 0, resamples: int = RESAMPLES) -> Change:
    """combine(tuned column means) - combine(base column means) over the same items: Newcombe's
    square-and-add (as in paired_change) of the two sides' combined_interval, with the correlation
    of the two sides' estimates over `resamples` bootstrap resamples of the items (an item's base
    and tuned rows drawn together). A paired percentile bootstrap of the change itself covers 89%
    where the tuned model lands on a kink of `combine` (ICAT at ss = 50). Fewer than MIN_COMBINED
    items: no interval."""
    if len(base_columns) != len(tuned_columns):
        raise ValueError(f"paired change: base has {len(base_columns)} columns but tuned has {len(tuned_columns)}")
    rows = _rows([*tuned_columns, *base_columns])
    k = len(tuned_columns)
    tuned = combined_interval(rows[:k], combine, bounds, confidence)
    base = combined_interval(rows[k:], combine, bounds, confidence)
    if tuned.n == 0:
        return Change(math.nan, 0, math.nan, math.nan)
    value = tuned.value - base.value
    if tuned.note:
        return Change(value, tuned.n, math.nan, math.nan, tuned.note)
    r = _correlation(*_replicates(rows, combine, k, seed, resamples))
    a, b = tuned.value - tuned.low, base.high - base.value
    c, d = tuned.high - tuned.value, base.value - base.low
    below = math.sqrt(max(a * a + b * b - 2 * r * a * b, 0.0))
    above = math.sqrt(max(c * c + d * d - 2 * r * c * d, 0.0))
    return Change(value, tuned.n, value - below, value + above)


def pooled_seeds(per_seed: Sequence[Estimate], confidence: float = CONFIDENCE,
                 bounds: tuple[float, float] | None = None) -> Estimate:
    """The mean of one quantity (a metric, or its change against the base model) over S training
    seeds, each seed's Estimate over the same items at `confidence`, with an interval that holds the
    seed-to-seed spread as well as the items':
        seed  = t(1 - alpha / 2, S - 1) * sd(seed values) / sqrt(S)      Student t over the seeds
        below = mean over seeds of (value - low),  above = mean of (high - value)
        low   = mean - sqrt(below^2 + seed^2),  high = mean + sqrt(above^2 + seed^2)
    The seeds' values differ by their models (the spread the t part measures, with S - 1 degrees
    of freedom as a random-effects meta-analysis has it); the items, the same for every seed, move
    them together, an error the t part cannot see: the mean of the seeds' own intervals is its
    bound (the square-and-add of S estimates correlated at r = 1), square-added to the t part as
    MOVER adds independent errors, then clipped to `bounds`, the range of the quantity (a change
    of a metric on [lo, hi]: [lo - hi, hi - lo]). One seed: its own estimate. A seed without an
    interval, or without a value: no interval, `note` says why. n: the fewest items of any seed.

    Simulated coverage of the nominal 95% (tests/test_intervals.py, 1,000 data sets a case;
    docs/METHOD.md, "Seeds"): the seeds' true changes spread 0, 1 and 3 times a seed's item
    standard error around the method's, S = 2, 3, 5, per-prompt toxicity at 24 and 600 prompts and
    paired 0/1 items at 48 and 1,000: 0.946 to 1.000 (the lowest: 0/1 items at 48, the seeds 3 item
    errors apart). Mean width at 600 prompts, seeds 3 errors apart: 0.031 / 0.010 / 0.0062 at
    S = 2 / 3 / 5 (t's 12.7 at one degree of freedom). Rejected: the two-level bootstrap (seeds,
    then items): 0.70-0.79 at S = 2 with the seeds 3 item errors apart (resampling 2 or 3 values
    understates their spread); t over the seeds alone: 0.40-0.51 at S = 5 when the seeds agree (it
    cannot see the error of the items they share); the wider of the two parts: 0.920."""
    if not per_seed:
        return Estimate(math.nan, 0, math.nan, math.nan)
    if len(per_seed) == 1:
        return per_seed[0]
    values = np.array([e.value for e in per_seed], dtype=float)
    n = min(e.n for e in per_seed)
    if not np.all(np.isfinite(values)):
        return Estimate(math.nan, n, math.nan, math.nan, "a seed has no value")
    value = float(np.mean(values))
    missing = [i for i, e in enumerate(per_seed) if not (math.isfinite(e.low) and math.isfinite(e.high))]
    if missing:
        why = per_seed[missing[0]].note or "no interval"
        return Estimate(value, n, math.nan, math.nan, f"seed {missing[0] + 1} of {len(per_seed)}: {why}")
    seeds = len(per_seed)
    seed_half = float(stats.t.ppf(1 - _alpha(confidence) / 2, seeds - 1)) * float(np.std(values, ddof=1)) / math.sqrt(seeds)
    below = float(np.mean([e.value - e.low for e in per_seed]))
    above = float(np.mean([e.high - e.value for e in per_seed]))
    low, high = value - math.hypot(below, seed_half), value + math.hypot(above, seed_half)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(value, n, low, high)


def detectable(change: Estimate) -> bool:
    """Whether the change's interval excludes 0 (False when it is NaN: nothing was measured)."""
    return change.low > 0 or change.high < 0
