"""AlgoPerf's scoring over workloads: time to a validation target, performance profiles and the
score (MLCommons AlgoPerf, benchmark version 0.6).

Per workload, each submission's time to reach the workload's validation target (``inf``: it did
not); its ratio to the fastest submission on that workload; the profile ``rho_s(tau)``, the
fraction of workloads on which ``s`` is within ``tau`` times the fastest; the score, the area
under the profile for ``tau`` in ``[1, tau_max]``, normalised to ``[0, 1]`` (1: fastest
everywhere; 0: never within ``tau_max`` of the fastest, or never reached).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

TAU_MAX = 4.0
INF = math.inf
#: Resamples behind a score's interval.
BOOTSTRAP_REPLICATES = 2000


def steps_to_target(curve: Sequence[float], target: float, eval_steps: int) -> float:
    """Optimizer steps until the validation loss first reaches ``target`` (``curve``: one value
    per validation, each after ``eval_steps`` more steps: an epoch's, or a workload's
    ``eval_every``); ``inf`` if it never does."""
    for index, value in enumerate(curve):
        if value <= target:
            return float((index + 1) * eval_steps)
    return INF


def study_times(
    trials: Sequence[Mapping], studies: int, target: float, eval_steps: int
) -> list[float]:
    """AlgoPerf's external tuning: each study's time, the fastest of its trials to reach the
    target (``trials``: records with ``study`` and ``val_loss_curve``; ``inf``: none of its
    trials did, or it has none)."""
    times = [INF] * studies
    for trial in trials:
        study = trial["study"]
        if 0 <= study < studies:
            steps = steps_to_target(trial["val_loss_curve"], target, eval_steps)
            times[study] = min(times[study], steps)
    return times


def median_time(times: Sequence[float]) -> float:
    """A submission's time on a workload over its seeds: the median, ``inf`` counted as such
    (more than half not reaching the target: not reached)."""
    return statistics.median(sorted(times)) if times else INF


def ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{submission: {workload: time / fastest time on that workload}}`` (``inf`` where it did
    not reach the target; every submission ``inf`` where nobody did)."""
    workloads = {w for per in times.values() for w in per}
    best = {w: min(per.get(w, INF) for per in times.values()) for w in workloads}
    return {
        s: {w: (per.get(w, INF) / best[w] if math.isfinite(best[w]) else INF) for w in workloads}
        for s, per in times.items()
    }


def profile(ratio: Mapping[str, float], tau: float) -> float:
    """``rho(tau)``: the fraction of workloads with ratio <= ``tau``."""
    return sum(r <= tau for r in ratio.values()) / len(ratio) if ratio else 0.0


def score(ratio: Mapping[str, float], tau_max: float = TAU_MAX) -> float:
    """The area under ``rho`` on ``[1, tau_max]`` divided by ``tau_max - 1``: exact, since
    ``rho`` is a step function that rises at each workload's ratio."""
    if not ratio:
        return 0.0
    area = sum(max(0.0, tau_max - max(1.0, r)) for r in ratio.values() if r <= tau_max)
    return area / ((tau_max - 1.0) * len(ratio))


def bootstrap_interval(
    times: Mapping[str, Mapping[str, Sequence[float]]], replicates: int = BOOTSTRAP_REPLICATES,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Each submission's score interval over its runs: ``times[s][w]`` are the per-run times
    (seeds) of submission ``s`` on workload ``w``; each replicate resamples every
    ``(s, w)``'s runs with replacement, takes their median, and scores all submissions together
    (so the ratios move with every submission's resampled time). The percentile interval at
    ``confidence``, seeded (the same numbers for the same times)."""
    rng = np.random.default_rng(seed)
    subs = list(times)
    draws: dict[str, list[float]] = {s: [] for s in subs}
    for _ in range(replicates):
        medians = {
            s: {w: median_time(list(rng.choice(np.asarray(runs, dtype=float), size=len(runs))))
                if len(runs) else INF for w, runs in per.items()}
            for s, per in times.items()
        }  # fmt: skip
        ratio = ratios(medians)
        for s in subs:
            draws[s].append(score(ratio[s]))
    tail = (1 - confidence) / 2 * 100
    return {s: (float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail)))
            for s, d in draws.items()}  # fmt: skip
