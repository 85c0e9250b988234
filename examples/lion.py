"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a sign-of-momentum
update, as a plain ``torch.optim.Optimizer`` that lightning_opt knows nothing about.

    python -m lightning_opt fit --optimizer examples.lion.Lion --optimizer.lr 3e-4

Run from the repository root (``examples`` is then importable) or put this file next to where you
run the command and use ``--optimizer lion.Lion``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    """``p -= lr * (sign(beta1 * m + (1 - beta1) * g) + weight_decay * p)``, then
    ``m = beta2 * m + (1 - beta2) * g``.

    Args:
        params: parameters or param groups.
        lr: step size (> 0); Lion wants 3-10x less than Adam.
        betas: interpolation for the update (beta1) and the momentum (beta2), each in [0, 1).
        weight_decay: decoupled weight decay (>= 0), scaled by lr as in AdamW.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be > 0)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} (must be in [0, 1))")
        if not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss
