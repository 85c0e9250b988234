"""Hyperparameter values shared by the optimizers: a number, or one value per member.

With ``member_dims=1`` every parameter stacks K independent copies of a model along its first
dimension (a population), and a hyperparameter may be a tensor of shape ``(K,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_opt.core.norms import broadcast_to_members

Hyper = float | Tensor  # a number, a 0-dim tensor, or (member_dims=1) one value per member


def is_per_member(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0


def per_param(value: Hyper, params: Sequence[Tensor], member_dims: int) -> list[Hyper]:
    """``value`` for each param: as is if a scalar, else viewed to broadcast over the member dim."""
    if not is_per_member(value):
        return [value] * len(params)
    return [broadcast_to_members(value, p, member_dims) for p in params]


def check_value(name: str, value: Any, ok: Callable[[Any], Any], rule: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number {rule})")
    if not ok(value):
        raise ValueError(f"Invalid {name}: {value} (must be {rule})")


def check_hyper(
    name: str, value: Any, ok: Callable[[Any], Any], rule: str, members: int | None
) -> None:
    """Like ``check_value``, also accepting a float tensor: 0-dim, or ``(K,)`` per member.

    ``members`` is K; ``-1`` accepts any K, ``None`` (no member dimension) only 0-dim tensors.
    """
    if not isinstance(value, Tensor):
        check_value(name, value, ok, rule)
        return
    per_member = members is not None and value.dim() == 1 and members in (-1, len(value))
    allowed = "a 0-dim tensor"
    if members is not None:
        allowed += " or shape (K,)" if members == -1 else f" or shape ({members},)"
    if not value.is_floating_point() or not (value.dim() == 0 or per_member):
        raise ValueError(
            f"Invalid {name}: a {value.dtype} tensor of shape {tuple(value.shape)} "
            f"(must be a float, {allowed}; per-member values need member_dims=1)"
        )
    if not bool((torch.isfinite(value) & ok(value)).all()):  # init may sync; step never does
        raise ValueError(f"Invalid {name}: {value.tolist()} (must be finite and {rule})")


def check_member_dims(member_dims: Any) -> None:
    if isinstance(member_dims, bool) or member_dims not in (0, 1):
        raise ValueError(f"Invalid member_dims: {member_dims!r} (must be 0 or 1)")


def count_members(params: Sequence[Tensor], members: int | None) -> int | None:
    """K, the leading size every param must share under ``member_dims=1`` (``members``: known K)."""
    for p in params:
        if p.dim() == 0:
            raise ValueError("member_dims=1 needs a leading member dimension; got a 0-dim param")
        if members is None:
            members = p.shape[0]
        if p.shape[0] != members:
            raise ValueError(
                f"member_dims=1 needs the same leading size K in every param; "
                f"got {p.shape[0]} and {members}"
            )
    return members


def place(value: Any, like: Tensor) -> Any:
    """A per-member tensor moved to ``like``'s device and dtype (once, not every step)."""
    if is_per_member(value):
        return value.to(device=like.device, dtype=like.dtype)
    if isinstance(value, tuple):
        return tuple(place(v, like) for v in value)
    return value


def select(value: Any, index: Tensor) -> Any:
    """The members ``index`` of a per-member value (scalars as they are)."""
    if is_per_member(value):
        return value[index.to(value.device)]
    if isinstance(value, tuple):
        return tuple(select(v, index) for v in value)
    return value


class MemberOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose parameters may stack K members (``member_dims=1``).

    Subclasses name their per-member hyperparameters in ``tensor_hypers`` and check a param
    group in ``check_group``; this class checks every group (and that all params share K) as it
    is added, and keeps per-member tensors on the params' device and dtype, also after
    ``load_state_dict``.
    """

    tensor_hypers: tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: dict[str, Any], member_dims: int) -> None:
        check_member_dims(member_dims)
        self.member_dims = member_dims
        self.members: int | None = None  # K, from the first parameter when member_dims=1
        self.check_group(defaults, None if member_dims == 0 else -1)  # K is checked per group
        super().__init__(params, defaults)

    @staticmethod
    def check_group(group: dict[str, Any], members: int | None) -> None:
        """Raise ``ValueError`` for a bad hyperparameter (``members``: as in ``check_hyper``)."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add and validate a param group (also its per-member shapes)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if self.member_dims:
                self.members = count_members(group["params"], self.members)
            members = None if self.member_dims == 0 else (self.members or -1)
            self.check_group(group, members)
        except ValueError:
            self.param_groups.pop()
            raise
        self._place_hypers(group)

    def _place_hypers(self, group: dict[str, Any]) -> None:
        if group["params"]:
            for key in self.tensor_hypers:
                group[key] = place(group[key], group["params"][0])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._place_hypers(group)

    @torch.no_grad()
    def select_members(self, index: Tensor) -> None:
        """Keep the members at positions ``index`` of its state and per-member hyperparameters,
        after the caller has narrowed the parameters themselves (``member_dims=1``)."""
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() > 0 and len(value) == self.members:
                    state[key] = value.index_select(0, index.to(value.device))
        for group in self.param_groups:
            for key in self.tensor_hypers:
                group[key] = select(group[key], index)
        self.members = len(index)
