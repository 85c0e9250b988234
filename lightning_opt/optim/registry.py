"""Optimizers by class path, with lowercase short names for the common ones (timm's registry).

Any ``torch.optim.Optimizer`` subclass works by import path (``my_opts.Lion``); its constructor
says which hyperparameters exist and checks their values. A short name (``gnw``) is a frozen
entry: a class path, a one-line description and the defaults this project chose for it (the seed
notes' tuned learning rates). Installed packages add short names through the entry-point group
``lightning_opt.optimizers`` (``name = "package.module:Class"``), read in every process that looks
a name up, spawned workers included.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import required

from lightning_opt.core.reflection import (
    Registry,
    class_spec,
    constructor_arguments,
    hide_sentinel_arguments,
    import_class,
    parameter_arguments,
)
from lightning_opt.core.search_space import SearchParam
from lightning_opt.optim import groups
from lightning_opt.optim.contract import (
    StepContract,
    StepError,
    build_optimizer,
    first_step_size,
    preflight,
)

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
        search_space: what ``tune`` searches for the class by default (``None``: the class's
            own ``search_space`` attribute, else its learning rate), for a class of another
            package that cannot carry the attribute itself.
    """

    name: str
    class_path: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: tuple[SearchParam, ...] | None = None

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
    # dict_kwargs: what jsonargparse gives a class's **kwargs (--optimizer.dict_kwargs.lr 0.05
    # for SAM's base optimizer); here they are arguments like the others.
    spec = class_spec(
        value, "an optimizer is a short name, a class path or",
        ("class_path", "init_args", "dict_kwargs"), "optimizer",
    )  # fmt: skip
    class_path, init_args = spec["class_path"], spec["init_args"]
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


def for_parser(config: Mapping[str, Any]) -> dict[str, Any]:
    """An ``optimizer_config`` as jsonargparse takes it: the arguments the signature names in
    ``init_args``, the ones only its ``**kwargs`` take in ``dict_kwargs``."""
    named = constructor_arguments(import_class(config["class_path"]))
    init_args = {k: v for k, v in config["init_args"].items() if k in named}
    extra = {k: v for k, v in config["init_args"].items() if k not in named}
    out = {"class_path": config["class_path"], "init_args": init_args}
    return {**out, "dict_kwargs": extra} if extra else out


def optimizer_class(config: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """The class of an ``optimizer_config``; refuses anything but an Optimizer subclass."""
    cls = import_class(config["class_path"])
    if not issubclass(cls, torch.optim.Optimizer):
        raise ValueError(f"{config['class_path']} is not a torch.optim.Optimizer subclass")
    hide_sentinel_arguments(cls)  # before jsonargparse reads the signature
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
    """``value`` as a set member: lists and tuples as tuples, mappings as sorted pairs (a dict
    default: grokfast's ``GrokFastAdamW``), nested ones too; anything else unhashable by its
    ``repr``."""
    if isinstance(value, list | tuple):
        return tuple(hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


#: A default learning rate this large marks a learning-rate-free method (Prodigy, D-Adaptation:
#: lr = 1 scales the step size the method estimates itself), if its first step agrees.
LR_FREE_DEFAULT = 0.5
#: The most the first step at such a default may move the weights, relative to their norm
#: (``contract.first_step_size``), for the default to read as a multiplier: Prodigy and
#: D-Adaptation start from a tiny estimate (their d0 = 1e-6), LARS from its trust ratio (1e-3);
#: timm's AdafactorBigVision, whose 1.0 is a plain learning rate, moves them several times
#: their norm.
LR_FREE_FIRST_STEP = 0.1


def default_search_space(cls: type) -> tuple[SearchParam, ...]:
    """What ``tune`` searches for ``cls`` by default: its ``search_space`` attribute if it
    declares one, else the one a short name's entry for it declares; else, if it takes ``lr``, the learning rate: log-uniform 1e-4..1e-1, or a
    decade either side of the default where that is >= 0.5 (a learning-rate-free method, whose
    lr multiplies its own estimate: 0.1..10 for Prodigy and D-Adaptation's 1.0)."""
    declared = getattr(cls, "search_space", None)
    if declared is not None:
        return tuple(declared)
    for name in list_optimizers():
        entry = _REGISTRY.get(name)
        if entry.search_space is None:
            continue
        with contextlib.suppress(ValueError):  # a plugin whose package is not installed
            if entry.cls is cls:
                return tuple(entry.search_space)
    lr = constructor_arguments(cls).get("lr")
    if lr is None:
        return ()
    if lr_free_guess(cls) is not None:
        return (SearchParam("lr", lr.default / 10, lr.default * 10, log=True),)
    return LR_SEARCH


def lr_free_guess(cls: type) -> str | None:
    """One line when ``tune``'s default search space for ``cls`` is a guess from its default
    lr (>= 0.5: read as a learning-rate-free method's multiplier, searched a decade either side),
    not a space the class or its short name declares; else ``None``."""
    if getattr(cls, "search_space", None) is not None:
        return None
    for name in list_optimizers():
        entry = _REGISTRY.get(name)
        with contextlib.suppress(ValueError):  # a plugin whose package is not installed
            if entry.search_space is not None and entry.cls is cls:
                return None
    lr = constructor_arguments(cls).get("lr")
    default = None if lr is None else lr.default
    number = isinstance(default, (int, float)) and not isinstance(default, bool)
    if not (number and math.isfinite(default) and default >= LR_FREE_DEFAULT):
        return None
    size = _default_first_step(cls)
    if size is not None and size > LR_FREE_FIRST_STEP:
        return None  # a plain learning rate (its first step says so): the usual range
    checked = (
        "its first step could not be checked" if size is None
        else f"its first step at it moved the weights by {size:.1g} of their norm"
    )  # fmt: skip
    return (
        f"{cls.__name__}'s default lr {default:g} reads as a learning-rate-free method's "
        f"multiplier ({checked}): tune searches lr over {default / 10:g}..{default * 10:g} (a "
        "guess; give search_space entries, or declare search_space on the class, to choose)"
    )


@functools.cache
def _default_first_step(cls: type) -> float | None:
    """``contract.first_step_size`` of ``cls`` at its defaults (None: it needs settings)."""
    return first_step_size(lambda params: construct(cls, params, {}))


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
        n: p.default
        for n, p in constructor_arguments(cls).items()
        if p.default is not p.empty and writable(p.default)
    }
    given = {k: _path_of(v) if isinstance(v, type) else v for k, v in config["init_args"].items()}
    return cls, {"class_path": config["class_path"], "init_args": {**defaults, **given}}


def check_required(cls: type, init_args: Mapping[str, Any]) -> None:
    """Refuse (one line) a constructor argument without a default (or with torch's
    ``required`` marker) that ``init_args`` leaves unset or ``None``: the class's own
    requirement, which no other class's default may fill. The wrapped optimizer of a wrapper
    and the model of a class that takes it are given by ``construct``."""
    missing = [
        name
        for name, p in constructor_arguments(cls).items()
        if name not in (wrapped_argument(cls), "model")
        and (p.default is p.empty or p.default is required)
        and init_args.get(name) is None
    ]
    if missing:
        flags = " ".join(f"--optimizer.{name} VALUE" for name in missing)
        raise ValueError(
            f"{cls.__name__} has no default for {', '.join(missing)}: give {flags} (tune "
            "searches an argument of its search space)"
        )


def _path_of(cls: type) -> str:
    """A class given as an argument (SAM's base optimizer, a wrapper's inner one) as its path:
    what configs, hparams and checkpoints can hold (``construct`` imports it again)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def construct(
    cls: type, params: Any, init_args: Mapping[str, Any], net: Any = None
) -> torch.optim.Optimizer:
    """An instance of ``cls`` over ``params``: ``cls(params, **init_args)``; for a wrapper, whose
    first argument is an optimizer (Lookahead, OrthoGrad; ``wrapped_argument``), the inner
    optimizer (``init_args[that argument]``: a class, a class path or ``{class_path,
    init_args}``) is built
    over ``params`` first, with the arguments the wrapper's signature does not name. A class
    that takes the model (``model``: LOMO) gets ``net``; a population has none to give."""
    init_args = _classes(cls, init_args)
    if takes_model(cls):
        if net is None:
            raise ValueError(f"{cls.__name__} takes the model itself, which a population of "
                             "stacked members cannot give it")  # fmt: skip
        init_args = {**init_args, "model": net}
        if first_argument(cls) == "model":
            return cls(**init_args)
    wrapped = wrapped_argument(cls)
    arguments = parameter_arguments(cls)
    if wrapped is None and arguments[1:]:  # parameters in several arguments (MuonAdamAtan2)
        return cls(**groups.route(params, arguments, cls.__name__), **init_args)
    if wrapped is None:
        return cls(params, **init_args)
    args = dict(init_args)
    inner = args.pop(wrapped, None)
    named = constructor_arguments(cls)
    extra = {k: args.pop(k) for k in list(args) if k not in named}
    if inner is None:
        raise ValueError(
            f"{cls.__name__} wraps an optimizer: give --optimizer.{wrapped} CLASS (its arguments "
            "as --optimizer.dict_kwargs.ARG)"
        )
    if isinstance(inner, (str, Mapping)) or hasattr(inner, "as_dict"):
        config = optimizer_config(inner)
        inner, extra = optimizer_class(config), {**config["init_args"], **extra}
    if not isinstance(inner, type):
        raise ValueError(f"{cls.__name__}'s optimizer must be a class, got {inner!r}")
    return cls(construct(inner, params, extra), **args)


def _classes(cls: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` with the class paths given to arguments annotated as classes (SAM's
    ``base_optimizer: type[Optimizer]``) imported, as jsonargparse does on the command line."""
    named = constructor_arguments(cls)
    out = dict(init_args)
    for name, value in init_args.items():
        annotation = str(named[name].annotation) if name in named else ""
        if isinstance(value, str) and "type[" in annotation and "." in value:
            out[name] = import_class(value)
    return out


def takes_model(cls: type) -> bool:
    """Whether the constructor wants the model (a required argument called ``model``)."""
    param = inspect.signature(cls.__init__).parameters.get("model")
    return param is not None and param.default is param.empty


def wrapped_argument(cls: type) -> str | None:
    """The argument that takes the inner optimizer where ``cls`` wraps one: its first, named
    ``optimizer`` (pytorch-optimizer's and torch-optimizer's Lookahead, OrthoGrad) or
    ``base_optimizer`` (timm's Lookahead), or annotated as an optimizer; else ``None``."""
    first = first_argument(cls)
    if first is None or first == "params":
        return None
    annotation = str(inspect.signature(cls.__init__).parameters[first].annotation)
    return first if first.endswith("optimizer") or "Optimizer" in annotation else None


def first_argument(cls: type) -> str | None:
    """The name of the first argument of ``cls.__init__`` after ``self``."""
    params = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    return params[0] if params else None


def writable(value: Any) -> bool:
    """Whether a default survives config.yaml, best.yaml, hparams and results.json as itself:
    None, a bool, an int, a finite float, a string, or a list or tuple of these. The rest
    (``inf``, a ``torch.dtype``, an enum, a sentinel ``object()``, a class) is left out of what
    is written, so the class applies its own default; never a string the class then receives."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(writable(v) for v in value)
    return False


def check_optimizer(
    cls: type[torch.optim.Optimizer],
    net: Any,
    init_args: dict,
    input_size: int | None = None,
    num_classes: int | None = None,
    param_groups: Sequence[Mapping[str, Any]] = (),
    net_spec: Any = None,
) -> StepContract:
    """Take the pre-flight step on a copy of ``net`` (``lightning_opt.optim.contract``): what
    ``cls``'s step needs; its constructor checks ``init_args`` on the way (one line if it
    refuses, whatever it raises). Without ``input_size`` and ``num_classes`` the constructor
    alone is checked, over ``net``'s parameters (split by ``param_groups`` rules).

    With ``net_spec`` (the net's resolved ``{class_path, init_args}``) the step is taken once per
    process for each distinct question: the same class, arguments, net (spec, structure and every
    weight and buffer, bit for bit), sizes and rules give the contract already found, since the
    step is deterministic in all of them (``preflight`` seeds its own minibatch). A refusal is
    never remembered: it is raised again, as found."""
    split = groups.split(net.named_parameters(), param_groups)  # a rule matching nothing: its line
    if parameter_arguments(cls)[1:] or any(groups.INTO in r for r in param_groups):
        # which rule to add (or that into names nothing), before the class's arguments are shown
        groups.route(split, parameter_arguments(cls) or ["params"], cls.__name__)
    describe = f"{cls.__name__}({_show(init_args)})"
    # The group keys the class reads, where a rule sets one its constructor does not name: a
    # setting the pre-flight step never reads is refused after it.
    read: set[str] | None = set() if groups.not_arguments(cls, param_groups) else None

    def build(model: Any) -> torch.optim.Optimizer:
        params = groups.split(model.named_parameters(), param_groups, read)
        return construct(cls, params, init_args, model)

    if input_size is None or num_classes is None:
        # A population's later members: the first one's pre-flight step checked the same rules.
        read = None
        build_optimizer(describe, lambda: build(net))
        return StepContract()
    # The pre-flight step builds the class on its copy: the constructor's check is its first.
    key = None
    if net_spec is not None:
        key = _preflight_key(cls, init_args, net_spec, net, input_size, num_classes, param_groups)
    if key is not None and key in _PREFLIGHTS:
        return _PREFLIGHTS[key]
    try:
        contract = preflight(cls, build, net, input_size, num_classes, describe)
    except StepError as err:
        # A step that failed on a group key it asked for: a key set but never read that is
        # close to it is likely its misspelling.
        unread = groups.not_arguments(cls, param_groups) - (read or set())
        hints = [
            f"{key} (did you mean {close[0]}?)"
            for key in sorted(unread)
            if (close := difflib.get_close_matches(key, sorted(read or ()), 1))
        ]
        if not hints:
            raise
        raise StepError(f"{err}; param_groups set {', '.join(hints)}, never read") from None
    if read is not None:
        groups.check_settings(cls, param_groups, read)
    if key is not None:
        _PREFLIGHTS[key] = contract
    return contract


#: The contracts found by ``check_optimizer``, by everything that determines them.
_PREFLIGHTS: dict[tuple, StepContract] = {}


def _preflight_key(
    cls: type, init_args: Mapping[str, Any], net_spec: Any, net: Any, input_size: int,
    num_classes: int, param_groups: Sequence[Mapping[str, Any]],
) -> tuple | None:  # fmt: skip
    """What determines a pre-flight step's outcome, as a hashable key: the class, its
    arguments, the net's spec, structure and every weight and buffer, the sizes and the group
    rules (``None``: a value without a faithful text, never remembered)."""

    def class_path(item: Any) -> str:
        if isinstance(item, type):
            return f"{item.__module__}.{item.__qualname__}"
        raise TypeError(type(item).__name__)

    try:
        settings = json.dumps(
            [dict(init_args), net_spec, [dict(rule) for rule in param_groups]],
            sort_keys=True, default=class_path,
        )  # fmt: skip
    except TypeError:
        return None
    state = hashlib.sha256(repr(net).encode())
    for name, value in net.state_dict().items():
        if not isinstance(value, torch.Tensor):  # a module's extra state
            return None
        state.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        state.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return (cls, type(net), settings, state.hexdigest(), input_size, num_classes)


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
