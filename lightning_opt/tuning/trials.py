"""The trials of a study: their options, search space, hyperparameters and how each one runs.

A trial is the ``fit`` its config describes with the sampled values set where they belong (the
optimizer's or a clipping callback's constructor argument, see ``runs.build.settable``); ``--population
K`` trains K trials at once as one population, each reporting to its own Optuna trial.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from typing_extensions import override

from lightning_opt.config.parsing import optimizer_dict, run_name
from lightning_opt.core import progress
from lightning_opt.core.names import check_limit, check_name
from lightning_opt.core.search_space import SearchParam, parse_search_space, values_text
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.optim.registry import (
    default_search_space,
    hashable,
    lr_free_guess,
    optimizer_class,
    unset_values,
)
from lightning_opt.runs.build import (
    callback_class,
    chunk_where_invisible,
    clipping_callbacks,
    flags,
    run_loggers,
    settable,
    with_values,
)
from lightning_opt.runs.runner import Run, train_runs
from lightning_opt.tuning.claims import FINISHED, original_number, slots
from lightning_opt.tuning.sampling import TRIAL_SEED_OFFSET, trial_sampler
from lightning_opt.tuning.storage import sqlite_url


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
    overwrite: bool = False
    connect_timeout: int = 10
    #: Everything that determines the trials' values (see ``config.fingerprints.run_fingerprint``).
    fingerprint: dict[str, Any] | None = None
    #: The folder of the trials' logs under ``output_dir`` (default: the study's name).
    log_dir_name: str | None = None
    #: Where a trial's values come from (``tuning.sampling``): ``tpe``, ``sobol`` or ``points``.
    sampler: str = "tpe"
    #: Trials per study of the ``sobol`` and ``points`` samplers (``None``: ``n_trials``).
    study_size: int | None = None
    #: The fixed points of ``--sampler points`` (checked by ``check_study``).
    points: tuple[dict[str, Any], ...] | None = None
    #: Whether trial ``n`` trains with a seed of its own (``sampling.TRIAL_SEED_OFFSET``).
    distinct_seeds: bool = False
    #: What the draws of ``sobol`` and ``points`` are keyed by besides the seed (a compare
    #: arm's name; ``None``: the study's name).
    draw_key: str | None = None

    @property
    def trials_per_study(self) -> int:
        return self.study_size or self.n_trials

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / (self.log_dir_name or self.study_name)


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial came to, however it trained (alone or as a population member): the state
    the study is told, its objective value (``None`` unless complete) and the line printed."""

    state: TrialState
    value: float | None
    note: str


def default_study_name(config: Any) -> str:
    """The optimizer's short name, then each clipping rule's ``short_name`` (adam-wnclip)."""
    clip = [callback_class(cb).short_name for cb in clipping_callbacks(config)]
    return "-".join([run_name(config), *clip])


def resolve_search_space(config: Any) -> tuple[SearchParam, ...]:
    """The config's ``search_space``, else the defaults of the optimizer and clipping callback.

    Every name must be something the trial can set: a constructor argument of the optimizer or
    of a clipping callback.
    """
    cls = optimizer_class(optimizer_dict(config))
    clippers = [callback_class(cb) for cb in clipping_callbacks(config)]
    if config.search_space is not None:
        space = parse_search_space(config.search_space)
    else:
        space = (*default_search_space(cls), *(p for c in clippers for p in c.search_space))
        _check_not_set(config, space)
    where = settable(config)
    switches = flags(cls)
    for param in space:
        if param.name in switches and param.choices is None:
            raise ValueError(
                f"search space parameter {param.name!r} is a flag of {cls.__name__}: give "
                f"choices: [true, false], not a range"
            )
        if param.name not in where:
            raise ValueError(
                f"search space parameter {param.name!r} is not an argument of "
                f"{cls.__name__} or of a clipping callback; choose from: "
                f"{', '.join(sorted(where))}"
            )
    if not space:
        raise ValueError("the search space is empty: give search_space entries in the config")
    return space


def search_space_notes(config: Any) -> list[str]:
    """What to say of a study's search space before its first trial: a range guessed from the
    optimizer's default lr (``optim.registry.lr_free_guess``)."""
    if config.search_space is not None:
        return []
    guess = lr_free_guess(optimizer_class(optimizer_dict(config)))
    return [] if guess is None else [guess]


def ignored_values(trials: list[optuna.trial.FrozenTrial]) -> str | None:
    """One line when every completed trial reached the same value although their searched
    values differ: the class likely ignores what was searched (torch-optimizer's A2Grad and
    its lr), so the study chose nothing; else ``None``."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    values = {t.value for t in complete}
    params = {tuple(sorted((k, repr(v)) for k, v in t.params.items())) for t in complete}
    if len(complete) < 2 or len(values) != 1 or len(params) < 2:
        return None
    names = ", ".join(sorted({k for t in complete for k in t.params}))
    return (
        f"every completed trial reached {values.pop():.6g} whatever its {names}: the "
        "optimizer likely ignores them, and the best trial is an arbitrary one; search what "
        "it uses"
    )


def unfinished_trials(study: optuna.Study, n_trials: int) -> list[int]:
    """The numbers of the study's first ``n_trials`` trials that have not finished (completed
    or pruned, themselves or through a re-run): interrupted or killed in another process that
    shares the storage, or still running there. Their study is partial: no best trial may be
    taken from it."""
    every = study.get_trials(deepcopy=False)
    finished = {original_number(t) for t in every if t.state in FINISHED}
    planned = [original for original, _ in slots(every, n_trials)]
    given_up = sorted({original_number(t) for t in every} - set(planned))  # retries used up
    short = given_up[: n_trials - len(planned)]  # a slot no trial holds: not run
    return sorted([o for o in planned if o not in finished] + short)


def as_a_trial(config: Any) -> Any:
    """``config`` with every value of its search space set at the low end, as a trial sets them:
    what its checks before any trial build (a tuned final run has the same settings but its
    tuned values). A class argument without a default that the space searches is so set."""
    return with_values(config, {p.name: p.ends()[0] for p in resolve_search_space(config)})


def _check_not_set(config: Any, space: tuple[SearchParam, ...]) -> None:
    """Refuse an optimizer argument the config sets that the default search space would
    replace: set means other than the class's default (or a short name's). A clipping rule's
    arguments are exempt: its entry must be buildable, so a searched one holds a placeholder."""
    optimizer = optimizer_dict(config)
    init_args, unset = optimizer["init_args"], unset_values(optimizer["class_path"])
    for param in space:
        if param.name not in init_args:  # left out (a compare arm's class by path): unset
            continue
        value = init_args[param.name]
        if param.name in unset and hashable(value) not in unset[param.name]:
            raise ValueError(
                f"--optimizer.{param.name} {value} is set, and the default search space searches "
                f"{param.name} ({_range(param)}), which would replace it: "
                f"leave it out to search it, or give search_space entries without "
                f"{param.name} to keep it fixed"
            )


def _range(param: SearchParam) -> str:
    if param.choices is not None:
        return "choices " + ", ".join(map(str, param.choices))
    return f"{param.low:g} to {param.high:g}"


def options_from_config(config: Any) -> TuneOptions:
    for key in ("n_trials", "n_workers", "population"):
        if config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
        check_limit(key, config[key], f"--{key}")
    if config.heartbeat_interval < 1:
        raise ValueError(f"heartbeat_interval must be >= 1 second, got {config.heartbeat_interval}")
    if config.grace_period is not None and config.grace_period <= config.heartbeat_interval:
        raise ValueError(
            f"grace_period must be longer than heartbeat_interval ({config.heartbeat_interval}), "
            f"got {config.grace_period}"
        )
    if isinstance(config.seed, bool) or not 0 <= config.seed < 2**32:
        raise ValueError(
            f"--seed {config.seed}: the sampler's seed is an integer from 0 to 2**32 - 1"
        )
    _check_sampling(config)
    if config.connect_timeout < 1:
        raise ValueError(f"connect_timeout must be >= 1 second, got {config.connect_timeout}")
    if config.max_retry < 0:
        raise ValueError(f"max_retry must be >= 0, got {config.max_retry}")
    return TuneOptions(
        n_trials=config.n_trials,
        n_workers=config.n_workers,
        storage=config.storage or sqlite_url(f"{config.output_dir}/optuna.db"),
        study_name=(
            default_study_name(config)
            if config.study_name is None
            else check_name("study", config.study_name, "--study_name")
        ),
        seed=config.seed,
        pruner=config.pruner,
        objective=config.objective,
        output_dir=config.output_dir,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        max_retry=config.max_retry,
        population=config.population,
        overwrite=config.overwrite,
        connect_timeout=config.connect_timeout,
        sampler=config.sampler,
        study_size=config.study_size,
        distinct_seeds=config.trial_seeds == "distinct",
    )


def _check_sampling(config: Any) -> None:
    """The sampler's settings, and the trials' seeds, before any trial (one line each)."""
    size = config.study_size
    if size is not None:
        if config.sampler == "tpe":
            raise ValueError(
                f"--study_size {size}: studies of their own draws are --sampler sobol's or "
                "points'; TPE would ignore it (leave it out, or give --sampler sobol)"
            )
        if isinstance(size, bool) or size < 1 or config.n_trials % size:
            raise ValueError(
                f"--study_size {size}: a positive divisor of --n_trials {config.n_trials} (each "
                "study has the same number of trials)"
            )
    if config.trial_seeds == "distinct":
        last = config.seed_everything + TRIAL_SEED_OFFSET + config.n_trials - 1
        if last > MAX_SEED:
            raise ValueError(
                f"--seed_everything {config.seed_everything} with --trial_seeds distinct: the "
                f"last trial's seed {last} is above the largest seed {MAX_SEED}; start lower"
            )


#: The median pruner prunes nothing until this many trials have completed.
MEDIAN_STARTUP_TRIALS = 3


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def format_params(params: dict[str, Any], sep: str = " ") -> str:
    return values_text(dict(sorted(params.items())), sep=sep)


def trial_run_name(number: int, values: dict[str, Any]) -> str:
    """A trial's folder and run name in TensorBoard: its number and sampled values
    (``trial_3-lr=0.00178``), in characters any file system takes, at most 120 of them."""
    if not values:
        return f"trial_{number}"
    text = re.sub(r"[^A-Za-z0-9._=+-]", "_", format_params(values, sep="-"))
    return f"trial_{number}-{text}"[:120]


class TrialRunner:
    """Runs the trials one worker claims; the data is generated and split once per worker."""

    def __init__(
        self, config: Any, options: TuneOptions, data: MNIST1DDataModule | None = None,
        label: str | None = None, storage: Any = None,
    ) -> None:  # fmt: skip
        self.config, self.options = config, options
        self.storage = storage  # the study's, where the worker opened it
        self.space = resolve_search_space(config)
        if data is None:
            data = MNIST1DDataModule(**config.data.as_dict())
            data.prepare_data()
        self.data = data
        chunk_where_invisible(config, self.data)  # every trial of a study has the same settings
        #: Printed before each trial's line where trials of several studies train together.
        self.label = label
        self.trainer: Trainer | None = None
        self.interrupted = False
        #: Each claimed trial's own seed, by number (``--trial_seeds distinct``).
        self.seeds: dict[int, int] = {}
        #: Each claimed trial's folder and run name (``trial_run_name``).
        self.names: dict[int, str] = {}

    def interrupt(self) -> None:
        """Ctrl-C: stop the running trial at the next batch (never inside a database write)."""
        self.interrupted = True
        if self.trainer is not None:
            self.trainer.should_stop = True

    def sampler(self, number: int) -> optuna.samplers.BaseSampler:
        """What trial ``number`` (its original number) draws its values with
        (``tuning.sampling``)."""
        options = self.options
        return trial_sampler(
            options.sampler, self.space, number, seed=options.seed,
            study_size=options.trials_per_study, key=options.draw_key or options.study_name,
            points=options.points,
        )  # fmt: skip

    def suggest(self, trial: optuna.Trial, number: int | None = None) -> dict[str, float]:
        """Sample the trial's hyperparameters (``number``: the original number of the trial,
        which the sampler was set for) and record where it logs and, with distinct trial
        seeds, its seed."""
        values = {p.name: p.suggest(trial) for p in self.space}
        self.names[trial.number] = trial_run_name(trial.number, values)
        trial.set_user_attr("log_dir", str(self._log_dir(trial)))
        if self.options.distinct_seeds:
            seed = self.config.seed_everything + TRIAL_SEED_OFFSET + (
                trial.number if number is None else number
            )  # fmt: skip
            self.seeds[trial.number] = seed
            trial.set_user_attr("seed", seed)
        return values

    def seed_of(self, trial: optuna.Trial) -> int:
        """The seed ``trial`` trains with: its own, or the config's."""
        return self.seeds.get(trial.number, self.config.seed_everything)

    def _loggers(self, trial: optuna.Trial) -> list[Any]:
        """The configured loggers (``trainer.logger``), writing to the trial's folder."""
        return run_loggers(self.config, self.options.study_dir, self._run_name(trial))

    def _run_name(self, trial: optuna.Trial) -> str:
        return self.names.get(trial.number, f"trial_{trial.number}")

    def _log_dir(self, trial: optuna.Trial) -> Path:
        return self.options.study_dir / self._run_name(trial)

    def run_trials(
        self, trials: list[optuna.Trial], params: list[dict[str, float]]
    ) -> list[TrialOutcome]:
        """The one entry for the trials a worker claimed: each trial's outcome. One trial at a
        time is the ``fit`` its config describes (``run``); with ``--population K`` the K train
        as one population (``run_population``), each exactly its own run."""
        if self.options.population == 1:
            return [self.run(trial, p) for trial, p in zip(trials, params, strict=True)]
        return self.run_population(trials, params)

    def _report(
        self, trial: optuna.Trial, params: dict[str, float], outcome: TrialOutcome, timing: str
    ) -> TrialOutcome:
        shown = f"{self.label} trial" if self.label else "trial"
        progress.say(f"{shown} {trial.number:>3}  {format_params(params)}  {outcome.note}  "
                     f"({timing})")  # fmt: skip
        return outcome

    def run_population(
        self, trials: list[optuna.Trial], params: list[dict[str, float]]
    ) -> list[TrialOutcome]:
        """Train ``trials`` as one population; each trial's outcome, as ``run`` gives it."""
        return run_trial_population(
            self, [(self, t, p) for t, p in zip(trials, params, strict=True)]
        )

    def run(self, trial: optuna.Trial, params: dict[str, float]) -> TrialOutcome:
        """Train ``trial`` alone: the ``fit`` of its config with its values set."""
        cfg = with_values(self.config, params)
        cfg.seed_everything = self.seed_of(trial)
        seed_everything(cfg.seed_everything, verbose=False)  # as `fit` does before building
        pruning = TrialPruning(trial, monitor="val/loss")
        run = Run(cfg, params, cfg.seed_everything, self._loggers(trial))
        trained = train_runs(
            [run], self.data, population=False, callbacks=[pruning],
            ends={optuna.TrialPruned: "pruned at epoch {epoch}"}, driver=self,
        )  # fmt: skip
        model, trainer, stopped = trained.model, trained.trainer, trained.outcomes[0].stopped
        state, value, note = TrialState.COMPLETE, None, ""
        if stopped is not None:
            state, note = TrialState.PRUNED, stopped
        if model.first_nonfinite_step is not None:
            trial.set_user_attr("pruned_reason", "non-finite training loss")
            note = note or "non-finite loss"
        if state == TrialState.COMPLETE:
            final = trainer.callback_metrics.get("val/loss")
            value = model.best_val_loss if self.options.objective == "best" else float(final)
            note = f"val/loss {value:.4f}"
            trial.set_user_attr("checkpoint", trained.checkpoint(0, self._log_dir(trial)))
        timing = f"{trained.seconds:.1f} s"
        return self._report(trial, params, TrialOutcome(state, value, note), timing)


#: A trial of a population: the runner of its study, the trial and its sampled values.
TrialMember = tuple["TrialRunner", optuna.Trial, dict[str, float]]


def run_trial_population(driver: TrialRunner, members: list[TrialMember]) -> list[TrialOutcome]:
    """Train ``members`` as one population, each exactly its own trial's run: trials of one
    study, or of several whose configs differ only in their optimizer, LR scheduler and values
    (``runs.build.build_mixed_population``); the longest budget's config gives the trainer, ``driver``
    gives the data, and ``driver.interrupt`` stops it. Each trial's outcome, as
    ``TrialRunner.run`` gives it."""
    epochs = [runner.config.trainer.max_epochs for runner, _, _ in members]
    seed = members[epochs.index(max(epochs))][0].config.seed_everything
    seed_everything(seed, verbose=False)
    runs = [Run(runner.config, p, runner.seed_of(trial), runner._loggers(trial))
            for runner, trial, p in members]  # fmt: skip
    trials = [trial for _, trial, _ in members]
    pruning = PopulationPruning(trials, [runner.storage for runner, _, _ in members])
    trained = train_runs(runs, driver.data, population=True, callbacks=[pruning], driver=driver)
    outcomes = []
    timing = f"population of {len(members)}: {trained.seconds:.1f} s"
    for member, ((runner, trial, p), outcome) in enumerate(
        zip(members, trained.outcomes, strict=True)
    ):
        if outcome.stopped is None:
            state = TrialState.COMPLETE
            losses = outcome.val_loss
            value = min(losses) if runner.options.objective == "best" else losses[-1]
            note = f"val/loss {value:.4f}"
            trial.set_user_attr("checkpoint", trained.checkpoint(member, runner._log_dir(trial)))
        else:
            state, value, note = TrialState.PRUNED, None, outcome.stopped
            if "non-finite" in outcome.stopped:
                trial.set_user_attr("pruned_reason", "non-finite training loss")
        outcomes.append(runner._report(trial, p, TrialOutcome(state, value, note), timing))
    return outcomes


class TrialPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, each report keyed by the validation's number (0, 1,
    ...) instead of the epoch: the same keys when a run validates once an epoch, and one report
    per validation when ``trainer.val_check_interval`` validates within epochs (Optuna keeps
    only the first report of a key, so an epoch key would drop the rest)."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.validations = 0

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or self.is_ddp_backend or score is None:
            super().on_validation_end(trainer, pl_module)  # Optuna's own handling
            return
        step, self.validations = self.validations, self.validations + 1
        self._trial.report(float(score), step=step)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"Trial was pruned at epoch {pl_module.current_epoch}.")


class PopulationPruning(Callback):
    """Optuna pruning for a population: each epoch, report every live member's val/loss to its
    trial (as ``PyTorchLightningPruningCallback`` does for one) and drop the members to prune."""

    def __init__(self, trials: list[optuna.Trial], storages: list[Any] | None = None) -> None:
        self.trials = trials
        #: Each trial's storage (``None``: read it from its study's trials).
        self.storages = storages or [None] * len(trials)
        #: Validations so far: each report's key (as ``TrialPruning``'s).
        self.validations = 0

    @staticmethod
    def _may_prune(study: optuna.Study, storage: Any) -> bool:
        """Whether the study's pruner can prune now: ``none`` never does, and the median pruner
        not before ``MEDIAN_STARTUP_TRIALS`` trials completed (counted by the storage: a query
        an epoch per study, instead of one ``should_prune`` per member, each reading every
        trial)."""
        if isinstance(study.pruner, optuna.pruners.NopPruner):
            return False
        if type(study.pruner) is optuna.pruners.MedianPruner:  # make_pruner's
            if storage is None:
                complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            else:
                study_id = storage.get_study_id_from_name(study.study_name)
                complete = storage.get_n_trials(study_id, TrialState.COMPLETE)
            return complete >= MEDIAN_STARTUP_TRIALS
        return True

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        step, self.validations = self.validations, self.validations + 1
        drop = {}
        may_prune: dict[int, bool] = {}  # by study (the trials of several studies may train)
        for member, loss in zip(pl_module.member_ids, pl_module.val_loss.tolist(), strict=True):
            if not math.isfinite(loss):
                continue  # the model drops a member whose loss is not finite, with its reason
            trial = self.trials[member]
            trial.report(loss, step=step)
            study = trial.study
            if id(study) not in may_prune:
                may_prune[id(study)] = self._may_prune(study, self.storages[member])
            if may_prune[id(study)] and trial.should_prune():
                drop[member] = f"pruned at epoch {epoch}"
        pl_module.drop_members(drop)
