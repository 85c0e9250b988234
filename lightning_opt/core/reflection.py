"""Classes by import path, what their constructors take, and short names for them: the bottom
of the package.

Optimizers, nets, clipping rules and schedulers are all named by class path and configured by
their constructors' arguments; ``import_class`` and ``constructor_arguments`` are the one place
that reads either, and ``Registry`` the one mechanism behind every short name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from torch.optim.optimizer import Optimizer, required

Entry = TypeVar("Entry")


def import_class(class_path: str) -> type:
    """The class at ``class_path`` (``package.module.Class``); one clear error if missing."""
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"{class_path!r} is not an import path (package.module.Class)")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {class_path!r}: {err}") from None
    if not isinstance(cls, type):
        raise ValueError(f"{class_path!r} is not a class")
    return cls


def class_spec(
    value: Any, refusal: str, keys: tuple[str, ...] | None = None, name: str = ""
) -> dict[str, Any]:
    """``value`` as plain ``{"class_path": str, "init_args": dict}``: the one reading of a class
    given by path (a string), as a class, or as a mapping or jsonargparse Namespace with
    ``class_path`` and optional ``init_args`` (and ``dict_kwargs``, what jsonargparse gives a
    class's ``**kwargs``: arguments like the others). Short names are the caller's to expand.

    Anything else is refused in one line: ``"{refusal} {class_path, init_args}, got VALUE"``;
    with ``keys``, so is a mapping with other keys (``"{name} keys are ..., got [...]"``)."""
    if isinstance(value, type):
        value = f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace, nested ones too
        value = value.as_dict()
    if isinstance(value, str):
        value = {"class_path": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        raise ValueError(f"{refusal} {{class_path, init_args}}, got {value!r}")
    if keys is not None:
        unknown = set(value) - set(keys)
        if unknown:
            listed = f"{', '.join(keys[:-1])} and {keys[-1]}"
            raise ValueError(f"{name} keys are {listed}, got {sorted(unknown)}")
    init_args = {**dict(value.get("dict_kwargs") or {}), **dict(value.get("init_args") or {})}
    return {"class_path": value["class_path"], "init_args": init_args}


def constructor_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``cls.__init__`` but ``self`` and ``params`` (the source of
    truth for what an optimizer or callback takes)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        n: p
        for n, p in params.items()
        if n not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def hide_sentinel_arguments(cls: type) -> None:
    """Hide from signature readers (jsonargparse) the constructor arguments whose default is a
    bare ``object()`` sentinel (heavyball's ``use_default``) or a function without an import
    path (a lambda; ``_unwritable_default``): no config can hold that value and jsonargparse
    refuses or mangles it, so the class's own default applies.
    The constructor itself is untouched; they stay settable through ``**kwargs``
    (``--optimizer.dict_kwargs.NAME``). An argument whose default is torch's ``required``
    marker (timm's ``SGDP``: ``lr=required``) is shown as what it is, an argument without a
    default (keyword-only where one with a default comes before it). Sets
    ``__init__.__signature__``."""
    init = cls.__init__
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    hidden = [p for p in params if _unwritable_default(p.default)]
    marked = [p for p in params if p.default is required]
    inner = _inner_optimizer_argument(params)
    more = set(parameter_arguments(cls)) - {"params"}  # given by param_groups rules, not values
    if not hidden and not marked and inner is None and not more:
        return
    kept = [p for p in params if not _unwritable_default(p.default) and p.name not in more]
    if inner is not None:  # a class path, not an instance jsonargparse would build without params
        kept = [p.replace(annotation=type[Optimizer]) if p is inner else p for p in kept]
    if marked:
        kept = [p.replace(default=p.empty) if p.default is required else p for p in kept]
        try:
            signature.replace(parameters=kept)
        except ValueError:  # a required one after one with a default: keyword-only, then
            names = {p.name for p in marked}
            first = [p for p in kept if p.name not in names and p.kind is not p.VAR_KEYWORD]
            rest = [p.replace(kind=p.KEYWORD_ONLY) for p in kept if p.name in names]
            kept = first + rest + [p for p in kept if p.kind is p.VAR_KEYWORD]
            kept = sorted(kept, key=lambda p: p.kind)
    if hidden and not any(p.kind is p.VAR_KEYWORD for p in kept):
        kept.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    init.__signature__ = signature.replace(parameters=kept)


def _unwritable_default(value: Any) -> bool:
    """A default no config can hold: a bare ``object()`` sentinel, or a function without an
    import path (MuonAdamAtan2's ``muon_bypass_update_fn=lambda step: False``), which
    config.yaml would write as the string "Unable to serialize instance ..." and Lightning's
    hyperparameters would drop with the whole optimizer."""
    if type(value) is object:
        return True
    return inspect.isfunction(value) and "<" in value.__qualname__


def parameter_arguments(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` that take parameters, in order: the positional ones
    without a default called ``params`` or ``*_params`` (adam-atan2-pytorch's
    ``MuonAdamAtan2(muon_params, params, ...)``). Read from the code itself, which
    ``hide_sentinel_arguments`` leaves as it was."""
    init = cls.__init__
    code = getattr(init, "__code__", None)
    if code is None:
        return []
    names = code.co_varnames[1 : code.co_argcount]
    names = names[: len(names) - len(getattr(init, "__defaults__", None) or ())]
    return [n for n in names if n == "params" or n.endswith("_params")]


def _inner_optimizer_argument(params: list[inspect.Parameter]) -> inspect.Parameter | None:
    """The first argument of a wrapper's constructor where it is annotated as an optimizer
    instance (torch-optimizer's ``Lookahead(optimizer: Optimizer)``)."""
    first = next((p for p in params if p.name != "self"), None)
    annotation = None if first is None else first.annotation
    if isinstance(annotation, type) and issubclass(annotation, Optimizer):
        return first
    return None


class Registry(Generic[Entry]):
    """Short names for classes (timm's registry): entries beside the things they name, plus the
    names installed packages declare in an entry-point group (read once per process, in every
    process that looks a name up). Built-in names cannot be replaced.

    Args:
        kind: what the names name, for messages (``optimizer``, ``net``).
        group: the entry-point group (``lightning_opt.optimizers``).
        plugin: builds the entry of a plugin from ``(name, class_path, description)``.
        hint: an example class path for the unknown-name message.
    """

    def __init__(
        self, kind: str, group: str, plugin: Callable[[str, str, str], Entry], hint: str
    ) -> None:
        self.kind, self.group, self.plugin, self.hint = kind, group, plugin, hint
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False

    def register(self, entry: Entry) -> Entry:
        """Add ``entry`` (its ``name``: a lowercase identifier, unique)."""
        name = entry.name  # type: ignore[attr-defined]
        if name != name.lower() or not name.isidentifier():
            raise ValueError(f"{self.kind} names are lowercase identifiers, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for found in entry_points(group=self.group):
            if found.name in self._entries:
                continue  # the first registration wins
            module, _, attr = found.value.partition(":")
            class_path = f"{module}.{attr}" if attr else module
            source = f" (from {found.dist.name})" if found.dist is not None else ""
            self.register(self.plugin(found.name, class_path, class_path + source))

    def names(self) -> list[str]:
        """Registered short names, sorted."""
        self._load_plugins()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name lists the valid ones."""
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; give a class path ({self.hint}) or one of: "
                f"{', '.join(self.names())}"
            ) from None
