"""Optimizers by name: one frozen entry each (timm's registry), plus hyperparameter checks.

Each entry says which hyperparameters it accepts and its defaults, so the model can reject a
hyperparameter the chosen optimizer would ignore, and tuning knows what it may search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from lightning_opt.optim.gnw_adam import GNWAdam
from lightning_opt.optim.sgd import MemberSGD
from lightning_opt.search_space import SearchParam

#: What ``tune`` searches by default: the learning rate, log-uniform (the seed notes' setup).
LR_SEARCH = (SearchParam("lr", 1e-4, 1e-1, log=True),)

#: The hyperparameters a registry entry may accept, with the rule each value must follow.
HYPERPARAMETER_RULES: dict[str, str] = {
    "lr": "a positive finite number",
    "weight_decay": "a finite number >= 0",
    "eps": "a positive finite number",
    "betas": "two numbers in [0, 1)",
    "momentum": "a number in [0, 1)",
    "gamma": "a positive finite number",
}


def _is_valid(name: str, value: Any) -> bool:
    if name == "betas":
        return (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in value)
        )
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    if name in ("weight_decay",):
        return value >= 0.0
    if name == "momentum":
        return 0.0 <= value < 1.0
    return value > 0.0


@dataclass(frozen=True)
class OptimizerSpec:
    """One registry entry.

    Attributes:
        name: lowercase name used on the command line (``--optimizer NAME``).
        factory: ``factory(params, **hyperparameters) -> torch.optim.Optimizer``.
        description: one line for ``list_optimizers`` and ``--help``.
        defaults: the value of every accepted hyperparameter when the user leaves it unset.
        search_space: what ``tune`` searches by default for this optimizer.
        population: ``population(params, member_dims=1, **hyperparameters)``: the same update for
            stacked members, each hyperparameter a number or one value per member (``None``: the
            optimizer cannot train a population).
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: tuple[SearchParam, ...] = LR_SEARCH
    population: Callable[..., torch.optim.Optimizer] | None = None

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def resolve(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated with the non-``None`` ``overrides``, each checked.

        Raises ``ValueError`` for a hyperparameter this optimizer does not take or a bad value.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"optimizer '{self.name}' does not take {', '.join(unknown)}; "
                f"it takes: {', '.join(self.hyperparameters)}"
            )
        resolved = {**self.defaults, **given}
        for key, value in resolved.items():
            if not _is_valid(key, value):
                raise ValueError(f"{key} must be {HYPERPARAMETER_RULES[key]}, got {value!r}")
        if "betas" in resolved:
            resolved["betas"] = tuple(float(b) for b in resolved["betas"])
        return resolved

    def build(self, params: Iterable, **overrides: Any) -> torch.optim.Optimizer:
        return self.factory(params, **self.resolve(overrides))


_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry (names are lowercase and unique)."""
    if spec.name != spec.name.lower() or not spec.name.isidentifier():
        raise ValueError(f"optimizer names are lowercase identifiers, got {spec.name!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer '{spec.name}' is already registered")
    unknown = set(spec.defaults) - set(HYPERPARAMETER_RULES)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)} in entry '{spec.name}'")
    _REGISTRY[spec.name] = spec
    return spec


def list_optimizers() -> list[str]:
    """Registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def get_optimizer(name: str) -> OptimizerSpec:
    """The registry entry called ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(list_optimizers())}"
        ) from None


# The learning rates of adam and gnw are the ones the GNW-Adam seed note's Optuna search found
# (10 trials x 25 epochs); the others are common starting points for this MLP.
register_optimizer(
    OptimizerSpec(
        "adam",
        torch.optim.Adam,
        "Adam (Kingma & Ba, 2015), L2 weight decay added to the gradient",
        {"lr": 0.00624, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
        population=partial(GNWAdam, gamma=None),
    )
)
register_optimizer(
    OptimizerSpec(
        "adamw",
        torch.optim.AdamW,
        "AdamW (Loshchilov & Hutter, 2019), decoupled weight decay",
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
        population=partial(GNWAdam, gamma=None, decoupled_weight_decay=True),
    )
)
register_optimizer(
    OptimizerSpec(
        "sgd",
        torch.optim.SGD,
        "SGD with heavy-ball momentum",
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        population=MemberSGD,
    )
)
register_optimizer(
    OptimizerSpec(
        "gnw",
        GNWAdam,
        "GNW-Adam: Adam with step size lr * gamma / (gamma + ||g||)",
        {"lr": 0.00585, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "gamma": 1.0},
        population=GNWAdam,
    )
)
