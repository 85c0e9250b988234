"""Unit-wise adaptive gradient clipping (AGC; Brock et al. 2021, NFNets) as a clipping rule of
one's own: a subclass of ``GradientClippingCallback`` that lightning_opt knows nothing about.

Each output unit's gradient row ``G_i`` (a row of a weight matrix, an entry of a bias) is
rescaled to norm ``clipping * max(||W_i||, eps)`` when it is larger.

    python -m lightning_opt fit --trainer.callbacks+=examples.agc.AGC \\
        --trainer.callbacks.clipping 0.05
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.clipping.kernels import ClipStats, check_positive
from lightning_opt.core.search_space import SearchParam


def unitwise_norms(t: Tensor) -> Tensor:
    """The L2 norm of each output unit: rows of a matrix, entries of a vector (kept as a column)."""
    if t.dim() <= 1:
        return t.abs()
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


class AGC(GradientClippingCallback):
    """Clip each output unit's gradient to ``clipping * max(||W_unit||, eps)``.

    Args:
        clipping: allowed gradient norm per unit of weight norm (> 0); NFNets use 0.01-0.16.
        eps: floor on a unit's weight norm (> 0), so zero-initialised biases still learn.
        log_stats: log ``clip/fraction_clipped`` and ``clip/mean_scale`` each epoch.
    """

    search_space = (SearchParam("clipping", 1e-3, 1.0, log=True),)

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, log_stats: bool = True) -> None:
        check_positive("clipping", clipping)
        check_positive("eps", eps)
        super().__init__(log_stats)
        self.clipping = clipping
        self.eps = eps

    @override
    @torch.no_grad()
    def clip_(
        self, parameters: Sequence[Tensor], member_dims: int = 0, overrides=None
    ) -> ClipStats:
        fractions, scales = [], []
        for p in parameters:
            if p.grad is None:
                continue
            max_norm = unitwise_norms(p).clamp_min(self.eps) * self.clipping
            grad_norm = unitwise_norms(p.grad)
            scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), 1.0)
            p.grad.mul_(scale)
            fractions.append((scale < 1).to(p.dtype).mean())
            scales.append(scale.mean())
        if not fractions:
            return ClipStats(torch.zeros(()), torch.ones(()))
        return ClipStats(torch.stack(fractions).mean(), torch.stack(scales).mean())
