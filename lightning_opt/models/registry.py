"""Networks by short name or class path, as optimizers are (``lightning_opt.optim.registry``).

A net is any ``torch.nn.Module`` whose constructor takes the input length and the class count
as its first two positional arguments (``MyNet(input_size, num_classes, **init_args)``); the
data module supplies both (``--data.final_seq_length`` and mnist1d's 10 classes), the rest are
the net's own arguments (``--model.net.ARG``), checked by its constructor. A short name is a
frozen entry beside the built-in classes; installed packages add names through the entry-point
group ``lightning_opt.models`` (``name = "package.module:Class"``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from lightning_opt.reflection import import_class

#: Plugins register short names here: ``[project.entry-points."lightning_opt.models"]``.
ENTRY_POINT_GROUP = "lightning_opt.models"

#: What a net argument is once LightningCLI has parsed it: a class to call with
#: ``(input_size, num_classes)``, its other arguments already bound (``--model.net.ARG``).
NetFactory = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class NetInfo:
    """A short name for a network class.

    Attributes:
        name: lowercase name used on the command line (``--model.net NAME``).
        class_path: the class's import path.
        description: one line for ``list_nets`` and ``--help``.
    """

    name: str
    class_path: str
    description: str

    @property
    def cls(self) -> type[nn.Module]:
        return import_class(self.class_path)


_REGISTRY: dict[str, NetInfo] = {}
_plugins_loaded = False


def register_net(info: NetInfo) -> NetInfo:
    """Add ``info`` to the registry (names are lowercase identifiers, unique)."""
    if info.name != info.name.lower() or not info.name.isidentifier():
        raise ValueError(f"net names are lowercase identifiers, got {info.name!r}")
    if info.name in _REGISTRY:
        raise ValueError(f"net '{info.name}' is already registered")
    _REGISTRY[info.name] = info
    return info


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _REGISTRY:
            continue  # built-in names cannot be replaced
        module, _, attr = entry.value.partition(":")
        class_path = f"{module}.{attr}" if attr else module
        register_net(NetInfo(entry.name, class_path, class_path))


def list_nets() -> list[str]:
    """Registered short names, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_net(name: str) -> NetInfo:
    """The registry entry called ``name``; an unknown name lists the valid ones."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown net {name!r}; give a class path (my_nets.MyNet) or one of: "
            f"{', '.join(list_nets())}"
        ) from None


def net_short_name(class_path: str) -> str:
    """The registered short name of ``class_path``, else its class name in lowercase."""
    for name in list_nets():
        if _REGISTRY[name].class_path == class_path:
            return name
    return class_path.rpartition(".")[2].lower()


def net_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor arguments of net class ``cls`` after the two the data supplies."""
    params = [
        p
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return {p.name: p for p in params[2:]}


def net_config(value: Any) -> dict[str, Any]:
    """``value`` as ``{"class_path", "init_args"}``: a short name, a class path, a class, or a
    mapping (or jsonargparse Namespace) with ``class_path`` and optional ``init_args``."""
    if isinstance(value, type):
        value = f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, str):
        value = {"class_path": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        raise ValueError(
            f"a net is a short name ({', '.join(list_nets())}), a class path or "
            f"{{class_path, init_args}}, got {value!r}"
        )
    unknown = set(value) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"net keys are class_path and init_args, got {sorted(unknown)}")
    class_path = value["class_path"]
    if "." not in class_path:
        class_path = get_net(class_path).class_path
    return {"class_path": class_path, "init_args": dict(value.get("init_args") or {})}


def resolve_net(value: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and ``{class_path, init_args}`` of a net, every default spelled out (what
    ``hparams.yaml``, checkpoints and results record)."""
    config = net_config(value)
    cls = import_class(config["class_path"])
    if not issubclass(cls, nn.Module):
        raise ValueError(f"{config['class_path']} is not a torch.nn.Module subclass")
    arguments = net_arguments(cls)
    unknown = sorted(set(config["init_args"]) - set(arguments))
    if unknown:
        raise ValueError(
            f"{cls.__name__} takes no argument {', '.join(unknown)} "
            f"(it takes: {', '.join(arguments) or 'nothing'} after input_size, num_classes)"
        )
    defaults = {n: p.default for n, p in arguments.items() if p.default is not p.empty}
    # The defining module's path: one spelling of the class wherever it was given from
    # (jsonargparse shortens it to lightning_opt.models.ConvNet).
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    return cls, {"class_path": class_path, "init_args": {**defaults, **config["init_args"]}}


def build_net(
    cls: type[nn.Module], init_args: Mapping[str, Any], input_size: int, num_classes: int
) -> nn.Module:
    """``cls(input_size, num_classes, **init_args)``; one line if its constructor refuses."""
    try:
        net = cls(input_size, num_classes, **init_args)
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in init_args.items())
        raise ValueError(f"{cls.__name__}({shown}): {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{cls.__name__}(...) returned a {type(net).__name__}, not a nn.Module")
    return net


def describe_net(config: Mapping[str, Any]) -> str:
    """One line for reports: ``cnn (channels=25)``."""
    args = ", ".join(f"{k}={v}" for k, v in config.get("init_args", {}).items())
    name = net_short_name(config["class_path"])
    return f"{name} ({args})" if args else name


def resolve_net_argument(net: Any, hparams: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and spelled-out ``{class_path, init_args}`` of a module's ``net`` argument.

    LightningCLI hands the module a factory (the class with its ``--model.net.ARG`` values
    bound) and records the parsed ``{class_path, init_args}`` in ``hparams``: the record is what
    is resolved, so checkpoints and ``config.yaml`` replay it.
    """
    recorded = hparams.get("net", net)
    if callable(recorded) and not isinstance(recorded, type):
        raise ValueError(
            "net must be a short name, a class path or {class_path, init_args}, "
            f"got the callable {recorded!r}"
        )
    return resolve_net(recorded)
