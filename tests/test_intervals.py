"""cdb.eval.intervals: intervals and paired changes, checked against formulas worked out here."""

import math
import warnings
from statistics import NormalDist

import numpy as np
import pytest

from cdb.eval.intervals import (Estimate, combined_interval, detectable, mean_interval, paired_binary_change, paired_change,
                       paired_combined_change, share_interval)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("successes,n", [(0, 10), (3, 10), (66, 100), (100, 100), (1, 1)])
def test_share_interval_is_wilson(successes, n):
    estimate = share_interval(successes, n)
    low, high = wilson(successes, n)
    assert estimate.value == successes / n and estimate.n == n
    assert estimate.low == pytest.approx(low, abs=1e-12)
    assert estimate.high == pytest.approx(high, abs=1e-12)


def test_share_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes=11"):
        share_interval(11, 10)
    assert math.isnan(share_interval(0, 0).value)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(7)
    widths = []
    for n in (20, 200, 2000):
        values = rng.exponential(1.0, n)
        estimate = mean_interval(values)
        assert estimate.n == n and estimate.value == pytest.approx(values.mean())
        assert estimate.low < estimate.value < estimate.high
        widths.append(estimate.high - estimate.low)
    assert widths[0] > widths[1] > widths[2]
    # Width shrinks like 1/sqrt(n): 10x the items, about a third of the width.
    assert widths[2] / widths[1] == pytest.approx(1 / math.sqrt(10), rel=0.35)


def test_bootstrap_is_deterministic_given_the_seed():
    values = np.random.default_rng(3).normal(size=50)
    assert mean_interval(values, seed=1) == mean_interval(values, seed=1)
    assert mean_interval(values, seed=1) != mean_interval(values, seed=2)


def test_degenerate_inputs_give_no_warning_and_no_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = mean_interval([])
        assert empty.n == 0 and all(math.isnan(x) for x in (empty.value, empty.low, empty.high))
        assert mean_interval([0.25]) == Estimate(0.25, 1, 0.25, 0.25)
        assert mean_interval([2.0, 2.0, 2.0]) == Estimate(2.0, 3, 2.0, 2.0)
        # Only NaN: nothing measured.
        assert mean_interval([math.nan, math.nan]).n == 0
        # Skewed few-valued data where BCa is undefined still gives a finite interval.
        rare = mean_interval([0.0] * 199 + [1.0])
        assert 0 <= rare.low <= rare.value < rare.high
        assert paired_change([1.0, 2.0], [1.5, 2.5]).low == 0.5
        assert not detectable(paired_change([], []))
        none = paired_binary_change([], [])
        assert none.n == 0 and math.isnan(none.value) and not detectable(none)


def test_nan_items_are_left_out_and_counted_out():
    assert mean_interval([1.0, math.nan, 3.0]).n == 2
    change = paired_change([1.0, math.nan, 3.0, 4.0], [2.0, 5.0, math.nan, 5.0])
    assert change.n == 2 and change.value == 1.0


def test_paired_change_needs_the_same_items():
    with pytest.raises(ValueError, match=r"base has 3 items but tuned has 2"):
        paired_change([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"base has 1 items but tuned has 2"):
        paired_binary_change([1], [1, 0])


def test_paired_change_sees_a_small_consistent_shift_that_separate_intervals_miss():
    rng = np.random.default_rng(11)
    base = rng.normal(0.0, 10.0, 200)  # items differ a lot from one another
    tuned = base + 0.5 + rng.normal(0.0, 0.2, 200)  # every item moves up a little
    base_estimate, tuned_estimate = mean_interval(base), mean_interval(tuned)
    assert base_estimate.high > tuned_estimate.low  # unpaired: the intervals overlap
    change = paired_change(base, tuned)
    assert change.value == pytest.approx(np.mean(tuned - base))
    assert change.low < 0.5 < change.high
    assert detectable(change) and change.low > 0.4
    # No shift at all: the paired interval contains 0.
    assert not detectable(paired_change(base, base + rng.normal(0.0, 0.2, 200)))


def exact_mcnemar(gained: int, lost: int) -> float:
    discordant = gained + lost
    tail = sum(math.comb(discordant, i) for i in range(min(gained, lost) + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def outcomes(both: int, gained: int, lost: int, neither: int) -> tuple[list[int], list[int]]:
    base = [1] * both + [0] * gained + [1] * lost + [0] * neither
    tuned = [1] * both + [1] * gained + [0] * lost + [0] * neither
    return base, tuned


@pytest.mark.parametrize("gained,lost", [(3, 0), (10, 0), (8, 2), (12, 4), (5, 5), (1, 9), (0, 1), (30, 18)])
def test_paired_binary_change_is_exact_mcnemar(gained, lost):
    base, tuned = outcomes(40, gained, lost, 50)
    change = paired_binary_change(base, tuned)
    n = 90 + gained + lost
    assert change.n == n
    assert change.value == pytest.approx((gained - lost) / n)
    assert change.p_value == pytest.approx(exact_mcnemar(gained, lost), rel=1e-9)
    assert change.low <= change.value <= change.high
    # The interval and the test agree on whether there is a change.
    assert detectable(change) == (change.p_value < 0.05)


def test_paired_binary_change_without_discordant_pairs():
    change = paired_binary_change(*outcomes(7, 0, 0, 3))
    assert (change.value, change.low, change.high, change.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not detectable(change)


def test_paired_binary_change_rejects_non_binary_values():
    with pytest.raises(ValueError, match="tuned holds values other than 0 and 1"):
        paired_binary_change([0, 1], [0, 0.5])


def _icat(lms, ss):
    return lms * np.minimum(ss, 100.0 - ss) / 50.0


def test_combined_interval_of_means_and_its_paired_change():
    rng = np.random.default_rng(3)
    lms = rng.uniform(60, 100, 80)
    ss = rng.uniform(50, 90, 80)
    estimate = combined_interval([lms, ss], _icat)
    assert estimate.value == pytest.approx(_icat(lms.mean(), ss.mean())) and estimate.n == 80
    assert estimate.low < estimate.value < estimate.high
    # a row with a NaN is one item left out
    assert combined_interval([[*lms, np.nan], [*ss, 70.0]], _icat).n == 80
    # the same items twice: a change of exactly 0, so nothing detectable
    same = paired_combined_change([lms, ss], [lms, ss], _icat)
    assert (same.value, same.low, same.high, same.n) == (0.0, 0.0, 0.0, 80) and not detectable(same)
    # every target 10 points less stereotyped (ss nearer 50): ICAT rises by about lms * 10 / 50 on average
    shifted = paired_combined_change([lms, ss], [lms, ss - 10], _icat)
    assert shifted.value == pytest.approx(_icat(lms.mean(), ss.mean() - 10) - estimate.value)
    assert shifted.low > 0 and detectable(shifted)
    with pytest.raises(ValueError, match="base has 2 columns but tuned has 1"):
        paired_combined_change([lms, ss], [lms], _icat)
