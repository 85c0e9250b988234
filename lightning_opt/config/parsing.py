"""What every command parses: LightningCLI's model/data/trainer options plus ``--optimizer``.

``--optimizer`` is LightningCLI's own optimizer argument (``class_path`` / ``init_args``, any
``torch.optim.Optimizer`` subclass, its arguments checked against the class's signature and shown
by ``--optimizer.help CLASS``), linked into the model's ``optimizer`` argument. A registered short
name (``gnw``) may stand for a class path on the command line and in config files.

Before jsonargparse sees an optimizer (``--optimizer VALUE`` or a config file's ``optimizer:``),
it is expanded to its class path with every constructor argument spelled out: the user's values,
then the short name's defaults, then the class's. jsonargparse keeps the arguments of the
previous class that the new one also takes when the class changes, which would silently give
``--optimizer my_opts.Lion`` Adam's tuned learning rate and betas; spelled-out arguments cannot
be carried over. Every saved ``config.yaml`` so holds the class path and all its arguments.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import pickle
import re
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace, get_loader, set_loader
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_opt.core.names import check_limit
from lightning_opt.core.reflection import class_spec, import_class
from lightning_opt.data import NUM_CLASSES, MNIST1DDataModule
from lightning_opt.models import net_arguments, resolve_net
from lightning_opt.optim.registry import (
    constructor_arguments,
    default_search_space,
    for_parser,
    get_optimizer,
    list_optimizers,
    optimizer_class,
    optimizer_config,
    resolve_optimizer,
    short_name_of,
)
from lightning_opt.optim.schedulers import SCHEDULER_BASES
from lightning_opt.training.classifier import MNIST1DClassifier

PARSER_MODE = "lightning_opt"  # YAML, with short optimizer names expanded
DEFAULT_SAVE_DIR = "lightning_logs"  # under trainer.default_root_dir

TRAINER_DEFAULTS = {
    "max_epochs": 50,  # the GNW-Adam seed note's final runs
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # save_dir lightning_logs = <trainer.default_root_dir>/lightning_logs (./lightning_logs);
        # name null = the optimizer's short name: lightning_logs/<optimizer>/version_N
        "init_args": {"save_dir": "lightning_logs", "name": None, "default_hp_metric": False},
    },
}


class UsageError(Exception):
    """Bad input, found before anything ran: one line and exit code 2 on the command line."""


class RunFailure(Exception):
    """The machine or a service failed while a command ran (a damaged study database, a lost
    server): one line and exit code 1; what finished before is kept."""


def spell_out(value: Any) -> Any:
    """An optimizer value as ``{class_path, init_args}`` with every argument spelled out (see
    the module docstring); a value that does not name a class is left to jsonargparse's error."""
    try:
        return _lists(for_parser(resolve_optimizer(value)[1]))
    except ValueError:
        return value


def _lists(value: Any) -> Any:
    """Tuples as lists (what a YAML round trip gives), so dumped configs replay unchanged."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def spell_out_net(value: Any) -> Any:
    """A net value (short name, class path, mapping) as ``{class_path, init_args}`` with every
    argument spelled out, for the reason the optimizer's are; else left to jsonargparse."""
    try:
        return _lists(resolve_net(value)[1])
    except ValueError:
        return value


def expand_config(value: Any) -> Any:
    """A loaded config file with its ``optimizer`` and ``model.net`` spelled out."""
    if isinstance(value, dict) and value.get("optimizer") is not None:
        value = {**value, "optimizer": spell_out(value["optimizer"])}
    model = value.get("model") if isinstance(value, dict) else None
    if isinstance(model, dict) and model.get("net") is not None:
        value = {**value, "model": {**model, "net": spell_out_net(model["net"])}}
    return value


def _load(text: str) -> Any:
    return expand_config(get_loader("yaml")(text))


set_loader(PARSER_MODE, _load, exceptions=(__import__("yaml").YAMLError,))


class _ClassChange(torch.optim.Optimizer):
    """Stands between two optimizer classes while arguments are parsed, never built.

    Where a value names another class, jsonargparse starts the new class's arguments from the
    previous class's (those the new one takes too): a spelled-out class keeps its own defaults,
    but an argument without a default would silently be the previous class's (the default
    optimizer's tuned lr in ``optimi.SGD``, whose lr is required). The parser passes through this
    class, which takes no argument, so nothing carries over; a required argument left unset is
    then refused in one line when the model is built."""

    def __init__(self, params: Any) -> None:
        raise TypeError("_ClassChange only separates two optimizer classes while parsing")


_CLASS_CHANGE = f"--optimizer={_ClassChange.__module__}.{_ClassChange.__qualname__}"


def _names_optimizer_class(value: Any) -> bool:
    """Whether a parsed ``optimizer`` value names a class (a name or path, or a mapping with a
    ``class_path``), not only arguments of the current one."""
    return isinstance(value, str) or (isinstance(value, dict) and "class_path" in value)


def _optimizer_class_given(arg: str, following: str | None) -> Any:
    """The optimizer value ``arg`` (with the argument after it) gives where it names a class:
    ``--optimizer VALUE``, or the ``optimizer`` of a ``--config`` file; else ``None``."""
    if arg == "--optimizer" and following is not None and not following.startswith("-"):
        text = following
    elif arg.startswith("--optimizer="):
        text = arg.split("=", 1)[1]
    elif (arg in ("--config", "-c") and following is not None) or arg.startswith("--config="):
        path = following if arg in ("--config", "-c") else arg.split("=", 1)[1]
        try:
            loaded = get_loader("yaml")(Path(path).read_text(encoding="utf-8"))
        except Exception:  # not a readable YAML file: jsonargparse says so itself
            return None
        value = loaded.get("optimizer") if isinstance(loaded, dict) else None
        return value if _names_optimizer_class(value) else None
    else:
        return None
    try:
        value = get_loader("yaml")(text)
    except Exception:
        return None
    return value if _names_optimizer_class(value) else None


def separate_optimizer_classes(args: Sequence[str]) -> list[str]:
    """``args`` with ``_ClassChange`` before every value that gives an optimizer class."""
    out: list[str] = []
    for i, arg in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else None
        if _optimizer_class_given(arg, following) is not None:
            out.append(_CLASS_CHANGE)
        out.append(arg)
    return out


def searched_placeholders(args: Sequence[str]) -> dict[str, Any]:
    """For a command that tunes, of its expanded ``args`` (``expand_args``): each argument of
    the optimizer class they give that has no default, is not given, and that the class's
    search space searches (optimi's ``lr``), with a placeholder value, the low end of its range
    (every trial sets it). jsonargparse refuses an unset argument without a default; the
    study's checks then refuse one that its search space does not search after all
    (``check_placeholders``)."""
    value: Any = None
    given: set[str] = set()
    for i, arg in enumerate(args):
        found = _optimizer_class_given(arg, args[i + 1] if i + 1 < len(args) else None)
        if found is not None:
            value, given = spell_out(found), set()
        elif arg.startswith("--optimizer."):
            given.add(arg.split("=", 1)[0].rsplit(".", 1)[-1])
    if not isinstance(value, dict) or "class_path" not in value:
        return {}
    try:
        cls = optimizer_class(optimizer_config(value))
    except ValueError:
        return {}  # jsonargparse says what is wrong with the class
    given |= set(value.get("init_args") or {}) | set(value.get("dict_kwargs") or {})
    space = {p.name: p for p in default_search_space(cls)}
    return {
        name: space[name].ends()[0]
        for name, p in constructor_arguments(cls).items()
        if name in space and name not in given and p.default is p.empty
    }


def given_optimizer_arguments(args: Sequence[str]) -> set[str]:
    """The optimizer arguments the expanded command line ``args`` sets itself (``--optimizer.lr
    1e-3``, or an ``init_args`` of a ``--optimizer`` dict), after the last class it gives:
    set, whatever their value (one equal to the class's default included)."""
    given: set[str] = set()
    for i, arg in enumerate(args):
        found = _optimizer_class_given(arg, args[i + 1] if i + 1 < len(args) else None)
        if found is not None:  # its arguments as written (a short name's defaults are not set)
            given = set()
            if isinstance(found, dict):
                given = set(found.get("init_args") or {}) | set(found.get("dict_kwargs") or {})
        elif arg.startswith("--optimizer.") and not arg.startswith("--optimizer.help"):
            name = arg.split("=", 1)[0].removeprefix("--optimizer.")
            given.add(name.removeprefix("init_args.").removeprefix("dict_kwargs."))
    return given


def check_placeholders(placeholders: dict[str, Any], searched: Sequence[str], where: str) -> None:
    """Refuse (one line) a placeholder of ``searched_placeholders`` that the search space
    (``searched``: its names) does not search: it would train as the value."""
    missing = sorted(set(placeholders) - set(searched))
    if missing:
        flags = " ".join(f"--optimizer.{name} VALUE" for name in missing)
        raise UsageError(
            f"{where}the optimizer has no default for {', '.join(missing)} and the search space "
            f"does not search it: give {flags}, or search it"
        )


def expand_argv(args: Sequence[str]) -> list[str]:
    """``--optimizer VALUE`` and ``--model.net VALUE`` (or ``=VALUE``) spelled out (see the
    module docstring), each optimizer class given after ``_ClassChange``."""
    out = separate_optimizer_classes(args)
    flags = (
        ("--optimizer", _expand_value),
        ("--model.net", _expand_net),
        ("--model.net.help", _net_class_path),
    )
    for flag, expand in flags:
        for i, arg in enumerate(out):
            if arg == flag and i + 1 < len(out):
                out[i + 1] = expand(out[i + 1])
            elif arg.startswith(flag + "="):
                out[i] = f"{flag}=" + expand(arg.split("=", 1)[1])
    return out


def net_class_path(value: Any) -> Any:
    """A net's canonical class path (a short name, a class path or ``{class_path, init_args}``),
    or ``value`` itself where it names no net."""
    try:
        return resolve_net(value)[1]["class_path"]
    except (ValueError, TypeError):
        return value


def _net_class_path(text: str) -> str:
    """A short name's class path (``--model.net.help cnn``); anything else as typed."""
    if "." in text or text.startswith("-"):
        return text
    try:
        return resolve_net(text)[1]["class_path"]
    except ValueError as err:
        raise UsageError(f"--model.net.help: {err}") from None


def unreadable_checkpoint_reason(path: str, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words."""
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size == 0:
        return "the file is empty (0 bytes)"
    text = str(err)
    blocked = re.search(r"(?:unsupported|Unsupported global:) (GLOBAL [\w.]+)", text)
    if blocked:
        return (
            f"it holds a Python object beyond weights ({blocked.group(1)}); only weights-only "
            "checkpoints are loaded, since unpickling anything else can run code"
        )
    if isinstance(err, (KeyError, pickle.UnpicklingError)):  # torch's message: its boilerplate
        return f"not a file torch.save writes ({type(err).__name__})"
    if isinstance(err, EOFError):
        return f"the file ends early ({size} bytes): truncated while written or copied?"
    first = " ".join(text.split()).split(". ")[0]
    return (
        f"{type(err).__name__}: {first[:160]}" if first else f"{type(err).__name__} ({size} bytes)"
    )


def with_checkpoint_settings(args: Sequence[str]) -> list[str]:
    """``args`` plus the checkpoint's ``--optimizer`` and ``--model.net`` when ``--ckpt_path``
    names one and the command line sets neither itself.

    LightningCLI gives a checkpoint's hyperparameters to the model's arguments, but the model's
    ``optimizer`` is linked from ``--optimizer``, whose default (adam) would then replace the
    checkpoint's: ``fit --ckpt_path`` of a Lion run would resume Adam from Lion's state.
    """
    out = list(args)
    path = None
    for i, arg in enumerate(out):
        if arg == "--ckpt_path" and i + 1 < len(out):
            path = out[i + 1]
        elif arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
    given = any(a == "--optimizer" or a.startswith("--optimizer=") for a in out)
    if not path or not Path(path).is_file():
        return out
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a text file, a truncated file, an unsafe pickle
        reason = unreadable_checkpoint_reason(path, err)
        raise UsageError(f"--ckpt_path {path} is not a readable checkpoint: {reason}") from None
    optimizer = (checkpoint.get("hyper_parameters") or {}).get("optimizer")
    if not given and isinstance(optimizer, dict) and "class_path" in optimizer:
        out.append("--optimizer=" + json.dumps(_lists(optimizer)))
    # The checkpoint's net, first: --model.net.ARG flags then apply to its class, not the default's.
    net = (checkpoint.get("hyper_parameters") or {}).get("net")
    net_given = any(a == "--model.net" or a.startswith("--model.net=") for a in out)
    if not net_given and isinstance(net, dict) and "class_path" in net:
        at = 1 if out and not out[0].startswith("-") else 0  # after the subcommand
        out.insert(at, "--model.net=" + json.dumps(_lists(net)))
    return out


def _expand(text: str, flag: str, check: Any, spell: Any) -> str:
    """``flag``'s value spelled out by ``spell``; a short name ``check`` refuses is one line."""
    if text.startswith("-"):
        return text  # the next option: the flag had no value, jsonargparse says so
    loaded = get_loader("yaml")(text)
    if isinstance(loaded, str) and "." not in loaded:
        try:
            check(loaded)
        except ValueError as err:
            raise UsageError(f"{flag}: {err}") from None
    expanded = spell(loaded)
    return text if expanded is loaded else json.dumps(expanded)


def _expand_value(text: str) -> str:
    return _expand(text, "--optimizer", optimizer_config, spell_out)


def _expand_net(text: str) -> str:
    return _expand(text, "--model.net", resolve_net, spell_out_net)


def optimizer_dict(config: Any) -> dict[str, Any]:
    """A parsed ``optimizer`` (Namespace or dict) as ``{"class_path", "init_args"}`` (its
    ``dict_kwargs``, what only the class's ``**kwargs`` take, among the ``init_args``)."""
    value = config.optimizer if hasattr(config, "optimizer") else config
    return class_spec(value, "an optimizer is a short name, a class path or")


def run_name(config: Any) -> str:
    """The optimizer's short name (or its class name, lowercase): logs and study names."""
    return short_name_of(optimizer_dict(config)["class_path"])


def summarize_argument_error(message: str) -> str:
    """jsonargparse's error for a class's argument, which lists every type of a Union it tried,
    cut to the line a person needs: the key, the class and what was wrong with the value.

    ``Parser key "trainer.callbacks": Does not validate against any of the Union subtypes ...
    Problem with given class_path 'X': Parser key "clip_factor": Expected a <class 'float'>. Got
    value: abc ...`` becomes ``trainer.callbacks: X: clip_factor: expected a float, got abc``.
    """
    text = " ".join(message.split())
    net = re.match(
        r"Parser key \"model\.net\": .*?Option '(\w+)' is not accepted.*?class_path='([\w.]+)'",
        text,
    )
    if net:  # the Callable type's words for an argument the net's class does not take
        arg, class_path = net.groups()
        takes = ", ".join(net_arguments(import_class(class_path))) or "nothing"
        return f"--model.net.{arg}: {class_path.rsplit('.', 1)[-1]} takes no argument {arg!r} (it takes: {takes})"
    outer = re.match(r'Parser key "([^"]+)": ', text)
    ambiguous = re.search(r"(Multiple subclasses with name .*?)(?: - |$)", text)
    if outer and ambiguous:
        return f"{outer.group(1)}: {ambiguous.group(1).rstrip('.')}"
    problems = re.findall(
        r"Problem with given class_path '([^']+)': (.*?)(?= - Problem with| - Expected a <class"
        r"| Given value type:|$)",
        text,
    )
    if outer and not problems:
        union = re.search(r"Subtypes: \[(.*?)\] Errors:.*?Given value: (.*)$", text)
        if union:  # a plain value of the wrong shape: what was expected, what was given
            expected = re.sub(r"<class '(\w+)'>", r"\1", union.group(1)).replace("typing.", "")
            expected = expected.replace(", NoneType", " or null").replace("NoneType, ", "null or ")
            return f"{outer.group(1)}: expected {expected}, got {union.group(2)}"
    if not outer or not problems:
        return text
    seen, parts = set(), []
    for class_path, reason in problems:
        if class_path.startswith("lightning.") and class_path.count(".") == 1:
            continue  # the base class jsonargparse also tried (lightning.Callback)
        reason = _short_reason(reason)
        if (class_path, reason) not in seen:
            seen.add((class_path, reason))
            parts.append(f"{class_path}: {reason}")
    return f"{outer.group(1)}: {'; '.join(parts)}" if parts else text


def _closest(word: str, choices: list[str]) -> str | None:
    """The one of ``choices`` ``word`` most likely misspells: a case slip first, then the
    closest spelling (difflib); ``None`` if none is close."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return found[0] if found else None


def _flag_hint(message: str, parser: Any) -> str:
    """``; did you mean --optimizer?`` for an unrecognized flag close to one ``parser`` (or one of
    its subcommands' parsers) takes; ``""`` if none is close."""
    unknown = re.search(r"[Uu]nrecognized arguments: (--[\w.\-]+)", message)
    if not unknown:
        return ""
    known: set[str] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            known.update(o for o in action.option_strings if o.startswith("--"))
            parsers.extend(getattr(action, "_name_parser_map", {}).values())  # subcommands
    match = _closest(unknown.group(1), sorted(known))
    return f"; did you mean {match}?" if match else ""


def did_you_mean(summary: str) -> str:
    """A hint for a one-line argument error that names a close spelling: a class path's misspelt
    name (``torch.optim.Adamw``: ``AdamW``), a class's misspelt argument (``--optimizer.lrr``:
    ``lr``), or an argument only the class's ``**kwargs`` take (``dict_kwargs``); ``""`` if
    none."""
    attribute = re.search(r"([\w.]+): module '([\w.]+)' has no attribute '(\w+)'", summary)
    if attribute:
        key, module_name, name = attribute.groups()
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return ""
        public = [n for n in dir(module) if not n.startswith("_") and inspect.isclass(
            getattr(module, n, None))]  # fmt: skip
        match = _closest(name, public)
        return f"; did you mean {module_name}.{match}?" if match else ""
    option = re.search(r"^([\w.]+): ([\w.]+): Option '(\w+)' is not accepted", summary)
    if option:
        key, class_path, name = option.groups()
        try:
            cls = import_class(class_path)
        except (ValueError, TypeError, ImportError, AttributeError):
            return ""
        match = _closest(name, list(constructor_arguments(cls)))
        if match:
            return f"; did you mean --{key}.{match}?"
        takes_kwargs = any(p.kind is p.VAR_KEYWORD
                           for p in inspect.signature(cls.__init__).parameters.values())  # fmt: skip
        if takes_kwargs:
            return (f"; {class_path.rsplit('.', 1)[-1]} passes its **kwargs on: give it as "
                    f"--{key}.dict_kwargs.{name}")  # fmt: skip
    return ""


def _short_reason(reason: str) -> str:
    key = re.match(r'Parser key "([^"]+)": (.*)', reason)
    if not key:
        return reason.strip(" -")
    name, rest = key.groups()
    expected = (
        re.search(r"Subtypes: \[<class '([\w.]+)'>", rest)
        or re.search(r"Expected an? <class '([\w.]+)'>", rest)
        or re.search(r"Expected an? typing\.(Literal\[[^\]]*\])", rest)
    )
    value = re.search(r"(?:Got|Given) value: (\S+)", rest) or re.search(
        r"Expected a path but (\S+)", rest
    )
    if expected:
        got = value.group(1) if value else "another value"
        return f"{name}: expected {expected.group(1)}, got {got}"
    return f"{name}: {rest.strip(' -')}"


def place_loggers(config: Any) -> None:
    """Where each configured logger writes, as in Lightning: a ``save_dir`` left at its default
    (``lightning_logs``) goes under ``trainer.default_root_dir`` (``<root>/lightning_logs``), and a
    ``name`` left unset is the optimizer's (``lightning_logs/<optimizer>/version_N``). Loggers
    given as a list all count. (jsonargparse requires a logger's ``save_dir``, so the default is a
    value, not null: one explicitly set to ``lightning_logs`` also follows ``default_root_dir``.)"""
    loggers = config.trainer.get("logger")
    if not loggers or isinstance(loggers, bool):
        return
    root = Path(config.trainer.get("default_root_dir") or "")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue
        if "save_dir" in init_args and init_args.save_dir in (None, DEFAULT_SAVE_DIR):
            init_args.save_dir = str(root / DEFAULT_SAVE_DIR)
        if "name" in init_args and init_args.name is None:
            init_args.name = run_name(config)


def check_trainer_settings(trainer: Any, training: bool = True) -> None:
    """Refuse Trainer settings the model cannot honour, before anything is built.

    The model steps its optimizer itself (one step per minibatch, manual optimization), which
    Lightning does not combine with its own gradient clipping or accumulation. A command that
    trains (``training``) refuses a budget of nothing, which would save untrained weights as
    the run's checkpoint.
    """
    for budget in ("max_epochs", "max_steps"):
        if training and trainer.get(budget) == 0:
            raise ValueError(
                f"--trainer.{budget} 0 trains nothing (its checkpoint would hold the untrained "
                "weights): give a positive number, or evaluate a checkpoint with validate/test"
            )
    if trainer.get("gradient_clip_val") not in (None, 0, 0.0):
        raise ValueError(
            "Trainer(gradient_clip_val=...) is not supported: the model steps its optimizer "
            "itself (one step per minibatch); use the callback "
            "lightning_opt.callbacks.FixedNormClipping with mode: global for the same rule"
        )
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise ValueError(
            "Trainer(accumulate_grad_batches=...) is not supported: the model takes one optimizer "
            "step per minibatch; raise data.batch_size instead"
        )


def check_run_settings(config: Any) -> None:
    """One line (``UsageError``) for settings that would fail deep inside a run: a seed numpy
    cannot take, a file where a folder is expected."""
    seed = config.get("seed_everything")
    if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise UsageError(
            f"--seed_everything {seed}: a seed is an integer from 0 to {MAX_SEED} (or true: random)"
        )
    root = config.get("trainer", {}).get("default_root_dir")
    if root and Path(root).exists() and not Path(root).is_dir():
        raise UsageError(f"--trainer.default_root_dir {root} is a file; give a folder")
    data = config.get("data") or {}
    for size in ("num_samples", "final_seq_length"):  # the net is sized by them before the data
        try:
            check_limit(size, data.get(size), f"--data.{size}")
        except ValueError as err:
            raise UsageError(str(err)) from None


#: What each command is for: the first paragraph of its ``--help``.
COMMAND_HELP = {
    "fit": "Train a model on mnist1d with an optimizer given by short name or class path "
    "(--optimizer). --seeds [..] trains several seeds at once as a population, each logged as "
    "its own run. Checkpoints and TensorBoard logs go to lightning_logs/<optimizer>/version_N.",
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": "Evaluate a checkpoint (--ckpt_path) on the held-out test split.",
    "predict": "Write per-example test-split predictions of a checkpoint (--ckpt_path) as CSV.",
    "tune": "An Optuna search of a fit configuration: --n_trials trials (pruned, on workers or as "
    "populations), resumable from its storage; writes <output_dir>/<study>/best.yaml, a fit "
    "config of the best trial, and the study's plots.",
    "compare": "An experiment: tune each arm (--arms) on the validation split, retrain the best "
    "configuration over --seeds seeds, test once on the held-out test split, and report with "
    "confidence intervals and Holm-corrected tests (results.md, comparison.html, runs.csv).",
    "benchmark": "A candidate optimizer against tuned baselines over a suite of workloads, "
    "scored as AlgoPerf scores (time to a validation target; leaderboard.md and .html).",
}
#: Help sections of LightningCLI's Trainer, model and data, shown after the command's own.
_LIGHTNING_SECTIONS = (
    "Customize every aspect of training", "Any network on mnist1d", "mnist1d with train",
    "Linked arguments",
)  # fmt: skip
#: Section titles that say what their options are.
_SECTION_TITLES = {
    "Base class for all optimizers:": "The optimizer (--optimizer NAME or CLASS_PATH; "
    "--optimizer.help CLASS_PATH lists a class's arguments):",
    "Runs the full optimization routine:": "This command's Trainer call:",
}


def command_help(text: str, command: str) -> str:
    """argparse's help of ``command`` for a person: a one-line usage and a paragraph first,
    then the command's own options, then the Trainer, model and data options (LightningCLI's,
    which make up most of it)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and (not blocks or not blocks[-1] or line.endswith(":")):
            blocks.append([])
        if not blocks:
            blocks.append([])
        blocks[-1].append(line)
    own, lightning = [], []
    for block in blocks:
        head = block[0] if block else ""
        if head.startswith("usage:") or head in (
            "Lightning Trainer command line tool",
            "Runs the full optimization routine.",
        ):
            continue  # fmt: skip
        block = [_SECTION_TITLES.get(head, head), *block[1:]]
        (lightning if head.startswith(_LIGHTNING_SECTIONS) else own).append(block)
    out = [
        f"usage: python -m lightning_opt {command} [options]   (every option below; "
        "--config FILE for a YAML of them)",
        "",
        *textwrap.wrap(COMMAND_HELP.get(command, ""), 88),
        "",
    ]
    optimizer = _SECTION_TITLES["Base class for all optimizers:"]
    mine = {"tune": "Study:", "compare": "Experiment:", "benchmark": "Benchmark:"}.get(command)
    for block in sorted(own, key=lambda b: (b[0] == optimizer, b[0] not in ("options:", mine))):
        out.extend(block)
    out += ["", "=" * 88, "Trainer, model and data options (LightningCLI; every one can also "
            "be set in a --config file):", "=" * 88, ""]  # fmt: skip
    for block in lightning:
        out.extend(block)
    return "\n".join(out).rstrip() + "\n"


class HelpfulParser(LightningArgumentParser):
    """LightningCLI's parser whose ``--help`` is ``command_help``'s."""

    #: The command being parsed (set by the CLI's dispatcher; a subcommand parser knows its
    #: own from its ``prog``).
    command = ""

    def format_help(self) -> str:
        last = (self.prog or "").split()[-1:]
        command = last[0] if last and last[0] in COMMAND_HELP else HelpfulParser.command
        text = super().format_help()
        if not command or not any(f"\n{s}" in text for s in _LIGHTNING_SECTIONS):
            return text  # the top-level parser of fit, test, ...; a class's --optimizer.help
        return command_help(text, command)


class OptimizerCLI(LightningCLI):
    """LightningCLI for ``MNIST1DClassifier`` on ``MNIST1DDataModule`` with ``--optimizer``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.add_optimizer_argument(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.argv = list(args) if isinstance(args, (list, tuple)) else []  # as typed
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            hint = _flag_hint(str(err), parser)
            if not hint:
                raise
            raise ArgumentError(None, f"{err}{hint}") from None
        config = self.config[self.config.subcommand] if "subcommand" in self.config else self.config
        check_run_settings(config)  # before LightningCLI seeds anything or makes a folder

    @staticmethod
    def add_optimizer_argument(parser: LightningArgumentParser) -> None:
        names = "; ".join(f"{n} ({get_optimizer(n).description})" for n in list_optimizers())
        parser.add_subclass_arguments(
            torch.optim.Optimizer,
            "optimizer",
            skip={"params", "model"},  # the model is the net, given by the model (LOMO)
            instantiate=False,
            fail_untyped=False,
            required=False,
            default=spell_out("adam"),
            help="Any torch.optim.Optimizer subclass by class path (my_module.MyOptimizer), or a "
            f"short name: {names}. Its arguments: --optimizer.ARG; list them with "
            "--optimizer.help CLASS.",
        )
        parser.link_arguments("optimizer", "model.optimizer", compute_fn=_plain)
        parser.add_subclass_arguments(
            SCHEDULER_BASES,
            "lr_scheduler",
            skip={"optimizer"},
            instantiate=False,
            fail_untyped=False,
            required=False,
            default=None,
            help="Any torch LR scheduler by class path (torch.optim.lr_scheduler.CosineAnnealingLR) "
            "or ReduceLROnPlateau (on val/loss); its arguments: --lr_scheduler.ARG. Stepped at "
            "the end of every epoch, or after every step with --model.lr_interval step.",
        )
        parser.link_arguments("lr_scheduler", "model.lr_scheduler", compute_fn=_plain)
        # The net's input length and class count are the data's, never a default of the model.
        parser.link_arguments("data", "model.input_size", compute_fn=_signal_length)
        parser.link_arguments("data", "model.num_classes", compute_fn=_num_classes)
        parser.set_defaults({"model.net": spell_out_net("mlp")})


def _signal_length(data: Any) -> int:
    return int(data.final_seq_length)


def _num_classes(data: Any) -> int:
    return NUM_CLASSES  # mnist1d's ten digit templates


def _plain(value: Any) -> Any:
    return _lists(value.as_dict() if isinstance(value, Namespace) else value)


def check_config_files(args: Sequence[str]) -> None:
    """A ``--config`` file that is not UTF-8 text (a binary, a checkpoint given by mistake) is one
    line, not the decoder's traceback."""
    for i, arg in enumerate(args):
        path = None
        if arg in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path is None or not Path(path).is_file():
            continue  # jsonargparse names a missing file itself
        size = Path(path).stat().st_size
        if size > CONFIG_BYTES:
            raise UsageError(
                f"--config {path} is {size / 2**20:.1f} MiB; a config is YAML text of at most "
                f"{CONFIG_BYTES // 2**20} MiB (a data file given by mistake?)"
            )
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(
                f"--config {path} is not a UTF-8 text file (byte {err.start}: {err.reason}); "
                "give a YAML config"
            ) from None
        try:
            values = _expanded_size(text)
        except RecursionError:
            raise UsageError(
                f"--config {path}: its YAML is nested too deeply to read; a config is a few "
                "levels of mappings and lists"
            ) from None
        if values > CONFIG_VALUES:
            raise UsageError(
                f"--config {path}: its aliases (*name) expand to more than {CONFIG_VALUES:,} "
                "values (a 'billion laughs' YAML); write the values out, or use fewer aliases"
            )
        kind = _top_level(text)
        if kind is not None:  # jsonargparse's "Unexpected config:" said nothing of it
            raise UsageError(
                f"--config {path} holds {kind}; a config is a YAML mapping of settings "
                "(trainer: {max_epochs: 5})"
            )


#: A config file's size and the number of values its YAML aliases may expand to: far above any
#: real config (a benchmark suite is a few KiB), far below what hangs the parser.
CONFIG_BYTES = 2**20
CONFIG_VALUES = 1_000_000


def _top_level(text: str) -> str | None:
    """What a config's YAML holds at its top where that is not a mapping ("no settings (empty,
    or comments only)", "a list"); ``None`` for a mapping, or for text that is not YAML
    (jsonargparse says why)."""
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    if root is None:
        return "no settings (it is empty, or comments only)"
    if isinstance(root, yaml.SequenceNode):
        return "a list, not settings"
    if isinstance(root, yaml.ScalarNode):
        return f"a single value ({root.value[:40]!r}), not settings"
    return None


def _expanded_size(text: str) -> int:
    """How many YAML nodes ``text`` holds once every alias is expanded, counted without
    expanding (an alias is the node it names, counted once per reference); 0 if it is not YAML
    (jsonargparse then says why)."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        root = yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        return 0
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias (not valid YAML for a config) counts once
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        sizes[id(node)] = total
        return total

    return size(root) if root is not None else 0


def expand_args(args: Sequence[str]) -> list[str]:
    """A command's arguments as the parser takes them: config files checked, a checkpoint's
    optimizer and net added, optimizers and nets spelled out (``expand_argv``)."""
    check_config_files(args)
    return expand_argv(with_checkpoint_settings(args))


def build_cli(
    cli_class: type[LightningCLI], args: Sequence[str] | None, expanded: bool = False,
    **kwargs: Any,
) -> Any:  # fmt: skip
    """``cli_class`` over the model and data with the project's defaults (``args``: a list;
    ``expanded``: already through ``expand_args``)."""
    if args is not None and not expanded:
        args = expand_args(args)
    with warnings.catch_warnings():
        # args come from our own dispatcher, which has already read sys.argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(
            MNIST1DClassifier,
            MNIST1DDataModule,
            args=args,
            seed_everything_default=0,
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "parser_mode": PARSER_MODE},
            parser_class=HelpfulParser,
            **kwargs,
        )
