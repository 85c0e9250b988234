"""What determines a study's or an experiment's numbers (``run_fingerprint``), recorded with it
and compared on every re-run: a run with other settings is refused with its first differences and
the ways out (a new name, or ``--overwrite``), never silently reused."""

from __future__ import annotations

import json
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser

import lightning_opt
from lightning_opt.core.reflection import constructor_arguments, import_class
from lightning_opt.optim.registry import writable

#: The study's own options: not part of a trial's fit config (best.yaml leaves them out).
TUNE_KEYS = (
    "n_trials", "n_workers", "storage", "study_name", "seed", "pruner", "objective",
    "search_space", "output_dir", "heartbeat_interval", "grace_period", "max_retry", "population",
    "overwrite", "quiet", "connect_timeout", "sampler", "study_size", "points", "trial_seeds",
)  # fmt: skip
#: Settings that change where a run writes or how fast it goes, not its values (a population
#: and a compiled step round differently from a lone eager run, within float rounding).
NOT_IN_FINGERPRINT = (
    "config", "n_trials", "n_workers", "storage", "study_name", "output_dir", "heartbeat_interval",
    "grace_period", "max_retry", "overwrite", "quiet", "connect_timeout", "population",
    "population_finals",
    "experiment", "trainer.logger", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_checkpointing", "trainer.default_root_dir", "data.cache_dir",
    "shared_arms_dir", "model.compile",
)  # fmt: skip
#: compare's own options (see ``experiments.compare.CompareCLI``).
EXPERIMENT_KEYS = (
    "experiment", "arms", "seeds", "tune_max_epochs", "population_finals", "robustness",
    "share_arms", "shared_arms_dir",
)  # fmt: skip


def run_fingerprint(
    parser: LightningArgumentParser, config: Any, drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Everything in ``config`` that determines a trial's (or final run's) values, resolved, as
    plain data: model, data, trainer budget and callbacks, optimizer, scheduler, search space,
    seeds, objective, pruner; with the package version. Where runs go and how fast (loggers,
    workers, populations, storage) is left out."""

    dumped = yaml.safe_load(parser.dump(config, skip_validation=True))
    without(dumped, (*NOT_IN_FINGERPRINT, *drop))
    dumped["lightning_opt"] = lightning_opt.__version__
    return _spelled_out(dumped)


def without(settings: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``settings`` (a dumped config) with each of ``keys`` (``trainer.logger``: dotted one
    level) removed, in place; returned."""
    for key in keys:
        section, _, name = key.rpartition(".")
        holder = settings.get(section) if section else settings
        if isinstance(holder, dict):
            holder.pop(name, None)
    return settings


def _spelled_out(node: Any) -> Any:
    """Every ``{class_path, init_args}`` in ``node`` with the class's unset defaults filled in
    (those a config can hold), so one setting spelled two ways (``optimizer: adam`` in an arm,
    ``--optimizer adam`` on the command line, which jsonargparse fills) has one fingerprint."""
    import inspect
    import json

    if isinstance(node, list):
        return [_spelled_out(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _spelled_out(value) for key, value in node.items()}
    path, init_args = node.get("class_path"), node.get("init_args")
    if isinstance(path, str) and isinstance(init_args, dict | None):
        try:
            arguments = constructor_arguments(import_class(path))
        except (ValueError, TypeError):  # a short name, spelled out where it resolves
            return node
        filled = dict(init_args or {})
        for name, param in arguments.items():
            default = param.default
            if name not in filled and default is not inspect.Parameter.empty and writable(default):
                filled[name] = json.loads(json.dumps(default))
        node["init_args"] = filled
    return node


def differences(recorded: Any, now: Any, prefix: str = "") -> list[str]:
    """``key: recorded -> now`` for each setting that differs (dotted keys, in order)."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        out = []
        for key in [*recorded, *(k for k in now if k not in recorded)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            out += differences(recorded.get(key, "<unset>"), now.get(key, "<unset>"), name)
        return out
    return [] if recorded == now else [f"{prefix}: {recorded!r} -> {now!r}"]


def changed(what: str, recorded: Any, now: Any, overwrite: bool, rename: str) -> bool:
    """The one check of settings recorded with a study or an experiment against this run's:
    ``False`` if nothing was recorded or nothing differs; ``True`` if they differ and
    ``overwrite`` starts it afresh (the caller deletes what it owns); else ``ValueError``, one
    line with the first differences and the ways out (another ``rename``, or ``--overwrite``)."""
    now = json.loads(json.dumps(now))  # as a record reads back (tuples as lists)
    if recorded is None or recorded == now:
        return False
    if overwrite:
        return True
    raise ValueError(mismatch_message(what, differences(recorded, now), rename))


#: How much of one difference a refusal shows (a whole list of arms can be kilobytes).
SHOWN_CHARS = 160


def mismatch_message(what: str, diffs: list[str], rename: str) -> str:
    cut = [d if len(d) <= SHOWN_CHARS else d[: SHOWN_CHARS - 3] + "..." for d in diffs[:3]]
    shown = "; ".join(cut) + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")
    return (
        f"{what} was run with other settings ({shown}); its results cannot be reused: choose "
        f"another {rename}, or pass --overwrite to start it afresh"
    )


def digest(settings: Any, length: int = 12) -> str:
    """A short name for ``settings`` (plain data): equal settings (as ``==`` compares them,
    ``0`` and ``0.0`` alike), equal digests."""
    import hashlib
    import json

    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [canonical(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    text = json.dumps(canonical(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
