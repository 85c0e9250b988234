"""Gradient clipping: the rules as in-place kernels with an optional member dimension
(``kernels``) and the Lightning callbacks that apply them before each optimizer step
(``callbacks``). A population's per-member clipping builds on both (``population.rules``)."""

from lightning_opt.clipping.kernels import (
    ClipStats,
    clip_grad_by_weight_norm_,
    clip_grad_norm_global_,
    clip_grad_norm_per_tensor_,
)

__all__ = [
    "ClipStats",
    "clip_grad_by_weight_norm_",
    "clip_grad_norm_global_",
    "clip_grad_norm_per_tensor_",
]
