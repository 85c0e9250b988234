"""Gradient and weight norms, with an optional leading *member* dimension.

Every function here treats the first ``member_dims`` dimensions of each tensor as independent
members (copies of the model trained at once) and reduces over the rest. With ``member_dims=0``
(the single-model case) a norm is a 0-dim tensor; with ``member_dims=1`` it has shape ``(K,)``.
Nothing here calls ``.item()``: results stay on the tensors' device, so callers never sync the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def tensor_norms(tensors: Sequence[Tensor], member_dims: int = 0) -> list[Tensor]:
    """The L2 (Frobenius) norm of each tensor, per member.

    Returns one tensor per input, of shape ``t.shape[:member_dims]``.
    """
    if member_dims < 0:
        raise ValueError(f"member_dims must be >= 0, got {member_dims}")
    if not tensors:
        return []
    if member_dims == 0:
        return list(torch._foreach_norm(list(tensors)))
    return [torch.linalg.vector_norm(t, dim=tuple(range(member_dims, t.dim()))) for t in tensors]


def global_norm(tensors: Sequence[Tensor], member_dims: int = 0) -> Tensor:
    """The L2 norm of all ``tensors`` concatenated, per member (``torch.nn.utils.get_total_norm``)."""
    if not tensors:
        raise ValueError("global_norm needs at least one tensor")
    norms = tensor_norms(tensors, member_dims)
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def broadcast_to_members(values: Tensor, like: Tensor, member_dims: int = 0) -> Tensor:
    """View per-member ``values`` (shape ``like.shape[:member_dims]``) so they broadcast against ``like``."""
    return values.reshape(values.shape + (1,) * (like.dim() - member_dims))
