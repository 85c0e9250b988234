"""Any optimizer for a population: one instance of its class per member, stepped together.

Member k's instance is built from member k's parameters and hyperparameters exactly as a single
``fit`` builds it, so it takes the same steps: nothing about the class needs to be known, and an
optimizer that computes something over all its parameters (GNW-Adam's ``||g||``) computes it per
member. The members' param groups are this optimizer's ``param_groups`` (the same dicts), so
``zero_grad``, LR schedulers and Lightning's per-group logging act on every member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_opt.optim.contract import has_modes


class _MemberStates(MutableMapping):
    """``state`` of every member's optimizer, keyed by parameter as ``Optimizer.state`` is.

    A member's entry that is not a parameter's (MADGRAD's step counter ``state['k']``, a global
    buffer) is keyed ``(member position, key)``: every member has its own.
    """

    def __init__(self, owner: MemberwiseOptimizer) -> None:
        self.owner = owner

    def _state_of(self, key: Any) -> tuple[MutableMapping, Any]:
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], int):
            position, own = key
            if 0 <= position < len(self.owner.members):
                return self.owner.members[position].state, own
            raise KeyError(key)
        for optimizer in self.owner.members:
            if any(p is key for g in optimizer.param_groups for p in g["params"]):
                return optimizer.state, key
        raise KeyError(key)

    def __getitem__(self, key: Any) -> Any:
        state, own = self._state_of(key)
        return state[own]

    def __setitem__(self, key: Any, value: Any) -> None:
        state, own = self._state_of(key)
        state[own] = value

    def __delitem__(self, key: Any) -> None:
        state, own = self._state_of(key)
        del state[own]

    def __iter__(self) -> Iterator[Any]:
        for position, optimizer in enumerate(self.owner.members):
            for key in optimizer.state:
                yield key if isinstance(key, Tensor) else (position, key)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.owner.members)


class MemberwiseOptimizer(torch.optim.Optimizer):
    """K optimizers, one per population member, that act as one.

    Args:
        members: member k's optimizer over member k's parameters.

    ``step`` steps every member (a closure runs once, first); ``state_dict`` holds each member's.
    ``select_members`` keeps some members after their parameters were rebuilt.
    """

    def __init__(self, members: Sequence[torch.optim.Optimizer]) -> None:
        if not members:
            raise ValueError("MemberwiseOptimizer needs at least one member optimizer")
        self.members = list(members)
        params = [p for o in self.members for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        # The members' own group dicts, so a change made through either is seen by both.
        self.param_groups[:] = [g for o in self.members for g in o.param_groups]
        self.state = _MemberStates(self)  # type: ignore[assignment]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "members") and self.param_groups:
            raise ValueError("a population's optimizer takes no param groups after it is built")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.members:
            optimizer.step()
        return loss

    def train(self) -> None:
        """Every member's ``train()`` (schedule-free optimizers)."""
        for optimizer in self.members:
            optimizer.train()

    def eval(self) -> None:
        """Every member's ``eval()``."""
        for optimizer in self.members:
            optimizer.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"members": [o.state_dict() for o in self.members]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("members")
        if saved is None or len(saved) != len(self.members):
            found = "none" if saved is None else len(saved)
            raise ValueError(
                f"the optimizer state holds {found} member(s); this population has "
                f"{len(self.members)}"
            )
        for optimizer, state in zip(self.members, saved, strict=True):
            optimizer.load_state_dict(state)
        self.param_groups[:] = [g for o in self.members for g in o.param_groups]

    def select_members(self, index: Tensor, params: Sequence[Sequence[Tensor]]) -> None:
        """Keep the members at positions ``index``; ``params[j]`` are the tensors that now hold
        kept member j's parameters (in the order of its param groups)."""
        kept = [self.members[i] for i in index.tolist()]
        for optimizer, new in zip(kept, params, strict=True):
            repoint(optimizer, new)
        self.members[:] = kept
        self.param_groups[:] = [g for o in kept for g in o.param_groups]

    @property
    def last_grad_norm(self) -> Tensor | None:
        """Each member's ``last_grad_norm``, ``(K,)``, where every member keeps one (GNW-Adam)."""
        norms = [getattr(o, "last_grad_norm", None) for o in self.members]
        return None if any(n is None for n in norms) else torch.stack(norms)

    def effective_lr(self, group: int = 0) -> Tensor | None:
        """Each member's ``effective_lr(group)``, ``(K,)``, where every member has one."""
        rates = []
        for optimizer in self.members:
            rate = getattr(optimizer, "effective_lr", None)
            value = rate(group) if rate is not None else None
            if value is None:
                return None
            rates.append(torch.as_tensor(value))
        return torch.stack(rates)


def repoint(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
    """Point ``optimizer``'s param groups at ``params`` (in their order), each parameter's state
    moved with it."""
    new = iter(params)
    for group in optimizer.param_groups:
        old = group["params"]
        group["params"] = [next(new) for _ in old]
        for before, after in zip(old, group["params"], strict=True):
            if before in optimizer.state:
                optimizer.state[after] = optimizer.state.pop(before)


class GroupedOptimizer(MemberwiseOptimizer):
    """A population's optimizer when its members train with different optimizers: one part per
    group of consecutive members, each part an optimizer over just those members' parameters
    (a stacked optimizer over slices of the stacked parameters, or a ``MemberwiseOptimizer``
    over each member's views), stepped together.

    Args:
        parts: the groups' optimizers, in member order.
        sizes: how many (live) members each part steps.

    ``effective_lr`` and ``last_grad_norm`` hold every member's value where its part keeps one
    and NaN where it keeps none; ``lacking_effective_lr`` marks the latter members (``(K,)``),
    whose single fit logs no effective step size.
    """

    def __init__(self, parts: Sequence[torch.optim.Optimizer], sizes: Sequence[int]) -> None:
        if len(parts) != len(sizes):
            raise ValueError(f"{len(parts)} parts but {len(sizes)} sizes")
        super().__init__(parts)
        self.sizes = list(sizes)
        self.lacking_effective_lr: Tensor | None = None
        self._lacking_parts: tuple[list[bool], list[int]] | None = None

    def train(self) -> None:
        for part in self.members:
            if _has_modes(part):
                part.train()

    def eval(self) -> None:
        for part in self.members:
            if _has_modes(part):
                part.eval()

    def _per_member(self, values: list[Tensor | None], like: Tensor) -> Tensor:
        return torch.cat([
            like.new_full((size,), float("nan")) if value is None else value.expand(size)
            for value, size in zip(values, self.sizes, strict=True)
        ])  # fmt: skip

    @property
    def last_grad_norm(self) -> Tensor | None:
        norms = [getattr(part, "last_grad_norm", None) for part in self.members]
        found = [n for n in norms if n is not None]
        return self._per_member(norms, found[0]) if found else None

    def effective_lr(self, group: int = 0) -> Tensor | None:
        rates = []
        for part in self.members:
            rate = getattr(part, "effective_lr", None)
            value = rate(group) if rate is not None else None
            rates.append(None if value is None else torch.as_tensor(value))
        found = [r for r in rates if r is not None]
        if not found:
            self.lacking_effective_lr = None
            return None
        lacking = [rate is None for rate in rates]
        if self._lacking_parts != (lacking, self.sizes):  # the parts changed: a new mask
            self._lacking_parts = (lacking, list(self.sizes))
            self.lacking_effective_lr = torch.cat([
                torch.full((size,), none, device=found[0].device)
                for none, size in zip(lacking, self.sizes, strict=True)
            ])  # fmt: skip
        return self._per_member(rates, found[0])

    def select_parts(self, kept: Sequence[tuple[int, Tensor, Sequence[Any]]]) -> None:
        """Keep, for each ``(part, local index, tensors)``, that part's members at positions
        ``local index`` (parts not named go); ``tensors`` now hold those members' parameters:
        a stacked part's (slices, in its param groups' order) or each member's (a list per
        member, for a ``MemberwiseOptimizer`` part)."""
        parts, sizes = [], []
        for position, index, tensors in kept:
            part = self.members[position]
            if isinstance(part, MemberwiseOptimizer):
                part.select_members(index, tensors)
            else:
                part.select_members(index)  # a stacked part narrows its state, then its params
                repoint(part, tensors)
            parts.append(part)
            sizes.append(len(index))
        self.members[:] = parts
        self.sizes = sizes
        self.lacking_effective_lr = self._lacking_parts = None  # the next step's
        self.param_groups[:] = [g for o in parts for g in o.param_groups]


def _has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a part has ``train()``/``eval()`` (a member's optimizer for a memberwise part)."""
    return has_modes(
        optimizer.members[0] if isinstance(optimizer, MemberwiseOptimizer) else optimizer
    )
