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

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_opt.norms import broadcast_to_members, global_norm

Hyper = float | Tensor  # a number, a 0-dim tensor, or (member_dims=1) one value per member
_TENSOR_HYPERS = ("lr", "gamma", "weight_decay")  # the hyperparameters that may be per member


def _per_param(value: Hyper, params: Sequence[Tensor], member_dims: int) -> list[Hyper]:
    """``value`` for each param: as is if a scalar, else viewed to broadcast over the member dim."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return [value] * len(params)
    return [broadcast_to_members(value, p, member_dims) for p in params]


def scaled_lr(lr: Hyper, gamma: Hyper, grad_norm: Tensor) -> Tensor:
    """The effective step size ``lr * gamma / (gamma + grad_norm)``, per member if any."""
    return lr / (1 + grad_norm / gamma)  # the same number; no overflow for a huge gamma


def gnw_adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Hyper,
    gamma: Hyper,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Hyper,
    grad_norm: Tensor,
    member_dims: int = 0,
) -> None:
    """One GNW-Adam update of ``params``, ``exp_avgs``, ``exp_avg_sqs`` and ``steps`` in place.

    The only copy of the math. ``grad_norm`` is ``||g||`` (0-dim, or ``(K,)`` with
    ``member_dims=1``); tensor hyperparameters must be on the params' device. No host sync.
    """
    if not params:
        return
    if isinstance(weight_decay, Tensor):
        decay = torch._foreach_mul(params, _per_param(weight_decay, params, member_dims))
        grads = torch._foreach_add(grads, decay)
    elif weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(steps, 1)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    # Bias corrections 1 - beta^t from the step tensors, without reading t on the host. Steps live
    # on the CPU as in torch.optim.Adam, so this is float64 (1 - 0.999^t cancels badly in float32)
    # and enters the device kernels as scalars; steps loaded onto a device use the params' dtype.
    t = [s.double() if s.is_cpu else s.to(p.dtype) for s, p in zip(steps, params, strict=True)]
    bias1 = torch._foreach_pow(beta1, t)
    torch._foreach_sub_(bias1, 1)  # beta1^t - 1 = -(1 - beta1^t): the minus of the descent step
    bias2 = torch._foreach_pow(beta2, t)
    torch._foreach_neg_(bias2)
    torch._foreach_add_(bias2, 1)
    torch._foreach_sqrt_(bias2)

    # p += exp_avg / denom with denom = (sqrt(v) / sqrt(1 - beta2^t) + eps) / -step_size and
    # step_size = lr * gamma / (gamma + ||g||) / (1 - beta1^t), per member with member_dims=1.
    step_lr = scaled_lr(lr, gamma, grad_norm)
    step_sizes = [broadcast_to_members(step_lr, p, member_dims) for p in params]
    neg_inv_step_sizes = torch._foreach_div(bias1, step_sizes)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2)
    torch._foreach_add_(denom, eps)
    torch._foreach_mul_(denom, neg_inv_step_sizes)
    torch._foreach_addcdiv_(params, exp_avgs, denom)


def _check_value(name: str, value: Any, ok: Callable[[Any], Any], rule: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number {rule})")
    if not ok(value):
        raise ValueError(f"Invalid {name}: {value} (must be {rule})")


def _check_hyper(
    name: str, value: Any, ok: Callable[[Any], Any], rule: str, members: int | None
) -> None:
    """Like ``_check_value``, also accepting a float tensor: 0-dim, or ``(K,)`` per member.

    ``members`` is K; ``-1`` accepts any K, ``None`` (no member dimension) only 0-dim tensors.
    """
    if not isinstance(value, Tensor):
        _check_value(name, value, ok, rule)
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


def _check_group(group: dict[str, Any], members: int | None) -> None:
    _check_hyper("learning rate", group["lr"], lambda v: v > 0, "> 0", members)
    _check_value("epsilon value", group["eps"], lambda v: v > 0, "> 0")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        _check_value(f"beta parameter at index {i}", beta, lambda v: 0 <= v < 1, "in [0, 1)")
    _check_hyper("weight_decay value", group["weight_decay"], lambda v: v >= 0, ">= 0", members)
    _check_hyper("gamma value", group["gamma"], lambda v: v > 0, "> 0", members)


class GNWAdam(torch.optim.Optimizer):
    """Adam with step size ``lr * gamma / (gamma + ||g||)`` (``||g||``: global gradient norm).

    Args:
        params: parameters or param groups; groups may set their own hyperparameters.
        lr: base learning rate (> 0); stays in ``group["lr"]`` so LR schedulers compose.
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator (> 0).
        weight_decay: L2 penalty added to the gradient, as in Adam (>= 0; 0 = off).
        gamma: norm scale (> 0): 1 gives ``lr / (1 + ||g||)``; larger values approach Adam.
        member_dims: 1 when every parameter stacks K members along its first dimension; then
            ``lr``, ``gamma`` and ``weight_decay`` may be tensors of shape ``(K,)``.

    Attributes:
        last_grad_norm: the ``||g||`` of the last step (0-dim, or ``(K,)``); ``None`` before it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: Hyper = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: Hyper = 0.0,
        gamma: Hyper = 1.0,
        *,
        member_dims: int = 0,
    ) -> None:
        if isinstance(member_dims, bool) or member_dims not in (0, 1):
            raise ValueError(f"Invalid member_dims: {member_dims!r} (must be 0 or 1)")
        self.member_dims = member_dims
        self.members: int | None = None  # K, from the first parameter when member_dims=1
        self.last_grad_norm: Tensor | None = None
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "gamma": gamma,
        }
        _check_group(defaults, None if member_dims == 0 else -1)  # K is checked per group
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add and validate a param group (also its per-member shapes)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if self.member_dims:
                self._check_members(group["params"])
            _check_group(
                group,
                None if self.member_dims == 0 else (-1 if self.members is None else self.members),
            )
        except ValueError:
            self.param_groups.pop()
            raise
        self._place_hypers(group)

    def _check_members(self, params: list[Tensor]) -> None:
        for p in params:
            if p.dim() == 0:
                raise ValueError(
                    "member_dims=1 needs a leading member dimension; got a 0-dim param"
                )
            if self.members is None:
                self.members = p.shape[0]
            if p.shape[0] != self.members:
                raise ValueError(
                    f"member_dims=1 needs the same leading size K in every param; "
                    f"got {p.shape[0]} and {self.members}"
                )

    @staticmethod
    def _place_hypers(group: dict[str, Any]) -> None:
        """Move per-member hyperparameter tensors to the group's device once, not every step."""
        if not group["params"]:
            return
        device = group["params"][0].device
        for key in _TENSOR_HYPERS:
            if isinstance(group[key], Tensor) and group[key].dim() > 0:
                group[key] = group[key].to(device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._place_hypers(group)

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
        grad_norm = global_norm(grads, self.member_dims)
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
        if self.last_grad_norm is None:
            return None
        g = self.param_groups[group]
        return scaled_lr(g["lr"], g["gamma"], self.last_grad_norm)
