"""One run's objects, built from a parsed config: the one place for fit, tune and compare.

``tune`` and ``compare`` build the runs of a study or an experiment here, from the same config
``fit`` parses, so a trial or a final run is the ``fit`` its config describes.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.config.parsing import optimizer_dict
from lightning_opt.core.atomic import replacing
from lightning_opt.core.event_files import MemberTensorBoardLogger
from lightning_opt.core.reflection import class_spec
from lightning_opt.models import resolve_net
from lightning_opt.optim.registry import (
    constructor_arguments,
    import_class,
    optimizer_class,
    resolve_optimizer,
)
from lightning_opt.population import PopulationClassifier
from lightning_opt.population.plan import NotAPopulation, PopulationPlan, class_refusal
from lightning_opt.training.classifier import MNIST1DClassifier, ModelPlan
from lightning_opt.training.loop import check_compile

#: A run that reports through its own lines and logger: no bar, summary or per-epoch checkpoint.
QUIET_TRAINER = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
}


def quiet_lightning() -> None:
    """One line per run is the progress report: silence Lightning's and Optuna's chatter."""
    import optuna

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")


def instantiate(value: Any) -> Any:
    """Instantiate ``{class_path, init_args}`` entries (recursively); other values as they are."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if "class_path" in value:
            cls = import_class(value["class_path"])
            return cls(**{k: instantiate(v) for k, v in (value.get("init_args") or {}).items()})
        return {k: instantiate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    return value


def callback_class(callback_config: Any) -> type | None:
    """The class a ``{class_path, init_args}`` callback entry names (``None`` if it has none)."""
    path = getattr(callback_config, "class_path", None)
    if path is None and isinstance(callback_config, dict):
        path = callback_config.get("class_path")
    return import_class(str(path)) if path else None


def is_clipping_entry(entry: Any) -> bool:
    """Whether a ``{class_path, init_args}`` callback entry is a gradient clipping rule."""
    cls = callback_class(entry)
    return isinstance(cls, type) and issubclass(cls, GradientClippingCallback)


def clipping_callbacks(config: Any) -> list[Any]:
    """The entries of ``trainer.callbacks`` that are gradient clipping rules."""
    return [entry for entry in config.trainer.get("callbacks") or [] if is_clipping_entry(entry)]


def settable(config: Any) -> dict[str, str]:
    """``{name: where}`` for every number a trial may set: the optimizer's constructor arguments
    first, then the LR scheduler's, then each clipping callback's (a name several take goes to
    the first of these)."""
    where = {}
    for entry in clipping_callbacks(config):
        cls = callback_class(entry)
        for name in _numbers(cls):
            where.setdefault(name, cls.__name__)
    scheduler = scheduler_dict(config)
    if scheduler is not None:
        cls = import_class(scheduler["class_path"])
        where.update(dict.fromkeys(_numbers(cls, skip="optimizer"), "lr_scheduler"))
    where.update(dict.fromkeys(_numbers(optimizer_class(optimizer_dict(config))), "optimizer"))
    return where


def scheduler_dict(config: Any) -> dict[str, Any] | None:
    """The config's ``lr_scheduler`` as ``{class_path, init_args}`` (``None``: no scheduler)."""
    value = config.get("lr_scheduler")
    return None if value is None else class_spec(value, "a scheduler is a class path or")


def _numbers(cls: type, skip: str = "") -> list[str]:
    """Constructor arguments a search space may set (a flag only by its choices), and each
    element of a tuple default as ``NAME.INDEX`` (``betas.1``)."""
    names = []
    for name, p in constructor_arguments(cls).items():
        if name == skip:
            continue
        names.append(name)
        if isinstance(p.default, tuple):
            names += [f"{name}.{i}" for i in range(len(p.default))]
    return names


def element(name: str) -> tuple[str, int] | None:
    """``("betas", 1)`` for ``betas.1``: the element of a tuple argument a search sets."""
    base, _, index = name.rpartition(".")
    return (base, int(index)) if base and index.isdigit() else None


def with_elements(init_args: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` with ``values`` set, ``NAME.INDEX`` ones into their tuple argument."""
    out = dict(init_args)
    for name, value in values.items():
        parts = element(name)
        if parts is None:
            out[name] = value
            continue
        base, index = parts
        current = list(out[base])
        current[index] = value
        out[base] = current
    return out


def flags(cls: type) -> set[str]:
    """Constructor arguments that are flags (true/false): searched by choices, never a range."""
    return {
        name
        for name, p in constructor_arguments(cls).items()
        if isinstance(p.default, bool) or p.annotation in (bool, "bool")
    }


def with_values(config: Any, values: dict[str, Any]) -> Any:
    """A copy of ``config`` with ``values`` set on the optimizer or the clipping callback that
    takes each name (see ``settable``)."""
    cfg = copy.deepcopy(config)
    where = settable(cfg)
    for name, value in values.items():
        if where.get(name) == "optimizer":
            updated = with_elements(dict(cfg.optimizer.init_args), {name: value})
            for key, item in updated.items():
                cfg.optimizer.init_args[key] = item
            continue
        if where.get(name) == "lr_scheduler":
            cfg.lr_scheduler.init_args[name] = value
            continue
        for entry in clipping_callbacks(cfg):
            if callback_class(entry).__name__ == where.get(name):
                entry.init_args[name] = value
    return cfg


@dataclass(frozen=True)
class RunSpec:
    """What one run trains, resolved once from a parsed config: the net's and the optimizer's
    class with every argument spelled out, the scheduler, the data (its generator arguments
    included) and the budget. What the model is built from and what records say it trained."""

    net: dict[str, Any]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any] | None
    lr_interval: str
    log_internals: bool
    compile: bool | str
    param_groups: list[dict[str, Any]] | None
    input_size: int
    num_classes: int
    data: dict[str, Any]
    max_epochs: int | None
    max_steps: int | None

    @classmethod
    def of(cls, cfg: Any) -> RunSpec:
        """The run of ``cfg`` (``ValueError``, one line, for a net or optimizer that does not
        resolve)."""
        model = cfg.model.as_dict()
        return cls(
            net=resolve_net(model["net"])[1],
            optimizer=resolve_optimizer(optimizer_dict(cfg))[1],
            lr_scheduler=scheduler_dict(cfg),
            lr_interval=model.get("lr_interval", "epoch"),
            log_internals=model.get("log_internals", True),
            compile=model.get("compile", False),
            param_groups=model.get("param_groups"),
            input_size=model["input_size"],
            num_classes=model["num_classes"],
            data=cfg.data.as_dict(),
            max_epochs=cfg.trainer.get("max_epochs"),
            max_steps=cfg.trainer.get("max_steps"),
        )

    def model_arguments(self) -> dict[str, Any]:
        """The arguments of ``MNIST1DClassifier`` (and, with seeds, of a population)."""
        return {
            "net": self.net,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "lr_interval": self.lr_interval,
            "log_internals": self.log_internals,
            "compile": self.compile,
            "param_groups": self.param_groups,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
        }


def model_arguments(cfg: Any) -> dict[str, Any]:
    """The model's arguments of ``cfg`` (``RunSpec.of(cfg).model_arguments()``)."""
    return RunSpec.of(cfg).model_arguments()


def build_model(cfg: Any) -> MNIST1DClassifier:
    """The model a ``fit`` of ``cfg`` would train (its own constructor checks everything)."""
    return MNIST1DClassifier(**model_arguments(cfg))


def check_model(cfg: Any) -> ModelPlan:
    """Check the model a ``fit`` of ``cfg`` would train, without building it: its settings
    and its net's pre-flight step (the net of seed 0, as tuning trials build it)."""
    arguments = model_arguments(cfg)
    arguments.pop("log_internals")
    check_compile(arguments.pop("compile"))
    return ModelPlan.of(**arguments)


def build_population(
    cfg: Any, seeds: Sequence[int], member_hparams: dict[str, list] | None = None
) -> PopulationClassifier:
    """A population whose member k is the ``fit`` of ``cfg`` with seed ``seeds[k]`` and the
    k-th value of each ``member_hparams`` entry."""
    return PopulationClassifier(list(seeds), member_hparams=member_hparams, **model_arguments(cfg))


def plan_population(
    cfg: Any, seeds: Sequence[int], member_hparams: dict[str, list] | None = None
) -> PopulationPlan:
    """The checked plan of ``build_population``'s population, without building it."""
    return _plan(list(seeds), member_hparams=member_hparams, **model_arguments(cfg))


def build_mixed_population(
    members: Sequence[tuple[Any, dict[str, Any]]], seeds: Sequence[int]
) -> PopulationClassifier:
    """A population whose member k is the ``fit`` of ``members[k]``'s config with seed
    ``seeds[k]`` and its values set, where the configs may differ in their optimizer, LR
    scheduler and clipping rule (consecutive members of one optimizer, scheduler and rule form
    a group; members of several configs clip by their own config's rule). Everything else the
    model takes must be the same (``ValueError``, one line)."""
    return PopulationClassifier(**mixed_population_arguments(members, seeds))


def plan_mixed_population(
    members: Sequence[tuple[Any, dict[str, Any]]], seeds: Sequence[int]
) -> PopulationPlan:
    """The checked plan of ``build_mixed_population``'s population, without building it."""
    return _plan(**mixed_population_arguments(members, seeds))


def _plan(
    seeds: list[int], log_internals: bool = True, compile: bool | str = False, **arguments: Any
) -> PopulationPlan:
    """``PopulationPlan.of`` the arguments of a ``PopulationClassifier`` (logging and how the
    step runs aside)."""
    check_compile(compile)
    return PopulationPlan.of(seeds, **arguments)


def mixed_population_arguments(
    members: Sequence[tuple[Any, dict[str, Any]]], seeds: Sequence[int]
) -> dict[str, Any]:
    """The ``PopulationClassifier`` arguments of ``build_mixed_population``."""
    by_config: dict[int, dict[str, Any]] = {}  # the members of one study share their config
    rules: dict[int, Any] = {}
    for cfg, _ in members:
        if id(cfg) not in by_config:
            by_config[id(cfg)] = RunSpec.of(cfg).model_arguments()
            rules[id(cfg)] = [class_spec(e, "a callback is a class path or")
                              for e in clipping_callbacks(cfg)]  # fmt: skip
    specs = [by_config[id(cfg)] for cfg, _ in members]
    # Several configs with a rule among them: each group clips by its own (restricted) rule,
    # which is exact whether their rules and the settings they tune differ or not.
    own_rules = len(rules) > 1 and any(rules.values())
    own = ("optimizer", "lr_scheduler", "lr_interval")
    shared = {k: v for k, v in specs[0].items() if k not in own}
    intervals = {s["lr_interval"] for s in specs if s["lr_scheduler"] is not None}
    if len(intervals) > 1:
        raise ValueError("the members' schedulers step at different lr_intervals")
    interval = intervals.pop() if intervals else specs[0]["lr_interval"]
    groups: list[dict[str, Any]] = []
    for spec, (cfg, values) in zip(specs, members, strict=True):
        differ = [k for k in shared if spec[k] != shared[k]]
        if differ:
            raise ValueError(
                f"population members differ in {', '.join(differ)}: only their optimizer, "
                "LR scheduler and clipping rule may"
            )
        rule = (rules[id(cfg)] or [None])[0] if own_rules else None
        key = (spec["optimizer"], spec["lr_scheduler"], spec["lr_interval"], rule, sorted(values))
        if groups and groups[-1]["key"] == key:
            groups[-1]["values"].append(values)
            continue
        groups.append({"key": key, "spec": spec, "values": [values], "rule": rule})
    entries = [
        {
            "optimizer": g["spec"]["optimizer"],
            "lr_scheduler": g["spec"]["lr_scheduler"],
            "lr_interval": g["spec"]["lr_interval"],
            "size": len(g["values"]),
            "member_hparams": {n: [v[n] for v in g["values"]] for n in g["values"][0]},
            **({"clipping": g["rule"]} if own_rules else {}),
        }
        for g in groups
    ]
    first = groups[0]["spec"]
    if len(entries) == 1:
        hparams = entries[0]["member_hparams"]
        return {"seeds": list(seeds), "member_hparams": hparams, **first}
    return {"seeds": list(seeds), "member_groups": entries, **first, "lr_interval": interval}


def population_blocker(cfg: Any) -> str | None:
    """Why the runs of ``cfg`` cannot train as one population (one line), or ``None`` if they
    can: the one place that decides it, for ``tune --population`` and ``compare``'s finals (a
    blocked config trains one run at a time; ``fit --seeds`` refuses it): the class, the data and
    the callbacks here, the rest by the population plan (``PopulationPlan.of``)."""
    why = class_refusal(optimizer_class(optimizer_dict(cfg)))
    if why is not None:
        return why
    if cfg.data.get("split_seed") == "per_run":
        return "data.split_seed per_run gives every seed its own validation split"
    callbacks = user_callbacks(cfg)
    if callbacks:
        return f"callbacks {', '.join(callbacks)} would see all members of a population at once"
    try:
        plan_population(cfg, [0])  # the net of seed 0, as a run builds it: its step is shared
    except NotAPopulation as refusal:
        return refusal.reason
    return None


def trainer_arguments(cfg: Any) -> dict[str, Any]:
    """The Trainer's arguments of ``cfg``, its callbacks instantiated."""
    trainer_kwargs = instantiate(cfg.trainer)
    trainer_kwargs["callbacks"] = list(trainer_kwargs.get("callbacks") or [])
    return trainer_kwargs


def _logger_entries(cfg: Any) -> list[dict[str, Any]]:
    entries = cfg.trainer.get("logger")
    if entries is None or entries is False:
        return []
    if entries is True:  # Lightning's default logger
        entries = [{"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}]
    entries = entries if isinstance(entries, list) else [entries]
    return [e.as_dict() if isinstance(e, Namespace) else dict(e) for e in entries]


def check_run_loggers(cfg: Any) -> None:
    """Refuse, before anything runs, a configured logger that cannot give each trial or seed a
    run of its own (one that takes no ``save_dir``, ``name`` and ``version``)."""
    for entry in _logger_entries(cfg):
        cls = import_class(entry["class_path"])
        missing = [
            k for k in ("save_dir", "name", "version") if k not in constructor_arguments(cls)
        ]
        if missing:
            raise ValueError(
                f"trainer.logger {cls.__name__} takes no {', '.join(missing)}, so it cannot log "
                "each trial or seed to a run of its own; use TensorBoardLogger or CSVLogger "
                "(or fit, which runs it as configured)"
            )


def run_loggers(cfg: Any, save_dir: Any, name: str, version: str = "") -> list[Logger]:
    """The configured loggers (``trainer.logger``: one, a list, or none) of one trial, final run
    or population member, each writing to ``save_dir/name/version`` with its other settings as
    configured. Every logger a user gives ``fit`` so also serves ``tune`` and ``compare``."""
    loggers = []
    entries = _logger_entries(cfg)
    for entry in entries:
        cls = import_class(entry["class_path"])
        args = instantiate(dict(entry.get("init_args") or {}))
        # Several loggers: each in a folder of its own (trial_3/csvlogger/), so none overwrites
        # another's files (both TensorBoard and CSV write hparams.yaml).
        own = f"{version}/{cls.__name__.lower()}" if len(entries) > 1 else version
        args.update(save_dir=str(save_dir), name=name, version=own.strip("/"))
        if cls is TensorBoardLogger:  # the same run, its events by one writer thread
            args.setdefault("default_hp_metric", False)
            cls = MemberTensorBoardLogger
        loggers.append(cls(**args))
    return loggers


#: The Callback hooks that run per Lightning batch or per optimizer step: a callback that
#: overrides one could tell whole epochs per batch from one minibatch per batch.
BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def _user_callback_classes(cfg: Any) -> list[Any]:
    """The configured callbacks' classes (an entry without one: itself), clipping rules aside."""
    classes = [callback_class(entry) for entry in cfg.trainer.get("callbacks") or []]
    return [c for c in classes
            if not (isinstance(c, type) and issubclass(c, GradientClippingCallback))]  # fmt: skip


def _name(cls: Any) -> str:
    return cls.__name__ if isinstance(cls, type) else str(cls)


def batch_watching_callbacks(cfg: Any) -> list[str]:
    """The configured callbacks (clipping rules aside) that override a per-batch hook."""
    return [
        _name(cls) for cls in _user_callback_classes(cfg)
        if not isinstance(cls, type)
        or any(getattr(cls, hook, None) is not getattr(Callback, hook) for hook in BATCH_HOOKS)
    ]  # fmt: skip


def user_callbacks(cfg: Any) -> list[str]:
    """The class names of the configured callbacks that are not clipping rules."""
    return [_name(cls) for cls in _user_callback_classes(cfg)]


def chunk_where_invisible(cfg: Any, data: Any) -> bool:
    """Have ``data`` hand Lightning whole epochs per batch (``data.chunk_invisibly``; its
    recorded ``steps_per_chunk`` stays as configured) for the runs of ``cfg`` where nothing can
    tell the difference; whether it did.

    A trial or final run shows no progress bar, and the model keeps Lightning's logging step at
    the optimizer step, adds its epoch sums step by step and steps every clipping callback per
    minibatch, so parameters, ``global_step`` and every logged scalar are the same bits either way
    (``tests/test_lightning_contract.py``). What could still see it: a callback of the user's
    that overrides a per-batch hook (``BATCH_HOOKS``: ``LearningRateMonitor``,
    ``ModelCheckpoint``; not ``EarlyStopping``, whose hooks are per epoch), a Trainer flag that
    counts batches or time, or an explicit ``data.steps_per_chunk``; any of those keeps one
    minibatch per batch. (An epoch hook that reads Lightning's batch counts, ``batch_idx`` or
    ``num_training_batches``, would see one batch an epoch.)
    """
    trainer = cfg.trainer
    counting = (
        trainer.get("max_steps") not in (None, -1)
        or trainer.get("min_steps") is not None
        or trainer.get("limit_train_batches") not in (None, 1, 1.0)
        or _validates_within_epochs(trainer.get("val_check_interval"))
        or bool(trainer.get("fast_dev_run"))
        or trainer.get("max_time") is not None
    )
    invisible = (
        cfg.data.get("steps_per_chunk") is None
        and not counting
        and not batch_watching_callbacks(cfg)
    )
    data.chunk_invisibly = invisible  # the recorded hyperparameters stay as configured
    return invisible


def _validates_within_epochs(interval: Any) -> bool:
    """Whether Lightning's ``val_check_interval`` counts batches: an int (every N batches, 1
    included) or a fraction of an epoch; ``None`` and ``1.0`` validate at each epoch's end."""
    if interval is None or isinstance(interval, bool):
        return False
    return isinstance(interval, int) or interval != 1.0


def check_writable(directory: Any) -> None:
    """Refuse, before anything runs, an output directory that is a file or cannot be written."""
    import os
    from pathlib import Path

    path = Path(directory)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output directory {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"output directory {path}: {parent} is not writable")
            return


def save_final_checkpoint(trainer: Trainer, log_dir: Any) -> str:
    """One checkpoint of the run's last weights: ``<log_dir>/checkpoints/final.ckpt``, written
    under a temporary name and renamed (never half a file under the final name)."""
    from pathlib import Path

    path = Path(log_dir) / "checkpoints" / "final.ckpt"
    with replacing(path) as tmp:
        trainer.save_checkpoint(tmp)
    return str(path)


def save_member_checkpoint(
    model: PopulationClassifier, member: int, log_dir: Any, checkpoint: Any = None
) -> str:
    """Member ``member``'s single-model checkpoint (of now, or ``checkpoint``, taken when it
    ended): ``<log_dir>/checkpoints/final.ckpt``."""
    from pathlib import Path

    path = Path(log_dir) / "checkpoints" / "final.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(model.member_checkpoint(member) if checkpoint is None else checkpoint, tmp)
    return str(path)


def build_trainer(cfg: Any, logger: Logger | bool, callbacks: Sequence[Callback] = ()) -> Trainer:
    """The quiet Trainer of one run of ``cfg``: its own callbacks plus ``callbacks``."""
    kwargs = trainer_arguments(cfg)
    kwargs["callbacks"] += list(callbacks)
    kwargs.update(QUIET_TRAINER, logger=logger)
    return Trainer(**kwargs)
