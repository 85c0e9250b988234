"""GNW-Adam (gradient-norm-weighted Adam): Adam whose step size shrinks with the gradient norm.

    step size = lr * gamma / (gamma + ||g||)

with ``||g||`` the L2 norm over every gradient of every param group at step time (after any
clipping, before the L2 weight-decay term). ``gamma = 1`` is the seed note's ``lr / (1 + ||g||)``
("Gradient-Norm-Weighted Adam (GNW-Adam)", tuned with Optuna on mnist1d); a large ``gamma``
recovers Adam. Everything else is ``torch.optim.Adam`` without amsgrad and maximize.

With ``member_dims=1`` each parameter stacks K independent copies of a model along its first
dimension (a population): ``||g||`` and the step size are then per member, and ``lr``, ``gamma``
and ``weight_decay`` may be per-member tensors of shape ``(K,)``. The single model is the
``member_dims=0`` case of the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_opt.core.norms import global_norm
from lightning_opt.optim.hypers import (
    Hyper,
    MemberOptimizer,
    check_hyper,
    is_per_member,
    per_param,
)


def scaled_lr(lr: Hyper, gamma: Hyper | None, grad_norm: Tensor | None) -> Hyper:
    """The effective step size ``lr * gamma / (gamma + grad_norm)``, per member if any.

    ``gamma=None`` turns the norm weighting off: the step size is ``lr`` (Adam).
    """
    if gamma is None or grad_norm is None:
        return lr
    return lr / (1 + grad_norm / gamma)  # the same number; no overflow for a huge gamma


def gnw_adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Hyper,
    gamma: Hyper | None,
    beta1: Hyper,
    beta2: Hyper,
    eps: Hyper,
    weight_decay: Hyper,
    grad_norm: Tensor | None,
    decoupled_weight_decay: bool = False,
    member_dims: int = 0,
) -> None:
    """One GNW-Adam update of ``params``, ``exp_avgs``, ``exp_avg_sqs`` and ``steps`` in place.

    The only copy of the math. ``grad_norm`` is ``||g||`` (0-dim, or ``(K,)`` with
    ``member_dims=1``); ``gamma=None`` (with ``grad_norm=None``) is Adam, and
    ``decoupled_weight_decay`` makes it AdamW. Tensor hyperparameters must be on the params'
    device. No host sync.
    """
    if not params:
        return
    if decoupled_weight_decay:  # AdamW: p *= 1 - lr * wd, before the moments
        shrink = 1 - lr * weight_decay
        if is_per_member(shrink):
            torch._foreach_mul_(params, per_param(shrink, params, member_dims))
        elif weight_decay != 0:
            torch._foreach_mul_(params, shrink)
    elif is_per_member(weight_decay):
        decay = torch._foreach_mul(params, per_param(weight_decay, params, member_dims))
        grads = torch._foreach_add(grads, decay)
    elif weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(steps, 1)
    if is_per_member(beta1):
        torch._foreach_lerp_(exp_avgs, grads, per_param(1 - beta1, params, member_dims))
    else:
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    if is_per_member(beta2):
        torch._foreach_mul_(exp_avg_sqs, per_param(beta2, params, member_dims))
        squares = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(squares, per_param(1 - beta2, params, member_dims))
        torch._foreach_add_(exp_avg_sqs, squares)
    else:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    # Bias corrections 1 - beta^t from the step tensors, without reading t on the host. Steps live
    # on the CPU as in torch.optim.Adam, so this is float64 (1 - 0.999^t cancels badly in float32)
    # and enters the device kernels as scalars; steps loaded onto a device use the params' dtype.
    t = [s.double() if s.is_cpu else s.to(p.dtype) for s, p in zip(steps, params, strict=True)]
    bias1, bias2 = _powers(beta1, t, params, member_dims), _powers(beta2, t, params, member_dims)
    torch._foreach_sub_(bias1, 1)  # beta1^t - 1 = -(1 - beta1^t): the minus of the descent step
    torch._foreach_neg_(bias2)
    torch._foreach_add_(bias2, 1)
    torch._foreach_sqrt_(bias2)

    # p += exp_avg / denom with denom = (sqrt(v) / sqrt(1 - beta2^t) + eps) / -step_size and
    # step_size = lr * gamma / (gamma + ||g||) / (1 - beta1^t), per member with member_dims=1.
    step_sizes = per_param(scaled_lr(lr, gamma, grad_norm), params, member_dims)
    neg_inv_step_sizes = torch._foreach_div(bias1, step_sizes)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2)
    torch._foreach_add_(denom, per_param(eps, params, member_dims) if is_per_member(eps) else eps)
    torch._foreach_mul_(denom, neg_inv_step_sizes)
    torch._foreach_addcdiv_(params, exp_avgs, denom)


def _powers(beta: Hyper, t: list[Tensor], params: list[Tensor], member_dims: int) -> list[Tensor]:
    """``beta ** t`` for each param (per member, viewed to broadcast, for a per-member beta)."""
    if not is_per_member(beta):
        return list(torch._foreach_pow(beta, t))
    return [b**s for b, s in zip(per_param(beta, params, member_dims), t, strict=True)]


def _check_group(group: dict[str, Any], members: int | None) -> None:
    check_hyper("learning rate", group["lr"], lambda v: v > 0, "> 0", members)
    check_hyper("epsilon value", group["eps"], lambda v: v > 0, "> 0", members)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        check_hyper(f"beta parameter at index {i}", beta, lambda v: (v >= 0) & (v < 1),
                    "in [0, 1)", members)  # fmt: skip
    check_hyper("weight_decay value", group["weight_decay"], lambda v: v >= 0, ">= 0", members)
    if group["gamma"] is not None:
        check_hyper("gamma value", group["gamma"], lambda v: v > 0, "> 0", members)


class GNWAdam(MemberOptimizer):
    """Adam with step size ``lr * gamma / (gamma + ||g||)`` (``||g||``: global gradient norm).

    Args:
        params: parameters or param groups; groups may set their own hyperparameters.
        lr: base learning rate (> 0); stays in ``group["lr"]`` so LR schedulers compose.
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator (> 0).
        weight_decay: L2 penalty added to the gradient, as in Adam (>= 0; 0 = off).
        gamma: norm scale (> 0): 1 gives ``lr / (1 + ||g||)``; larger values approach Adam;
            ``None`` turns the weighting off (exactly Adam; a population's Adam and AdamW).
        decoupled_weight_decay: shrink the weights by ``1 - lr * weight_decay`` instead of adding
            the L2 term to the gradient (AdamW).
        member_dims: 1 when every parameter stacks K members along its first dimension; then
            ``lr``, ``eps``, ``gamma``, ``weight_decay`` and each beta may be tensors of shape
            ``(K,)``.

    Attributes:
        last_grad_norm: the ``||g||`` of the last step (0-dim, or ``(K,)``); ``None`` before it
            and when no group weights by the norm.
    """

    tensor_hypers = ("lr", "gamma", "weight_decay", "betas", "eps")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: Hyper = 1e-3,
        betas: tuple[Hyper, Hyper] = (0.9, 0.999),
        eps: Hyper = 1e-8,
        weight_decay: Hyper = 0.0,
        gamma: Hyper | None = 1.0,
        *,
        decoupled_weight_decay: bool = False,
        member_dims: int = 0,
    ) -> None:
        self.last_grad_norm: Tensor | None = None
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "gamma": gamma,
            "decoupled_weight_decay": bool(decoupled_weight_decay),
        }
        super().__init__(params, defaults, member_dims)

    check_group = staticmethod(_check_group)

    def select_members(self, index: Tensor) -> None:
        super().select_members(index)
        self.last_grad_norm = None  # the norm of the members before

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # Lightning's closure runs forward and backward: grads exist after
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "GNWAdam does not support sparse gradients; use dense gradients "
                        "(e.g. nn.Embedding(sparse=False))"
                    )
            groups.append((group, params))
        grads = [p.grad for _, params in groups for p in params]
        if not grads:
            return loss
        weighted = any(group["gamma"] is not None for group in self.param_groups)
        grad_norm = global_norm(grads, self.member_dims) if weighted else None
        self.last_grad_norm = grad_norm
        for group, params in groups:
            if not params:
                continue
            states = [self._state(p) for p in params]
            beta1, beta2 = group["betas"]
            gnw_adam_(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                lr=group["lr"],
                gamma=group["gamma"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                grad_norm=grad_norm,
                decoupled_weight_decay=group["decoupled_weight_decay"],
                member_dims=self.member_dims,
            )
        return loss

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:  # the same keys and types as torch.optim.Adam
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def effective_lr(self, group: int = 0) -> Tensor | None:
        """``lr * gamma / (gamma + ||g||)`` with the last step's ``||g||`` and the current lr."""
        g = self.param_groups[group]
        if self.last_grad_norm is None or g["gamma"] is None:
            return None
        return scaled_lr(g["lr"], g["gamma"], self.last_grad_norm)
