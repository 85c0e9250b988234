"""Where a trial's values come from: Optuna's TPE, or AlgoPerf's quasi-random search.

``--sampler tpe`` (``tune``'s default): TPE with constant liar, reseeded with ``seed + n`` for
trial ``n`` (a re-run samples as the trial it replaces). ``--sampler sobol``: AlgoPerf's
external-tuning ruleset. The trials are split into studies of ``--study_size`` trials (trial
``n`` is trial ``n % study_size`` of study ``n // study_size``); each study draws the first
``study_size`` points of a scrambled Sobol sequence over the search space (scipy's
``qmc.Sobol``, the generator behind Optuna's ``QMCSampler``), seeded by ``--seed``, the draw key
(a compare arm's name, else the study's) and the study's index, so every study, and every arm,
draws its own points. A point's coordinate maps to a value as ``QMCSampler`` maps it (log space
for a log range, an index for choices). With ``--points`` (a fixed list) each study instead takes
``study_size`` of them without replacement, in an order drawn from the same seed. Either way a
trial's values depend on its number alone: a re-run, another worker, or another process draws
the same.
"""

from __future__ import annotations

import functools
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler

from lightning_opt.core.search_space import SearchParam, contains, value_at

SAMPLERS = ("tpe", "sobol")
#: Tuning trial ``n`` of a study with distinct trial seeds trains with ``seed_everything +
#: TRIAL_SEED_OFFSET + n``: never a final run's seed (``seed_everything + k``, ``k <
#: LIMITS["seeds"]``), so no final run replays a tuning trial.
TRIAL_SEED_OFFSET = 1_000_000


def draw_seed(seed: int, key: str, study: int) -> int:
    """The seed of one study's draws: ``seed``, the draw key and the study's index, hashed (the
    same on every machine and Python)."""
    return zlib.crc32(f"{seed}/{key}/{study}".encode())


@functools.lru_cache(maxsize=256)
def _sobol(dimensions: int, size: int, seed: int) -> tuple[tuple[float, ...], ...]:
    from scipy.stats import qmc

    with warnings.catch_warnings():  # "balance properties" of a size not a power of two
        warnings.simplefilter("ignore", UserWarning)
        points = qmc.Sobol(dimensions, scramble=True, seed=seed).random(size)
    return tuple(tuple(float(u) for u in row) for row in points)


def sobol_point(
    space: Sequence[SearchParam], number: int, study_size: int, seed: int, key: str
) -> dict[str, Any]:
    """Trial ``number``'s values under ``--sampler sobol``."""
    study, index = divmod(number, study_size)
    row = _sobol(len(space), study_size, draw_seed(seed, key, study))[index]
    return {param.name: value_at(param, u) for param, u in zip(space, row, strict=True)}


def listed_point(
    points: Sequence[dict[str, Any]], number: int, study_size: int, seed: int, key: str
) -> dict[str, Any]:
    """Trial ``number``'s values from a fixed list: each study takes ``study_size`` of them
    without replacement, in an order drawn from its seed."""
    study, index = divmod(number, study_size)
    order = np.random.default_rng(draw_seed(seed, key, study)).permutation(len(points))
    return dict(points[int(order[index])])


def check_points(
    points: Sequence[Any] | None, space: Sequence[SearchParam], study_size: int
) -> list[dict[str, Any]] | None:
    """A fixed list of points, checked before any trial: each a mapping of every searched name
    to a value the search space holds, at least ``study_size`` of them (``ValueError``)."""
    if points is None:
        return None
    names = [p.name for p in space]
    if isinstance(points, str | dict) or not isinstance(points, Sequence):
        raise ValueError(f"--points is a list of {{{', '.join(names)}}} mappings, got {points!r}")
    checked = []
    for point in points:
        if not isinstance(point, dict) or set(point) != set(names):
            raise ValueError(
                f"--points: each point gives exactly the searched names {names}, got {point!r}"
            )
        for param in space:
            if not contains(param, point[param.name]):
                raise ValueError(
                    f"--points: {param.name}={point[param.name]!r} is outside the search space "
                    f"({param.as_dict()}); widen the space or drop the point"
                )
        checked.append(dict(point))
    if len(checked) < study_size:
        raise ValueError(
            f"--points: {len(checked)} point(s) for studies of {study_size} trials drawn "
            "without replacement; give at least as many points as --study_size"
        )
    return checked


class FixedValues(BaseSampler):
    """The values of one trial, decided before it runs (``sobol_point``, ``listed_point``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.values[param_name]


def trial_sampler(
    sampler: str, space: Sequence[SearchParam], number: int, *, seed: int, study_size: int,
    key: str, points: Sequence[dict[str, Any]] | None = None,
) -> BaseSampler:  # fmt: skip
    """The sampler trial ``number`` (its original number: a re-run draws as the trial it
    replaces) suggests its values with."""
    if points is not None:
        return FixedValues(listed_point(points, number, study_size, seed, key))
    if sampler == "sobol":
        return FixedValues(sobol_point(space, number, study_size, seed, key))
    return optuna.samplers.TPESampler(seed=seed + number, constant_liar=True)
