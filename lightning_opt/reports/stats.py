"""Statistics across seeds and trials: confidence intervals, Welch's t-test, Vargha-Delaney A12,
Holm's correction, the smallest detectable difference and tuning curves.

Everything comes from ``scipy.stats``: the confidence interval of a mean from ``ttest_1samp``, the
difference of two means with its interval and p-value from Welch's ``ttest_ind``, and the
effect size A12 = U / (n1 * n2) from ``mannwhitneyu`` (the probability that a run of arm A scores
higher than a run of arm B, ties counted half; Vargha & Delaney 2000, recommended for comparing
randomized algorithms by Arcuri & Briand 2011). The p-values of an experiment are corrected
together with Holm's step-down procedure (Holm 1979), valid under any dependence between tests.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8  # the power at which the smallest detectable difference is quoted
_GRID = 160  # quantiles per sample variance in Welch's power: 3e-4 relative error, 20 ms
BOOTSTRAP = 1000  # resamples behind a tuning curve's band; fixed seed, so reports reproduce
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
    p_value: float  # Welch's two-sided t-test, uncorrected
    a12: float  # P(run of A > run of B), ties half
    magnitude: str  # negligible | small | medium | large
    n_a: int = 0  # seeds behind each mean
    n_b: int = 0
    detectable: float = math.nan  # smallest |difference| found with POWER (nan: no spread)
    p_adjusted: float | None = None  # Holm-adjusted over the experiment's tests; None: alone
    #: The level ``detectable`` is at: ALPHA alone; after Holm, the level this test had to beat
    #: at its rank (alpha / (m - rank + 1)), the one its verdict used.
    detectable_level: float = ALPHA
    sd_a: float = math.nan  # the seeds' standard deviations (ddof 1), for the detectable
    sd_b: float = math.nan  # difference at another level

    @property
    def significant(self) -> bool:
        """At level ALPHA after the correction, once there is one (NaN p: undecided, not so)."""
        p = self.p_value if self.p_adjusted is None else self.p_adjusted
        return p < ALPHA

    @property
    def sign(self) -> int:
        """The conclusion: -1 (A lower), +1 (A higher) or 0 (no significant difference)."""
        return int(np.sign(self.difference)) if self.significant else 0

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


def detectable_difference(
    sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The smallest true difference of means that Welch's two-sided test at ``alpha`` finds with
    probability ``power``, for arms with these standard deviations and seed counts.

    Welch's test estimates both variances, so at few seeds it needs more than the noncentral-t
    (Student) or normal ``(z_{1-alpha/2} + z_{power}) * se`` answers (2.08 rather than 2.02 or
    1.77 standard deviations at 5 seeds per arm). Given the two sample variances, the test
    rejects when the observed difference (normal, mean delta, sd = se) exceeds its critical
    value, t_{1-alpha/2}(Welch-Satterthwaite df) * estimated se; the power is that chance
    averaged over the variances' scaled chi-square distributions (a product grid of their
    quantiles). NaN without spread or with fewer than 2 seeds in an arm.
    """
    if n_a < 2 or n_b < 2 or (sd_a == 0 and sd_b == 0):
        return math.nan
    quantiles = (np.arange(_GRID) + 0.5) / _GRID
    va = sd_a**2 / n_a * stats.chi2.ppf(quantiles, n_a - 1)[:, None] / (n_a - 1)
    vb = sd_b**2 / n_b * stats.chi2.ppf(quantiles, n_b - 1)[None, :] / (n_b - 1)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    reach = stats.t.ppf(1 - alpha / 2, df) * np.sqrt(va + vb)  # |difference| that rejects
    se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)

    def shortfall(delta: float) -> float:
        hits = stats.norm.sf((reach - delta) / se) + stats.norm.cdf((-reach - delta) / se)
        return float(hits.mean()) - power

    high = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se  # the normal answer
    while shortfall(high) < 0:  # Welch needs more: bracket the root
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12 * se))


def compare(
    metric: str, a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """Arm A against arm B: difference of means (Welch CI and p-value), A12 and the smallest
    difference the test detects at these seed counts."""
    x, y = _array(a), _array(b)
    a12 = float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic) / (len(x) * len(y))
    difference = float(x.mean() - y.mean())
    sizes = {"n_a": len(x), "n_b": len(y)}
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        # No spread to test against: equal means are not different; unequal ones are undecided.
        p = 1.0 if difference == 0 else math.nan
        return Difference(
            metric, difference, difference, difference, p, a12, magnitude(a12), **sizes
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(x, y, equal_var=False)
    ci = test.confidence_interval(confidence)
    sd_a, sd_b = float(x.std(ddof=1)), float(y.std(ddof=1))
    detectable = detectable_difference(sd_a, len(x), sd_b, len(y))
    return Difference(
        metric, difference, float(ci.low), float(ci.high), float(test.pvalue), a12,
        magnitude(a12), detectable=detectable, sd_a=sd_a, sd_b=sd_b, **sizes,
    )  # fmt: skip


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest of m p-values
    becomes max over j <= i of min(1, (m - j + 1) * p_(j)). Rejecting where the adjusted p is
    below alpha keeps the chance of any false positive at most alpha. NaN p-values (untestable)
    stay NaN and do not count towards m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    testable = np.flatnonzero(np.isfinite(p))
    order = testable[np.argsort(p[testable], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """The level each test had to beat in Holm's step-down at its rank: alpha / (m - rank + 1)
    (rank 1 the smallest p); NaN p-values get NaN and do not count towards m."""
    p = np.asarray(p_values, dtype=float)
    levels = np.full(p.shape, np.nan)
    testable = np.flatnonzero(np.isfinite(p))
    order = testable[np.argsort(p[testable], kind="stable")]
    levels[order] = alpha / (len(order) - np.arange(len(order)))
    return levels.tolist()


def adjust(differences: Sequence[Difference]) -> list[Difference]:
    """The differences with ``p_adjusted`` set: Holm over all of them, as one family; the
    detectable difference of one not found significant is at the level Holm held it to."""
    p_values = [d.p_value for d in differences]
    out = []
    for d, p, level in zip(differences, holm(p_values), holm_levels(p_values), strict=True):
        d = replace(d, p_adjusted=p)
        if not d.significant and math.isfinite(level) and math.isfinite(d.detectable):
            detectable = detectable_difference(d.sd_a, d.n_a, d.sd_b, d.n_b, alpha=level)
            d = replace(d, detectable=detectable, detectable_level=level)
        out.append(d)
    return out


def p_text(diff: Difference) -> str:
    """ "p = 0.00016, Holm-adjusted 0.0013" (the raw p alone before any correction)."""
    p = f"p = {diff.p_value:.2g}"
    return p if diff.p_adjusted is None else f"{p}, Holm-adjusted {diff.p_adjusted:.2g}"


def _seeds(diff: Difference) -> str:
    n = diff.n_a if diff.n_a == diff.n_b else f"{diff.n_a} and {diff.n_b}"
    return f"{n} seeds"


def verdict(diff: Difference, name_a: str, name_b: str, lower_is_better: bool = True) -> str:
    """One plain-language sentence; says "no significant difference" when that is the truth,
    and then how large a difference the seeds could have shown."""
    what = diff.metric
    detail = (
        f"{name_a} - {name_b} = {diff.difference:+.4g} (95% CI [{diff.low:+.4g}, {diff.high:+.4g}]), "
        f"{p_text(diff)}, A12 = {diff.a12:.2f} ({diff.magnitude})"
    )
    if not diff.significant:
        power = ""
        if math.isfinite(diff.detectable):
            level = (
                "" if diff.p_adjusted is None else f" at the Holm level {diff.detectable_level:.2g}"
            )
            power = (
                f" (with {_seeds(diff)} the smallest difference this test detects with "
                f"{POWER:.0%} power{level} is {diff.detectable:.2g})"
            )
        return (
            f"No significant difference in {what} between {name_a} and {name_b}: {detail}{power}."
        )
    a_higher = diff.difference > 0
    better, worse = (name_b, name_a) if a_higher == lower_is_better else (name_a, name_b)
    direction = "lower" if lower_is_better else "higher"
    return f"{better} has a significantly {direction} {what} than {worse}: {detail}."


def expected_best(values: Sequence[float], n: int) -> float:
    """The expected minimum of ``n`` trials drawn without replacement from ``values``, unbiased
    (Tang et al. 2020, "Showing your work doesn't always work").

    Sorted ascending v_1 <= ... <= v_N, the minimum of a random n-subset is v_i exactly when the
    subset holds v_i and its other n - 1 members come from the N - i values after it:
    P = C(N - i, n - 1) / C(N, n), so E[min] = sum_i v_i C(N - i, n - 1) / C(N, n).
    """
    return float(np.sort(_array(values)) @ _weights(len(values), n))


def _weights(size: int, n: int) -> np.ndarray:
    if not 1 <= n <= size:
        raise ValueError(f"n must be between 1 and the number of values ({size}), got {n}")
    total = math.comb(size, n)
    return np.array([math.comb(size - i, n - 1) / total for i in range(1, size + 1)])


def tuning_curve(
    values: Sequence[float], resamples: int = BOOTSTRAP, band: tuple[float, float] = (5, 95),
    seed: int = 0,
) -> dict[str, list[float]]:  # fmt: skip
    """The expected best objective after n = 1..N trials, with a bootstrap band: the same
    estimator on ``resamples`` resamples (with replacement) of the trials, its ``band``
    percentiles. Lower is better; pass negated values for an objective to maximize."""
    data = _array(values)
    weights = np.stack([_weights(len(data), n) for n in range(1, len(data) + 1)])  # (n, i)
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    boot = samples @ weights.T  # (resample, n)
    low, high = np.percentile(boot, band, axis=0)
    return {
        "n": list(range(1, len(data) + 1)),
        "expected_best": (weights @ np.sort(data)).tolist(),
        "low": low.tolist(),
        "high": high.tolist(),
    }
