"""``tune``: an Optuna search over a ``fit`` configuration, with pruning and resumable studies.

``python -m lightning_opt tune`` takes every ``fit`` option (``--optimizer``, ``--config``,
``--model.*``, ``--trainer.*``, ...) plus the study's own. Each trial is the ``fit`` run its
config describes with the sampled hyperparameters, so ``fit --config best.yaml`` reproduces the
best trial exactly.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import logging
import math
import multiprocessing
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import TensorBoardLogger
from optuna.trial import TrialState
from typing_extensions import override

from lightning_opt import study as studies
from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.cli import TRAINER_DEFAULTS, LightningOptCLI, check_trainer_settings
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.model import MNIST1DClassifier, NonFiniteLossError
from lightning_opt.optim.registry import get_optimizer
from lightning_opt.population import PopulationClassifier
from lightning_opt.search_space import SearchParam, parse_search_space

_TUNE_KEYS = (
    "n_trials", "n_workers", "storage", "study_name", "seed", "pruner", "objective",
    "search_space", "output_dir", "heartbeat_interval", "grace_period", "max_retry", "population",
)  # fmt: skip


@dataclass(frozen=True)
class TuneOptions:
    """The study's settings (the rest of the command line is the ``fit`` config of a trial)."""

    n_trials: int
    n_workers: int
    storage: str
    study_name: str
    seed: int
    pruner: str
    objective: str
    output_dir: str
    heartbeat_interval: int
    grace_period: int | None
    max_retry: int
    population: int = 1

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.study_name


class TuneCLI(LightningOptCLI):
    """Parses ``fit``'s options plus the study's; builds nothing until a trial runs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.add_optimizer_argument(parser)
        group = parser.add_argument_group("Study")
        group.add_argument(
            "--n_trials", type=int, default=20, help="Finished trials the study ends with."
        )
        group.add_argument(
            "--n_workers", type=int, default=1, help="Worker processes on this machine."
        )
        group.add_argument(
            "--storage",
            type=str | None,
            default=None,
            help="Optuna storage: sqlite:///FILE.db, postgresql://USER@HOST/DB, mysql://..., or a "
            "journal file path. Default: sqlite:///<output_dir>/optuna.db.",
        )
        group.add_argument(
            "--study_name",
            type=str | None,
            default=None,
            help="Default: the optimizer's name, plus the clipping rule if any (e.g. adam-wnclip).",
        )
        group.add_argument(
            "--seed",
            type=int,
            default=0,
            help="TPE sampler seed; trial n is sampled with seed + n.",
        )
        group.add_argument(
            "--pruner", type=Literal["median", "hyperband", "none"], default="median"
        )
        group.add_argument(
            "--objective",
            type=Literal["final", "best"],
            default="final",
            help="final: val/loss after the last epoch; best: the lowest val/loss of any epoch.",
        )
        group.add_argument(
            "--search_space",
            type=list[dict[str, Any]] | None,
            default=None,
            help="List of {name, low, high, log}; replaces the defaults of the optimizer and clipping.",
        )
        group.add_argument(
            "--output_dir",
            type=str,
            default="lightning_logs",
            help="Trial logs go to <output_dir>/<study_name>/.",
        )
        group.add_argument(
            "--heartbeat_interval",
            type=int,
            default=10,
            help="Seconds between heartbeats (database storages).",
        )
        group.add_argument(
            "--grace_period",
            type=int | None,
            default=None,
            help="Seconds without heartbeat before a trial counts as dead (default 2x interval).",
        )
        group.add_argument("--max_retry", type=int, default=3, help="Re-runs of a trial whose worker died.")  # fmt: skip
        group.add_argument(
            "--population",
            type=int,
            default=1,
            help="Trials trained at once as one population (TPE with constant liar samples "
            "them); pruned members stop costing compute. 1: one trial at a time.",
        )

    def before_instantiate_classes(self) -> None:
        pass  # trials name their own logger

    def instantiate_classes(self) -> None:
        pass  # each trial instantiates its own classes


def _clipping_callbacks(config: Any) -> list[Any]:
    callbacks = config.trainer.get("callbacks") or []
    return [cb for cb in callbacks if _callback_class(cb) is not None]


def _callback_class(callback_config: Any) -> type[GradientClippingCallback] | None:
    module, _, name = str(getattr(callback_config, "class_path", "")).rpartition(".")
    if not module:
        return None
    cls = getattr(importlib.import_module(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, GradientClippingCallback) else None


def default_study_name(config: Any) -> str:
    tags = {"WeightNormClipping": "wnclip", "FixedNormClipping": "fixedclip"}
    clip = [tags.get(_callback_class(cb).__name__, "clip") for cb in _clipping_callbacks(config)]
    return "-".join([config.optimizer, *clip])


def resolve_search_space(config: Any) -> tuple[SearchParam, ...]:
    """The config's ``search_space``, else the defaults of the optimizer and clipping callback.

    Every name must be something the trial can set: a hyperparameter of the chosen optimizer or
    an argument of the clipping callback.
    """
    spec = get_optimizer(config.optimizer)
    clippers = [_callback_class(cb) for cb in _clipping_callbacks(config)]
    if config.search_space is not None:
        space = parse_search_space(config.search_space)
    else:
        space = (*spec.search_space, *(p for cls in clippers for p in cls.search_space))
    settable = set(spec.hyperparameters) | {name for cls in clippers for name in _init_args(cls)}
    for param in space:
        if param.name not in settable:
            raise ValueError(
                f"search space parameter {param.name!r} is not a setting of this run; "
                f"choose from: {', '.join(sorted(settable))}"
            )
    if not space:
        raise ValueError("the search space is empty: give search_space entries in the config")
    return space


@functools.cache
def _init_args(cls: type) -> list[str]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.annotation in ("float", float)]


def trial_config(config: Any, params: dict[str, float]) -> Any:
    """A copy of ``config`` with the trial's hyperparameters in place (model or callback args)."""
    cfg = copy.deepcopy(config)
    model_keys = set(get_optimizer(cfg.optimizer).hyperparameters)
    for name, value in params.items():
        if name in model_keys:
            cfg.model[name] = value
            continue
        for callback in _clipping_callbacks(cfg):
            if name in _init_args(_callback_class(callback)):
                callback.init_args[name] = value
    return cfg


def _build(value: Any) -> Any:
    """Instantiate ``{class_path, init_args}`` entries (recursively); other values as they are."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if "class_path" in value:
            module, _, name = value["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            return cls(**{k: _build(v) for k, v in (value.get("init_args") or {}).items()})
        return {k: _build(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


def build_trial(cfg: Any) -> tuple[MNIST1DClassifier, dict[str, Any]]:
    """The model and the Trainer's arguments a ``fit`` of ``cfg`` would use.

    Built directly rather than with LightningCLI's instantiator, which records the hyperparameters
    of the CLI's own command line (not the trial's) in the model's ``hparams``.
    """
    model = MNIST1DClassifier(**cfg.model.as_dict())
    return model, trainer_arguments(cfg)


def trainer_arguments(cfg: Any) -> dict[str, Any]:
    """The Trainer's arguments of ``cfg``, its callbacks instantiated."""
    trainer_kwargs = _build(cfg.trainer)
    trainer_kwargs["callbacks"] = list(trainer_kwargs.get("callbacks") or [])
    return trainer_kwargs


def build_population(
    cfgs: list[Any], params: list[dict[str, float]], seeds: list[int]
) -> tuple[PopulationClassifier, dict[str, Any]]:
    """One population whose member k is the ``fit`` of ``cfgs[k]`` (which differ only in the
    sampled ``params[k]``) with seed ``seeds[k]``; and the Trainer's arguments."""
    member_hparams = {name: [p[name] for p in params] for name in params[0]}
    model = PopulationClassifier(seeds, member_hparams=member_hparams, **cfgs[0].model.as_dict())
    return model, trainer_arguments(cfgs[0])


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def options_from_config(config: Any) -> TuneOptions:
    for key in ("n_trials", "n_workers", "population"):
        if config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
    if config.heartbeat_interval < 1:
        raise ValueError(f"heartbeat_interval must be >= 1 second, got {config.heartbeat_interval}")
    if config.grace_period is not None and config.grace_period <= config.heartbeat_interval:
        raise ValueError(
            f"grace_period must be longer than heartbeat_interval ({config.heartbeat_interval}), "
            f"got {config.grace_period}"
        )
    if config.max_retry < 0:
        raise ValueError(f"max_retry must be >= 0, got {config.max_retry}")
    return TuneOptions(
        n_trials=config.n_trials,
        n_workers=config.n_workers,
        storage=config.storage or f"sqlite:///{config.output_dir}/optuna.db",
        study_name=config.study_name or default_study_name(config),
        seed=config.seed,
        pruner=config.pruner,
        objective=config.objective,
        output_dir=config.output_dir,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        max_retry=config.max_retry,
        population=config.population,
    )


def _quiet_lightning() -> None:
    """One line per trial is the progress report: silence Lightning's and Optuna's chatter."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _format_params(params: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in sorted(params.items()))


class TrialRunner:
    """Runs the trials one worker claims; the data is generated and split once per worker."""

    def __init__(self, config: Any, options: TuneOptions) -> None:
        self.config, self.options = config, options
        self.space = resolve_search_space(config)
        self.data = MNIST1DDataModule(**config.data.as_dict())
        self.data.prepare_data()
        self.trainer: Trainer | None = None
        self.interrupted = False

    def interrupt(self) -> None:
        """Ctrl-C: stop the running trial at the next batch (never inside a database write)."""
        self.interrupted = True
        if self.trainer is not None:
            self.trainer.should_stop = True

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """Sample the trial's hyperparameters and record where it logs."""
        trial.set_user_attr("log_dir", str(self.options.study_dir / f"trial_{trial.number}"))
        return {p.name: p.suggest(trial) for p in self.space}

    def _logger(self, trial: optuna.Trial) -> TensorBoardLogger:
        return TensorBoardLogger(
            save_dir=str(self.options.study_dir), name=f"trial_{trial.number}", version="",
            default_hp_metric=False,
        )  # fmt: skip

    def run_population(
        self, trials: list[optuna.Trial], params: list[dict[str, float]]
    ) -> list[tuple[TrialState, float | None]]:
        """Train ``trials`` as one population; each trial's outcome, as ``run`` gives it."""
        cfgs = [trial_config(self.config, p) for p in params]
        seed = cfgs[0].seed_everything
        seed_everything(seed, verbose=False)
        model, trainer_kwargs = build_population(cfgs, params, [seed] * len(trials))
        model.member_loggers = [self._logger(trial) for trial in trials]
        trainer_kwargs["callbacks"].append(PopulationPruning(trials))
        trainer_kwargs.update(
            logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False,
        )  # fmt: skip
        trainer = self.trainer = Trainer(**trainer_kwargs)
        start = time.perf_counter()
        try:
            trainer.fit(model, datamodule=self.data)
        except NonFiniteLossError:
            pass  # every member is dropped; each one's reason is in model.dropped
        finally:
            self.trainer = None
        if self.interrupted:
            raise KeyboardInterrupt
        elapsed = time.perf_counter() - start
        outcomes = []
        for member, (trial, p) in enumerate(zip(trials, params, strict=True)):
            losses = model.history[member]["val/loss"]
            reason = model.dropped.get(member)
            if reason is None:
                state = TrialState.COMPLETE
                value = min(losses) if self.options.objective == "best" else losses[-1]
                note = f"val/loss {value:.4f}"
            else:
                state, value, note = TrialState.PRUNED, None, reason
                if "non-finite" in reason:
                    trial.set_user_attr("pruned_reason", "non-finite training loss")
            outcomes.append((state, value))
            print(
                f"trial {trial.number:>3}  {_format_params(p)}  {note}  "
                f"(population of {len(trials)}: {elapsed:.1f} s)",
                flush=True,
            )
        return outcomes

    def run(self, trial: optuna.Trial, params: dict[str, float]) -> tuple[TrialState, float | None]:
        cfg = trial_config(self.config, params)
        seed_everything(cfg.seed_everything, verbose=False)  # as `fit` does before building
        model, trainer_kwargs = build_trial(cfg)
        from optuna_integration import PyTorchLightningPruningCallback

        trainer_kwargs["callbacks"].append(
            PyTorchLightningPruningCallback(trial, monitor="val/loss")
        )
        trainer_kwargs.update(
            logger=self._logger(trial),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer = self.trainer = Trainer(**trainer_kwargs)
        start = time.perf_counter()
        state, value, note = TrialState.COMPLETE, None, ""
        try:
            trainer.fit(model, datamodule=self.data)
        except optuna.TrialPruned:
            state, note = TrialState.PRUNED, f"pruned at epoch {trainer.current_epoch}"
        except NonFiniteLossError as err:
            state, note = TrialState.PRUNED, str(err)
        finally:
            self.trainer = None
        if self.interrupted:
            raise KeyboardInterrupt
        if model.first_nonfinite_step is not None:
            trial.set_user_attr("pruned_reason", "non-finite training loss")
            note = note or "non-finite loss"
        if state == TrialState.COMPLETE:
            final = trainer.callback_metrics.get("val/loss")
            value = model.best_val_loss if self.options.objective == "best" else float(final)
            note = f"val/loss {value:.4f}"
        elapsed = time.perf_counter() - start
        print(
            f"trial {trial.number:>3}  {_format_params(params)}  {note}  ({elapsed:.1f} s)",
            flush=True,
        )
        return state, value


class PopulationPruning(Callback):
    """Optuna pruning for a population: each epoch, report every live member's val/loss to its
    trial (as ``PyTorchLightningPruningCallback`` does for one) and drop the members to prune."""

    def __init__(self, trials: list[optuna.Trial]) -> None:
        self.trials = trials

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        drop = {}
        for member, loss in zip(pl_module.member_ids, pl_module.val_loss.tolist(), strict=True):
            if not math.isfinite(loss):
                continue  # the model drops a member whose loss is not finite, with its reason
            trial = self.trials[member]
            trial.report(loss, step=epoch)
            if trial.should_prune():
                drop[member] = f"pruned at epoch {epoch}"
        pl_module.drop_members(drop)


def run_worker(config: Any, options: TuneOptions) -> int:
    """Claim and run trials until none is left; the number run."""
    _quiet_lightning()
    storage = studies.open_storage(
        options.storage, options.heartbeat_interval, options.grace_period, options.max_retry
    )
    study = optuna.load_study(
        study_name=options.study_name, storage=storage,
        pruner=make_pruner(options.pruner),
    )  # fmt: skip
    runner = TrialRunner(config, options)
    with _on_sigint(runner.interrupt):
        return _claim_and_run(study, storage, runner, options)


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C calls ``callback``; a second one interrupts at once (the default)."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        callback()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _claim_and_run(
    study: optuna.Study, storage: Any, runner: TrialRunner, options: TuneOptions
) -> int:
    done = 0
    while True:
        if runner.interrupted:
            raise KeyboardInterrupt
        if studies.has_heartbeat(storage):
            optuna.storages.fail_stale_trials(study)  # re-enqueues trials of dead workers
        claimed = studies.claim_waiting_trial(study, storage, options.n_trials, options.seed)
        if claimed is None:
            running = studies.count_states(study)[TrialState.RUNNING]
            if running and studies.has_heartbeat(storage):
                time.sleep(
                    min(0.5, options.heartbeat_interval)
                )  # a dead worker's trial may come back
                continue
            return done
        batch = [claimed]
        params = [runner.suggest(claimed[0])]  # now: the next claim reseeds the sampler
        while len(batch) < options.population:
            more = studies.claim_waiting_trial(study, storage, options.n_trials, options.seed)
            if more is None:
                break
            batch.append(more)
            params.append(runner.suggest(more[0]))
        trials = [trial for trial, _ in batch]
        with contextlib.ExitStack() as beats:
            for _, trial_id in batch:
                beats.enter_context(
                    studies.heartbeat(storage, trial_id, options.heartbeat_interval)
                )
            try:
                if options.population == 1:
                    outcomes = [runner.run(trials[0], params[0])]
                else:
                    outcomes = runner.run_population(trials, params)
            except (KeyboardInterrupt, SystemExit):
                for trial in trials:
                    trial.set_user_attr("fail_reason", "interrupted")
                    study.tell(trial, state=TrialState.FAIL)
                raise KeyboardInterrupt from None
            except BaseException as err:
                for trial in trials:
                    trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                    study.tell(trial, state=TrialState.FAIL)
                raise
        for trial, (state, value) in zip(trials, outcomes, strict=True):
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        done += len(trials)


def _worker_process(config: Any, options: TuneOptions) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(1)  # one core per worker
    try:
        run_worker(config, options)
    except KeyboardInterrupt:
        sys.exit(130)


def _parse(args: list[str], cli_class: type[TuneCLI] = TuneCLI) -> TuneCLI:
    with warnings.catch_warnings():
        # args come from our own dispatcher, which has already read sys.argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return _build_cli(args, cli_class)


def _build_cli(args: list[str], cli_class: type[TuneCLI]) -> TuneCLI:
    return cli_class(
        MNIST1DClassifier,
        MNIST1DDataModule,
        args=args,
        run=False,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,
        save_config_callback=None,
        parser_kwargs={"exit_on_error": False},
    )


def write_outputs(parser: LightningArgumentParser, config: Any, options: TuneOptions,
                  study: optuna.Study) -> Path | None:  # fmt: skip
    """Print the best trial; write ``best.yaml`` and the history/importance plots; best.yaml path."""
    counts = studies.count_states(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    print(
        f"study {options.study_name!r}: {finished}/{options.n_trials} finished "
        f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed)"
    )
    if not counts[TrialState.COMPLETE]:
        print("no trial completed: nothing to report")
        return None
    best = study.best_trial
    options.study_dir.mkdir(parents=True, exist_ok=True)
    best_cfg = trial_config(config, best.params)
    dumped = yaml.safe_load(parser.dump(best_cfg, skip_check=True))
    for key in (*_TUNE_KEYS, "config"):
        dumped.pop(key, None)
    path = options.study_dir / "best.yaml"
    header = (
        f"# Best trial {best.number} of study {options.study_name!r} "
        f"(val/loss {best.value:.6g}, objective: {options.objective}).\n"
        f"# Retrain it: python -m lightning_opt fit --config {path}\n"
    )
    path.write_text(header + yaml.safe_dump(dumped, sort_keys=False))
    print(f"best trial {best.number}: val/loss {best.value:.4f}  {_format_params(best.params)}")
    print(f"best config: {path}")
    _write_plots(study, options.study_dir)
    return path


def _write_plots(study: optuna.Study, out: Path) -> None:
    try:
        from optuna.visualization import plot_optimization_history, plot_param_importances
    except ImportError:  # plotly missing
        return
    plot_optimization_history(study).write_html(out / "history.html", include_plotlyjs=True)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(completed) >= 2 and len(study.best_trial.params) >= 1:
        try:
            figure = plot_param_importances(study)
        except (RuntimeError, ValueError) as err:  # e.g. every completed trial has one value
            print(f"parameter importance skipped: {err}")
        else:
            figure.write_html(out / "importance.html", include_plotlyjs=True)
    print(f"plots: {out / 'history.html'}")


def run_tune(args: list[str]) -> None:
    """``python -m lightning_opt tune ...``: validate everything, run the study, write outputs."""
    _quiet_lightning()
    cli = _parse(args)
    options = options_from_config(cli.config)
    study = run_study(cli.config, options)
    write_outputs(cli.parser, cli.config, options, study)


def run_study(config: Any, options: TuneOptions) -> optuna.Study:
    """Validate, top the study up to ``n_trials`` and run the workers; the finished study.

    Ctrl-C ends the process with exit code 130 after saying how to resume.
    """
    _quiet_lightning()
    space = resolve_search_space(config)
    check_trainer_settings(config.trainer)
    # Build one trial's objects now, so a bad model/data/callback argument fails before any trial.
    build_trial(config)
    build_trial(trial_config(config, {p.name: p.low for p in space}))
    MNIST1DDataModule(**config.data.as_dict())
    storage = studies.open_storage(
        options.storage, options.heartbeat_interval, options.grace_period, options.max_retry
    )
    study = studies.open_study(storage, options.study_name, space, options.objective)
    added = studies.top_up(study, options.n_trials)
    print(
        f"study {options.study_name!r} in {studies.redact(options.storage)}: "
        f"{options.n_trials - added} of {options.n_trials} trials already planned or finished, "
        f"{added} to run with {options.n_workers} worker(s); logs in {options.study_dir}",
        flush=True,
    )
    try:
        if options.n_workers == 1:
            run_worker(config, options)
        else:
            # fork where there is one: a spawned worker re-imports torch and Lightning (~3 s).
            # Safe here: each child opens its own storage connection and runs torch on one
            # thread, so it never enters the OpenMP pool it inherited.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            workers = [
                context.Process(target=_worker_process, args=(config, options))
                for _ in range(options.n_workers)
            ]
            for worker in workers:
                worker.start()
            with _on_sigint(lambda: None):  # the workers get Ctrl-C too and stop cleanly
                for worker in workers:
                    worker.join()
            if any(w.exitcode == 130 for w in workers):
                raise KeyboardInterrupt
            failed = [w.exitcode for w in workers if w.exitcode]
            if failed:
                raise RuntimeError(f"{len(failed)} worker(s) failed (exit codes {failed})")
    except KeyboardInterrupt:
        counts = studies.count_states(study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        print(
            f"interrupted: {finished} of {options.n_trials} trials finished and are kept; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    return study
