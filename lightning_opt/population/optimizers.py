"""The members' optimizers: one stacked optimizer over every member (a fast path of
``lightning_opt.optim.stacked``) or one instance of the class per member over views of the stacked
parameters (``MemberwiseOptimizer``), with each member's own scheduler."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_opt.optim import groups
from lightning_opt.optim.hypers import select
from lightning_opt.optim.memberwise import GroupedOptimizer, MemberwiseOptimizer
from lightning_opt.optim.registry import construct
from lightning_opt.optim.schedulers import (
    MemberwiseScheduler,
)


class MemberOptimizers:
    """Builds and feeds the members' optimizers (see the module docstring); a mixin of
    ``PopulationClassifier``, which sets ``stacked``, ``member_kwargs``,
    ``member_scheduler_kwargs`` and ``_member_params``."""

    @override
    def configure_optimizers(self) -> Any:
        if self.stacked is not None:
            factory, kwargs = self.stacked
            return factory(self.net.parameters(), member_dims=1, **kwargs)
        self._member_params = self._member_views()
        if len(self.groups) > 1:
            return self._grouped_optimizers()
        optimizer = MemberwiseOptimizer(self._member_instances(self.member_ids))
        return self._with_schedulers(optimizer, optimizer.members)

    def _member_instances(self, members: list[int]) -> list[torch.optim.Optimizer]:
        """Live members ``members``' own optimizers, over their views, as a single fit builds
        them."""
        names = [name for name, _ in self.net.named_parameters()]
        built = []
        for member in members:
            views = self._member_params[self.member_ids.index(member)]
            params = groups.split(zip(names, views, strict=True), self.param_group_rules)
            cls = self.groups[self.member_group[member]].optimizer_class
            built.append(construct(cls, params, self.member_kwargs[member]))
        return built

    def _with_schedulers(
        self, optimizer: torch.optim.Optimizer, member_optimizers: list[Any]
    ) -> Any:
        """``optimizer`` with each live member's own scheduler (``member_optimizers``: each
        live member's optimizer, ``None`` for one that trains without a scheduler)."""
        schedulers = []
        for member, member_optimizer in zip(self.member_ids, member_optimizers, strict=True):
            cls = self.groups[self.member_group[member]].scheduler_class
            kwargs = self.member_scheduler_kwargs[member]
            schedulers.append(None if cls is None else cls(member_optimizer, **kwargs))
        if all(s is None for s in schedulers):
            return optimizer
        scheduler = MemberwiseScheduler(schedulers, optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval},
        }

    def _live_groups(self) -> list[tuple[int, list[int]]]:
        """Each group with live members: its position in ``groups`` and its live members."""
        found: dict[int, list[int]] = {}
        for member in self.member_ids:
            found.setdefault(self.member_group[member], []).append(member)
        return list(found.items())

    def _grouped_optimizers(self) -> Any:
        """Members of several optimizer classes: a ``GroupedOptimizer`` with one part per group,
        a stacked optimizer over its slice of the stacked parameters where the group has a
        fast path, else one instance per member."""
        parts, sizes, per_member = [], [], []
        self._slices, self._slice_params = [], []
        for position, members in self._live_groups():
            group = self.groups[position]
            stacked = self._stacked_path(group)
            if stacked is None:
                part = MemberwiseOptimizer(self._member_instances(members))
                per_member += part.members
            else:
                first = self.member_ids.index(members[0])
                bounds = (first, first + len(members))
                views = self._slice_views(*bounds)
                local = torch.tensor([m - group.members[0] for m in members])
                factory, kwargs = stacked
                kwargs = {k: select(v, local) for k, v in kwargs.items()}
                part = factory(views, member_dims=1, **kwargs)
                self._slices.append(bounds)
                self._slice_params.append(views)
                per_member += [None] * len(members)  # a stacked group has no scheduler
            parts.append(part)
            sizes.append(len(members))
        return self._with_schedulers(GroupedOptimizer(parts, sizes), per_member)

    def select_parts(self, optimizer: GroupedOptimizer, keep: list[int]) -> None:
        """Point ``optimizer``'s parts at the members at old positions ``keep`` after the
        stacked parameters were narrowed to them (and the member views rebuilt): each part
        keeps its live members, a part with none goes."""
        new_position = {old: new for new, old in enumerate(keep)}
        views = self._grouped_views()
        kept, slices, slice_params, start = [], [], [], 0
        for position, (part, size) in enumerate(zip(optimizer.members, optimizer.sizes,
                                                    strict=True)):  # fmt: skip
            old = range(start, start + size)
            start += size
            local = [j for j, p in enumerate(old) if p in new_position]
            if not local:
                continue
            new = [new_position[old[j]] for j in local]
            if isinstance(part, MemberwiseOptimizer):
                tensors: list[Any] = [views[n] for n in new]
            else:
                bounds = (new[0], new[-1] + 1)
                tensors = self._slice_views(*bounds)
                slices.append(bounds)
                slice_params.append(tensors)
            kept.append((position, torch.tensor(local), tensors))
        optimizer.select_parts(kept)
        self._slices, self._slice_params = slices, slice_params

    def _slice_views(self, start: int, stop: int) -> list[Tensor]:
        """Members ``start:stop``'s parameters as leaf tensors sharing the stacked ones' memory."""
        return [nn.Parameter(p.data[start:stop]) for p in self.net.parameters()]

    @override
    def _plateau_metric(self) -> Tensor:
        return self.val_loss  # each member's own

    @override
    def _current_lr(self) -> Tensor | float | None:
        """Each member's learning rate, ``(K,)`` (a shared number on the stacked path; ``None``
        for a class that keeps none)."""
        optimizer = self.optimizers().optimizer
        if isinstance(optimizer, MemberwiseOptimizer):
            if isinstance(optimizer, GroupedOptimizer):
                rates = torch.cat([_part_lrs(o, n) for o, n in zip(optimizer.members,
                                                                   optimizer.sizes, strict=True)])  # fmt: skip
                return rates.to(self.device)
            rates = [o.param_groups[0].get("lr") for o in optimizer.members]
            if any(rate is None for rate in rates):
                return None  # a class that keeps no learning rate
            return torch.tensor([float(rate) for rate in rates], device=self.device)
        lr = optimizer.param_groups[0].get("lr")
        return lr.to(self.device) if isinstance(lr, Tensor) else lr

    def _member_views(self) -> list[list[Tensor]]:
        """Each member's parameters as leaf tensors sharing the stacked parameters' memory: what
        member k's own optimizer updates in place."""
        params = list(self.net.parameters())
        return [[nn.Parameter(p.data[j]) for p in params] for j in range(len(params[0]))]

    def _memberwise(self) -> MemberwiseOptimizer | None:
        if not self._trainer:
            return None
        found = [o for o in self.trainer.optimizers if isinstance(o, MemberwiseOptimizer)]
        return found[0] if found else None

    @override
    def _zero_grad(self, optimizer: Any) -> None:
        optimizer.zero_grad()
        for p in self._params:  # the stacked gradients, when member optimizers hold views
            p.grad = None

    @override
    def _share_grads(self) -> None:
        if not self._share:
            return
        for member, views in enumerate(self._member_params if self._share_members else ()):
            for view, p in zip(views, self._params, strict=True):
                view.grad = None if p.grad is None else p.grad[member]
        for (start, stop), views in zip(self._slices, self._slice_params, strict=True):
            for view, p in zip(views, self._params, strict=True):
                view.grad = None if p.grad is None else p.grad[start:stop]

    def _views_current(self) -> bool:
        return len(self._member_params) == self.num_members and all(
            v.data_ptr() == p.data[j].data_ptr() and v.dtype == p.dtype
            for j, views in enumerate(self._member_params)
            for v, p in zip(views, self.net.parameters(), strict=True)
        )

    def _grouped_views(self) -> list[list[Tensor]]:
        """Each member's views in the order of its optimizer's param groups (what
        ``MemberwiseOptimizer.select_members`` maps by position)."""
        if not self.param_group_rules:
            return self._member_params
        named = [
            (n, v)
            for (n, _), v in zip(self.net.named_parameters(), self._member_params[0], strict=True)
        ]
        order = groups.group_order(named, self.param_group_rules)
        return [[views[i] for i in order] for views in self._member_params]

    def member_parameters(self) -> list[list[Tensor]]:
        """Each live member's parameters as its own leaf tensors (views of the stacked ones),
        whose ``.grad`` are views of the stacked gradients after each backward."""
        return self._member_params


def _part_lrs(optimizer: torch.optim.Optimizer, size: int) -> Tensor:
    """The learning rates of a part's ``size`` members, ``(size,)`` (NaN where a class keeps
    none)."""
    if isinstance(optimizer, MemberwiseOptimizer):
        rates = [o.param_groups[0].get("lr") for o in optimizer.members]
        return torch.tensor([float("nan") if r is None else float(r) for r in rates])
    lr = optimizer.param_groups[0].get("lr")
    if lr is None:
        return torch.full((size,), float("nan"))
    return torch.as_tensor(lr, dtype=torch.float32).cpu().expand(size).clone()
