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
from typing import Any

from torch import nn

from lightning_opt.core.reflection import Registry, class_spec, import_class

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


_REGISTRY: Registry[NetInfo] = Registry("net", ENTRY_POINT_GROUP, NetInfo, hint="my_nets.MyNet")


def register_net(info: NetInfo) -> NetInfo:
    """Add ``info`` to the registry (names are lowercase identifiers, unique)."""
    return _REGISTRY.register(info)


def list_nets() -> list[str]:
    """Registered short names, sorted (the entry-point group's included)."""
    return _REGISTRY.names()


def get_net(name: str) -> NetInfo:
    """The registry entry called ``name``; an unknown name lists the valid ones."""
    return _REGISTRY.get(name)


def net_short_name(class_path: str) -> str:
    """The registered short name of ``class_path``, else its class name in lowercase."""
    for name in list_nets():
        if _REGISTRY.get(name).class_path == class_path:
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
    refusal = f"a net is a short name ({', '.join(list_nets())}), a class path or"
    spec = class_spec(value, refusal, ("class_path", "init_args"), "net")
    if "." not in spec["class_path"]:
        spec["class_path"] = get_net(spec["class_path"]).class_path
    return spec


def resolve_net(value: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and ``{class_path, init_args}`` of a net, every default spelled out (what
    ``hparams.yaml``, checkpoints and results record)."""
    config = net_config(value)
    cls = import_class(config["class_path"])
    if not issubclass(cls, nn.Module):
        raise ValueError(f"{config['class_path']} is not a torch.nn.Module subclass")
    arguments = net_arguments(cls)
    unknown = sorted(set(config["init_args"]) - set(arguments))
    if unknown and not _takes_any_keyword(cls):  # a **kwargs constructor checks its own
        raise ValueError(
            f"{cls.__name__} takes no argument {', '.join(unknown)} "
            f"(it takes: {', '.join(arguments) or 'nothing'} after input_size, num_classes)"
        )
    defaults = {n: p.default for n, p in arguments.items() if p.default is not p.empty}
    # The defining module's path: one spelling of the class wherever it was given from
    # (jsonargparse shortens it to lightning_opt.models.ConvNet).
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    return cls, {"class_path": class_path, "init_args": {**defaults, **config["init_args"]}}


def _takes_any_keyword(cls: type) -> bool:
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def build_net(
    cls: type[nn.Module],
    init_args: Mapping[str, Any],
    input_size: int,
    num_classes: int,
    probe: bool = True,
) -> nn.Module:
    """``cls(input_size, num_classes, **init_args)``; one line if its constructor refuses, or
    (``probe``) if it does not map signals to class logits (``check_logits``)."""
    try:
        net = cls(input_size, num_classes, **init_args)
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in init_args.items())
        raise ValueError(f"{cls.__name__}({shown}): {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{cls.__name__}(...) returned a {type(net).__name__}, not a nn.Module")
    if probe:
        check_logits(net, input_size, num_classes)
    return net


def check_logits(net: nn.Module, input_size: int, num_classes: int) -> None:
    """Refuse (one line) a net that does not map ``(batch, input_size)`` signals to
    ``(batch, num_classes)`` logits. The probe runs in eval mode, without gradients and with the
    random state put back, so it changes nothing a run does next (BatchNorm statistics, dropout
    masks, the seeded initialisation of what comes after)."""
    import torch

    training = net.training
    probe = torch.zeros(2, input_size, dtype=next(net.parameters(), torch.zeros(())).dtype)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            net.eval()
            out = net(probe)
    except Exception as err:  # whatever the user's forward raises on a batch of signals
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"{type(net).__name__} fails on a batch of 2 signals of length {input_size}: "
            f"{type(err).__name__}: {reason}"
        ) from None
    finally:
        net.train(training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ValueError(
            f"{type(net).__name__} maps a batch of 2 signals of length {input_size} to {shape}, "
            f"not (2, {num_classes}) class logits"
        )


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
