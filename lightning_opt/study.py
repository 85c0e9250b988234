"""Optuna studies that end with exactly ``n_trials`` finished trials, however many workers run.

The launcher enqueues exactly the missing number of WAITING trials; workers only *claim* those
(never ``study.ask()``, which would create extra trials when two workers race). A trial whose
worker died is marked failed by the heartbeat (database storages) and re-enqueued by Optuna's
``RetryHeartbeatStaleTrialCallback``, so another worker runs it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_SPACE_ATTR = "lightning_opt:search_space"
_OBJECTIVE_ATTR = "lightning_opt:objective"


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int | None = None, max_retry: int = 3
) -> BaseStorage:
    """An Optuna storage from a database URL or a journal file path; errors are one line."""
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url))
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"unknown storage scheme {scheme!r} in {redact(url)}; use sqlite:///FILE.db, "
            "postgresql://USER@HOST/DB, mysql://USER@HOST/DB or a journal file path"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # wait for another worker's write
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )
    except ImportError as err:
        raise ValueError(
            f"no database driver for {redact(url)} ({err}); for PostgreSQL: "
            "pip install 'lightning_opt[postgres]'"
        ) from None
    except Exception as err:  # sqlalchemy's OperationalError and friends
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ValueError(f"cannot open the study storage {redact(url)}: {reason}") from None


def has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage)


def open_study(
    storage: BaseStorage,
    name: str,
    search_space: Sequence[Any],
    objective: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or load study ``name``; refuse one whose direction or search space differs."""
    wanted = json.dumps([p.as_dict() for p in search_space], sort_keys=True)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if name in existing:
        summary = existing[name]
        if summary.direction != optuna.study.StudyDirection.MINIMIZE:
            raise ValueError(
                f"study {name!r} exists with direction {summary.direction.name}; tune minimizes "
                "val/loss: choose another --study_name"
            )
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        for attr, value, what in (
            (_SPACE_ATTR, wanted, "search space"),
            (_OBJECTIVE_ATTR, objective, "objective"),
        ):
            stored = study.user_attrs.get(attr)
            if stored is not None and stored != value:
                raise ValueError(
                    f"study {name!r} exists with another {what} ({stored}); asked for {value}: "
                    "choose another --study_name or use the original settings"
                )
        return study
    study = optuna.create_study(
        storage=storage, study_name=name, direction="minimize", sampler=sampler, pruner=pruner
    )
    study.set_user_attr(_SPACE_ATTR, wanted)
    study.set_user_attr(_OBJECTIVE_ATTR, objective)
    return study


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def top_up(study: optuna.Study, n_trials: int) -> int:
    """Enqueue WAITING trials until finished + running + waiting == ``n_trials``; how many."""
    counts = count_states(study)
    planned = sum(counts[s] for s in (*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    missing = max(0, n_trials - planned)
    for _ in range(missing):
        study.enqueue_trial({})  # the sampler fills every parameter when a worker claims it
    return missing


def claim_waiting_trial(
    study: optuna.Study, storage: BaseStorage, n_trials: int, sampler_seed: int | None = None
) -> tuple[optuna.Trial, int] | None:
    """Atomically take a WAITING trial (WAITING -> RUNNING): ``(trial, trial_id)`` or ``None``.

    Only trials among the first ``n_trials`` that can still finish are claimed: if two launchers
    topped up the study at once, the surplus stays WAITING and is never run.

    With ``sampler_seed`` the TPE sampler is reseeded with ``sampler_seed + trial number``: one
    worker's suggestions are reproducible, and workers on other machines do not repeat them.
    """
    with _sqlite_claim_lock(storage):
        return _claim(study, storage, n_trials, sampler_seed)


@contextlib.contextmanager
def _sqlite_claim_lock(storage: BaseStorage) -> Iterator[None]:
    """SQLite ignores ``SELECT ... FOR UPDATE``, so two processes could claim the same trial:
    serialise claims with a lock file next to the database (PostgreSQL and MySQL lock the row)."""
    url = getattr(storage, "url", "")
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        yield
        return
    with open(url.split(":///", 1)[1] + ".claim.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim(
    study: optuna.Study, storage: BaseStorage, n_trials: int, sampler_seed: int | None
) -> tuple[optuna.Trial, int] | None:
    study_id = storage.get_study_id_from_name(study.study_name)
    live = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    rank = 0
    for frozen in study.get_trials(deepcopy=False, states=live):  # ordered by number
        if rank >= n_trials:
            return None
        rank += 1
        if frozen.state != TrialState.WAITING:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        with contextlib.suppress(RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                if has_heartbeat(storage):
                    # At once: a trial without any heartbeat is never found stale.
                    storage.record_heartbeat(trial_id)
                if sampler_seed is not None:
                    study.sampler = optuna.samplers.TPESampler(
                        seed=sampler_seed + frozen.number, constant_liar=True
                    )
                return optuna.Trial(study, trial_id), trial_id
    return None


@contextlib.contextmanager
def heartbeat(storage: BaseStorage, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` s while the block runs (database storages)."""
    if not has_heartbeat(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
