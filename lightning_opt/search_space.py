"""Search spaces as data: one ``SearchParam`` per tuned hyperparameter.

Defaults live next to what they tune: each optimizer's registry entry and each clipping callback
declares its own; a config's ``search_space`` list replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SearchParam:
    """One hyperparameter's range.

    Attributes:
        name: the hyperparameter, e.g. ``lr`` (model) or ``clip_factor`` (clipping callback).
        low: smallest value tried.
        high: largest value tried (must be > low).
        log: sample uniformly in log space (both bounds must then be > 0).
    """

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"search space '{self.name}': {bound} must be a number, got {value!r}"
                )
            if not math.isfinite(value):
                raise ValueError(f"search space '{self.name}': {bound} must be finite, got {value}")
        if self.low >= self.high:
            raise ValueError(
                f"search space '{self.name}': low must be < high, got low={self.low}, high={self.high}"
            )
        if self.log and self.low <= 0:
            raise ValueError(
                f"search space '{self.name}': a log scale needs low > 0, got low={self.low}"
            )

    def suggest(self, trial: Any) -> float:
        """Draw this parameter from an Optuna trial."""
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_search_space(
    entries: Iterable[Mapping[str, Any] | SearchParam],
) -> tuple[SearchParam, ...]:
    """``SearchParam``s from config entries (mappings with name, low, high and optional log)."""
    params: list[SearchParam] = []
    for entry in entries:
        if isinstance(entry, SearchParam):
            params.append(entry)
            continue
        unknown = set(entry) - {"name", "low", "high", "log"}
        missing = {"name", "low", "high"} - set(entry)
        if unknown or missing:
            raise ValueError(
                f"search space entry {dict(entry)} must have keys name, low, high and optionally log"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        params.append(SearchParam(**entry))
    names = [p.name for p in params]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"search space names appear twice: {', '.join(duplicated)}")
    return tuple(params)
