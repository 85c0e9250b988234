"""Clipping in a population: the trainer's clipping callbacks acting on every member, or (member
groups that give their own ``clipping``) one rule per distinct setting, each restricted to its
groups' members; each member's clipping settings, checked before any training."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.core.reflection import class_spec, constructor_arguments, import_class
from lightning_opt.population.settings import NOT_GIVEN, MemberGroup

Columns = dict[str, list[Any]]  # {name: [value of each member, None where it has none]}


def _rule_spec(spec: Any) -> tuple[type, dict[str, Any]]:
    """A group's ``clipping`` as its class and every constructor argument (defaults filled in)."""
    spec = class_spec(spec, "a member group's clipping is None or")
    cls = import_class(spec["class_path"])
    if not issubclass(cls, GradientClippingCallback):
        raise ValueError(f"{spec['class_path']} is not a GradientClippingCallback")
    defaults = {
        n: p.default
        for n, p in constructor_arguments(cls).items()
        if p.default is not inspect.Parameter.empty
    }
    return cls, {**defaults, **spec["init_args"]}


def _build(cls: type, args: dict[str, Any]) -> GradientClippingCallback:
    try:
        return cls(**args)
    except TypeError as err:  # an argument the rule does not take
        raise ValueError(f"clipping {cls.__name__}: {err}") from None


def group_rules(
    groups: list[MemberGroup],
) -> tuple[list[GradientClippingCallback] | None, list[Any], Columns]:
    """The population's own clipping rules (``None``: the trainer's act on every member), each
    member's rule (by original index; ``None``: it clips nothing) and each member's clipping
    settings. Groups whose rules differ only in the rule's per-member settings share one rule;
    a member whose group does not tune such a setting gets its rule's value. Every member's
    settings are checked by its rule's constructor (``ValueError``, one line)."""
    given = [g.clipping != NOT_GIVEN for g in groups]
    if not any(given):
        names = [sorted(g.settings.clipping) for g in groups]
        if any(n != names[0] for n in names):
            raise ValueError(
                f"the member groups give different clipping settings per member ({names}); "
                "a population's clipping rules act on all its members unless each group gives "
                "its own (clipping)"
            )
        columns = {n: [v for g in groups for v in g.settings.clipping[n]] for n in names[0]}
        return None, [], columns
    rules: dict[str, GradientClippingCallback] = {}
    owners: dict[str, list[int]] = {}
    member_rule: list[Any] = []
    columns: Columns = {}
    size = sum(len(g.members) for g in groups)
    for group in groups:
        spec = group.clipping if group.clipping != NOT_GIVEN else None
        tuned = group.settings.clipping
        if spec is None:
            if tuned:
                raise ValueError(
                    f"member_hparams {', '.join(sorted(tuned))}: a member group without a "
                    "clipping rule has no clipping settings"
                )
            member_rule += [None] * len(group.members)
            continue
        cls, args = _rule_spec(spec)
        unknown = sorted(set(tuned) - set(cls.member_hparams))
        if unknown:
            raise ValueError(
                f"member_hparams {', '.join(unknown)}: neither the group's optimizer nor its "
                f"clipping rule {cls.__name__} takes it per member "
                f"({', '.join(cls.member_hparams) or 'nothing'})"
            )
        args.update({n: v[0] for n, v in tuned.items()})  # the group's first member's
        rule = _build(cls, args)
        shared = {n: v for n, v in args.items() if n not in cls.member_hparams}
        key = json.dumps([cls.__module__, cls.__qualname__, shared], sort_keys=True, default=str)
        rules.setdefault(key, rule)
        owners.setdefault(key, []).extend(group.members)
        for name in (n for n in cls.member_hparams if n in args):
            values = tuned.get(name, [args.get(name)] * len(group.members))
            column = columns.setdefault(name, [None] * size)
            for position, (member, value) in enumerate(zip(group.members, values, strict=True)):
                column[member] = value
                if position and name in tuned:  # each member's own, checked as its run's
                    _build(cls, {**args, name: value})
        member_rule += [rules[key]] * len(group.members)
    for key, rule in rules.items():
        rule.restrict_to(owners[key])
    return list(rules.values()), member_rule, columns


def check_member_clipping(
    clipping_rules: Sequence[GradientClippingCallback] | None,
    member_clipping: Columns,
    optimizer_class: type,
    members: int,
    callbacks: Sequence[Any],
) -> None:
    """Refuse per-member settings that neither the optimizer nor a clipping callback among
    ``callbacks`` takes (before any training), or, where the groups give their own rules
    (``clipping_rules``), a clipping callback among ``callbacks`` that none of them replaces."""
    clippers = [c for c in callbacks if isinstance(c, GradientClippingCallback)]
    if clipping_rules is not None:
        own = {type(r) for r in clipping_rules}
        other = sorted({type(c).__name__ for c in clippers if type(c) not in own})
        if other:
            raise ValueError(
                f"the trainer's callbacks clip with {', '.join(other)} and the member groups "
                "give their own clipping rules: give the rules in one place"
            )
        return  # each member's settings were checked when the population was built
    names = {name for cb in clippers for name in cb.member_hparams}
    missing = sorted(set(member_clipping) - names)
    if missing:
        takes = ", ".join(f"{type(c).__name__}: {', '.join(c.member_hparams) or 'nothing'}"
                          for c in clippers) or "no clipping callback is on"  # fmt: skip
        raise ValueError(
            f"member_hparams {', '.join(missing)}: {optimizer_class.__name__} takes no "
            f"such argument and no clipping callback sets it per member ({takes})"
        )
    for clipper in clippers:  # each member's settings, checked by the rule's constructor
        cls = type(clipper)
        own = {n: getattr(clipper, n) for n in constructor_arguments(cls) if hasattr(clipper, n)}
        for member in range(members):
            values = {n: v[member] for n, v in member_clipping.items()
                      if n in clipper.member_hparams}  # fmt: skip
            if values:
                cls(**{**own, **values})


class MemberClipping:
    """The members' clipping settings and the views a restricted rule clips; a mixin of
    ``PopulationClassifier``, which sets ``clipping_rules``, ``member_rule`` and
    ``member_clipping``."""

    @override
    def configure_callbacks(self) -> Sequence[Any]:
        """The population's own clipping rules (Lightning puts them in place of the trainer's
        callbacks of the same classes)."""
        return list(self.clipping_rules or [])

    def _reset_clip_caches(self) -> None:
        """Forget what depends on the live members and the parameters' tensors (rebuilt at the
        next step): thresholds, their slices, runs of members, slice views."""
        self._clip_overrides: dict[str, Tensor] | None = None
        self._override_slices: dict[tuple[Any, ...], dict[str, Tensor]] = {}
        self._member_runs: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        self._clip_views: dict[tuple[int, int], list[Tensor]] = {}

    def _clippers(self) -> list[GradientClippingCallback]:
        return [c for c in self.trainer.callbacks if isinstance(c, GradientClippingCallback)]

    def check_clipping(self, callbacks: Sequence[Any]) -> None:
        """As ``check_member_clipping``, for this population's members."""
        check_member_clipping(
            self.clipping_rules, self.member_clipping, self.optimizer_class,
            len(self.all_seeds), callbacks,
        )  # fmt: skip

    def clipping_overrides(
        self, start: int = 0, stop: int | None = None, names: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Per-member clipping thresholds of the live members (positions ``start:stop``; only
        ``names``, if given), on the parameters' device (NaN for a member whose rule has no
        such setting). The same tensors until the members change."""
        if self._clip_overrides is None:
            like = next(self.net.parameters())
            nan = float("nan")
            self._clip_overrides = {
                name: like.new_tensor([nan if v is None else v for v in values])
                for name, values in self.clipping_values().items()
            }
        if stop is None and names is None:
            return self._clip_overrides
        key = (start, stop, tuple(names or ()))
        found = self._override_slices.get(key)
        if found is None:
            found = {n: v[start:stop] for n, v in self._clip_overrides.items()
                     if names is None or n in names}  # fmt: skip
            self._override_slices[key] = found
        return found

    def clipping_values(self) -> dict[str, list[Any]]:
        """The live members' per-member clipping settings, ``{name: [value of each member]}``."""
        return {n: [v[i] for i in self.member_ids] for n, v in self.member_clipping.items()}

    def member_runs(self, members: Sequence[int] | None) -> list[tuple[int, int]]:
        """The live positions of ``members`` (original indices; ``None``: every member) as runs
        ``[start, stop)`` of consecutive members."""
        if members is None:
            return [(0, len(self.member_ids))] if self.member_ids else []
        key = tuple(members)
        runs = self._member_runs.get(key)
        if runs is None:
            own, runs = set(members), []
            for position, member in enumerate(self.member_ids):
                if member not in own:
                    continue
                if runs and runs[-1][1] == position:
                    runs[-1] = (runs[-1][0], position + 1)
                else:
                    runs.append((position, position + 1))
            self._member_runs[key] = runs
        return runs

    def member_slice(self, start: int, stop: int) -> list[Tensor]:
        """Live members ``start:stop``'s parameters as tensors sharing the stacked ones' memory,
        whose ``.grad`` are the matching slices of the stacked gradients (set at each call)."""
        views = self._clip_views.get((start, stop))
        if views is None:
            views = [nn.Parameter(p.data[start:stop]) for p in self._params]
            self._clip_views[(start, stop)] = views
        for view, p in zip(views, self._params, strict=True):
            view.grad = None if p.grad is None else p.grad[start:stop]
        return views

    def _select_rules(self, keep: list[int]) -> None:
        """Narrow the clipping statistics to the live members at old positions ``keep``
        (before ``member_ids`` is narrowed)."""
        self._reset_clip_caches()
        if self.clipping_rules is None:
            if self._trainer:
                index = torch.tensor(keep, dtype=torch.long)
                for clipper in self._clippers():
                    clipper.select_members(index)
            return
        kept = set(keep)
        for rule in self.clipping_rules:
            own = set(rule.members or ())
            positions = [i for i, m in enumerate(self.member_ids) if m in own]
            local = [j for j, i in enumerate(positions) if i in kept]
            members = [self.member_ids[positions[j]] for j in local]
            rule.select_members(torch.tensor(local, dtype=torch.long), members)

    def rule_of(self, member: int) -> tuple[GradientClippingCallback | None, int]:
        """Live member ``member``'s clipping rule and its position in that rule's per-member
        statistics (``None, -1`` for a member that clips nothing)."""
        if self.clipping_rules is None:
            clippers = self._clippers() if self._trainer else []
            return (clippers[0], self.member_ids.index(member)) if clippers else (None, -1)
        rule = self.member_rule[member]
        if rule is None:
            return None, -1
        live = [m for m in self.member_ids if m in set(rule.members or ())]
        return rule, live.index(member)
