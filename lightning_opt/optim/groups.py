"""Parameter groups from rules: the net's parameters split by name pattern and dimensionality,
each group with its own optimizer settings (``--model.param_groups``).

A rule is a mapping of selectors and settings::

    - {ndim: 1, weight_decay: 0.0}                # biases and norm weights: no weight decay
    - {names: ["net.0.*"], lr: 0.01}              # the first layer faster
    - {ndim: 2, use_muon: true}                   # pytorch_optimizer.Muon's 2-D weights ...
    - {ndim: [0, 1, 3], use_muon: false}          # ... and the rest with its AdamW

Selectors: ``names`` (fnmatch patterns of ``named_parameters`` names, one or a list) and ``ndim``
(one or a list); a rule with both needs both. Every other key is a setting of the group, as
``torch.optim`` param groups take them. A parameter goes to the first rule it matches; the ones
no rule matches form the default group, with the optimizer's own arguments. A rule that matches
nothing, a rule without selectors, or a setting the optimizer class does not take (where its
constructor has no ``**kwargs`` to take it) is refused before anything trains.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

SELECTORS = ("names", "ndim")


def check_rules(rules: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """``rules`` as plain dicts, their shape checked (``ValueError``, one line)."""
    if rules is None:
        return []
    if isinstance(rules, Mapping) or not isinstance(rules, Sequence):
        raise ValueError(f"param_groups is a list of rules, got {rules!r}")
    out = []
    for rule in rules:
        rule = rule.as_dict() if hasattr(rule, "as_dict") else rule
        if not isinstance(rule, Mapping):
            raise ValueError(f"a param_groups rule is a mapping, got {rule!r}")
        rule = dict(rule)
        if not any(k in rule for k in SELECTORS):
            raise ValueError(
                f"param_groups rule {rule} selects nothing: give names (patterns) and/or ndim"
            )
        if "params" in rule:
            raise ValueError(f"param_groups rule {rule}: the rule selects the params itself")
        for key in ("names", "ndim"):
            if key in rule and not isinstance(rule[key], list):
                rule[key] = [rule[key]]
        if any(not isinstance(n, int) or isinstance(n, bool) for n in rule.get("ndim", [])):
            raise ValueError(f"param_groups rule {rule}: ndim is an integer or a list of them")
        if any(not isinstance(n, str) for n in rule.get("names", [])):
            raise ValueError(f"param_groups rule {rule}: names are patterns (strings)")
        out.append(rule)
    return out


def settings(rule: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if k not in SELECTORS}


def _matches(rule: Mapping[str, Any], name: str, param: Tensor) -> bool:
    if "names" in rule and not any(fnmatch.fnmatchcase(name, p) for p in rule["names"]):
        return False
    return "ndim" not in rule or param.ndim in rule["ndim"]


def group_order(
    named: Iterable[tuple[str, Tensor]], rules: Sequence[Mapping[str, Any]]
) -> list[int]:
    """The positions (in ``named``'s order) of the parameters, group by group: the default
    group first, then each rule's (a population orders each member's views so)."""
    named = list(named)
    placed: list[list[int]] = [[] for _ in range(len(rules) + 1)]
    for position, (name, param) in enumerate(named):
        rule = next((i for i, r in enumerate(rules) if _matches(r, name, param)), None)
        placed[0 if rule is None else rule + 1].append(position)
    for i, rule in enumerate(rules):
        if not placed[i + 1]:
            names = ", ".join(f"{n} ({p.ndim}-D)" for n, p in named)
            raise ValueError(f"param_groups rule {rule} matches no parameter; the net has: {names}")
    return [p for group in placed for p in group]


def split(
    named: Iterable[tuple[str, Tensor]], rules: Sequence[Mapping[str, Any]]
) -> list[Tensor] | list[dict[str, Any]]:
    """What an optimizer's constructor takes: the parameters, or with ``rules`` their groups."""
    named = list(named)
    if not rules:
        return [p for _, p in named]
    groups: list[dict[str, Any]] = [{"params": []}] + [{"params": [], **settings(r)} for r in rules]
    for name, param in named:
        rule = next((i for i, r in enumerate(rules) if _matches(r, name, param)), None)
        groups[0 if rule is None else rule + 1]["params"].append(param)
    group_order(named, rules)  # refuses a rule that matches nothing
    return [g for g in groups if g["params"]]


def check_settings(cls: type, rules: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a group setting ``cls`` cannot take: torch's optimizers keep any key of a param
    group without a word, so a misspelt ``weight_decy`` would silently change nothing."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # its **kwargs may read anything (pytorch_optimizer.Muon's use_muon)
    for rule in rules:
        unknown = sorted(set(settings(rule)) - set(params))
        if unknown:
            takes = ", ".join(n for n in params if n not in ("self", "params"))
            raise ValueError(
                f"param_groups rule {dict(rule)}: {', '.join(unknown)} is not an argument of "
                f"{cls.__name__} (it takes: {takes})"
            )
