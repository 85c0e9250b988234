"""Which runs of an experiment train together, decided in one place: the arms' tuning trials
(``tuning_groups``: trained as one population by one worker) and their final runs
(``final_groups``), each group one population of several optimizers
(``runs.build.build_mixed_population``, whose members of one optimizer form a member group)."""

from __future__ import annotations

import json
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt.config.fingerprints import EXPERIMENT_KEYS, run_fingerprint
from lightning_opt.experiments.plans import ArmPlan
from lightning_opt.runs.build import (
    is_clipping_entry,
    plan_mixed_population,
    scheduler_dict,
    trainer_arguments,
)
from lightning_opt.tuning.trials import resolve_search_space


def final_groups(
    parser: LightningArgumentParser, labelled: list[tuple[str, str, ArmPlan]]
) -> list[list[str]]:
    """The labels whose final runs train together: those with population finals whose final
    configs differ only in the optimizer, the LR scheduler, the clipping rule and the tuned
    values (arms of one net, data and budget, each re-tuned one beside its arm), each such
    group one population (``runs.build.build_mixed_population``: each member group clips by its own
    rule); every other label alone. Members with a scheduler must step it alike."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for _, label, plan in labelled:
        key = label
        if plan.population_finals:
            key = _population_key(parser, plan.final_cfg)
        groups.setdefault(key, []).append((label, plan.final_cfg))
    plans = {label: plan for _, label, plan in labelled}
    out = []
    for group in (g for whole in groups.values() for g in _by_interval(whole)):
        members = [plans[label] for label in group]
        if len(group) > 1 and not _builds_together(group, members, final=True):
            out += [[label] for label in group]
        else:
            out.append(group)
    return out


def _by_interval(group: list[tuple[str, Any]]) -> list[list[str]]:
    """``group``'s labels split so that the members with an LR scheduler in each step it at
    one interval (a population steps its schedulers alike); members without one join the
    first."""
    intervals: dict[Any, list[str]] = {}
    for label, cfg in group:
        if scheduler_dict(cfg) is not None:
            intervals.setdefault(cfg.model.get("lr_interval", "epoch"), []).append(label)
    unscheduled = [label for label, cfg in group if scheduler_dict(cfg) is None]
    split = list(intervals.values()) or [[]]
    split[0] = unscheduled + split[0]
    order = [label for label, _ in group]
    return [sorted(labels, key=order.index) for labels in split]


def _population_key(parser: LightningArgumentParser, cfg: Any, budgets: bool = False) -> str:
    """What runs of ``cfg`` share with every run of one population: all settings but the
    optimizer, the LR scheduler, the clipping rule (each member group clips by its own) and the
    search space (with ``budgets``, the epochs too: each member ends at its own); when the
    members' schedulers step is split apart afterwards (``_by_interval``)."""
    drop = (*EXPERIMENT_KEYS, "search_space", "optimizer", "lr_scheduler", "model.lr_interval")
    if budgets and cfg.trainer.get("max_steps") in (None, -1):
        drop += ("trainer.max_epochs",)
    settings = run_fingerprint(parser, cfg, drop=drop)
    trainer = settings.get("trainer") or {}
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or []
                            if not is_clipping_entry(c)]  # fmt: skip
    return json.dumps(settings, sort_keys=True, default=str)


def tuning_groups(
    parser: LightningArgumentParser, labelled: list[tuple[str, str, ArmPlan]]
) -> list[list[str]]:
    """The labels whose tuning trials train together (``tuning.tune.run_studies_together``): those
    tuned as populations by one worker whose tuning configs differ only in the optimizer, the
    LR scheduler, the clipping rule, the search space and the epochs (arms on one net and
    data, each re-tuned one beside them), if one population of them builds at the ends of
    their search spaces; every other label alone."""
    groups: dict[str, list[tuple[str, ArmPlan]]] = {}
    for _, label, plan in labelled:
        key = label
        if plan.options.population > 1 and plan.options.n_workers == 1:
            key = _population_key(parser, plan.tune_cfg, budgets=True)
        groups.setdefault(key, []).append((label, plan))
    out = []
    for whole in groups.values():
        plans = dict(whole)
        for group in _by_interval([(label, plan.tune_cfg) for label, plan in whole]):
            members = [plans[label] for label in group]
            if len(group) > 1 and not _builds_together(group, members):
                out += [[label] for label in group]
            else:
                out.append(group)
    return out


def _builds_together(labels: list[str], plans: list[ArmPlan], final: bool = False) -> bool:
    """Whether one population of every plan's trials (``final``: its final runs) builds, at
    each end of the search spaces (the check ``check_study`` makes for one study's population);
    if not, says that each trains as its own."""

    for end in (0, 1):
        members = []
        for plan in plans:
            cfg = plan.final_cfg if final else plan.tune_cfg
            values = {p.name: p.ends()[end] for p in resolve_search_space(plan.tune_cfg)}
            members.append((cfg, values))
        try:
            model = plan_mixed_population(members, [0] * len(members))
            model.check_clipping(trainer_arguments(members[0][0])["callbacks"])
        except ValueError as err:
            verb = "train their final runs apart" if final else "tune one population each"
            print(f"arms {', '.join(labels)} {verb} ({err})", flush=True)
            return False
    return True
