"""Worker processes of a study: claim WAITING trials, run them, tell Optuna; Ctrl-C handling.

Each worker (the tune process itself, or a forked/spawned child per ``--n_workers``) opens its
own storage connection, claims trials atomically (``claims.claim_waiting_trial``) and runs them
with a ``TrialRunner``; a database storage gets a heartbeat per running trial.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from lightning_opt.config.parsing import RunFailure
from lightning_opt.core import progress, signals
from lightning_opt.runs.build import quiet_lightning
from lightning_opt.tuning import claims as studies
from lightning_opt.tuning import storage as storages
from lightning_opt.tuning.trials import (
    TrialOutcome,
    TrialRunner,
    TuneOptions,
    make_pruner,
    run_trial_population,
)


def run_worker(config: Any, options: TuneOptions) -> int:
    """Claim and run trials until none is left; the number run."""
    quiet_lightning()
    storage = storages.open_storage(
        options.storage, options.heartbeat_interval, options.grace_period, options.max_retry,
        connect_timeout=options.connect_timeout,
    )  # fmt: skip
    study = optuna.load_study(
        study_name=options.study_name, storage=storage,
        pruner=make_pruner(options.pruner),
    )  # fmt: skip
    runner = TrialRunner(config, options, storage=storage)
    with on_sigint(runner.interrupt):
        return claim_and_run(study, storage, runner, options)


@contextlib.contextmanager
def on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C calls ``callback``; a second one interrupts at once (the default)."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        callback()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def claim_and_run(
    study: optuna.Study, storage: Any, runner: TrialRunner, options: TuneOptions
) -> int:
    done = 0
    while True:
        if runner.interrupted:
            raise KeyboardInterrupt
        studies.bring_back(study, storage)
        batch = studies.claim_up_to(options.population, functools.partial(_claim, study, runner))
        if not batch:
            if studies.worth_waiting(study, storage):  # it may finish, or come back to claim
                time.sleep(min(0.5, options.heartbeat_interval))
                continue
            studies.drop_surplus(study, storage, options.n_trials)
            return done
        trials, params = [trial for trial, _, _ in batch], [values for *_, values in batch]
        claims = [(study, storage, trial, trial_id) for trial, trial_id, _ in batch]
        _train_claimed(
            claims, options.heartbeat_interval, functools.partial(runner.run_trials, trials, params)
        )
        progress.seen(studies.finished_units(study))
        done += len(trials)


def run_together(
    entries: list[tuple[str, Any, TuneOptions]], data: Any, opened: dict[str, Any] | None = None
) -> int:
    """Claim and run the trials of several studies (``(label, config, options)``, one worker)
    until none is left, each round up to ``population`` trials of every study trained as one
    population; the number run. Each study's trials are claimed, sampled, pruned and told as
    ``claim_and_run`` does for one. ``opened``: storages this process opened already, by label."""
    arms = []
    for label, config, options in entries:
        storage = (opened or {}).get(label) or storages.open_storage(
            options.storage, options.heartbeat_interval, options.grace_period,
            options.max_retry, connect_timeout=options.connect_timeout,
        )  # fmt: skip
        study = optuna.load_study(
            study_name=options.study_name, storage=storage, pruner=make_pruner(options.pruner)
        )
        arms.append((study, storage, TrialRunner(config, options, data, label, storage)))
    driver = arms[0][2]
    done = 0
    with on_sigint(driver.interrupt):
        while True:
            if driver.interrupted:
                raise KeyboardInterrupt
            members, claims = [], []
            for study, storage, runner in arms:
                options = runner.options
                studies.bring_back(study, storage)
                for trial, trial_id, values in studies.claim_up_to(
                    runner.options.population, functools.partial(_claim, study, runner)
                ):
                    members.append((runner, trial, values))
                    claims.append((study, storage, trial, trial_id))
            if not members:
                waiting = any(studies.worth_waiting(study, storage) for study, storage, _ in arms)
                if waiting:  # a dead worker's trial may come back
                    time.sleep(min(0.5, min(r.options.heartbeat_interval for *_, r in arms)))
                    continue
                for study, storage, runner in arms:
                    studies.drop_surplus(study, storage, runner.options.n_trials)
                return done
            interval = min(r.options.heartbeat_interval for *_, r in arms)
            _train_claimed(
                claims, interval, functools.partial(run_trial_population, driver, members)
            )
            for study, _, _ in arms:
                progress.seen(studies.finished_units(study))
            done += len(members)


def _claim(study: optuna.Study, runner: TrialRunner) -> tuple[optuna.Trial, int, dict] | None:
    """Claim one of ``study``'s waiting trials and sample its values now (the next claim
    reseeds the sampler): ``(trial, trial_id, values)``, or ``None``."""
    numbers: list[int] = []

    def sampler(number: int) -> optuna.samplers.BaseSampler:
        numbers.append(number)
        return runner.sampler(number)

    claimed = studies.claim_waiting_trial(
        study, runner.storage, runner.options.n_trials, sampler=sampler
    )
    return None if claimed is None else (*claimed, runner.suggest(claimed[0], numbers[-1]))


#: A claimed trial: its study, the study's storage, the trial and its id.
Claim = tuple[optuna.Study, Any, optuna.Trial, int]


def _train_claimed(
    claims: list[Claim], interval: int, run: Callable[[], list[TrialOutcome]]
) -> None:
    """``run()`` the claimed trials with a heartbeat each, and tell each study its trials'
    outcomes; an interruption or a failure fails every claimed trial (with its reason), to be
    re-run at the next launch."""
    with contextlib.ExitStack() as beats:
        for _, storage, _, trial_id in claims:
            beats.enter_context(studies.heartbeat(storage, trial_id, interval))
        try:
            outcomes = run()
        except (KeyboardInterrupt, SystemExit):
            for study, _, trial, _ in claims:
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
            raise KeyboardInterrupt from None
        except BaseException as err:
            for study, _, trial, _ in claims:
                trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                study.tell(trial, state=TrialState.FAIL)
            raise
    for (study, _, trial, _), outcome in zip(claims, outcomes, strict=True):
        complete = outcome.state == TrialState.COMPLETE
        study.tell(trial, outcome.value if complete else None, state=outcome.state)


def _worker_process(config: Any, options: TuneOptions) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(1)  # one core per worker
    try:
        run_worker(config, options)
    except KeyboardInterrupt:
        sys.exit(signals.interrupt_exit_code())
    except Exception as err:
        failure = storages.storage_failure(err, options.storage)
        if failure is None:
            raise
        print(f"lightning_opt: error: {failure}", file=sys.stderr)
        sys.exit(1)


def run_workers(config: Any, options: TuneOptions) -> None:
    """Run ``options.n_workers`` workers until the study has no trial left to claim.

    Raises ``KeyboardInterrupt`` after Ctrl-C (finished trials are kept).
    """
    if options.n_workers == 1:
        run_worker(config, options)
        return
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

    def forward_sigterm() -> None:
        # Ctrl-C reaches every process of the terminal's group; SIGTERM may reach this one only.
        if signals.terminated():
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signal.SIGTERM)

    with on_sigint(forward_sigterm):  # the workers stop cleanly, each at its next batch
        for worker in workers:
            worker.join()
    codes = {w.exitcode for w in workers}
    if signals.EXIT_SIGTERM in codes:
        signals.note_terminated()
    if codes & {signals.EXIT_SIGINT, signals.EXIT_SIGTERM}:
        raise KeyboardInterrupt
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise RunFailure(
            f"{len(failed)} of {len(workers)} worker(s) failed (exit codes {failed}; their "
            "errors are above); finished trials are kept: run the same command again to resume"
        )
