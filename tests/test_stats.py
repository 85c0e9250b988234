"""The statistics against independent computations (stdlib arithmetic, table values, brute force)."""

import math
import statistics

import pytest
from scipy import stats as sps

from lightning_opt import stats

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
