"""Optimizers by class path, with lowercase short names for the common ones (timm's registry).

Any ``torch.optim.Optimizer`` subclass works by import path (``my_opts.Lion``); its constructor
says which hyperparameters exist and checks their values. A short name (``gnw``) is a frozen
entry: a class path, a one-line description and the defaults this project chose for it (the seed
notes' tuned learning rates). Installed packages add short names through the entry-point group
``lightning_opt.optimizers`` (``name = "package.module:Class"``), read in every process that looks
a name up, spawned workers included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_opt.reflection import Registry, constructor_arguments, import_class
from lightning_opt.search_space import SearchParam

__all__ = ["constructor_arguments", "import_class"]  # re-exported: their old home

#: Plugins register short names here: ``[project.entry-points."lightning_opt.optimizers"]``.
ENTRY_POINT_GROUP = "lightning_opt.optimizers"

#: What ``tune`` searches when neither the config nor the optimizer class says otherwise.
LR_SEARCH = (SearchParam("lr", 1e-4, 1e-1, log=True),)


@dataclass(frozen=True)
class OptimizerSpec:
    """A short name for an optimizer class.

    Attributes:
        name: lowercase name used on the command line (``--optimizer NAME``).
        class_path: the class's import path (``torch.optim.Adam``).
        description: one line for ``list_optimizers`` and ``--help``.
        defaults: constructor arguments this name sets unless the user does (the class's own
            defaults apply to the rest).
    """

    name: str
    class_path: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        return import_class(self.class_path)


_REGISTRY: Registry[OptimizerSpec] = Registry(
    "optimizer", ENTRY_POINT_GROUP, OptimizerSpec, hint="my_module.MyOptimizer"
)


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry (names are lowercase identifiers, unique)."""
    return _REGISTRY.register(spec)


def list_optimizers() -> list[str]:
    """Registered short names, sorted (the entry-point group's included)."""
    return _REGISTRY.names()


def get_optimizer(name: str) -> OptimizerSpec:
    """The registry entry called ``name``; an unknown name lists the valid ones."""
    return _REGISTRY.get(name)


def short_name_of(class_path: str) -> str:
    """The registered short name of ``class_path``, else its class name in lowercase."""
    cls = import_class(class_path)
    for name in list_optimizers():
        entry = _REGISTRY.get(name)
        if entry.class_path == class_path or entry.cls is cls:
            return name
    return cls.__name__.lower()


def is_short_name(name: Any) -> bool:
    return isinstance(name, str) and "." not in name and name in list_optimizers()


def optimizer_config(value: Any) -> dict[str, Any]:
    """``value`` as ``{"class_path": ..., "init_args": {...}}`` with short names expanded.

    ``value`` is a short name, a class path, an optimizer class, or a mapping with
    ``class_path`` (a short name or a path) and optional ``init_args``. A short name's defaults
    go under the given ``init_args``. Nothing is checked here but the shape.
    """
    if isinstance(value, type):
        value = f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, str):
        value = {"class_path": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        raise ValueError(
            f"an optimizer is a short name, a class path or {{class_path, init_args}}, got {value!r}"
        )
    unknown = set(value) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"optimizer keys are class_path and init_args, got {sorted(unknown)}")
    class_path, init_args = value["class_path"], dict(value.get("init_args") or {})
    if "." not in class_path:
        if class_path in list_optimizers():
            spec = get_optimizer(class_path)
            class_path, init_args = spec.class_path, {**spec.defaults, **init_args}
        else:
            class_path = _path_of_class_named(class_path)
    return {"class_path": class_path, "init_args": init_args}


def _path_of_class_named(name: str) -> str:
    """The import path of the imported Optimizer subclass called ``name`` (``Adam``), as
    jsonargparse resolves a bare class name; else the short names' error."""
    found, todo = set(), [torch.optim.Optimizer]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__name__ == name and not sub.__module__.startswith("torch.optim._"):
                found.add(f"{sub.__module__}.{sub.__qualname__}")
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise ValueError(f"several optimizers are called {name!r}: {', '.join(sorted(found))}")
    get_optimizer(name)  # raises: an unknown name, listing the short names
    raise AssertionError(name)


def optimizer_class(config: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """The class of an ``optimizer_config``; refuses anything but an Optimizer subclass."""
    cls = import_class(config["class_path"])
    if not issubclass(cls, torch.optim.Optimizer):
        raise ValueError(f"{config['class_path']} is not a torch.optim.Optimizer subclass")
    return cls


def unset_values(class_path: str) -> dict[str, set[Any]]:
    """Per constructor argument of ``class_path``, the values it has when nobody sets it: the
    class's default and the default of every short name for the class."""
    cls = import_class(class_path)
    values: dict[str, set[Any]] = {}
    for name, param in constructor_arguments(cls).items():
        if param.default is not param.empty:
            values.setdefault(name, set()).add(hashable(param.default))
    for name in list_optimizers():
        entry = _REGISTRY.get(name)
        if entry.class_path == class_path:
            for arg, value in entry.defaults.items():
                values.setdefault(arg, set()).add(hashable(value))
    return values


def hashable(value: Any) -> Any:
    """``value`` as a set member (a list as a tuple)."""
    return tuple(value) if isinstance(value, list) else value


def default_search_space(cls: type) -> tuple[SearchParam, ...]:
    """What ``tune`` searches for ``cls`` by default: its ``search_space`` attribute if it
    declares one, else the learning rate (log-uniform 1e-4..1e-1) if it takes ``lr``."""
    declared = getattr(cls, "search_space", None)
    if declared is not None:
        return tuple(declared)
    return LR_SEARCH if "lr" in constructor_arguments(cls) else ()


def supports_population(cls: type) -> bool:
    """Whether a population may train ``cls`` with one instance per member (an optimizer that
    needs more than its own parameters, say a closure that re-evaluates the loss, sets the class
    attribute ``supports_population = False``)."""
    return bool(getattr(cls, "supports_population", True))


def resolve_optimizer(value: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and ``{class_path, init_args}`` of an optimizer given as a short name, a class
    path or a mapping (see ``optimizer_config``), with every constructor default filled in, so
    ``hparams.yaml`` and the HPARAMS tab show the values a run used."""
    config = optimizer_config(value)
    cls = optimizer_class(config)
    defaults = {
        n: p.default for n, p in constructor_arguments(cls).items() if p.default is not p.empty
    }
    return cls, {
        "class_path": config["class_path"],
        "init_args": {**defaults, **config["init_args"]},
    }


def check_optimizer(cls: type[torch.optim.Optimizer], params: Any, init_args: dict) -> None:
    """Build ``cls`` once so its own constructor checks ``init_args``; one line if it refuses."""
    try:
        cls(params, **init_args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cls.__name__}({_show(init_args)}): {err}") from None


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# The learning rates of adam and gnw are the ones the GNW-Adam seed note's Optuna search found
# (10 trials x 25 epochs); the others are common starting points for this MLP.
register_optimizer(
    OptimizerSpec(
        "adam",
        "torch.optim.Adam",
        "Adam (Kingma & Ba, 2015), L2 weight decay added to the gradient",
        {"lr": 0.00624},
    )
)
register_optimizer(
    OptimizerSpec(
        "adamw",
        "torch.optim.AdamW",
        "AdamW (Loshchilov & Hutter, 2019), decoupled weight decay",
        {"lr": 1e-3},
    )
)
register_optimizer(
    OptimizerSpec(
        "sgd", "torch.optim.SGD", "SGD with heavy-ball momentum", {"lr": 0.05, "momentum": 0.9}
    )
)
register_optimizer(
    OptimizerSpec(
        "gnw",
        "lightning_opt.optim.gnw_adam.GNWAdam",
        "GNW-Adam: Adam with step size lr * gamma / (gamma + ||g||)",
        {"lr": 0.00585},
    )
)
