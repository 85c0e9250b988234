"""What a population's constructor checks, as a record (``PopulationPlan``): its members'
groups, settings, clipping rules and step contract, checked once.

``PopulationPlan.of`` is the one place that decides whether a set of runs can train as one
population. ``PopulationClassifier`` builds itself from a plan; a command that only needs to
know (``tune``'s and ``compare``'s checks before their first trial) asks the plan, which builds
one net per optimizer group (the group's first member, to take its pre-flight step) instead of
every member and the population around them. The pre-flight steps are remembered
(``optim.registry.check_optimizer``), so the population built later takes none of them again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from torch import nn

from lightning_opt.models import build_net, resolve_net_argument
from lightning_opt.optim import groups as param_groups_module
from lightning_opt.optim.contract import StepContract
from lightning_opt.optim.registry import (
    check_optimizer,
    check_required,
    resolve_optimizer,
    supports_population,
    takes_model,
)
from lightning_opt.optim.schedulers import resolve_scheduler
from lightning_opt.population.rules import check_member_clipping, group_rules
from lightning_opt.population.settings import NOT_GIVEN, MemberGroup, member_settings
from lightning_opt.population.stacking import why_not_stackable


class NotAPopulation(ValueError):
    """Runs that cannot train as one population, and why (``reason``, one line); its message
    says to train them one run at a time."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: train it one run at a time")
        self.reason = reason


def class_refusal(cls: type) -> str | None:
    """Why an optimizer class cannot train members of a population by what it declares (one
    line), or ``None``: ``supports_population = False``, or a constructor that takes the model."""
    if not supports_population(cls):
        return f"{cls.__name__} declares supports_population = False"
    if takes_model(cls):
        return f"{cls.__name__} takes the model itself"
    return None


@dataclass(frozen=True)
class PopulationPlan:
    """A population's checked settings.

    Attributes:
        net_class, net: the members' net class and its spelled-out ``{class_path, init_args}``.
        member_epochs: each member's own last epoch, or ``None``: the trainer's.
        param_group_rules: the checked ``param_groups`` rules.
        groups: one ``MemberGroup`` per run of consecutive members of one optimizer.
        member_kwargs, member_scheduler_kwargs: each member's optimizer (and scheduler) arguments.
        clipping_rules, member_rule, member_clipping: as ``population.rules.group_rules``.
        stacked: the one group's stacked fast path, or ``None``.
        step_contract: what the population's step needs.
        nets: every member's net (``build=True``), else empty.
    """

    net_class: type[nn.Module]
    net: dict[str, Any]
    member_epochs: list[int] | None
    param_group_rules: list[dict[str, Any]]
    groups: list[MemberGroup]
    member_kwargs: list[dict[str, Any]]
    member_scheduler_kwargs: list[dict[str, Any] | None]
    clipping_rules: Any
    member_rule: list[Any]
    member_clipping: dict[str, list[Any]]
    stacked: Any
    step_contract: StepContract
    nets: list[nn.Module]

    @classmethod
    def of(
        cls,
        seeds: Sequence[int],
        optimizer: Any = "adam",
        member_hparams: dict[str, list] | None = None,
        lr_scheduler: Any = None,
        lr_interval: str = "epoch",
        net: Any = "mlp",
        param_groups: list[dict[str, Any]] | None = None,
        *,
        input_size: int,
        num_classes: int,
        member_groups: list[dict[str, Any]] | None = None,
        member_epochs: list[int] | None = None,
        hparams: Any = None,
        build: bool = False,
    ) -> PopulationPlan:
        """Check a population of these arguments (``PopulationClassifier``'s; ``hparams``: the
        module's recorded ones), ``ValueError`` (one line) if it cannot train; ``build``: also
        build every member's net, as ``fit --seed_everything SEED`` would."""
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        net_class, net_record = resolve_net_argument(net, hparams or {"net": net})
        if not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds
        ):
            raise ValueError(
                f"seeds must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}"
            )
        k = len(seeds)
        if member_epochs is not None and (
            len(member_epochs) != k
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in member_epochs)
        ):
            raise ValueError(
                f"member_epochs must hold one positive integer per member ({k}), got "
                f"{member_epochs!r}"
            )
        rules = param_groups_module.check_rules(param_groups)
        specs = _group_specs(optimizer, lr_scheduler, lr_interval, member_hparams, member_groups, k)
        built = [_member_group(spec, start) for spec, start in specs]
        member_kwargs = [kw for g in built for kw in g.settings.optimizer_kwargs]
        for group in built:
            check_required(group.optimizer_class, member_kwargs[group.members[0]])
        scheduler_kwargs = [
            kw for g in built
            for kw in (g.settings.scheduler_kwargs or [None] * len(g.members))
        ]  # fmt: skip
        clipping = group_rules(built)
        stacked = None if rules or len(built) > 1 else built[0].settings.stacked
        # Every member has the same architecture: the first one's probe speaks for all. A check
        # builds only each group's first member, whose pre-flight step speaks for its class.
        wanted = range(k) if build else sorted({g.members[0] for g in built})
        nets: dict[int, nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            for member in wanted:
                # What seed_everything does before fit builds, for the CPU generator the net is
                # built with: torch.manual_seed would also queue a CUDA seeding (and record a
                # stack trace for it, 0.4 ms) per member, leaving the last member's seed to land
                # on the CUDA generator when CUDA starts.
                torch.default_generator.manual_seed(seeds[member])
                probe = not nets
                nets[member] = build_net(
                    net_class, net_record["init_args"], input_size, num_classes, probe
                )
        why = why_not_stackable(nets[min(nets)], input_size)
        if why is not None:
            raise NotAPopulation(why)
        contracts = []
        for group in built:
            opt = group.optimizer_class
            first = group.members[0]
            constructed: set[str] = set()  # the arguments a member's constructor has checked
            for member in group.members:
                # As a single fit would, first; each group's first step stands for its class's.
                # The constructor checks arguments, not weights: members of the same arguments
                # (every seed of one run) are checked once.
                arguments = json.dumps(member_kwargs[member], sort_keys=True, default=repr)
                if member != first and arguments in constructed:
                    continue
                constructed.add(arguments)
                sizes = (input_size, num_classes) if member == first else (None, None)
                contract = check_optimizer(
                    opt, nets.get(member, nets[first]), member_kwargs[member], *sizes, rules,
                    net_spec=net_record,
                )  # fmt: skip
                if member == first:
                    contracts.append(contract)
            why = contracts[-1].why_not_population(opt.__name__)
            if why is not None:
                raise NotAPopulation(why)
        return cls(
            net_class, net_record, None if member_epochs is None else list(member_epochs),
            rules, built, member_kwargs, scheduler_kwargs, *clipping, stacked,
            _population_contract(contracts), [nets[m] for m in range(k)] if build else [],
        )  # fmt: skip

    def check_clipping(self, callbacks: Sequence[Any]) -> None:
        """Refuse, before any training, member settings that no clipping rule among the
        trainer's ``callbacks`` takes (``population.rules.check_member_clipping``)."""
        check_member_clipping(
            self.clipping_rules, self.member_clipping, self.groups[0].optimizer_class,
            len(self.member_kwargs), callbacks,
        )  # fmt: skip


def _group_specs(
    optimizer: Any, lr_scheduler: Any, lr_interval: str, member_hparams: dict[str, list] | None,
    member_groups: list[dict[str, Any]] | None, members: int,
) -> list[tuple[dict[str, Any], int]]:  # fmt: skip
    """Each group's ``{optimizer, lr_scheduler, size, member_hparams}`` and its first member."""
    if member_groups is None:
        spec = {"optimizer": optimizer, "lr_scheduler": lr_scheduler, "size": members,
                "member_hparams": dict(member_hparams or {}), "lr_interval": lr_interval}  # fmt: skip
        return [(spec, 0)]
    if member_hparams:
        raise ValueError("with member_groups, give each group's member_hparams in its entry")
    if not member_groups:
        raise ValueError("member_groups must hold at least one group")
    own_clipping = any("clipping" in e for e in member_groups)  # a group without clips nothing
    specs, start = [], 0
    for entry in member_groups:
        unknown = set(entry) - {"optimizer", "lr_scheduler", "size", "member_hparams",
                                "lr_interval", "clipping"}  # fmt: skip
        size = entry.get("size")
        if unknown or isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                "each member_groups entry is {optimizer, lr_scheduler, size, member_hparams, "
                f"lr_interval, clipping}}}} with a positive size, got {entry!r}"
            )
        spec = {"lr_scheduler": None, "member_hparams": {}, "lr_interval": lr_interval, **entry}
        if own_clipping:
            spec.setdefault("clipping", None)
        if spec["lr_scheduler"] is not None and spec["lr_interval"] != lr_interval:
            raise ValueError(
                f"a member group steps its scheduler every {spec['lr_interval']} and the "
                f"population every {lr_interval}: train them as separate populations"
            )
        specs.append((spec, start))
        start += size
    if start != members:
        raise ValueError(f"member_groups hold {start} members; seeds give {members}")
    first = specs[0][0]
    same = (
        resolve_optimizer(optimizer)[1] == resolve_optimizer(first["optimizer"])[1]
        and (resolve_scheduler(lr_scheduler) or (None, None))[1]
        == (resolve_scheduler(first["lr_scheduler"]) or (None, None))[1]
    )
    if not same:
        raise ValueError("with member_groups, optimizer and lr_scheduler must be the first group's")
    return specs


def _member_group(spec: dict[str, Any], start: int) -> MemberGroup:
    cls, resolved = resolve_optimizer(spec["optimizer"])
    scheduler = resolve_scheduler(spec["lr_scheduler"])
    refusal = class_refusal(cls)
    if refusal is not None:
        raise NotAPopulation(refusal)
    size, member_hparams = spec["size"], dict(spec["member_hparams"] or {})
    settings = member_settings(
        cls, resolved["init_args"], scheduler[0] if scheduler else None,
        scheduler[1]["init_args"] if scheduler else None, member_hparams, size,
    )  # fmt: skip
    return MemberGroup(
        cls, resolved, *(scheduler or (None, None)), range(start, start + size), settings,
        {name: list(v) for name, v in member_hparams.items()}, spec["lr_interval"],
        spec.get("clipping", NOT_GIVEN),
    )  # fmt: skip


def _population_contract(contracts: list[StepContract]) -> StepContract:
    """One step contract for a population's groups: their step must be taken alike."""
    first = contracts[0]
    for contract in contracts[1:]:
        if contract.evaluate_first != first.evaluate_first:
            raise ValueError(
                "the member groups' optimizers differ in whether they read the gradients "
                "before their closure: train them as separate populations"
            )
    return dataclasses.replace(first, modes=any(c.modes for c in contracts))
