"""The members' optimizers: one stacked optimizer over every member (a fast path of
``lightning_opt.optim.stacked``) or one instance of the class per member over views of the stacked
parameters (``MemberwiseOptimizer``), with each member's own scheduler."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_opt.optim import groups
from lightning_opt.optim.memberwise import MemberwiseOptimizer
from lightning_opt.optim.registry import construct
from lightning_opt.optim.schedulers import (
    MemberwiseScheduler,
)


class MemberOptimizers:
    """Builds and feeds the members' optimizers (see the module docstring); a mixin of
    ``PopulationClassifier``, which sets ``stacked``, ``member_kwargs``,
    ``member_scheduler_kwargs`` and ``_member_params``."""

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.stacked is not None:
            factory, kwargs = self.stacked
            return factory(self.net.parameters(), member_dims=1, **kwargs)
        self._member_params = self._member_views()
        names = [name for name, _ in self.net.named_parameters()]
        optimizer = MemberwiseOptimizer(
            [
                construct(
                    self.optimizer_class,
                    groups.split(zip(names, params, strict=True), self.param_group_rules),
                    self.member_kwargs[member],
                )
                for member, params in zip(self.member_ids, self._member_params, strict=True)
            ]
        )
        if self.scheduler_class is None:
            return optimizer
        scheduler = MemberwiseScheduler(
            [
                self.scheduler_class(member_optimizer, **self.member_scheduler_kwargs[member])
                for member, member_optimizer in zip(self.member_ids, optimizer.members, strict=True)
            ],
            optimizer,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval},
        }

    @override
    def _plateau_metric(self) -> Tensor:
        return self.val_loss  # each member's own

    @override
    def _current_lr(self) -> Tensor | float:
        """Each member's learning rate, ``(K,)`` (a shared number on the stacked path)."""
        optimizer = self.optimizers().optimizer
        if isinstance(optimizer, MemberwiseOptimizer):
            rates = [float(o.param_groups[0]["lr"]) for o in optimizer.members]
            return torch.tensor(rates, device=self.device)
        lr = optimizer.param_groups[0]["lr"]
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
        for member, views in enumerate(self._member_params):
            for view, p in zip(views, self._params, strict=True):
                view.grad = None if p.grad is None else p.grad[member]

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
