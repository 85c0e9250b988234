"""The stacked fast path of a population, for the built-in optimizers only.

A population normally gives each member its own instance of the optimizer class (see
``MemberwiseOptimizer``): any optimizer works that way. For Adam, AdamW, SGD and GNW-Adam, one
``MemberOptimizer`` over the stacked ``(K, ...)`` parameters takes the same steps with a handful of
kernels instead of K times as many (``perf/bench_population.py``). It is used only where it
computes exactly what the class would: every other setting (amsgrad, nesterov, maximize, a
per-member value of a non-numeric argument, ...) takes the per-member path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from lightning_opt.optim.gnw_adam import GNWAdam
from lightning_opt.optim.sgd import MemberSGD

StackedFactory = Callable[..., torch.optim.Optimizer]

# class -> (factory over stacked params, the arguments it takes, the values the rest must have)
_ADAM_OFF = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
             "fused": None}  # fmt: skip
_ADAM_ARGS = ("lr", "betas", "eps", "weight_decay")
_TABLE: dict[type, tuple[StackedFactory, tuple[str, ...], dict[str, Any]]] = {
    torch.optim.Adam: (
        partial(GNWAdam, gamma=None),
        _ADAM_ARGS,
        {**_ADAM_OFF, "decoupled_weight_decay": False},
    ),
    torch.optim.AdamW: (
        partial(GNWAdam, gamma=None, decoupled_weight_decay=True),
        _ADAM_ARGS,
        _ADAM_OFF,
    ),
    torch.optim.SGD: (
        MemberSGD,
        ("lr", "momentum", "weight_decay"),
        {
            "dampening": 0,
            "nesterov": False,
            "maximize": False,
            "differentiable": False,
            "fused": None,
        },
    ),
    GNWAdam: (GNWAdam, (*_ADAM_ARGS, "gamma", "decoupled_weight_decay"), {}),
}
_IGNORED = ("foreach", "member_dims")  # how a kernel runs, not what it computes


def stacked_optimizer(
    cls: type, member_kwargs: Sequence[Mapping[str, Any]], per_member: set[str]
) -> tuple[StackedFactory, dict[str, Any]] | None:
    """``(factory, kwargs)`` building one optimizer over stacked params that steps every member
    as ``cls(**member_kwargs[k])`` would, or ``None`` where no such fast path exists.

    ``per_member`` names the arguments given per member: they become float64 tensors of shape
    ``(K,)`` (even where equal: a number takes other kernels, so changing one member's value
    would round the others' steps differently).
    """
    entry = _TABLE.get(cls)
    if entry is None:
        return None
    factory, taken, required = entry
    first = member_kwargs[0]
    for name in first:
        if name in taken or name in _IGNORED:
            continue
        if name not in required or any(kw[name] != required[name] for kw in member_kwargs):
            return None
    if "decoupled_weight_decay" in per_member:
        return None
    kwargs: dict[str, Any] = {}
    for name in taken:
        if name not in first:
            continue
        values = [kw[name] for kw in member_kwargs]
        if name not in per_member:
            kwargs[name] = values[0]
        elif name == "betas":
            kwargs[name] = tuple(
                torch.tensor(b, dtype=torch.float64) for b in zip(*values, strict=True)
            )
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            kwargs[name] = torch.tensor(values, dtype=torch.float64)
        else:
            return None
    return factory, kwargs
