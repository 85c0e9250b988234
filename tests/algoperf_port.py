"""A numpy port of MLCommons AlgoPerf's scoring math, to check ``lightning_opt.benchmark.scoring``.

Ported from ``mlcommons/algorithmic-efficiency``:

- ``scoring/performance_profile.py``, the version with studies (``NUM_BASE_WORKLOADS = 8``,
  ``NUM_STUDIES = 5``, ``get_workloads_time_to_target``, the 4x cut-off,
  ``rho / NUM_BASE_WORKLOADS``) as stored in the reference index (its commit id was not recorded
  there; the file's listing names ``c668c1cee4a81a6b362dadb8d9d8585f6ed1a24a``, an older version
  without studies, where a workload counted only if >= 3 of 5 trials reached it), cross-read with
  ``mlcommons/submissions_algorithms@05f7967299fc6ee24e92a31f4502bf3d2dac47c8``
  ``scoring/performance_profile.py`` (same math; ``NUM_STUDIES = 3``, ``rho`` divides by
  ``config.num_base_workloads == len(base_workloads)``, ``np.trapezoid``);
- ``scoring/score_submissions.py`` at ``34ffc00eb4acee02eb7de6f80510cbf0794047e8``: the call
  ``compute_performance_profiles(..., min_tau=1.0, max_tau=4.0, num_points=100, scale='linear')``
  and its own ``compute_leaderboard_score(df, normalize=True)`` (``np.trapz`` over the tau columns,
  divided by ``max(tau) - min(tau)``).

Kept (the math, line for line; quoted source lines in each docstring):

1. per study, ``get_best_trial_index``: the trial whose *first eval index* reaching the target is
   smallest (``index_reached.idxmin()``), its time at that index; ``inf`` if no trial reaches it;
2. per workload, ``np.median`` over the studies' values (``inf`` counted as such);
3. ``best = df.min(axis=0)`` (NaN skipped), times ``> 4 * best`` set to ``inf``;
4. ``df.update(df.div(df.min(axis=0), axis=1))``: divided by the fastest, except where the quotient
   is NaN (``inf / inf``: nobody reached it; ``0 / 0``), which ``update`` leaves as it was;
5. ``points = np.linspace(min_tau, max_tau, num_points)`` (or ``np.logspace`` for ``scale='log'``,
   columns then ``log10(points)``); ``max_tau=None``: the largest finite ratio;
6. ``rho(r, tau) = (r <= tau).sum(axis=1) / NUM_BASE_WORKLOADS`` (a constant, not the number of
   workloads present);
7. the score: ``np.trapz(rho, x=points)``, divided by ``points.max() - points.min()``.

Dropped: pandas, file I/O, logging, plots, the strict-mode count checks, held-out workload variants
(the variant filters leave base workloads as they are when there are no variants),
``reference_submission_tag`` and the framework-suffix renaming.

The study rule from per-trial *times* (``study_time_to_target``: the fastest reaching trial) is
the abstraction of (1) for trials whose eval times rise together with the eval index on a common
schedule; ``best_trial_index`` keeps (1) exactly on eval curves.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np

#: ``NUM_BASE_WORKLOADS = 8`` in ``scoring/performance_profile.py``: ``rho``'s denominator.
NUM_BASE_WORKLOADS = 8
NUM_TRIALS = 5
#: 5 in mlcommons/algorithmic-efficiency, 3 in mlcommons/submissions_algorithms (only checked
#: there, in strict mode; the median takes however many studies there are).
NUM_STUDIES = 5
#: ``x > 4 * best_scores`` in ``compute_performance_profiles``: hard-coded, not ``max_tau``.
CUTOFF = 4.0
#: ``score_submissions.py``'s call: ``min_tau=1.0, max_tau=4.0, num_points=100``.
MIN_TAU, MAX_TAU, NUM_POINTS = 1.0, 4.0, 100

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # np.trapz before numpy 2.0


def best_trial_index(
    metrics: Sequence[Sequence[float]], target: float, minimize: bool = True
) -> tuple[int, int]:
    """``get_best_trial_index``: ``(trial, eval index)`` of the trial that reaches ``target``
    at the smallest eval index (the first such trial on a tie), ``(-1, -1)`` if none does.

    Source::

        op = operator.le if is_minimized else operator.ge
        validation_target_reached = validation_series.apply(lambda x: op(x, validation_target))
        target_reached = target_reached[target_reached.apply(np.any)]
        if len(target_reached) == 0: return -1, -1
        index_reached = target_reached.apply(np.argmax)
        trial = index_reached.idxmin()
        return trial, index_reached[trial]
    """
    op = operator.le if minimize else operator.ge
    reached = {t: op(np.asarray(m, dtype=float), target) for t, m in enumerate(metrics)}
    reached = {t: r for t, r in reached.items() if np.any(r)}
    if not reached:
        return -1, -1
    index_reached = {t: int(np.argmax(r)) for t, r in reached.items()}
    trial = min(index_reached, key=index_reached.__getitem__)  # idxmin: first on a tie
    return trial, index_reached[trial]


def study_time_to_target_from_evals(
    eval_times: Sequence[Sequence[float]],
    metrics: Sequence[Sequence[float]],
    target: float,
    minimize: bool = True,
) -> float:
    """One study's value, exactly as ``get_workloads_time_to_target`` takes it::

    trial_idx, time_idx = get_best_trial_index(group, validation_metric, validation_target)
    if time_idx > -1: time_val = group[time_col].loc[trial_idx][time_idx]
    else: time_val = float('inf')
    """
    trial, index = best_trial_index(metrics, target, minimize)
    return float(eval_times[trial][index]) if index > -1 else float("inf")


def study_time_to_target(trial_times: Sequence[float]) -> float:
    """One study's value from its trials' times to target (``inf``: the trial missed): the
    fastest trial that reached the target, ``inf`` if none did. (1) above, for trials on a common
    eval schedule, where the smallest eval index is the smallest time."""
    times = np.asarray(trial_times, dtype=float)
    return float(times.min()) if times.size else float("inf")


def workload_time_to_target(study_trial_times: Sequence[Sequence[float]]) -> float:
    """A submission's time on a workload: ``np.median(time_vals_per_study)`` (source line
    ``time_col: np.median(time_vals_per_study)``)."""
    return float(np.median([study_time_to_target(t) for t in study_trial_times]))


def times_to_target(
    per_study: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
) -> tuple[list[str], list[str], np.ndarray]:
    """``(submissions, workloads, times)``: ``times[s, w]`` per ``workload_time_to_target``;
    NaN where a submission has no runs on a workload (as ``pd.concat`` of the pivots leaves it).
    ``per_study[submission][workload][study][trial]``: a trial's time to target."""
    subs = list(per_study)
    wls = sorted({w for per in per_study.values() for w in per})  # pivot: columns sorted
    times = np.full((len(subs), len(wls)), np.nan)
    for i, s in enumerate(subs):
        for j, w in enumerate(wls):
            if w in per_study[s]:
                times[i, j] = workload_time_to_target(per_study[s][w])
    return subs, wls, times


def performance_ratios(times: np.ndarray, cutoff: float | None = CUTOFF) -> np.ndarray:
    """Steps 3 and 4 on a ``(submissions, workloads)`` array of times. Source::

        best_scores = df.min(axis=0)
        df[df.apply(lambda x: x > 4 * best_scores, axis=1)] = np.inf
        ...
        df.update(df.div(df.min(axis=0), axis=1))

    ``cutoff=None`` skips the 4x line (the source before it was added), for comparisons only.
    ``DataFrame.min`` skips NaN: ``np.fmin.reduce``. ``DataFrame.update`` takes only the non-NaN
    entries of the quotient: NaN ones keep the time they had.
    """
    df = np.array(times, dtype=float)
    if cutoff is not None:
        best_scores = np.fmin.reduce(df, axis=0)
        df[df > cutoff * best_scores] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient = df / np.fmin.reduce(df, axis=0)
    return np.where(np.isnan(quotient), df, quotient)


def tau_points(
    ratios: np.ndarray,
    min_tau: float = MIN_TAU,
    max_tau: float | None = MAX_TAU,
    num_points: int = NUM_POINTS,
    scale: str = "linear",
) -> np.ndarray:
    """The tau grid. Source::

    if max_tau is None:
      max_tau = df.replace(float('inf'), -1).replace(np.nan, -1).values.max()
    if scale == 'linear': points = np.linspace(min_tau, max_tau, num=num_points)
    elif scale == 'log':
      points = np.logspace(np.log10(min_tau), np.log10(max_tau), num=num_points, base=10.0)
    """
    if max_tau is None:
        max_tau = np.where(np.isfinite(ratios), ratios, -1.0).max()
    if scale == "linear":
        return np.linspace(min_tau, max_tau, num=num_points)
    if scale == "log":
        return np.logspace(np.log10(min_tau), np.log10(max_tau), num=num_points, base=10.0)
    raise ValueError(f"scale {scale!r}: 'linear' or 'log'")


def compute_performance_profiles(
    times: np.ndarray,
    min_tau: float = MIN_TAU,
    max_tau: float | None = MAX_TAU,
    num_points: int = NUM_POINTS,
    scale: str = "linear",
    num_base_workloads: int = NUM_BASE_WORKLOADS,
    cutoff: float | None = CUTOFF,
) -> tuple[np.ndarray, np.ndarray]:
    """``(columns, rho)``: ``rho[s, k]`` is submission ``s``'s profile at ``points[k]``;
    ``columns`` are the points (``log10`` of them for ``scale='log'``). Source::

        def rho(r, tau):
          return (r <= tau).sum(axis=1) / NUM_BASE_WORKLOADS
        perf_df = pd.concat([rho(df, tau) for tau in points], axis=1)
        cols = points
        if scale == 'log': cols = np.log10(points)

    ``times``: ``(submissions, workloads)``, e.g. from ``times_to_target``. Defaults: the call in
    ``score_submissions.py`` (``min_tau=1.0, max_tau=4.0, num_points=100, scale='linear'``).
    """
    ratios = performance_ratios(times, cutoff)
    points = tau_points(ratios, min_tau, max_tau, num_points, scale)
    # ``rho(df, tau)`` for every tau at once: ``[s, k] = (ratios[s] <= points[k]).sum()``.
    rho = (ratios[:, :, None] <= points).sum(axis=1) / num_base_workloads
    columns = np.log10(points) if scale == "log" else points
    return columns, rho


def compute_leaderboard_score(
    columns: np.ndarray, rho: np.ndarray, normalize: bool = True
) -> np.ndarray:
    """One score per submission (``score_submissions.compute_leaderboard_score``, whose default
    is ``normalize=True``; ``performance_profile``'s copy defaults to ``False``). Source::

        scores = np.trapz(df, x=df.columns)
        if normalize: scores /= df.columns.max() - df.columns.min()
    """
    scores = _trapezoid(rho, x=columns)
    if normalize:
        scores = scores / (columns.max() - columns.min())
    return scores
