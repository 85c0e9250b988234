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
nothing, a rule without selectors, or a setting the optimizer class never reads is refused
before anything trains: a setting is read where the constructor takes it (or has ``**kwargs``)
or where the pre-flight step reads it from its group (galore-torch's ``rank``,
``update_proj_gap``, ``scale``, ``proj_type``, which only ``step`` reads).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

SELECTORS = ("names", "ndim")
#: The rule key that sends a rule's parameters to another constructor argument than ``params``.
INTO = "into"


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


class ReadGroup(dict):
    """A param group that notes which of its keys are read (``group[k]``, ``k in group``,
    ``get``, ``setdefault``) into ``read``: what the pre-flight step's class reads."""

    def __init__(self, read: set[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read = read

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().setdefault(key, default)


def split(
    named: Iterable[tuple[str, Tensor]],
    rules: Sequence[Mapping[str, Any]],
    read: set[str] | None = None,
) -> list[Tensor] | list[dict[str, Any]]:
    """What an optimizer's constructor takes: the parameters, or with ``rules`` their groups
    (``ReadGroup``s noting into ``read`` which keys the optimizer reads, where given)."""
    named = list(named)
    if not rules:
        return [p for _, p in named]
    make = dict if read is None else (lambda **kw: ReadGroup(read, **kw))
    groups: list[dict[str, Any]] = [make(params=[])] + [
        make(params=[], **settings(r)) for r in rules
    ]
    for name, param in named:
        rule = next((i for i, r in enumerate(rules) if _matches(r, name, param)), None)
        groups[0 if rule is None else rule + 1]["params"].append(param)
    group_order(named, rules)  # refuses a rule that matches nothing
    return [g for g in groups if g["params"]]


def not_arguments(cls: type, rules: Sequence[Mapping[str, Any]]) -> set[str]:
    """The group settings of ``rules`` that ``cls``'s constructor does not name (none where it
    has ``**kwargs``, which may read anything: pytorch_optimizer.Muon's ``use_muon``)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return set()
    return {key for rule in rules for key in settings(rule)} - set(params) - {INTO}


def route(
    params: list[Tensor] | list[dict[str, Any]], arguments: Sequence[str], name: str
) -> dict[str, Any]:
    """The constructor's parameter ``arguments`` (``params`` and the ones like
    ``MuonAdamAtan2``'s ``muon_params``) from ``split``'s groups: a group whose rule has
    ``into: ARG`` goes to ARG (a plain list where its rule sets nothing else), the rest to
    ``params``. Every argument must get parameters (``ValueError``, one line, naming the rule
    to add)."""
    routed: dict[str, list[Any]] = {}
    for group in params:
        target = group.get(INTO, "params") if isinstance(group, dict) else "params"
        if isinstance(group, dict) and INTO in group:
            group = {k: v for k, v in group.items() if k != INTO}
        routed.setdefault(target, []).append(group)
    unknown = sorted(set(routed) - set(arguments))
    if unknown:
        raise ValueError(
            f"param_groups: into: {unknown[0]} is not an argument of {name} that takes parameters"
            f" (it takes them in: {', '.join(arguments)})"
        )
    missing = [a for a in arguments if a not in routed]
    if missing:
        raise ValueError(
            f"{name} takes parameters in {', '.join(arguments)}: give --model.param_groups a "
            f"rule with into: {missing[0]} (e.g. '[{{ndim: 2, into: {missing[0]}}}]'; the "
            "parameters no rule sends elsewhere go to params)"
        )
    out = {}
    for target, items in routed.items():
        plain = all(isinstance(g, dict) and set(g) == {"params"} for g in items)
        out[target] = [p for g in items for p in g["params"]] if plain else items
    return out


def check_settings(cls: type, rules: Sequence[Mapping[str, Any]], read: set[str]) -> None:
    """Refuse a group setting ``cls`` never reads (not an argument of its constructor, and not
    in ``read``, the keys its pre-flight step read from its groups): torch's optimizers keep any
    key of a param group without a word, so a misspelt ``weight_decy`` would silently change
    nothing."""
    params = inspect.signature(cls.__init__).parameters
    for rule in rules:
        unknown = sorted(set(settings(rule)) & (not_arguments(cls, rules) - read))
        if unknown:
            takes = ", ".join(n for n in params if n not in ("self", "params"))
            raise ValueError(
                f"param_groups rule {dict(rule)}: {', '.join(unknown)} is not an argument of "
                f"{cls.__name__}, nor read from its groups by its first step (it takes: {takes})"
            )
