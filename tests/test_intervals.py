"""cdb.eval.intervals: each estimator checked against formulas worked out here, and its coverage
measured on synthetic data shaped like the metrics it serves, at the sizes the suites use."""

import math
import warnings
from statistics import NormalDist

import numpy as np
import pytest
from scipy import special, stats

from cdb.eval.intervals import (LARGE_N, MIN_COMBINED, Estimate, combined_interval, detectable,
                                mean_interval, paired_binary_change, paired_change, paired_combined_change,
                                pooled_seeds, share_interval)

Z = NormalDist().inv_cdf(0.975)


def icat(lms, ss):
    return lms * np.minimum(ss, 100.0 - ss) / 50.0


# ---- the formulas ------------------------------------------------------------------------------
@pytest.mark.parametrize("successes,n", [(0, 10), (3, 10), (66, 100), (100, 100), (1, 1)])
def test_share_interval_is_clopper_pearson(successes, n):
    estimate = share_interval(successes, n)
    exact = stats.binomtest(successes, n).proportion_ci(0.95, method="exact")
    assert estimate.value == successes / n and estimate.n == n
    assert estimate.low == pytest.approx(exact.low, abs=1e-12) and estimate.high == pytest.approx(exact.high, abs=1e-12)


def test_items_at_the_ceiling_get_the_binomials_width_not_zero():
    # ten summaries all scoring 1.0: the binomial's 10 of 10, lower end 0.025 ** (1 / 10)
    for estimate in (mean_interval([1.0] * 10), share_interval(10, 10)):
        assert (estimate.value, estimate.high) == (1.0, 1.0)
        assert estimate.low == pytest.approx(0.025 ** 0.1)
    # on other bounds the same interval, scaled: ten StereoSet targets all at 100 on 0..100
    assert mean_interval([100.0] * 10, bounds=(0, 100)).low == pytest.approx(100 * 0.025 ** 0.1)
    # a mean of 0/1 items is the share of them
    ones = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    mean, share = mean_interval(ones), share_interval(3, 7)
    assert (mean.low, mean.high) == pytest.approx((share.low, share.high), abs=1e-12)


def test_bounded_mean_is_the_binomial_of_its_total():
    values = np.array([0.0, 0.1, 0.05, 0.9, 0.0, 0.2])
    total = values.sum()  # 1.25 "successes" in 6
    estimate = mean_interval(values)
    assert estimate.low == pytest.approx(stats.beta.ppf(0.025, total, 6 - total + 1))
    assert estimate.high == pytest.approx(stats.beta.ppf(0.975, total + 1, 6 - total))
    # rescaled onto [-1, 1]
    shifted = mean_interval(2 * values - 1, bounds=(-1.0, 1.0))
    assert (shifted.low, shifted.high) == pytest.approx((2 * estimate.low - 1, 2 * estimate.high - 1))
    with pytest.raises(ValueError, match=r"value 1.5 lies outside the metric's bounds \[0.0, 1.0\]"):
        mean_interval([0.5, 1.5])


def hall_statistic(mean, sd, skew, n, mu):
    """Hall's transformed t at a candidate mean mu (worked out independently of the module)."""
    t = math.sqrt(n) * (mean - mu) / sd
    return t + skew * t * t / (3 * math.sqrt(n)) + skew ** 2 * t ** 3 / (27 * n) + skew / (6 * math.sqrt(n))


def test_large_samples_get_halls_skewness_corrected_t():
    rng = np.random.default_rng(5)
    values = np.where(rng.random(LARGE_N) < 0.05, rng.beta(2, 1.5, LARGE_N), rng.beta(0.6, 25, LARGE_N))
    estimate = mean_interval(values)
    mean, sd = values.mean(), values.std(ddof=1)
    skew = np.mean((values - mean) ** 3) / sd ** 3
    q = stats.t.ppf(0.975, LARGE_N - 1)
    assert hall_statistic(mean, sd, skew, LARGE_N, estimate.low) == pytest.approx(q, abs=1e-9)
    assert hall_statistic(mean, sd, skew, LARGE_N, estimate.high) == pytest.approx(-q, abs=1e-9)
    # right skew: the interval reaches further above the mean than below it
    assert estimate.high - mean > mean - estimate.low > 0
    # the bound-based interval of the same items is much wider: Hall's is used only from LARGE_N on
    lower = mean_interval(values[:-1])
    assert lower.high - lower.low > 1.5 * (estimate.high - estimate.low)
    # ... and only with at least 10 items off the median: 499 at 1.0 and one lower still uses the bound
    ceiling = mean_interval([1.0] * (LARGE_N - 1) + [0.9])
    assert ceiling.low == pytest.approx(stats.beta.ppf(0.025, LARGE_N - 0.1, 1.1))


def test_unbounded_means_below_large_n_have_no_interval():
    estimate = mean_interval([1.0, 5.0, -3.0], bounds=None)
    assert estimate.value == 1.0 and estimate.n == 3 and math.isnan(estimate.low) and math.isnan(estimate.high)
    assert estimate.note.startswith("too few items for a reliable interval") and "500" in estimate.note
    assert not detectable(paired_change([1.0, 2.0], [3.0, 5.0], bounds=None))
    big = np.random.default_rng(1).normal(3.0, 2.0, LARGE_N)
    assert mean_interval(big, bounds=None).low < 3.0 < mean_interval(big, bounds=None).high


def test_degenerate_inputs_give_no_warning_and_no_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = mean_interval([])
        assert empty.n == 0 and all(math.isnan(x) for x in (empty.value, empty.low, empty.high))
        assert mean_interval([math.nan, math.nan]).n == 0
        one = mean_interval([0.25])
        assert one.n == 1 and one.low < 0.25 < one.high
        rare = mean_interval([0.0] * 199 + [1.0])
        assert 0 <= rare.low <= rare.value < rare.high
        assert not detectable(paired_change([], []))
        none = paired_binary_change([], [])
        assert none.n == 0 and math.isnan(none.value) and not detectable(none)
        with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
            share_interval(1, 2, confidence=1.0)


def test_nan_items_are_left_out_and_counted_out():
    assert mean_interval([0.1, math.nan, 0.3]).n == 2
    change = paired_change([0.1, math.nan, 0.3, 0.4], [0.2, 0.5, math.nan, 0.5])
    assert change.n == 2 and change.value == pytest.approx(0.1)


def test_paired_change_needs_the_same_items():
    with pytest.raises(ValueError, match=r"base has 3 items but tuned has 2"):
        paired_change([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"base has 1 items but tuned has 2"):
        paired_binary_change([1], [1, 0])


def test_small_paired_change_is_newcombes_square_and_add():
    rng = np.random.default_rng(2)
    base = rng.beta(2, 5, 30)
    tuned = np.clip(base + rng.normal(0.05, 0.05, 30), 0, 1)
    change = paired_change(base, tuned)
    t, b, r = tuned.mean(), base.mean(), np.corrcoef(base, tuned)[0, 1]
    lt, ut = mean_interval(tuned).low, mean_interval(tuned).high
    lb, ub = mean_interval(base).low, mean_interval(base).high
    assert change.value == pytest.approx(t - b)
    assert change.low == pytest.approx(t - b - math.sqrt((t - lt) ** 2 + (ub - b) ** 2 - 2 * r * (t - lt) * (ub - b)))
    assert change.high == pytest.approx(t - b + math.sqrt((ut - t) ** 2 + (b - lb) ** 2 - 2 * r * (ut - t) * (b - lb)))
    # the correlation is what pairing buys: far narrower than the two sides' own intervals suggest
    assert change.high - change.low < 0.5 * math.hypot(ut - lt, ub - lb)


def test_paired_change_sees_a_small_consistent_shift_that_separate_intervals_miss():
    rng = np.random.default_rng(11)
    base = rng.uniform(0.0, 1.0, 2 * LARGE_N)  # items differ a lot from one another
    tuned = np.clip(base + 0.02 + rng.normal(0.0, 0.01, 2 * LARGE_N), 0, 1)  # every item moves up a little
    assert mean_interval(base).high > mean_interval(tuned).low  # unpaired: the intervals overlap
    change = paired_change(base, tuned)
    assert change.value == pytest.approx(np.mean(tuned - base))
    assert detectable(change) and change.low < 0.02 < change.high
    assert not detectable(paired_change(base, np.clip(base + rng.normal(0.0, 0.01, 2 * LARGE_N), 0, 1)))


def exact_mcnemar(gained: int, lost: int) -> float:
    discordant = gained + lost
    tail = sum(math.comb(discordant, i) for i in range(min(gained, lost) + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def outcomes(both: int, gained: int, lost: int, neither: int) -> tuple[list[int], list[int]]:
    base = [1] * both + [0] * gained + [1] * lost + [0] * neither
    tuned = [1] * both + [1] * gained + [0] * lost + [0] * neither
    return base, tuned


def tango_statistic(delta, gained, lost, n):
    """Tango (1998), eq. 3-5, written out here: the restricted MLE of the lost-pair probability and the score."""
    a, b, c = 2 * n, -gained - lost + (2 * n - gained + lost) * delta, -lost * delta * (1 - delta)
    q21 = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return (gained - lost - n * delta) / math.sqrt(n * (2 * q21 + delta * (1 - delta)))


@pytest.mark.parametrize("gained,lost", [(3, 0), (10, 0), (8, 2), (12, 4), (5, 5), (1, 9), (0, 1), (30, 18)])
def test_paired_binary_change_is_tangos_score_interval_with_mcnemars_p(gained, lost):
    base, tuned = outcomes(40, gained, lost, 50)
    change = paired_binary_change(base, tuned)
    n = 90 + gained + lost
    assert change.n == n and change.value == pytest.approx((gained - lost) / n)
    assert change.p_value == pytest.approx(exact_mcnemar(gained, lost), rel=1e-9)
    # the ends are where Tango's statistic reaches -+1.96
    assert tango_statistic(change.low, gained, lost, n) == pytest.approx(Z, abs=1e-6)
    assert tango_statistic(change.high, gained, lost, n) == pytest.approx(-Z, abs=1e-6)
    assert change.low < change.value < change.high


def test_paired_binary_change_reaches_past_the_discordant_share():
    # 48 items, 9 gained and 2 lost: the old exact McNemar interval, conditional on the 11 discordant
    # pairs, could not pass 11 / 48 = 0.23 whatever the truth; Tango's can.
    change = paired_binary_change(*outcomes(20, 9, 2, 17))
    assert change.high > 11 / 48 and detectable(change)
    # no discordant pair: not a zero-width interval but +- z^2 / (n + z^2)
    none = paired_binary_change(*outcomes(7, 0, 0, 3))
    assert (none.value, none.p_value) == (0.0, 1.0)
    assert none.high == pytest.approx(Z * Z / (10 + Z * Z), abs=1e-9) and none.low == pytest.approx(-none.high)
    assert not detectable(none)
    everything = paired_binary_change(*outcomes(0, 20, 0, 0))
    assert everything.high == 1.0 and tango_statistic(everything.low, 20, 0, 20) == pytest.approx(Z, abs=1e-6)


def test_paired_binary_change_rejects_non_binary_values():
    with pytest.raises(ValueError, match="tuned holds values other than 0 and 1"):
        paired_binary_change([0, 1], [0, 0.5])


def test_combined_interval_is_the_range_over_the_box_of_t_intervals():
    rng = np.random.default_rng(3)
    lms, ss = rng.uniform(60, 100, 80), rng.uniform(50, 90, 80)
    estimate = combined_interval([lms, ss], icat, bounds=(0, 100))
    assert estimate.value == pytest.approx(icat(lms.mean(), ss.mean())) and estimate.n == 80
    q = stats.t.ppf(1 - 0.05 / 4, 79)  # Bonferroni over the two columns
    lms_low, lms_high = lms.mean() + np.array([-q, q]) * lms.std(ddof=1) / math.sqrt(80)
    ss_low, ss_high = ss.mean() + np.array([-q, q]) * ss.std(ddof=1) / math.sqrt(80)
    assert ss_low > 50  # ICAT falls with ss above 50 and rises with lms: its range sits at the corners
    assert estimate.low == pytest.approx(icat(lms_low, ss_high)) and estimate.high == pytest.approx(icat(lms_high, ss_low))
    # with the unbiased ss = 50 inside the box, the top is lms_high itself (the kink, where a bootstrap fails)
    centred = combined_interval([lms, ss - ss.mean() + 50], icat, bounds=(0, 100))
    assert centred.high == pytest.approx(lms_high, rel=1e-3)
    # a row with a NaN is one item left out; too few items, no interval
    assert combined_interval([[*lms, np.nan], [*ss, 70.0]], icat).n == 80
    few = combined_interval([lms[:MIN_COMBINED - 1], ss[:MIN_COMBINED - 1]], icat)
    assert math.isnan(few.low) and few.note.startswith("too few items")


def test_paired_combined_change_is_the_square_and_add_of_the_combined_intervals():
    rng = np.random.default_rng(3)
    lms, ss = rng.uniform(60, 100, 80), rng.uniform(50, 90, 80)
    moved = ss - 10 + rng.normal(0, 3, 80)  # every target about 10 points less stereotyped: ICAT rises
    change = paired_combined_change([lms, ss], [lms, moved], icat, bounds=(0, 100))
    base, tuned = combined_interval([lms, ss], icat, (0, 100)), combined_interval([lms, moved], icat, (0, 100))
    assert change.value == pytest.approx(tuned.value - base.value) and change.n == 80
    assert change.low > 0 and detectable(change)
    # the two sides' estimates, resampled together, are correlated: r is between the bounds r = 0 and r = 1
    def ends(r):
        a, b, c, d = tuned.value - tuned.low, base.high - base.value, tuned.high - tuned.value, base.value - base.low
        return (change.value - math.sqrt(a * a + b * b - 2 * r * a * b), change.value + math.sqrt(c * c + d * d - 2 * r * c * d))
    assert ends(0)[0] < change.low < ends(1)[0] and ends(1)[1] < change.high < ends(0)[1]
    assert paired_combined_change([lms, ss], [lms, moved], icat, seed=1) != change  # the seed draws the resamples
    few = paired_combined_change([lms[:MIN_COMBINED - 1], ss[:MIN_COMBINED - 1]],
                                 [lms[:MIN_COMBINED - 1], moved[:MIN_COMBINED - 1]], icat)
    assert math.isnan(few.high) and few.note.startswith("too few items") and not detectable(few)
    with pytest.raises(ValueError, match="base has 2 columns but tuned has 1"):
        paired_combined_change([lms, ss], [lms], icat)


def test_pooled_seeds_add_the_seeds_spread_to_their_item_intervals():
    seeds = [Estimate(0.10, 100, 0.04, 0.18), Estimate(0.16, 100, 0.10, 0.23), Estimate(0.13, 98, 0.06, 0.20)]
    pooled = pooled_seeds(seeds)
    # t over the three values, 2 degrees of freedom: 4.303 x sd 0.03 / sqrt 3
    spread = stats.t.ppf(0.975, 2) * 0.03 / math.sqrt(3)
    below, above = np.mean([0.06, 0.06, 0.07]), np.mean([0.08, 0.07, 0.07])
    assert (pooled.value, pooled.n) == (pytest.approx(0.13), 98)
    assert pooled.low == pytest.approx(0.13 - math.hypot(below, spread))
    assert pooled.high == pytest.approx(0.13 + math.hypot(above, spread))
    # at a stricter level both parts widen; within the quantity's range it is clipped
    strict = pooled_seeds(seeds, 1 - 0.05 / 4)
    assert strict.low < pooled.low and strict.high > pooled.high
    assert pooled_seeds(seeds, bounds=(0.0, 0.2)).high == 0.2
    # seeds that agree: the items' interval, which they share, is all that is left
    same = pooled_seeds([seeds[0]] * 4)
    assert (same.low, same.high) == pytest.approx((0.04, 0.18))
    # one seed is its own estimate; a seed without an interval leaves the row without one, saying why
    assert pooled_seeds(seeds[:1]) == seeds[0]
    none = pooled_seeds([seeds[0], Estimate(0.2, 3, math.nan, math.nan, "too few items for a reliable interval")])
    assert none.value == pytest.approx(0.15) and math.isnan(none.low)
    assert none.note == "seed 2 of 2: too few items for a reliable interval" and not detectable(none)
    assert pooled_seeds([]).n == 0


# ---- coverage ------------------------------------------------------------------------------------
# Synthetic data sets shaped like the metrics, with their true values worked out. Each shape draws
# (data sets, n) arrays.
def toxicity_scores(rng, shape, tail=0.03, high=None):
    """Per-prompt toxicity: most prompts near 0 (Beta(0.6, 25), mean 0.023), `tail` of them high
    (Beta(2, 1.5), mean 4/7)."""
    high = rng.random(shape) < tail if high is None else high
    return np.where(high, rng.beta(2, 1.5, shape), rng.beta(0.6, 25, shape))


TOXICITY_MEAN = 0.03 * 4 / 7 + 0.97 * 0.6 / 25.6
PRECISIONS = np.array([0.25, 1 / 3, 0.5, 2 / 3, 0.75])


def precisions(rng, shape, at_one=0.6):
    """Per-summary entity precision: `at_one` of the summaries at 1.0, a tenth at 0, the rest partial."""
    u = rng.random(shape)
    return np.where(u < at_one, 1.0, np.where(u < at_one + 0.1, 0.0, rng.choice(PRECISIONS, shape)))


def precision_mean(at_one=0.6):
    return at_one + (0.9 - at_one) * PRECISIONS.mean()


def ceiling_precisions(rng, shape):
    """A faithful model: 90% of summaries at 1.0, the rest at 0.5."""
    return np.where(rng.random(shape) < 0.9, 1.0, 0.5)


def similarities(rng, shape):
    """Cosine similarity of source and summary: unimodal inside the range, Beta(6, 3) (mean 2/3)."""
    return rng.beta(6, 3, shape)


def shares(p):
    return lambda rng, shape: (rng.random(shape) < p).astype(float)


def toxicity_pairs(rng, shape):
    """Base and tuned per-prompt toxicity, correlated per prompt: the tuned model keeps 60% of a
    high prompt's toxicity on average (Beta(6, 4)) and moves the low ones up or down by a factor of
    mean 1 (2 Beta(8, 8)); the true change is 3% x 4/7 x -0.4."""
    high = rng.random(shape) < 0.03
    base = toxicity_scores(rng, shape, high=high)
    return base, np.where(high, base * rng.beta(6, 4, shape), base * 2 * rng.beta(8, 8, shape))


TOXICITY_CHANGE = 0.03 * 4 / 7 * -0.4


def precision_pairs(rng, shape):
    """Base and tuned summary precision: 60% of summaries unchanged, the rest redrawn from a more
    faithful tuned model (75% at 1.0)."""
    base = precisions(rng, shape)
    return base, np.where(rng.random(shape) < 0.6, base, precisions(rng, shape, 0.75))


def binary_pairs(both, gained, lost):
    """0/1 outcomes on the same items: P(1 -> 1) = both, P(0 -> 1) = gained, P(1 -> 0) = lost."""
    def draw(rng, shape):
        u = rng.random(shape)
        base = ((u < both) | ((u >= both + gained) & (u < both + gained + lost))).astype(float)
        return base, (u < both + gained).astype(float)
    return draw


def stereoset_targets(ss, change=0.0):
    """Per target: lms and ss on 0..100 from its items (the quick suite's 1-3 items per target, the
    full one's 27), each target with its own preference; the tuned side moves every target's
    stereotype preference by `change` points (plus noise)."""
    def draw(rng, targets, per):
        items = rng.choice(per, targets) if isinstance(per, list) else np.full(targets, per)
        preference = rng.beta(ss / 100 * 20, (1 - ss / 100) * 20, targets)
        related = rng.beta(0.88 * 20, 0.12 * 20, targets)
        lms_base = 100 * rng.binomial(2 * items, related) / (2 * items)
        ss_base = 100 * rng.binomial(items, preference) / items
        moved = np.clip(preference + change / 100 + rng.normal(0, 0.03, targets), 0, 1)
        lms_tuned = 100 * rng.binomial(2 * items, related) / (2 * items)
        ss_tuned = 100 * rng.binomial(items, moved) / items
        return [lms_base, ss_base], [lms_tuned, ss_tuned]
    return draw


def stereoset_change(ss, change):
    """The true change of ICAT (lms 88 on both sides): from a million targets' moved preferences."""
    big = np.random.default_rng(9)
    moved = np.clip(big.beta(ss / 100 * 20, (1 - ss / 100) * 20, 1_000_000) + change / 100
                    + big.normal(0, 0.03, 1_000_000), 0, 1)
    return float(icat(88.0, 100 * moved.mean()) - icat(88.0, ss))


def normal_interval(values):
    """lm-eval's interval of a harness metric: value +- 1.96 x its stderr (sample sd / sqrt n)."""
    mean, se = values.mean(), values.std(ddof=1) / math.sqrt(len(values))
    return Estimate(mean, len(values), mean - Z * se, mean + Z * se)


QUICK_ICAT, FULL_ICAT = (55, [1, 1, 2, 2, 3]), (79, 27)
SUITE_SIZES = "quick: 24 prompts x 2 samples, 9-16 summaries, 100 CrowS pairs, 55 StereoSet targets; " \
              "standard: ~900 prompts, ~500 summaries; full: 3,000 prompts, 500 sources, 1,508 CrowS pairs, 79 targets"


def case(name, n, datasets, draw, truth, estimator):
    return pytest.param(n, datasets, draw, truth, estimator, id=f"{name}-n{n}")


def mean_case(name, n, draw, truth, bounds=(0.0, 1.0)):
    return case(f"mean-{name}", n, 1000, lambda rng, d: draw(rng, (d, n)), truth,
                lambda x: mean_interval(x, bounds))


def share_case(p, n):
    return case(f"share-p{p}", n, 1000, lambda rng, d: shares(p)(rng, (d, n)), p,
                lambda x: share_interval(int(x.sum()), len(x)))


def paired_case(name, n, draw, truth, estimator, datasets=1000):
    def drawn(rng, d):
        base, tuned = draw(rng, (d, n))
        return list(zip(base, tuned))
    return case(f"change-{name}", n, datasets, drawn, truth, lambda pair: estimator(*pair))


def icat_case(ss, size):
    n, per = size
    def drawn(rng, d):
        return [stereoset_targets(ss)(rng, n, per)[0] for _ in range(d)]
    return case(f"icat-ss{ss}", n, 1000, drawn, float(icat(88.0, ss)),
                lambda columns: combined_interval(columns, icat, bounds=(0, 100)))


def icat_change_case(ss, change, size):
    n, per = size
    def drawn(rng, d):
        return [stereoset_targets(ss, change)(rng, n, per) for _ in range(d)]
    return case(f"icat-change-ss{ss}{change:+}", n, 400, drawn, stereoset_change(ss, change),
                lambda pair: paired_combined_change(*pair, icat, (0, 100), resamples=999))


def normal_case(name, n, draw, truth):
    return case(f"lm-eval-{name}", n, 1000, lambda rng, d: draw(rng, (d, n)), truth, normal_interval)


CASES = [
    # per-prompt toxicity (skewed, bounded): quick, standard, full
    *(mean_case("toxicity", n, toxicity_scores, TOXICITY_MEAN) for n in (24, 900, 3000)),
    # per-summary precision with many at 1.0, and a model at the ceiling: quick and full summaries
    *(mean_case("precision", n, precisions, precision_mean()) for n in (9, 16, 500)),
    *(mean_case("ceiling", n, ceiling_precisions, 0.95) for n in (10, 16, 500)),
    *(mean_case("similarity", n, similarities, 2 / 3, (-1.0, 1.0)) for n in (16, 500)),
    # 0/1 items: rare events (toxicity probability, intelligibility flags), CrowS, TruthfulQA MC1
    share_case(0.02, 24), share_case(0.05, 24), share_case(0.05, 64), share_case(0.01, 100), share_case(0.6, 100),
    share_case(0.25, 817), share_case(0.6, 1508), share_case(0.02, 3000),
    # paired 0/1: the change the old interval missed half the time, CrowS, toxicity probability, none at all
    *(paired_case("binary-issue", n, binary_pairs(0.3, 0.13, 0.0), 0.13, paired_binary_change) for n in (24, 48)),
    paired_case("binary-mixed", 48, binary_pairs(0.25, 0.18, 0.05), 0.13, paired_binary_change),
    paired_case("binary-crows", 100, binary_pairs(0.52, 0.03, 0.08), -0.05, paired_binary_change),
    paired_case("binary-rare", 24, binary_pairs(0.04, 0.01, 0.06), -0.05, paired_binary_change),
    paired_case("binary-flags", 64, binary_pairs(0.03, 0.05, 0.02), 0.03, paired_binary_change),
    paired_case("binary-none", 3000, binary_pairs(0.2, 0.1, 0.1), 0.0, paired_binary_change),
    # paired bounded means: toxicity per prompt, precision per summary
    *(paired_case("toxicity", n, toxicity_pairs, TOXICITY_CHANGE, paired_change) for n in (24, 900, 3000)),
    *(paired_case("precision", n, precision_pairs, 0.4 * (precision_mean(0.75) - precision_mean()), paired_change)
      for n in (16, 500)),
    # StereoSet ICAT: an unbiased model (ss = 50, the kink), a biased one; its change across the kink
    *(icat_case(ss, size) for ss in (50, 60) for size in (QUICK_ICAT, FULL_ICAT)),
    icat_case(55, (MIN_COMBINED, 27)),
    *(icat_change_case(ss, change, size) for ss, change in ((53, -3), (60, -8)) for size in (QUICK_ICAT, FULL_ICAT)),
    icat_change_case(55, -5, (MIN_COMBINED, 27)),
    # lm-eval's own interval of a harness metric, at the harness's sizes
    normal_case("mc1", 817, shares(0.25), 0.25), normal_case("crows", 1508, shares(0.6), 0.6),
    normal_case("mc2", 817, lambda rng, shape: rng.beta(2, 3, shape), 0.4),
]


# Seeds pooled: S training seeds of one method, each evaluated on the same items against one base
# evaluation. A seed's true change varies around the method's (its effect z ~ N(0, 1), times the
# shape's spread); the items, shared, move every seed's estimate together. The method's true change
# is the mean of a seed's over z. The spread is set so that the seeds' true changes spread `ratio`
# times a seed's item standard error (sd of the per-item change / sqrt n).
class ToxicitySeeds:
    """Per-prompt toxicity: a seed raises every base score to its power gamma = 1.1 exp(spread z)
    (above 1: less toxic, below: more), then keeps a Beta(9, 1) share of it, per prompt and seed."""
    name, gamma = "toxicity", 1.1

    def draw(self, rng, n, spread, effects):
        base = toxicity_scores(rng, n)
        gammas = self.gamma * np.exp(spread * effects)
        return base, base[None, :] ** gammas[:, None] * rng.beta(9, 1, (len(effects), n))

    def level(self, spread, z):
        """A seed's true mean toxicity: 0.9 E[b ** gamma] over toxicity_scores' two Betas."""
        gamma = self.gamma * np.exp(spread * z)
        return 0.9 * (0.03 * special.beta(2 + gamma, 1.5) / special.beta(2, 1.5)
                      + 0.97 * special.beta(0.6 + gamma, 25) / special.beta(0.6, 25))

    def truth(self, spread, z):
        return self.level(spread, z) - TOXICITY_MEAN

    @staticmethod
    def change(base, tuned):
        return paired_change(base, tuned)


class BinarySeeds:
    """0/1 items (accuracy, CrowS): half right for the base model; the method's mean seed gains 15%
    of the items (0 -> 1) and loses 8% (1 -> 0), a seed gains spread z more and loses spread z
    less (clipped to what can flip). An item easy to flip is so for most seeds (the same uniform
    decides it in 80% of seeds)."""
    name, share, gained, lost = "binary", 0.5, 0.15, 0.08

    def rates(self, spread, z):
        return np.clip(self.gained + spread * z, 0, 1 - self.share), np.clip(self.lost - spread * z, 0, self.share)

    def draw(self, rng, n, spread, effects):
        base = rng.random(n) < self.share
        shared = np.broadcast_to(rng.random(n), (len(effects), n))
        u = np.where(rng.random((len(effects), n)) < 0.8, shared, rng.random((len(effects), n)))
        gained, lost = (r[:, None] for r in self.rates(spread, effects))
        tuned = np.where(base, u >= lost / self.share, u < gained / (1 - self.share))
        return base.astype(float), tuned.astype(float)

    def truth(self, spread, z):
        gained, lost = self.rates(spread, z)
        return gained - lost

    @staticmethod
    def change(base, tuned):
        return paired_binary_change(base, tuned)


NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(201)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def over_seeds(f):
    """E[f(z)], z ~ N(0, 1), by Gauss-Hermite quadrature (f works on arrays)."""
    return float(np.sum(WEIGHTS * f(NODES)))


def seed_spread(shape, n, ratio):
    """The shape's spread at which the seeds' true changes have sd `ratio` x a seed's item standard error at n."""
    from scipy import optimize

    if ratio == 0:
        return 0.0
    base, tuned = shape.draw(np.random.default_rng(1), 200_000, 0.0, np.zeros(1))
    target = ratio * float(np.std(tuned[0] - base)) / math.sqrt(n)

    def sd(spread):
        return math.sqrt(over_seeds(lambda z: shape.truth(spread, z) ** 2) - over_seeds(lambda z: shape.truth(spread, z)) ** 2)
    return float(optimize.brentq(lambda s: sd(s) - target, 1e-6, 5.0, xtol=1e-7))


def seeds_coverage(shape, n, seeds, ratio, level=False, datasets=1000):
    """(coverage, mean width, truth) of pooled_seeds over `seeds` seeds of the shape, spread `ratio`
    item standard errors apart; `level`: of the pooled tuned mean itself, not its change."""
    spread = seed_spread(shape, n, ratio)
    truth = over_seeds(lambda z: shape.level(spread, z) if level else shape.truth(spread, z))
    estimate = (lambda base, tuned: mean_interval(tuned)) if level else shape.change
    bounds = (0.0, 1.0) if level else (-1.0, 1.0)  # of a score on 0..1, of its change

    def drawn(rng, d):
        return [shape.draw(rng, n, spread, rng.standard_normal(seeds)) for _ in range(d)]
    held, width = coverage(n, datasets, drawn, truth,
                           lambda data: pooled_seeds([estimate(data[0], tuned) for tuned in data[1]], bounds=bounds))
    return held, width, truth


def seeds_param(shape, n, seeds, ratio, level=False):
    return pytest.param(shape, n, seeds, ratio, level,
                        id=f"seeds-{shape.name}{'-level' if level else ''}-n{n}-S{seeds}-ratio{ratio}")


SEED_SIZES = ((ToxicitySeeds(), (24, 600)), (BinarySeeds(), (48, 1000)))
SEED_GRID = [*(seeds_param(shape, n, seeds, ratio) for shape, sizes in SEED_SIZES for n in sizes
               for ratio in (0, 1, 3) for seeds in (2, 3, 5)),
             *(seeds_param(ToxicitySeeds(), n, 3, 3, level=True) for n in (24, 600))]
"""The table (python tests/test_intervals.py, docs/METHOD.md); SEED_CASES, the test, are its cases
where the estimator is most at risk: 2 and 5 seeds far apart (ratio 3), where the t part carries it;
5 seeds that agree (ratio 0), where only the item part holds the error of the items they share; the
0/1 items at 48, the smallest Tango intervals; the quick suite's 24 prompts, once (its bound-based
item intervals dominate: 1.000 throughout); the pooled tuned value itself, once."""
SEED_CASES = [p for p in SEED_GRID if p.id in {
    "seeds-toxicity-n24-S2-ratio3", "seeds-toxicity-n600-S2-ratio3", "seeds-toxicity-n600-S5-ratio0",
    "seeds-toxicity-n600-S5-ratio3", "seeds-binary-n48-S2-ratio3", "seeds-binary-n48-S5-ratio3",
    "seeds-toxicity-level-n600-S3-ratio3"}]


def coverage(n, datasets, draw, truth, estimator, seed=0):
    """(share of `datasets` data sets whose interval holds `truth`, mean width)."""
    rng = np.random.default_rng(seed)
    held, width = 0, 0.0
    for data in draw(rng, datasets):
        estimate = estimator(data)
        assert estimate.n == n and math.isfinite(estimate.low) and math.isfinite(estimate.high), estimate
        held += estimate.low <= truth <= estimate.high
        width += estimate.high - estimate.low
    return held / datasets, width / datasets


@pytest.mark.parametrize("n,datasets,draw,truth,estimator", CASES)
def test_nominal_95_percent_intervals_hold_the_truth_at_least_93_percent_of_the_time(n, datasets, draw, truth, estimator):
    """Every estimator the evaluation uses, on synthetic data shaped like its metrics, at the sizes
    the suites use (""" + SUITE_SIZES + """): the nominal 95% interval must hold the true value in
    at least 93% of 1,000 data sets (400 for the bootstrap). The 2 points below 95% are the
    simulation's own error: with 1,000 data sets its standard error at 95% is 0.7 points, so an
    estimator of true coverage 95% fails with probability 0.2% and one of 90% passes with
    probability 0.1%; with 400 data sets (standard error 1.1 points) the two are 3.4% and 2%. The
    data sets are drawn from a fixed seed, so the test gives the same answer every run.

    The estimators this replaced failed it (measured on this test's shapes and seed):
      - the exact McNemar interval of a paired 0/1 change, conditional on the discordant count m,
        never reaches past m / n: on a change of +0.13 made of gained items only ("+0.13 [+0.010,
        +0.13]") it held the truth in 44% of data sets at n = 48 and 38% at n = 24; 90% for
        binary-mixed at n = 48, 52% for binary-rare at n = 24;
      - the mean of items all alike was its own zero-width interval ("1.0 [1.0, 1.0]"), and BCa
        was little wider near the ceiling: 64% for the ceiling shape at n = 10;
      - BCa over per-prompt toxicity: 68% at n = 24; its paired change: 55% at n = 24;
      - BCa of StereoSet ICAT at the unbiased ss = 50: 80% over 55 targets, 83% over 79;
      - Wilson's interval of a rare share: 92.8% at p = 0.02, n = 24; 92.6% at p = 0.01, n = 100.
    """
    held, _ = coverage(n, datasets, draw, truth, estimator)
    assert held >= 0.93, f"coverage {held:.3f} at n = {n}"


@pytest.mark.parametrize("shape,n,seeds,ratio,level", SEED_CASES)
def test_seeds_pooled_hold_the_truth_at_least_93_percent_of_the_time(shape, n, seeds, ratio, level):
    """pooled_seeds over 2 and 5 seeds evaluated on the same items, their true changes spread 0 or 3
    times a seed's item standard error around the method's, per-prompt toxicity at the quick and
    standard suites' 24 and 600 prompts, 0/1 items at 48 (and the pooled tuned toxicity itself):
    at least 93% of 1,000 data sets (the full grid, SEED_GRID, in docs/METHOD.md: 0.946 to 1.000).

    The estimators this was chosen over failed it (measured on these shapes and seed with 400 data
    sets, in a simulation not kept here):
      - the two-level bootstrap (resample the seeds, then the items, the same for every seed):
        0.70 for 0/1 items at 48, 0.75 for toxicity at 24, 0.79 at 600, all at S = 2 with the seeds
        3 item errors apart; 0.80-0.89 at S = 3: resampling 2 or 3 values understates their spread;
        with each seed's items resampled on their own, 0.60-0.85;
      - Student's t over the per-seed changes alone (S - 1 degrees of freedom): 0.40 (toxicity at
        24), 0.50 (at 600), 0.51 (0/1 at 48) at S = 5 when the seeds agree, since the items every
        seed shares move them together;
      - the wider of that t interval and the seeds' mean item interval: 0.920 for 0/1 items at 48,
        S = 5, ratio 3.
    """
    held, _, _ = seeds_coverage(shape, n, seeds, ratio, level)
    assert held >= 0.93, f"coverage {held:.3f} at n = {n}, {seeds} seeds"


if __name__ == "__main__":  # the coverage table: python tests/test_intervals.py
    import sys

    for param in CASES:
        n, datasets, draw, truth, estimator = param.values
        held, width = coverage(n, datasets, draw, truth, estimator)
        print(f"{param.id:40s} truth {truth:+9.4f}  coverage {held:.3f}  mean width {width:.4f}", flush=True)
    for param in SEED_GRID:
        held, width, truth = seeds_coverage(*param.values)
        print(f"{param.id:40s} truth {truth:+9.4f}  coverage {held:.3f}  mean width {width:.4f}", flush=True)
    sys.exit(0)
