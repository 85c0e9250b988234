"""An experiment's plan, checked before its first trial: its arms (validated, each one's tune
and final configs), the settings that determine its numbers (recorded, and refused when a re-run
changes them), and whether each arm's finals train as one population."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from jsonargparse import Namespace
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningArgumentParser

import lightning_opt
from lightning_opt.config.fingerprints import (
    EXPERIMENT_KEYS,
    changed,
    digest,
    run_fingerprint,
)
from lightning_opt.config.parsing import UsageError
from lightning_opt.core.atomic import write_text
from lightning_opt.core.names import check_limit, check_name, overlap
from lightning_opt.experiments.final_units import SUFFIX
from lightning_opt.models import resolve_net
from lightning_opt.optim.registry import optimizer_class, optimizer_config
from lightning_opt.optim.schedulers import resolve_scheduler
from lightning_opt.reports import stats
from lightning_opt.runs.build import (
    callback_class,
    check_model,
    check_run_loggers,
    check_writable,
    plan_population,
    population_blocker,
    trainer_arguments,
)
from lightning_opt.tuning.storage import sqlite_url
from lightning_opt.tuning.trials import as_a_trial, options_from_config
from lightning_opt.tuning.tune import check_study, open_study_storage

ARM_KEYS = {"name", "optimizer", "lr_scheduler", "model", "callbacks", "search_space", "points"}


def validate_arms(config: Any) -> list[dict[str, Any]]:
    """The arms as plain dicts, checked: one clear error before any training."""
    arms = [dict(a) for a in (config.arms or [])]
    if not arms:
        raise ValueError("the experiment has no arms: list them under `arms:` in its config")
    for key in ("seeds", "tune_max_epochs"):
        if config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
    check_limit("seeds", config.seeds, "--seeds")
    last = config.seed_everything + config.seeds - 1  # the final runs' seeds: found before tuning
    if not isinstance(config.seed_everything, bool) and last > MAX_SEED:
        raise ValueError(
            f"--seed_everything {config.seed_everything} with --seeds {config.seeds}: the last "
            f"final run's seed {last} is above the largest seed {MAX_SEED}; start lower"
        )
    if not config.trainer.max_epochs or config.trainer.max_epochs < 1:
        raise ValueError(
            f"trainer.max_epochs must be a positive integer, got {config.trainer.max_epochs}"
        )
    names = []
    for arm in arms:
        unknown = set(arm) - ARM_KEYS
        if unknown:
            raise ValueError(
                f"arm {arm.get('name')!r} has unknown keys {sorted(unknown)}; allowed: {sorted(ARM_KEYS)}"
            )
        name = check_name("arm", arm.get("name"), "arms[].name")
        names.append(name)
        try:
            if "optimizer" in arm:
                optimizer_class(optimizer_config(arm["optimizer"]))
            resolve_scheduler(arm.get("lr_scheduler"))
        except ValueError as err:
            raise ValueError(f"arm {name!r}: {err}") from None
        for callback in arm.get("callbacks") or []:
            try:
                cls = callback_class(dict(callback))
            except ValueError as err:
                raise ValueError(f"arm {name!r}: {err}") from None
            if not (isinstance(cls, type) and issubclass(cls, Callback)):
                raise ValueError(
                    f"arm {name!r}: callbacks are {{class_path, init_args}} of Lightning "
                    f"Callback classes, got {dict(callback).get('class_path', callback)}"
                )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicated)}")
    return arms


def arm_config(base: Any, arm: dict[str, Any], max_epochs: int) -> Any:
    """The fit/tune config of one arm: the shared config with the arm's settings on top."""
    cfg = copy.deepcopy(base)
    if "optimizer" in arm:
        resolved = optimizer_config(arm["optimizer"])
        cfg.optimizer = Namespace(
            class_path=resolved["class_path"], init_args=Namespace(**resolved["init_args"])
        )
    for key, value in (arm.get("model") or {}).items():
        if key == "optimizer":
            raise ValueError(f"arm {arm['name']!r}: set the optimizer with the arm's `optimizer:`")
        if key in ("input_size", "num_classes"):
            raise ValueError(f"arm {arm['name']!r}: model.{key} follows the data; set data.*")
        if key not in cfg.model:
            raise ValueError(f"arm {arm['name']!r}: the model has no setting {key!r}")
        if key == "net":  # the arm's own net, every argument spelled out
            try:
                resolved = resolve_net(value)[1]
            except ValueError as err:
                raise ValueError(f"arm {arm['name']!r}: {err}") from None
            value = Namespace(
                class_path=resolved["class_path"], init_args=Namespace(**resolved["init_args"])
            )
        cfg.model[key] = value
    # The experiment's own callbacks run in every arm; each arm adds its own.
    cfg.trainer.callbacks = [
        *(cfg.trainer.get("callbacks") or []),
        *(
            Namespace(class_path=c["class_path"], init_args=Namespace(**(c.get("init_args") or {})))
            for c in (arm.get("callbacks") or [])
        ),
    ]
    if "lr_scheduler" in arm:  # the arm's own schedule (null: none) replaces the experiment's
        scheduler = resolve_scheduler(arm["lr_scheduler"])
        cfg.lr_scheduler = None if scheduler is None else Namespace(
            class_path=scheduler[1]["class_path"], init_args=Namespace(**scheduler[1]["init_args"])
        )  # fmt: skip
    cfg.search_space = arm.get("search_space")
    if "points" in arm:  # the arm's own list (--sampler points); else the experiment's
        cfg.points = arm["points"]
    cfg.trainer.max_epochs = max_epochs
    return cfg


@dataclass(frozen=True)
class ArmPlan:
    """One arm, checked and ready: its tuning and final configs and study options; ``retune``
    is the same arm tuned at the finals' budget (the robustness check), when it runs."""

    name: str
    tune_cfg: Any
    final_cfg: Any
    options: Any
    population_finals: bool
    retune: ArmPlan | None = None


def refused_record(
    exp_dir: Path, fingerprint: dict[str, Any], overwrite: bool, what: str = "experiment",
    rename: str = "--experiment",
) -> bool:  # fmt: skip
    """Whether ``exp_dir``'s recorded results are to be started afresh (``overwrite`` of other
    settings); refuse (``UsageError``, one line) results made with other settings, or with no
    record. Changes nothing: ``benchmark`` asks it of every workload before any trains (``what``
    and ``rename``: how its refusal names the folder and the flag that renames it)."""
    path = exp_dir / "experiment.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        try:
            return changed(f"{what} {exp_dir.name!r}", recorded, fingerprint, overwrite, rename)
        except ValueError as err:
            raise UsageError(str(err)) from None
    if exp_dir.exists() and any((exp_dir).iterdir()) and not overwrite:
        raise UsageError(
            f"{exp_dir} holds results of an experiment with no record of its settings (made by "
            f"an older version); choose another {rename}, or pass --overwrite"
        )
    return False


def check_experiment_record(
    exp_dir: Path, fingerprint: dict[str, Any], overwrite: bool, plans: list[ArmPlan],
    shared: bool,
) -> None:  # fmt: skip
    """Refuse to reuse an experiment's results (tuning studies, final runs) made with other
    settings, or start it afresh with ``overwrite`` (its folder, and its own studies of
    ``plans``' storage); record the settings of a new one. ``shared``: the plans' studies are
    shared arms' (``--share_arms``), kept."""
    path = exp_dir / "experiment.json"
    if refused_record(exp_dir, fingerprint, overwrite):
        _delete_own_studies(exp_dir, plans, json.loads(path.read_text()), shared)
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(fingerprint, indent=1))


def _delete_own_studies(
    exp_dir: Path, plans: list[ArmPlan], recorded: dict[str, Any], shared: bool
) -> None:
    """``--overwrite`` starts an experiment afresh: on a storage outside its folder, its own
    studies (``<experiment>.<arm>``, re-tuned, finals: of the arms planned now and of those
    recorded) are deleted with its outputs, or a study of unchanged settings would be reused
    with its logs and checkpoints gone. Shared arms' studies (named by their settings, their
    logs outside the experiment) stay."""

    if not plans or plans[0].options.storage == sqlite_url(exp_dir / "optuna.db"):
        return  # the experiment's own database: deleted with its folder
    names = set()
    for plan in [] if shared else plans:
        for p in (plan, plan.retune):
            if p is not None:
                names |= {p.options.study_name, p.options.study_name + SUFFIX}
    if not recorded.get("share_arms"):
        for arm in recorded.get("arms") or []:
            for retuned in ("", ".retuned"):
                name = f"{exp_dir.name}.{arm.get('name')}{retuned}"
                names |= {name, name + SUFFIX}
    storage = open_study_storage(plans[0].options)
    deleted = sorted(names & {s.study_name for s in storage.get_all_studies()})
    for name in deleted:
        optuna.delete_study(study_name=name, storage=storage)
    if deleted:
        print(f"--overwrite: deleted the studies {', '.join(deleted)}", flush=True)


def plan_arms(config: Any, parser: LightningArgumentParser | None = None) -> list[ArmPlan]:
    """Every arm's plan; everything that can fail is checked here, before the first trial of
    the first arm (``ValueError``, one line)."""
    check_name("experiment", config.experiment, "--experiment")
    arms = validate_arms(config)
    base_options = options_from_config(config)
    exp_dir = Path(config.output_dir) / config.experiment
    storage = config.storage or sqlite_url(exp_dir / "optuna.db")
    shared = shared_arms_dir(config)
    if shared is not None:
        if overlap(exp_dir, shared):  # --overwrite of either would delete the other's runs
            raise ValueError(
                f"--experiment {config.experiment}: its folder {exp_dir} and the shared arms' "
                f"folder {shared} (--shared_arms_dir) overlap, so --overwrite of this experiment "
                "would delete runs other experiments' results point at; choose another "
                "--experiment or --shared_arms_dir"
            )
        check_writable(shared)
    if config.storage:  # a database of its own: reachable before anything trains
        open_study_storage(replace(base_options, storage=storage))
    retune = config.robustness and config.tune_max_epochs != config.trainer.max_epochs
    plans = []
    for arm in arms:
        name = arm["name"]
        final_cfg = arm_config(config, arm, config.trainer.max_epochs)
        try:
            population, finals_blocker = check_finals(config, name, final_cfg)
            plan = None
            budgets = [(config.tune_max_epochs, "")]
            if retune:
                budgets.append((config.trainer.max_epochs, ".retuned"))
            for epochs, suffix in reversed(budgets):
                tune_cfg = arm_config(config, arm, epochs)
                # Named after the experiment too: a shared storage holds many experiments;
                # or after everything that determines the arm's numbers, to share them.
                # Its logs: under the experiment (<arm>, <arm>/retuned), or, shared, in a
                # folder of the study's own that the experiment's --overwrite never deletes.
                study = f"{config.experiment}.{name}{suffix}"
                logs, log_dir_name = exp_dir, f"{name}/retuned" if suffix else name
                if config.share_arms:
                    study = f"{name}{suffix}.{_arm_digest(parser, config, tune_cfg, final_cfg)}"
                if shared is not None:
                    logs, log_dir_name = shared, study
                options = replace(
                    base_options, study_name=study, output_dir=str(logs), storage=storage,
                    log_dir_name=log_dir_name, draw_key=name,
                )  # fmt: skip
                options = check_study(tune_cfg, options, announce=False)
                if parser is not None:
                    fingerprint = run_fingerprint(parser, tune_cfg, drop=EXPERIMENT_KEYS)
                    options = replace(options, fingerprint=fingerprint)
                plan = ArmPlan(name, tune_cfg, final_cfg, options, population, plan)
        except ValueError as err:
            raise ValueError(f"arm {name!r}: {err}") from None
        tuning_blocker = population_blocker(as_a_trial(plan.tune_cfg)) if (
            config.population > 1 and plan.options.population == 1) else None  # fmt: skip
        _say_blocked(name, finals_blocker, tuning_blocker, config.population)
        plans.append(plan)
    return plans


def shared_arms_dir(config: Any) -> Path | None:
    """Where shared arms' logs and checkpoints go (``--share_arms`` on a ``--storage`` of
    several experiments): one folder per study; ``None``: under the experiment, as its own
    storage is (``<output_dir>/<experiment>/optuna.db``, which nothing shares)."""
    if not (config.share_arms and config.storage):
        return None
    return default_shared_arms_dir(config.shared_arms_dir, config.output_dir)


def default_shared_arms_dir(given: str | None, output_dir: str) -> Path:
    """``--shared_arms_dir``, or ``<output_dir>/shared_arms``."""
    return Path(given or Path(output_dir) / "shared_arms")


def _say_blocked(name: str, finals: str | None, tuning: str | None, population: int) -> None:
    """One line per reason an arm's runs train one at a time."""
    ignored = f"(--population {population} ignored)"
    if finals is not None and finals == tuning:
        print(f"arm {name}: {finals}: its trials and final runs train one at a time {ignored}",
              flush=True)  # fmt: skip
        return
    if finals is not None:
        print(f"arm {name}: {finals}: its final runs train one seed at a time", flush=True)
    if tuning is not None:
        print(f"arm {name}: {tuning}: its trials run one at a time {ignored}", flush=True)


def _arm_digest(
    parser: LightningArgumentParser | None, config: Any, tune_cfg: Any, final_cfg: Any
) -> str:
    """What an arm's tuning trials and final runs come to depends on: its tuning run's settings,
    the finals' budget, and the study's trial count and population (the sampler's batches)."""
    if parser is None:
        raise ValueError("share_arms needs the experiment's parser to record the arm's settings")
    return digest({
        "tune": run_fingerprint(parser, tune_cfg, drop=EXPERIMENT_KEYS),
        "final_epochs": final_cfg.trainer.max_epochs, "n_trials": config.n_trials,
        "population": config.population,
    })  # fmt: skip


def check_finals(config: Any, name: str, final_cfg: Any) -> tuple[bool, str | None]:
    """Check an arm's final runs (with a value of the search space where its tuned values will
    be); whether they train as one population, and if they were to but cannot, why (one
    line)."""
    final_cfg = as_a_trial(final_cfg)
    check_model(final_cfg)
    check_run_loggers(final_cfg)
    population = config.population_finals
    blocker = population_blocker(final_cfg) if population else None
    if blocker is not None:
        population = False
    if population:
        model = plan_population(final_cfg, [0, 1])
        model.check_clipping(trainer_arguments(final_cfg)["callbacks"])
    return population, blocker


def experiment_settings(config: Any) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "tune_max_epochs": config.tune_max_epochs,
        "max_epochs": config.trainer.max_epochs,
        "robustness": config.robustness,
        "split_seed": config.data.split_seed,
        "versions": {
            "lightning_opt": lightning_opt.__version__,
            **{name: version(name) for name in ("torch", "lightning", "optuna", "mnist1d")},
        },
        "seeds": [config.seed_everything + s for s in range(config.seeds)],
        "tuning_trials": config.n_trials,
        "tuning_epochs": config.tune_max_epochs,
        "final_epochs": config.trainer.max_epochs,
        "objective": config.objective,
        "tuning_population": config.population,
        "population_finals": config.population_finals,
        "pruner": config.pruner,
        "sampler_seed": config.seed,
        "sampler": config.sampler,
        "study_size": config.study_size or config.n_trials,
        "trial_seeds": config.trial_seeds,
        "data": config.data.as_dict(),
        "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA,
    }
