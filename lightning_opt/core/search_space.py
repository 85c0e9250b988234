"""Search spaces as data: one ``SearchParam`` per tuned hyperparameter.

Defaults live next to what they tune: each optimizer's registry entry and each clipping callback
declares its own; a config's ``search_space`` list replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def value_text(value: Any) -> str:
    """A tuned value as reports and trial lines show it: a float to 3 significant digits, any
    other value (a choice: an int, a string, a bool, None) as itself."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def values_text(values: dict[str, Any], sep: str = ", ") -> str:
    """``name=value`` for each tuned value (``value_text``)."""
    return sep.join(f"{k}={value_text(v)}" for k, v in values.items())


def space_text(param: dict[str, Any]) -> str:
    """A search space entry (``SearchParam.as_dict``) as text: its range or its choices."""
    if param.get("choices") is not None:
        return f"{param['name']} in {{{', '.join(value_text(c) for c in param['choices'])}}}"
    log = " (log)" if param.get("log") else ""
    return f"{param['name']} in [{param['low']:.3g}, {param['high']:.3g}]{log}"


@dataclass(frozen=True)
class SearchParam:
    """One hyperparameter's range, or its choices.

    Attributes:
        name: the hyperparameter, e.g. ``lr`` (model) or ``clip_factor`` (clipping callback).
        low: smallest value tried.
        high: largest value tried (must be > low).
        log: sample uniformly in log space (both bounds must then be > 0).
        choices: instead of a range, the values to choose from (``nesterov: [true, false]``):
            Optuna's categorical distribution; numbers, strings, booleans or None.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            self._check_choices()
            return
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

    def _check_choices(self) -> None:
        if self.low is not None or self.high is not None or self.log:
            raise ValueError(
                f"search space '{self.name}': give either choices or low/high (and log), not both"
            )
        choices = self.choices
        if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)):
            raise TypeError(f"search space '{self.name}': choices must be a list, got {choices!r}")
        if len(choices) < 2:
            raise ValueError(f"search space '{self.name}': choices needs at least two values")
        for value in choices:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise TypeError(
                    f"search space '{self.name}': a choice is a number, a string, a boolean or "
                    f"null, got {value!r}"
                )
        object.__setattr__(self, "choices", tuple(choices))

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def ends(self) -> tuple[Any, Any]:
        """The two extremes a study is checked at before its first trial: the bounds, or the
        first and last choices."""
        if self.choices is not None:
            return self.choices[0], self.choices[-1]
        return self.low, self.high

    def as_dict(self) -> dict[str, Any]:
        """The entry as a config writes it (a range's record has no ``choices`` key, as before
        choices existed, so the fingerprints of earlier studies still match)."""
        if self.choices is not None:
            return {"name": self.name, "choices": list(self.choices)}
        return {"name": self.name, "low": self.low, "high": self.high, "log": self.log}


def parse_search_space(
    entries: Iterable[Mapping[str, Any] | SearchParam],
) -> tuple[SearchParam, ...]:
    """``SearchParam``s from config entries (mappings with name, low, high and optional log)."""
    shape = (
        "a list of entries {name, low, high[, log]} or {name, choices} (search_space: [{name: "
        "lr, low: 1.0e-4, high: 1.0e-1, log: true}])"
    )
    if isinstance(entries, str | Mapping) or not isinstance(entries, Iterable):
        raise ValueError(f"search_space is {shape}, got {entries!r}")
    params: list[SearchParam] = []
    for entry in entries:
        if isinstance(entry, SearchParam):
            params.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"search_space is {shape}; its entry {entry!r} is not a mapping")
        unknown = set(entry) - {"name", "low", "high", "log", "choices"}
        required = {"name", "choices"} if "choices" in entry else {"name", "low", "high"}
        missing = required - set(entry)
        if unknown or missing:
            raise ValueError(
                f"search space entry {dict(entry)} must have keys name, low, high and optionally "
                "log, or name and choices"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        params.append(SearchParam(**entry))
    names = [p.name for p in params]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"search space names appear twice: {', '.join(duplicated)}")
    return tuple(params)


def value_at(param: SearchParam, u: float) -> Any:
    """The value of ``param`` at ``u`` in ``[0, 1)`` of a uniform (or quasi-random) draw, as
    Optuna's ``QMCSampler`` maps its points: a range linearly (or in log space, ``log``), a
    choice by index."""
    if param.choices is not None:
        return param.choices[min(int(u * len(param.choices)), len(param.choices) - 1)]
    if param.log:
        low, high = math.log(param.low), math.log(param.high)
        return float(min(param.high, max(param.low, math.exp(low + u * (high - low)))))
    return float(min(param.high, param.low + u * (param.high - param.low)))


def contains(param: SearchParam, value: Any) -> bool:
    """Whether ``value`` is one ``param`` can take (a fixed point's value is checked so)."""
    if param.choices is not None:
        return any(value == c and type(value) is type(c) for c in param.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return param.low <= value <= param.high
