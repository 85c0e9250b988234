"""Statistics across seeds: confidence intervals, Welch's t-test, Vargha-Delaney A12.

Everything comes from ``scipy.stats``: the confidence interval of a mean from ``ttest_1samp``, the
difference of two means with its interval and p-value from Welch's ``ttest_ind``, and the
effect size A12 = U / (n1 * n2) from ``mannwhitneyu`` (the probability that a run of arm A scores
higher than a run of arm B, ties counted half; Vargha & Delaney 2000, recommended for comparing
randomized algorithms by Arcuri & Briand 2011).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
# Vargha & Delaney's thresholds on |A12 - 0.5|: negligible < 0.06 <= small < 0.14 <= medium < 0.21 <= large
_MAGNITUDES = ((0.06, "negligible"), (0.14, "small"), (0.21, "medium"), (math.inf, "large"))


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds with its confidence interval (t distribution)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """Arm A minus arm B on one metric."""

    metric: str
    difference: float  # mean(A) - mean(B)
    low: float  # confidence interval of the difference (Welch)
    high: float
    p_value: float  # Welch's two-sided t-test
    a12: float  # P(run of A > run of B), ties half
    magnitude: str  # negligible | small | medium | large

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def _array(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or len(data) == 0 or not np.isfinite(data).all():
        raise ValueError(f"need a non-empty list of finite numbers, got {list(values)}")
    return data


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and its t-based confidence interval; the interval is the mean itself for one value
    or for identical values (no spread to estimate)."""
    data = _array(values)
    mean = float(data.mean())
    if len(data) < 2 or np.ptp(data) == 0:
        return MeanCI(mean, mean, mean, len(data))
    ci = stats.ttest_1samp(data, 0.0).confidence_interval(confidence)
    return MeanCI(mean, float(ci.low), float(ci.high), len(data))


def magnitude(a12: float) -> str:
    distance = abs(a12 - 0.5)
    return next(label for limit, label in _MAGNITUDES if distance < limit)


def compare(
    metric: str, a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """Arm A against arm B: difference of means (Welch CI and p-value) and A12."""
    x, y = _array(a), _array(b)
    a12 = float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic) / (len(x) * len(y))
    difference = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        # No spread to test against: equal means are not different; unequal ones are undecided.
        p = 1.0 if difference == 0 else math.nan
        return Difference(metric, difference, difference, difference, p, a12, magnitude(a12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(x, y, equal_var=False)
    ci = test.confidence_interval(confidence)
    return Difference(
        metric, difference, float(ci.low), float(ci.high), float(test.pvalue), a12, magnitude(a12)
    )


def verdict(diff: Difference, name_a: str, name_b: str, lower_is_better: bool = True) -> str:
    """One plain-language sentence; says "no significant difference" when that is the truth."""
    what = diff.metric
    detail = (
        f"{name_a} - {name_b} = {diff.difference:+.4g} (95% CI [{diff.low:+.4g}, {diff.high:+.4g}]), "
        f"p = {diff.p_value:.3g}, A12 = {diff.a12:.2f} ({diff.magnitude})"
    )
    if not diff.significant:
        return f"No significant difference in {what} between {name_a} and {name_b}: {detail}."
    a_higher = diff.difference > 0
    better, worse = (name_b, name_a) if a_higher == lower_is_better else (name_a, name_b)
    direction = "lower" if lower_is_better else "higher"
    return f"{better} has a significantly {direction} {what} than {worse}: {detail}."
