"""SGD with heavy-ball momentum whose hyperparameters may differ per population member.

``torch.optim.SGD`` (dampening 0, no Nesterov) with a ``member_dims`` axis: with
``member_dims=1`` every parameter stacks K members along its first dimension and ``lr``,
``momentum`` and ``weight_decay`` may be tensors of shape ``(K,)``. The single model uses
``torch.optim.SGD``; member k of a population takes exactly its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_opt.optim.hypers import Hyper, MemberOptimizer, check_hyper, is_per_member, per_param


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: Hyper,
    momentum: Hyper,
    weight_decay: Hyper,
    member_dims: int = 0,
) -> None:
    """One SGD step in place. Buffers start at zero: ``0 * m + g`` is ``torch.optim.SGD``'s first
    buffer ``g`` exactly, so no step needs a branch (and a per-member momentum of 0 is plain SGD)."""
    if not params:
        return
    if is_per_member(weight_decay):
        grads = torch._foreach_add(
            grads, torch._foreach_mul(params, per_param(weight_decay, params, member_dims))
        )
    elif weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if is_per_member(momentum) or momentum != 0:
        torch._foreach_mul_(momentum_buffers, per_param(momentum, params, member_dims))
        torch._foreach_add_(momentum_buffers, grads)
        grads = momentum_buffers
    if is_per_member(lr):
        torch._foreach_sub_(params, torch._foreach_mul(grads, per_param(lr, params, member_dims)))
    else:
        torch._foreach_add_(params, grads, alpha=-lr)


class MemberSGD(MemberOptimizer):
    """SGD with momentum; hyperparameters may be per member (see the module docstring).

    Args:
        params: parameters or param groups.
        lr: learning rate (> 0).
        momentum: heavy-ball momentum in [0, 1).
        weight_decay: L2 penalty added to the gradient (>= 0).
        member_dims: 1 when every parameter stacks K members along its first dimension.
    """

    tensor_hypers = ("lr", "momentum", "weight_decay")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: Hyper = 1e-3,
        momentum: Hyper = 0.0,
        weight_decay: Hyper = 0.0,
        *,
        member_dims: int = 0,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults, member_dims)

    @staticmethod
    def check_group(group: dict[str, Any], members: int | None) -> None:
        check_hyper("learning rate", group["lr"], lambda v: v > 0, "> 0", members)
        check_hyper("momentum value", group["momentum"], lambda v: (v >= 0) & (v < 1),
                    "in [0, 1)", members)  # fmt: skip
        check_hyper("weight_decay value", group["weight_decay"], lambda v: v >= 0, ">= 0", members)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            sgd_(
                params, [p.grad for p in params], buffers,
                lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                member_dims=self.member_dims,
            )  # fmt: skip
        return loss
