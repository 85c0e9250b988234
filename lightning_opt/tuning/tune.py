"""``tune``: an Optuna search over a ``fit`` configuration, with pruning and resumable studies.

``python -m lightning_opt tune`` takes every ``fit`` option (``--optimizer``, ``--config``,
``--model.*``, ``--trainer.*``, ...) plus the study's own. Each trial is the ``fit`` run its
config describes with the sampled hyperparameters, so ``fit --config best.yaml`` reproduces the
best trial exactly. The trials themselves are in ``tuning.trials``, the worker processes in
``tuning.workers``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

import optuna
from lightning.pytorch.cli import LightningArgumentParser
from optuna.trial import TrialState

from lightning_opt.config.fingerprints import (
    changed,
    run_fingerprint,
)
from lightning_opt.config.parsing import (
    OptimizerCLI,
    RunFailure,
    UsageError,
    build_cli,
    check_placeholders,
    check_trainer_settings,
    expand_args,
    given_optimizer_arguments,
    searched_placeholders,
)
from lightning_opt.core import progress, signals
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.runs.build import (
    check_model,
    check_run_loggers,
    check_writable,
    plan_population,
    population_blocker,
    quiet_lightning,
    trainer_arguments,
    with_values,
)
from lightning_opt.tuning import claims as studies
from lightning_opt.tuning import storage as storages
from lightning_opt.tuning.outputs import write_outputs
from lightning_opt.tuning.sampling import check_points
from lightning_opt.tuning.trials import (
    TuneOptions,
    as_a_trial,
    options_from_config,
    resolve_search_space,
    search_space_notes,
)
from lightning_opt.tuning.workers import run_together, run_workers


class TuneCLI(OptimizerCLI):
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
            "--sampler", type=Literal["tpe", "sobol", "points"], default="tpe",
            help="tpe: Optuna's TPE (constant liar). sobol: AlgoPerf's quasi-random search, a "
            "scrambled Sobol sequence per study of --study_size trials. points: --study_size "
            "of the --points list per study, without replacement (README: Tuning).",
        )  # fmt: skip
        group.add_argument(
            "--study_size", type=int | None, default=None,
            help="With --sampler sobol or points: trials per study, each study drawing its own "
            "points (AlgoPerf's external tuning: --n_trials 15 --study_size 5, 3 studies); "
            "n_trials is a multiple of it. Default: n_trials (one study).",
        )  # fmt: skip
        group.add_argument(
            "--points", type=list[dict[str, Any]] | None, default=None,
            help="With --sampler points: the values to try, each {name: value} for every "
            "searched name, inside the search space.",
        )  # fmt: skip
        group.add_argument(
            "--trial_seeds", type=Literal["same", "distinct"], default="same",
            help="same: every trial trains with seed_everything (best.yaml reproduces the best "
            "trial). distinct: trial n with seed_everything + 1000000 + n, never a final "
            "run's seed.",
        )  # fmt: skip
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
            default="lightning_logs/tune",
            help="Trial logs, checkpoints and best.yaml go to <output_dir>/<study_name>/ (fit's "
            "runs are in lightning_logs/<optimizer>/version_N).",
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
        group.add_argument(
            "--overwrite",
            type=bool,
            nargs="?",
            const=True,  # --overwrite alone, as --overwrite true
            default=False,
            help="Start the study (or experiment) afresh when one of this name exists with other "
            "settings: its trials, logs and results are deleted. Default: refuse, with the "
            "first differences. --overwrite alone is --overwrite true.",
        )
        group.add_argument(
            "--quiet",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="No progress: no trial lines, no population or command progress, no bar. "
            "Results, warnings and errors still print. --quiet alone is --quiet true.",
        )
        group.add_argument(
            "--connect_timeout",
            type=int,
            default=10,
            help="Seconds to wait for a database storage (PostgreSQL, MySQL) to answer.",
        )

    def before_instantiate_classes(self) -> None:
        pass  # trials name their own logger

    def instantiate_classes(self) -> None:
        pass  # each trial instantiates its own classes


def parse(args: list[str], cli_class: type[TuneCLI] = TuneCLI) -> TuneCLI:
    """Parse ``tune`` (or ``compare``) arguments; nothing is built. An optimizer argument
    without a default that the class's search space searches is parsed at a placeholder
    (``searched_placeholders``; ``cli.placeholders``), which every trial replaces."""
    expanded = expand_args(args)
    placeholders = searched_placeholders(expanded)
    filled = [*expanded, *(f"--optimizer.{n}={json.dumps(v)}" for n, v in placeholders.items())]
    cli = build_cli(cli_class, filled, expanded=True, run=False, save_config_callback=None)
    cli.placeholders = placeholders
    progress.QUIET = bool(cli.config.get("quiet"))
    cli.given = given_optimizer_arguments(args)  # as written, before short names expand
    return cli


def _check_not_given(given: set[str], space: Any) -> None:
    """Refuse an optimizer argument the command line sets that the default search space would
    replace, even at the class's default value (``trials._check_not_set`` sees values only)."""
    for param in space:
        if param.name in given:
            raise ValueError(
                f"--optimizer.{param.name} is set, and the default search space searches "
                f"{param.name}, which would replace it: leave it out to search it, or give "
                f"search_space entries without {param.name} to keep it fixed"
            )


def run_tune(args: list[str]) -> None:
    """``python -m lightning_opt tune ...``: validate everything, run the study, write outputs."""
    quiet_lightning()
    cli = parse(args)
    try:
        searched = [p.name for p in resolve_search_space(cli.config)]
        check_placeholders(cli.placeholders, searched, "")
        if cli.config.search_space is None:  # a value set equal to the default is still set
            _check_not_given(cli.given, resolve_search_space(cli.config))
        options = check_study(cli.config, options_from_config(cli.config))
        for note in search_space_notes(cli.config):
            print(note, flush=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    options = replace(options, fingerprint=run_fingerprint(cli.parser, cli.config))
    with progress.command(options.n_trials, "trials"):
        study = run_study(cli.config, options)
    write_outputs(cli.parser, cli.config, options, study)


def check_study(config: Any, options: TuneOptions, announce: bool = True) -> TuneOptions:
    """Everything about a study that can fail before its first trial, checked now: the search
    space, the Trainer settings, one trial's model, callbacks and data at both ends of the space,
    and whether the optimizer can train a population. The options to run with (a population
    that cannot be is said in one line, unless not ``announce``, and trains one at a time).

    Raises ``ValueError`` with one line.
    """
    space = resolve_search_space(config)
    if (config.points is not None) != (options.sampler == "points"):
        raise ValueError(
            "--points and --sampler points go together: give both (the values to try) or neither"
        )
    if config.points is not None:
        points = check_points(config.points, space, options.trials_per_study)
        options = replace(options, points=tuple(points))
    check_trainer_settings(config.trainer)
    # A trial sets every value of the space: its settings are checked as a trial has them.
    ends = [{p.name: p.ends()[end] for p in space} for end in (0, 1)]
    for values in ends:
        cfg = with_values(config, values)
        check_model(cfg)
        callbacks = trainer_arguments(cfg)["callbacks"]
        if options.population > 1 and population_blocker(cfg) is None:
            population = plan_population(cfg, [0, 1], {n: [v, v] for n, v in values.items()})
            population.check_clipping(callbacks)
    data = MNIST1DDataModule(**config.data.as_dict())
    data.prepare_data()  # generates (or reads) the data; a split that comes out empty fails here
    check_run_loggers(config)
    check_writable(options.output_dir)
    blocker = population_blocker(as_a_trial(config)) if options.population > 1 else None
    if blocker is not None:
        if announce:
            print(f"{blocker}: the trials run one at a time (--population {options.population} "
                  "ignored)", flush=True)  # fmt: skip
        options = replace(options, population=1)
    return options


def open_study_storage(options: TuneOptions) -> Any:
    """The study's storage (``ValueError``, one line, where it cannot be opened in time)."""
    return storages.open_storage(
        options.storage, options.heartbeat_interval, options.grace_period, options.max_retry,
        connect_timeout=options.connect_timeout,
    )  # fmt: skip


_CONFIG_ATTR = "run_config"


def check_recorded(
    study: optuna.Study, storage: Any, space: Any, options: TuneOptions
) -> optuna.Study:
    """Refuse a study that recorded other settings (or start it afresh with ``--overwrite``);
    record them in a new one."""
    if options.fingerprint is None:
        return study
    recorded = study.user_attrs.get(_CONFIG_ATTR)
    what = f"study {options.study_name!r}"
    if changed(what, recorded, options.fingerprint, options.overwrite, "--study_name"):
        optuna.delete_study(study_name=options.study_name, storage=storage)
        shutil.rmtree(options.study_dir, ignore_errors=True)
        study = studies.open_study(storage, options.study_name, space, options.objective)
        recorded = None
    if recorded is None and not study.trials:
        _check_no_lost_trials(options)
    if recorded is None:
        if study.trials:
            print(
                f"study {options.study_name!r} has {len(study.trials)} trial(s) and no record of "
                "their settings (an older version, or made outside tune): recording this run's",
                flush=True,
            )
        study.set_user_attr(_CONFIG_ATTR, options.fingerprint)
    return study


def _check_no_lost_trials(options: TuneOptions) -> None:
    """A study that is new in its storage while its folder holds an earlier tuning's logs: the
    database lost its trials (an SQLite file copied or restored without its ``-wal`` log, a
    storage deleted by hand). Retraining every trial silently would hide that: refuse, or with
    ``--overwrite`` start afresh (the old logs are removed)."""
    folder = options.study_dir
    found = sorted(p.name for p in folder.glob("trial_*")) if folder.is_dir() else []
    if (folder / "best.yaml").exists():
        found.insert(0, "best.yaml")
    if not found:
        return
    if options.overwrite:
        shutil.rmtree(folder, ignore_errors=True)
        return
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise ValueError(
        f"study {options.study_name!r} is not in {storages.redact(options.storage)}, but "
        f"{folder} holds an earlier tuning of it ({shown}): the database lost its trials "
        "(an SQLite file copied without its -wal file, or another --storage than its tuning's?); "
        "restore it, or pass --overwrite to start afresh"
    )


def run_study(config: Any, options: TuneOptions) -> optuna.Study:
    """``_run_study``; a storage that fails on the way (a damaged page in the middle of a
    SQLite file, a server gone) is one line (``RunFailure``, exit 1), not a traceback."""
    with _storage_failures_in_one_line(options.storage):
        return _run_study(config, options)


@contextlib.contextmanager
def _storage_failures_in_one_line(url: str) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        failure = storages.storage_failure(err, url)
        if failure is None:
            raise
        raise RunFailure(failure) from None


def _run_study(config: Any, options: TuneOptions) -> optuna.Study:
    """Top the study up to ``n_trials`` and run the workers; the finished study. The caller has
    checked ``config`` and ``options`` with ``check_study``.

    Ctrl-C ends the process with exit code 130 after saying how to resume.
    """
    quiet_lightning()
    study, _ = prepare_study(config, options)
    try:
        run_workers(config, options)
    except KeyboardInterrupt:
        _interrupted([(study, options)])
    return study


def run_studies_together(
    entries: list[tuple[str, Any, TuneOptions]], data: Any
) -> dict[str, optuna.Study]:
    """The studies of ``entries`` (``(label, config, options)``, each checked with
    ``check_study``), their trials trained together: each round one population of up to
    ``population`` trials of every study (``workers.run_together``), so arms whose configs
    differ only in their optimizer, LR scheduler and search space tune at the cost of one.
    Each study's trials are the ones it would run alone (claimed, sampled and told as its own
    worker would). The finished studies by label; a storage failure is one line, and Ctrl-C
    exits with 130 after saying how to resume."""
    quiet_lightning()
    with _storage_failures_in_one_line(entries[0][2].storage):
        prepared = {label: prepare_study(cfg, opts) for label, cfg, opts in entries}
        studies_ = {label: study for label, (study, _) in prepared.items()}
        try:
            run_together(entries, data, {label: st for label, (_, st) in prepared.items()})
        except KeyboardInterrupt:
            _interrupted([(studies_[label], opts) for label, _, opts in entries])
    return studies_


def _interrupted(studies_: list[tuple[optuna.Study, TuneOptions]]) -> None:
    shown = []
    for study, options in studies_:
        counts = studies.count_states(study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        shown.append(f"{finished} of {options.n_trials}")
    print(
        f"interrupted: {', '.join(shown)} trials finished and are kept; "
        "run the same command again to resume",
        file=sys.stderr,
    )
    sys.exit(signals.interrupt_exit_code())


def prepare_study(config: Any, options: TuneOptions) -> tuple[optuna.Study, Any]:
    """Open (or create) the study, refuse one of other settings, re-plan its interrupted
    trials and top it up to ``n_trials``; say what is left to run. The study and its storage."""
    space = resolve_search_space(config)
    try:
        storage = open_study_storage(options)
        study = studies.open_study(storage, options.study_name, space, options.objective)
        study = check_recorded(study, storage, space, options)
    except storages.StorageMachineError as err:  # a full disk: the machine, not the input
        raise RunFailure(str(err)) from None
    except ValueError as err:  # an unreachable storage, a study of other settings
        raise UsageError(str(err)) from None
    rerun = studies.retry_interrupted(study, storage)
    added = studies.top_up(study, options.n_trials, storage)
    if rerun:
        progress.say(f"re-running {rerun} interrupted trial(s) with their own parameters")
    progress.seen(studies.finished_units(study))
    progress.say(
        f"study {options.study_name!r} in {storages.redact(options.storage)}: "
        f"{options.n_trials - added} of {options.n_trials} trials already planned or finished, "
        f"{added} to run with {options.n_workers} worker(s); logs in {options.study_dir}"
    )
    return study, storage
