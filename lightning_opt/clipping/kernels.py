"""Gradient clipping rules, in place, with an optional leading *member* dimension.

- ``clip_grad_by_weight_norm_``: the research idea. Each tensor's gradient is clipped to
  ``clip_factor * max(||W||_F, eps)``, a threshold that scales with its own weight.
- ``clip_grad_norm_per_tensor_``: the like-for-like baseline, one fixed threshold per tensor.
- ``clip_grad_norm_global_``: the usual ``torch.nn.utils.clip_grad_norm_`` (one norm over all).

All three share one rescaling step and never call ``.item()``, so clipping does not sync the host.
With ``member_dims=1`` every tensor holds K stacked copies of a model; norms, thresholds and stats
are per member, and member k's result equals clipping member k's slices alone.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from numbers import Real
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_opt.core.norms import broadcast_to_members, global_norm, tensor_norms

Parameters = Tensor | Iterable[Tensor]
Threshold = (
    float | Tensor
)  # a number, or one value per member (shape ``tensor.shape[:member_dims]``)


class ClipStats(NamedTuple):
    """What one clipping call did; 0-dim, or shape ``(K,)`` with one entry per member."""

    fraction_clipped: Tensor  # fraction of tensors whose gradient was rescaled
    mean_scale: Tensor  # mean factor applied over tensors (1.0 = untouched)
    #: What the rule compared with its setting, one row per tensor (or one for a global norm):
    #: ``||g|| / max(||W||, eps)`` for weight-norm clipping, ``||g||`` for a fixed threshold;
    #: shape ``(N, *members)``. ``None`` where a rule does not say.
    compared: Tensor | None = None


#: ``id`` of each live CPU tensor found positive and finite, with a weak reference to it and its
#: version then: a population's per-member thresholds are checked once, not at every step (an
#: in-place change bumps the version; the entry goes with the tensor).
_CHECKED: dict[int, tuple[weakref.ref, int]] = {}


def _checked_before(value: Tensor) -> bool:
    entry = _CHECKED.get(id(value))
    return entry is not None and entry[0]() is value and entry[1] == value._version


def _remember_checked(value: Tensor) -> None:
    key = id(value)
    _CHECKED[key] = (weakref.ref(value, lambda _: _CHECKED.pop(key, None)), value._version)


def check_positive(name: str, value: object) -> None:
    """Raise unless ``value`` is a positive finite number (or a tensor of them, checked on CPU)."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        # Values of a tensor on an accelerator are trusted: checking them would sync the host.
        if value.device.type != "cpu" or _checked_before(value):
            return
        if not bool(((value > 0) & value.isfinite()).all()):
            raise ValueError(f"{name} must hold positive finite numbers, got {value.tolist()}")
        _remember_checked(value)
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _as_threshold(name: str, value: Threshold, like: Tensor) -> Tensor:
    """``value`` as a tensor on ``like``'s device and dtype that broadcasts against ``like``."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape != like.shape[1:]:
        raise ValueError(
            f"{name} must be a number or hold one value per member (shape "
            f"{tuple(like.shape[1:])}), got shape {tuple(value.shape)}"
        )
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def params_with_grads(parameters: Parameters) -> tuple[list[Tensor], list[Tensor]]:
    """All parameters, and those that have a gradient."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return params, [p for p in params if p.grad is not None]


def no_grads(params: list[Tensor], member_dims: int) -> ClipStats:
    """Stats of a call that had nothing to clip, shaped like the members of the first parameter."""
    shape = params[0].shape[:member_dims] if params else ()
    device = params[0].device if params else None
    return ClipStats(torch.zeros(shape, device=device), torch.ones(shape, device=device))


def rescale_(
    grads: list[Tensor],
    norms: Tensor,
    thresholds: Tensor,
    member_dims: int,
    compared: Tensor | None = None,
) -> ClipStats:
    """Rescale gradients whose norm exceeds their threshold to norm exactly the threshold.

    ``norms`` has shape ``(N, *members)`` with one row per gradient, or ``(1, *members)`` for one
    norm shared by all (global clipping); ``thresholds`` broadcasts against it.
    """
    clipped = norms > thresholds
    scales = torch.where(clipped, thresholds / norms, 1.0)
    rows = list(scales.unbind(0)) if len(scales) == len(grads) else [scales[0]] * len(grads)
    torch._foreach_mul_(
        grads, [broadcast_to_members(s, g, member_dims) for s, g in zip(rows, grads, strict=True)]
    )
    return ClipStats(clipped.to(scales.dtype).mean(0), scales.mean(0), compared)


@torch.no_grad()
def clip_grad_by_weight_norm_(
    parameters: Parameters, clip_factor: Threshold, eps: float = 1e-3, *, member_dims: int = 0
) -> ClipStats:
    """Clip each tensor's gradient norm to ``clip_factor * max(||W||_F, eps)``, in place.

    Args:
        parameters: a tensor or tensors; those without ``.grad`` are skipped.
        clip_factor: allowed gradient norm per unit of weight norm (> 0); a number, or a tensor of
            one value per member.
        eps: floor on the weight norm, so a zero-initialised tensor (a bias) still gets a nonzero
            threshold ``clip_factor * eps`` (AGC's fix) instead of a gradient zeroed forever.
        member_dims: leading dimensions of every tensor that index independent members.
    """
    check_positive("clip_factor", clip_factor)
    check_positive("eps", eps)
    params, with_grads = params_with_grads(parameters)
    if not with_grads:
        return no_grads(params, member_dims)
    grads = [p.grad for p in with_grads]
    norms = torch.stack(tensor_norms(grads, member_dims))
    weight_norms = torch.stack(tensor_norms(with_grads, member_dims)).to(norms.dtype)
    floored = weight_norms.clamp_min(eps)
    thresholds = _as_threshold("clip_factor", clip_factor, norms) * floored
    return rescale_(grads, norms, thresholds, member_dims, compared=norms / floored)


@torch.no_grad()
def clip_grad_norm_per_tensor_(
    parameters: Parameters, clip_value: Threshold, *, member_dims: int = 0
) -> ClipStats:
    """Clip each tensor's gradient norm to ``clip_value`` (> 0), in place.

    ``clip_value`` is a number, or a tensor of one value per member; see
    ``clip_grad_by_weight_norm_`` for the other arguments.
    """
    check_positive("clip_value", clip_value)
    params, with_grads = params_with_grads(parameters)
    if not with_grads:
        return no_grads(params, member_dims)
    grads = [p.grad for p in with_grads]
    norms = torch.stack(tensor_norms(grads, member_dims))
    threshold = _as_threshold("clip_value", clip_value, norms)
    return rescale_(grads, norms, threshold, member_dims, compared=norms)


@torch.no_grad()
def clip_grad_norm_global_(
    parameters: Parameters, clip_value: Threshold, *, member_dims: int = 0
) -> ClipStats:
    """Clip the norm of all gradients together to ``clip_value`` (> 0), in place.

    Like ``torch.nn.utils.clip_grad_norm_``; ``fraction_clipped`` is 1 where it fired, else 0.
    """
    check_positive("clip_value", clip_value)
    params, with_grads = params_with_grads(parameters)
    if not with_grads:
        return no_grads(params, member_dims)
    grads = [p.grad for p in with_grads]
    norm = global_norm(grads, member_dims).unsqueeze(0)
    threshold = _as_threshold("clip_value", clip_value, norm)
    return rescale_(grads, norm, threshold, member_dims, compared=norm)
