"""The statistics against independent computations (stdlib arithmetic, table values, brute force)."""

import itertools
import math
import random
import statistics
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps

from lightning_opt.reports import stats

A = [1.02, 0.98, 1.10, 1.05, 0.95]
B = [1.20, 1.31, 1.18, 1.25, 1.40]
T_975_DF4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom (tables)


def test_mean_ci_matches_the_textbook_interval():
    ci = stats.mean_ci(A)
    half = T_975_DF4 * statistics.stdev(A) / math.sqrt(len(A))
    assert ci.mean == pytest.approx(statistics.fmean(A))
    assert (ci.low, ci.high) == pytest.approx((ci.mean - half, ci.mean + half), rel=1e-12)
    assert ci.n == 5


def test_mean_ci_without_spread_is_the_mean():
    assert stats.mean_ci([2.0]).as_dict() == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 1}
    assert stats.mean_ci([3.0, 3.0, 3.0]).low == 3.0


def test_welch_difference_matches_a_hand_computation():
    va, vb = statistics.variance(A) / len(A), statistics.variance(B) / len(B)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(A) - 1) + vb**2 / (len(B) - 1))  # Welch-Satterthwaite
    diff = statistics.fmean(A) - statistics.fmean(B)
    t = diff / se
    d = stats.compare("loss", A, B)
    assert d.difference == pytest.approx(diff, rel=1e-12)
    assert d.p_value == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)
    half = sps.t.ppf(0.975, df) * se
    assert (d.low, d.high) == pytest.approx((diff - half, diff + half), rel=1e-9)
    assert d.significant and d.p_value < 0.01


def test_a12_is_the_share_of_pairs_where_a_is_higher():
    a, b = [1, 2, 3, 3], [3, 4, 0]
    pairs = [(x > y) + 0.5 * (x == y) for x in a for y in b]
    assert stats.compare("m", a, b).a12 == pytest.approx(sum(pairs) / len(pairs))
    assert stats.compare("loss", A, B).a12 == 0.0  # every A run below every B run
    assert stats.compare("loss", A, B).magnitude == "large"


@pytest.mark.parametrize(
    ("a12", "label"), [(0.5, "negligible"), (0.44, "small"), (0.65, "medium"), (0.1, "large")]
)
def test_magnitude_thresholds(a12, label):
    assert stats.magnitude(a12) == label


def test_verdicts_say_no_significant_difference_when_that_is_the_truth():
    same = stats.compare("test loss", [1.0, 1.2, 0.9, 1.1], [1.05, 1.15, 0.95, 1.0])
    assert not same.significant
    assert stats.verdict(same, "gnw", "adam").startswith(
        "No significant difference in test loss between gnw and adam"
    )
    better = stats.compare("test loss", A, B)
    assert stats.verdict(better, "gnw", "adam").startswith(
        "gnw has a significantly lower test loss"
    )
    acc = stats.compare("test accuracy", A, B)
    assert stats.verdict(acc, "gnw", "adam", lower_is_better=False).startswith(
        "adam has a significantly higher test accuracy"
    )


def test_identical_runs_are_not_different():
    d = stats.compare("loss", [1.0, 1.0], [1.0, 1.0])
    assert d.difference == 0 and d.p_value == 1.0 and not d.significant


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="finite numbers"):
        stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        stats.compare("m", [], [1.0])


# -- Holm's correction ---------------------------------------------------------------------------


def _holm_rejects(p_values, alpha):
    """Holm's step-down test as defined: walk the sorted p-values, reject while
    p_(j) <= alpha / (m - j + 1), stop at the first that is not."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected, m = set(), len(p_values)
    for j, i in enumerate(order):
        if p_values[i] > alpha / (m - j):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_values_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 -> max(0.04, 0.06)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    nan = stats.holm([0.01, float("nan"), 0.02])  # untestable: NaN, and not counted in m
    assert math.isnan(nan[1]) and nan[0] == pytest.approx(0.02) and nan[2] == pytest.approx(0.02)
    assert stats.holm([0.9, 0.2]) == pytest.approx([0.9, 0.4]) and stats.holm([0.6, 0.7, 0.8]) == [
        1.0,
        1.0,
        1.0,
    ]


def test_holm_adjusted_p_values_reject_what_the_step_down_test_rejects():
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 12))]
        adjusted = stats.holm(p)
        for alpha in (0.01, 0.05, 0.1, 0.2):
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == _holm_rejects(p, alpha)


def test_significance_reads_the_adjusted_p_and_the_verdict_shows_both():
    d = stats.compare("test loss", A, B)  # p ~ 0.001
    assert d.p_adjusted is None and d.significant
    family = stats.adjust([d] + [stats.compare("m", [1.0, 1.2, 0.9], [1.1, 1.0, 1.3])] * 7)
    assert family[0].p_adjusted == pytest.approx(8 * d.p_value) and family[0].significant
    assert f"p = {d.p_value:.2g}, Holm-adjusted {8 * d.p_value:.2g}" in stats.verdict(
        family[0], "gnw", "adam"
    )
    corrected = replace(d, p_value=0.01, p_adjusted=0.08)
    assert not corrected.significant and corrected.sign == 0
    assert stats.verdict(corrected, "gnw", "adam").startswith("No significant difference")
    assert corrected.as_dict()["significant"] is False and corrected.as_dict()["p_adjusted"] == 0.08


# -- the smallest detectable difference ----------------------------------------------------------

Z_975, Z_80 = 1.959963984540054, 0.8416212335729143  # standard normal quantiles (tables)


def test_detectable_difference_tends_to_the_normal_closed_form():
    sd_a, n_a, sd_b, n_b = 0.03, 4000, 0.05, 3000
    closed = (Z_975 + Z_80) * math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)
    assert stats.detectable_difference(sd_a, n_a, sd_b, n_b) == pytest.approx(closed, rel=1e-3)


@pytest.mark.parametrize(
    ("sd_a", "n_a", "sd_b", "n_b"), [(1.0, 5, 1.0, 5), (1.0, 3, 0.2, 8), (0.02, 10, 0.05, 4)]
)
def test_detectable_difference_has_80_percent_power_in_simulated_welch_tests(sd_a, n_a, sd_b, n_b):
    delta = stats.detectable_difference(sd_a, n_a, sd_b, n_b)
    rng = np.random.default_rng(0)
    a, b = rng.normal(delta, sd_a, (100_000, n_a)), rng.normal(0.0, sd_b, (100_000, n_b))
    power = (sps.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean()
    assert power == pytest.approx(0.8, abs=0.006)  # 4 binomial standard errors


def test_welch_needs_more_than_students_known_value():
    """Student's t-test with 5 runs per group finds d = 2.02 standard deviations with 80% power
    (G*Power; Cohen's tables); Welch's, which estimates two variances, needs a little more."""
    assert 2.03 < stats.detectable_difference(1.0, 5, 1.0, 5) < 2.2


def test_no_significant_difference_says_what_the_seeds_could_detect():
    x, y = [1.0, 1.2, 0.9, 1.1], [1.05, 1.15, 0.95, 1.0]
    d = stats.compare("test loss", x, y)
    expected = stats.detectable_difference(statistics.stdev(x), 4, statistics.stdev(y), 4)
    assert d.detectable == pytest.approx(expected) and (d.n_a, d.n_b) == (4, 4)
    assert stats.verdict(d, "gnw", "adam").endswith(
        f"(with 4 seeds the smallest difference this test detects with 80% power is "
        f"{expected:.2g})."
    )
    uneven = stats.compare("test loss", x, y[:3])
    assert "with 4 and 3 seeds" in stats.verdict(uneven, "gnw", "adam")
    assert math.isnan(stats.compare("m", [1.0, 1.0], [1.0, 1.0]).detectable)


# -- tuning curves -------------------------------------------------------------------------------


def test_expected_best_is_the_mean_minimum_over_all_subsets():
    values = [0.7, 0.3, 0.9, 0.3, 0.5, 1.2, 0.8]  # a tie included
    for n in range(1, len(values) + 1):
        minima = [min(c) for c in itertools.combinations(values, n)]
        assert stats.expected_best(values, n) == pytest.approx(statistics.fmean(minima), rel=1e-12)
    with pytest.raises(ValueError, match="n must be between 1 and the number of values"):
        stats.expected_best(values, 0)


def test_tuning_curve_with_a_reproducible_bootstrap_band():
    values = [1.3, 1.1, 1.6, 1.25, 1.4]
    curve = stats.tuning_curve(values)
    assert curve["n"] == [1, 2, 3, 4, 5]
    assert curve["expected_best"][0] == pytest.approx(statistics.fmean(values))
    assert curve["expected_best"][-1] == pytest.approx(min(values))
    assert all(x >= y for x, y in itertools.pairwise(curve["expected_best"]))  # more is better
    assert all(lo <= hi for lo, hi in zip(curve["low"], curve["high"], strict=True))
    assert curve["low"][0] <= curve["expected_best"][0] <= curve["high"][0]
    assert stats.tuning_curve(values) == curve  # a fixed seed: the same band every time
    assert stats.tuning_curve(values, seed=1) != curve
    flat = stats.tuning_curve([2.0, 2.0, 2.0])
    assert flat["low"] == flat["high"] == flat["expected_best"] == pytest.approx([2.0] * 3)
