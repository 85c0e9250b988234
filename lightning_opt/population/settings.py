"""Each member's settings from ``member_hparams``: a name the optimizer's constructor takes goes
to each member's optimizer, else one the LR scheduler's takes to each member's scheduler, else it
is a clipping rule's per-member setting (checked against the rules when the fit sets up)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning_opt.optim.registry import constructor_arguments
from lightning_opt.optim.schedulers import check_scheduler, scheduler_arguments
from lightning_opt.optim.stacked import stacked_optimizer

#: A group's ``clipping`` when the groups give none: the trainer's clipping callbacks act on all.
NOT_GIVEN = "not given"


@dataclass(frozen=True)
class MemberSettings:
    """What each member trains with (lists: one entry per member)."""

    #: Each member's optimizer arguments: the shared ones with its own values on top.
    optimizer_kwargs: list[dict[str, Any]]
    #: Each member's scheduler arguments (empty without a scheduler).
    scheduler_kwargs: list[dict[str, Any]]
    #: ``{name: [value of each member]}`` for the clipping rules.
    clipping: dict[str, list[Any]]
    #: ``(factory, kwargs)`` of the stacked fast path (``lightning_opt.optim.stacked``), or
    #: ``None``: one optimizer instance per member.
    stacked: Any


def per_member(name: str, values: Sequence[Any], members: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != members:
        raise ValueError(
            f"member_hparams[{name!r}] must hold one value per member ({members}), got {values!r}"
        )
    return [tuple(v) if isinstance(v, list) else v for v in values]  # betas=[0.9, 0.99]


def _whole_tuples(
    columns: dict[str, list[Any]], taken: dict[str, Any], shared: dict[str, Any], members: int
) -> dict[str, list[Any]]:
    """``betas.1`` columns folded into a ``betas`` column: each member's whole tuple."""
    out = {}
    for name, values in columns.items():
        base, _, index = name.rpartition(".")
        if not (base in taken and index.isdigit()):
            out[name] = values
            continue
        whole = out.get(base) or [list(shared[base]) for _ in range(members)]
        whole = [list(w) for w in whole]
        for member, value in enumerate(values):
            whole[member][int(index)] = value
        out[base] = [tuple(w) for w in whole]
    return out


def member_settings(
    cls: type,
    shared: dict[str, Any],
    scheduler_class: type | None,
    scheduler_shared: dict[str, Any] | None,
    member_hparams: dict[str, Any],
    members: int,
) -> MemberSettings:
    """Split ``member_hparams`` (``ValueError``, one line, for a value a member cannot take)."""
    columns = {name: per_member(name, v, members) for name, v in member_hparams.items()}
    taken = constructor_arguments(cls)
    columns = _whole_tuples(columns, taken, shared, members)
    scheduled = scheduler_arguments(scheduler_class) if scheduler_class else {}
    scheduled = {n: v for n, v in columns.items() if n in scheduled and n not in taken}
    scheduler_kwargs = [
        {**(scheduler_shared or {}), **{n: v[i] for n, v in scheduled.items()}}
        for i in range(members)
    ] if scheduler_class else []  # fmt: skip
    for kwargs in scheduler_kwargs:
        check_scheduler(scheduler_class, kwargs)
    clipping = {n: v for n, v in columns.items() if n not in taken and n not in scheduled}
    for name, values in clipping.items():
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise ValueError(
                f"member_hparams[{name!r}]: {cls.__name__} takes no argument {name!r}, and a "
                f"clipping setting is a number per member, got {values}"
            )
    optimizer_kwargs = [
        {**shared, **{n: v[i] for n, v in columns.items() if n in taken}} for i in range(members)
    ]
    own = {n for n in columns if n in taken}
    # A scheduler sets each param group's lr as one number: the per-member optimizers then.
    stacked = None if scheduler_class else stacked_optimizer(cls, optimizer_kwargs, own)
    return MemberSettings(optimizer_kwargs, scheduler_kwargs, clipping, stacked)


@dataclass(frozen=True)
class MemberGroup:
    """Consecutive members that train with one optimizer (and LR scheduler) class: all of a
    population's members, or one group of a population whose members train with several."""

    optimizer_class: type
    #: ``{class_path, init_args}``, every constructor default filled in.
    optimizer: dict[str, Any]
    scheduler_class: type | None
    lr_scheduler: dict[str, Any] | None
    #: The original indices of its members.
    members: range
    settings: MemberSettings
    #: ``member_hparams`` of its members, as given.
    member_hparams: dict[str, list[Any]]
    #: When its scheduler steps: the population's, or (a group without one) its runs' setting.
    lr_interval: str = "epoch"
    #: Its own clipping rule ``{class_path, init_args}`` (``None``: none) where the groups give
    #: theirs (``PopulationClassifier``'s ``clipping_rules``); ``NOT_GIVEN``: the trainer's rule.
    clipping: Any = NOT_GIVEN

    def entry(self) -> dict[str, Any]:
        """What the group is, as a population checkpoint records it."""
        entry = {
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "size": len(self.members),
            "member_hparams": self.member_hparams,
            "lr_interval": self.lr_interval,
        }
        if self.clipping != NOT_GIVEN:
            entry["clipping"] = self.clipping
        return entry
