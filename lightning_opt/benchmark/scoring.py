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

TAU_MAX = 4.0
INF = math.inf


def steps_to_target(curve: Sequence[float], target: float, steps_per_epoch: int) -> float:
    """Optimizer steps until the validation loss first reaches ``target`` (``curve``: one value
    per epoch, after that epoch's steps); ``inf`` if it never does."""
    for epoch, value in enumerate(curve):
        if value <= target:
            return float((epoch + 1) * steps_per_epoch)
    return INF


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
