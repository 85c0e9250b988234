"""Which members are alive: dropping members (a non-finite loss, or a caller's pruning), and
narrowing every per-member tensor and setting to the survivors; each member's best weights."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_opt.optim.hypers import select
from lightning_opt.optim.memberwise import GroupedOptimizer
from lightning_opt.population.member_logging import as_list
from lightning_opt.training.loop import NonFiniteLossError

#: The reason of a member that ended at its own last epoch (``member_epochs``): not a drop.
FINISHED = "finished at its own last epoch"


class MemberSelection:
    """Dropping and narrowing members, and each member's best weights; a mixin of
    ``PopulationClassifier``."""

    @torch.no_grad()
    def _keep_best(self, loss: Tensor) -> None:
        params = list(self.net.parameters())
        if self._best_loss is None:
            self._best_loss = torch.full_like(loss, float("inf"))
            self._best_state = [p.detach().clone() for p in params]
        improved = loss < self._best_loss  # NaN never improves
        self._best_loss = torch.where(improved, loss, self._best_loss)
        for best, p in zip(self._best_state, params, strict=True):
            mask = improved.reshape(-1, *([1] * (p.dim() - 1)))
            best.copy_(torch.where(mask, p.detach(), best))

    @torch.no_grad()
    def use_best_weights(self) -> None:
        """Put each live member's weights of its lowest val/loss epoch in place (needs
        ``track_best`` during the fit); the optimizer state is left as it is."""
        if self._best_loss is None:
            raise RuntimeError("use_best_weights needs track_best = True during fit")
        for best, p in zip(self._best_state, self.net.parameters(), strict=True):
            p.copy_(best)

    def drop_members(self, members: dict[int, str]) -> None:
        """Stop training ``{member index: reason}`` at the end of this epoch."""
        for member, reason in members.items():
            if member in self.member_ids:
                self._to_drop.setdefault(member, reason)

    def _apply_drops(self) -> None:
        if not self._to_drop:
            return
        keep = [i for i, m in enumerate(self.member_ids) if m not in self._to_drop]
        for member, reason in self._to_drop.items():
            if reason != FINISHED:
                self.dropped[member] = reason
            if self.member_loggers:
                loggers = self.member_loggers[self.member_ids.index(member)]
                for logger in as_list(loggers):
                    logger.finalize("failed" if "non-finite" in reason else "success")
        self._to_drop = {}
        if not keep:
            self.trainer.should_stop = True
            self.member_ids, self._data_seeds[:] = [], []
            if self.member_loggers:
                self.member_loggers = []
            if len(self.dropped) == len(self.all_seeds) and all(
                "non-finite" in r for r in self.dropped.values()
            ):
                raise NonFiniteLossError(
                    "every member's training loss became non-finite; "
                    "lower the learning rate or add clipping"
                )
            return
        self.select_members(keep)

    @torch.no_grad()
    def select_members(self, keep: list[int]) -> None:
        """Keep only the live members at positions ``keep``: parameters, optimizer state,
        hyperparameters, data orders, loggers and clipping statistics are narrowed together."""
        index = torch.tensor(keep, device=self.device)
        for p in self.net.parameters():
            p.data = p.data.index_select(0, index)
            p.grad = None
        memberwise = self._memberwise()
        if self._member_params:
            self._member_params = self._member_views()
        if memberwise is not None:
            if isinstance(memberwise, GroupedOptimizer):
                self.select_parts(memberwise, keep)
            else:
                memberwise.select_members(index, self._grouped_views())
            scheduled = any(g.scheduler_class for g in self.groups)
            for scheduler in as_list(self.lr_schedulers() or []) if scheduled else []:
                scheduler.select_members(index)
        else:
            for optimizer in self.trainer.optimizers if self._trainer else []:
                optimizer.select_members(index)  # the stacked fast path's MemberOptimizer
        self._select_rules(keep)
        if self.stacked is not None:  # a resumed run builds its optimizer after this
            factory, kwargs = self.stacked
            self.stacked = factory, {k: select(v, index) for k, v in kwargs.items()}
        self._first_bad_step = self._first_bad_step.index_select(0, index)
        if self._best_loss is not None:
            self._best_loss = self._best_loss.index_select(0, index.to(self._best_loss.device))
            self._best_state = [t.index_select(0, index) for t in self._best_state]
        self.member_ids = [self.member_ids[i] for i in keep]
        self.seeds = [self.seeds[i] for i in keep]
        if self._data_seeds:  # set up by a fit: the data order narrows in place
            self._data_seeds[:] = [self._data_seeds[i] for i in keep]
        if self.member_loggers:
            self.member_loggers = [self.member_loggers[i] for i in keep]
        self._params = list(self.net.parameters())
