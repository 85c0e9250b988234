"""Optuna studies that end with exactly ``n_trials`` finished trials, however many workers run.

The launcher enqueues exactly the missing number of WAITING trials; workers only *claim* those
(never ``study.ask()``, which would create extra trials when two workers race). A trial whose
worker died is marked failed by the heartbeat (database storages) and re-enqueued by Optuna's
``RetryHeartbeatStaleTrialCallback``, so another worker runs it again.

Every error is one ``ValueError`` line, and no line shows a password (the storage itself:
``lightning_opt.tuning.storage``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from lightning_opt.tuning.storage import has_heartbeat, retry_races

T = TypeVar("T")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: A trial that can still finish, or has.
LIVE = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
_SPACE_ATTR = "lightning_opt:search_space"
_OBJECTIVE_ATTR = "lightning_opt:objective"
_KIND_ATTR = "lightning_opt:kind"
#: What a study without a search space is, for optuna-dashboard's user attributes (its history
#: plot draws a "best value" line for any study).
SEED_QUEUE = "one trial per seed, not a search: its best value is only the luckiest seed"


def open_study(
    storage: BaseStorage,
    name: str,
    search_space: Sequence[Any],
    objective: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or load study ``name``; refuse one whose direction or search space differs.

    Launchers that create the same new study at the same moment all get it: the ones that lose
    the race load the winner's study and check it like any existing one.
    """
    wanted = json.dumps([p.as_dict() for p in search_space], sort_keys=True)

    def load() -> optuna.Study:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)

    def create_or_load() -> optuna.Study:
        try:
            study = load()
        except KeyError:  # no such study yet
            try:
                study = optuna.create_study(
                    storage=storage, study_name=name, direction="minimize", sampler=sampler,
                    pruner=pruner,
                )  # fmt: skip
            except optuna.exceptions.DuplicatedStudyError:  # another launcher created it now
                study = load()
                _wait_for_settings(study)
            else:
                # What optuna-dashboard names the value (else "Objective 0"); set before the
                # attributes a racing launcher waits for, so it is there when they are.
                study.set_metric_names([f"val/loss ({objective})"])
                if not search_space:  # a seed queue (an arm's finals): said where a user looks
                    study.set_user_attr(_KIND_ATTR, SEED_QUEUE)
                study.set_user_attr(_SPACE_ATTR, wanted)
                study.set_user_attr(_OBJECTIVE_ATTR, objective)
                return study
        _check_settings(study, name, wanted, objective)
        return study

    return retry_races(create_or_load, getattr(storage, "url", None))


def _wait_for_settings(study: optuna.Study, timeout: float = 10.0) -> None:
    """Wait until the launcher that just created ``study`` has recorded its settings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attrs = study.user_attrs
        if _SPACE_ATTR in attrs and _OBJECTIVE_ATTR in attrs:
            return
        time.sleep(0.05)


def _check_settings(study: optuna.Study, name: str, wanted: str, objective: str) -> None:
    directions = study.directions
    if directions != [optuna.study.StudyDirection.MINIMIZE]:
        shown = ", ".join(d.name for d in directions)
        raise ValueError(
            f"study {name!r} exists with direction {shown}; tune minimizes "
            "val/loss: choose another --study_name"
        )
    attrs = study.user_attrs
    for attr, value, what in (
        (_SPACE_ATTR, wanted, "search space"),
        (_OBJECTIVE_ATTR, objective, "objective"),
    ):
        stored = attrs.get(attr)
        if stored is not None and stored != value:
            raise ValueError(
                f"study {name!r} exists with another {what} ({stored}); asked for {value}: "
                "choose another --study_name or use the original settings"
            )


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def top_up(study: optuna.Study, n_trials: int, storage: BaseStorage | None = None) -> int:
    """Enqueue WAITING trials until the study's ``slots`` are ``n_trials``; how many.

    With the study's SQLite ``storage`` the count and the enqueueing hold its claim lock, so
    two launchers starting at once plan ``n_trials`` between them; on a server database both may
    top up at once, and the surplus stays WAITING, never claimed (``claim_waiting_trial``)."""
    with sqlite_lock(storage):
        missing = max(0, n_trials - len(slots(study.get_trials(deepcopy=False), n_trials)))
        for _ in range(missing):
            study.enqueue_trial({})  # the sampler fills every parameter when a worker claims it
    return missing


def finished_units(study: optuna.Study) -> list[tuple[str, int]]:
    """The study's finished trials as units of a command's progress (``core.progress``):
    ``(study name, original number)``, a re-run counted as its original."""
    return [
        (study.study_name, original_number(t))
        for t in study.get_trials(deepcopy=False, states=FINISHED)
    ]


def original_number(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the trial that ``trial`` re-runs, through any chain of re-runs (enqueued by
    ``tuning.tune.retry_interrupted`` as ``retry_of``, or by Optuna's heartbeat retry); its own number
    if it is no re-run. A re-run samples, sorts and is reported as that trial."""
    if "retry_of" in trial.user_attrs:
        return int(trial.user_attrs["retry_of"])
    history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[0] if history else trial.number


def claim_waiting_trial(
    study: optuna.Study, storage: BaseStorage, n_trials: int, sampler_seed: int | None = None,
    sampler: Callable[[int], optuna.samplers.BaseSampler] | None = None,
) -> tuple[optuna.Trial, int] | None:  # fmt: skip
    """Atomically take a WAITING trial (WAITING -> RUNNING): ``(trial, trial_id)`` or ``None``.

    Only trials among the first ``n_trials`` that can still finish are claimed: if two launchers
    topped up the study at once, the surplus stays WAITING and is never run.

    With ``sampler_seed`` the TPE sampler is reseeded with ``sampler_seed + trial number``: one
    worker's suggestions are reproducible, and workers on other machines do not repeat them.
    With ``sampler`` the study samples with ``sampler(original number)`` instead.
    """

    def reseed(frozen: optuna.trial.FrozenTrial) -> None:
        if sampler is not None:
            study.sampler = sampler(original_number(frozen))
        elif sampler_seed is not None:  # a re-run samples as the trial it replaces would have
            study.sampler = optuna.samplers.TPESampler(
                seed=sampler_seed + original_number(frozen), constant_liar=True
            )

    def in_slots(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        return [live for _, live in slots(trials, n_trials) if live is not None]

    with sqlite_lock(storage) as serialized:
        return _claim(study, storage, in_slots, reseed, serialized)


#: ``fail_reason`` of a WAITING trial that no slot of its study holds (``drop_surplus``).
SURPLUS = "surplus"
#: ``fail_reason``s of trials stopped from outside; re-run by any process (``retry_interrupted``).
INTERRUPTED = ("interrupted", "killed")


def slots(
    trials: Sequence[optuna.trial.FrozenTrial], n_trials: int
) -> list[tuple[int, optuna.trial.FrozenTrial | None]]:
    """A study's ``n_trials`` planned trials, each as ``(original number, live trial)``: the
    first ``n_trials`` originals (by number; a re-run is its original's, ``original_number``)
    that hold a slot, with the first of their trials that is waiting, running or finished
    (``None``: failed with a reason and not re-run yet; its re-run takes the slot, never a
    fresh trial). An original whose trials all failed without a reason (a stale worker's, its
    retries used up) gives its slot up. Trials of other originals, and a second re-run of one
    original (two launchers at once), are surplus: never claimed."""
    first_live: dict[int, optuna.trial.FrozenTrial] = {}
    pending: set[int] = set()
    order: dict[int, None] = {}  # the originals, by number
    for trial in sorted(trials, key=lambda t: t.number):
        original = original_number(trial)
        order.setdefault(original)
        if trial.state in LIVE:
            first_live.setdefault(original, trial)
        elif trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") not in (
            None, SURPLUS,
        ):  # fmt: skip
            pending.add(original)
    held = [o for o in order if o in first_live or o in pending]
    return [(o, first_live.get(o)) for o in held[:n_trials]]


def retry_interrupted(study: optuna.Study, storage: BaseStorage, errors: bool = True) -> int:
    """Enqueue the parameters of every trial that was interrupted (Ctrl-C or SIGTERM: failed
    with ``fail_reason: interrupted``; killed: still RUNNING, claimed by a process of this
    machine that is gone) or, with ``errors``, failed with an error (``fail_reason``: the
    exception, which the command reported), once each, so a resumed study runs the same trials
    an uninterrupted one would (a trial that failed is never replaced by a fresh one the study
    cannot count); the number enqueued. A launch re-runs both; a process still claiming re-runs
    the trials another process sharing the storage was interrupted in (``errors=False``)."""
    with sqlite_lock(storage):
        every = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("replaces") for t in every}
        count = 0
        for trial in every:
            reason = trial.user_attrs.get("fail_reason")
            if trial.number in retried or reason == SURPLUS:
                continue
            failed = trial.state == TrialState.FAIL and reason is not None
            if failed and not errors and reason not in INTERRUPTED:
                continue
            if not (failed or fail_if_killed_here(study, storage, trial)):
                continue
            # Its parameters, or (killed before it sampled them) the sampler seed it would have
            # had.
            study.enqueue_trial(
                trial.params or {},
                user_attrs={"retry_of": original_number(trial), "replaces": trial.number},
            )
            count += 1
    return count


def bring_back(study: optuna.Study, storage: BaseStorage) -> None:
    """Before a claim: re-enqueue the trials of dead workers (database storages: their
    heartbeat stopped) and of processes sharing the storage that were stopped from outside
    (``retry_interrupted`` without errors)."""
    if has_heartbeat(storage):
        optuna.storages.fail_stale_trials(study)
    retry_interrupted(study, storage, errors=False)


def drop_surplus(study: optuna.Study, storage: BaseStorage, n_trials: int) -> int:
    """Fail (``fail_reason: surplus``) the WAITING trials no slot holds (``slots``): launchers
    that topped the study up at once on a server database, or re-ran one trial twice; called
    when nothing is left to claim, so a study ends with no trial waiting. The number failed."""
    with sqlite_lock(storage):
        every = study.get_trials(deepcopy=False)
        kept = {live.number for _, live in slots(every, n_trials) if live is not None}
        study_id = storage.get_study_id_from_name(study.study_name)
        dropped = 0
        for trial in every:
            if trial.state != TrialState.WAITING or trial.number in kept:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            with contextlib.suppress(RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial_id, "fail_reason", SURPLUS)
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    dropped += 1
    return dropped


def claim_waiting_unit(
    study: optuna.Study, storage: BaseStorage, key: str, values: Sequence[Any]
) -> tuple[optuna.Trial, int] | None:
    """``claim_waiting_trial`` for a study of planned units (final runs), one per value of the
    user attribute ``key`` (a seed) among ``values``: only the first trial that can still finish
    of each value is claimed, so two launchers that enqueued the same unit at once run it once."""

    def first_of_each(live: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        seen, first = set(), []
        for frozen in live:
            if frozen.state not in LIVE:
                continue
            if frozen.user_attrs.get(key) in values and frozen.user_attrs.get(key) not in seen:
                seen.add(frozen.user_attrs.get(key))
                first.append(frozen)
        return first

    with sqlite_lock(storage) as serialized:
        return _claim(study, storage, first_of_each, lambda frozen: None, serialized)


@contextlib.contextmanager
def sqlite_lock(storage: BaseStorage | None) -> Iterator[bool]:
    """SQLite ignores ``SELECT ... FOR UPDATE``, so two processes could claim the same trial:
    serialise claims (and plans: ``top_up``, the final units') with a lock file next to the
    database (PostgreSQL and MySQL lock the row); whether they are serialised."""
    url = getattr(storage, "url", "") if storage is not None else ""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        yield False
        return
    with open(url.split(":///", 1)[1] + ".claim.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_HOST = socket.gethostname()


def worker_id() -> str:
    """This process, as a trial's ``worker`` attribute records it."""
    return f"{_HOST}:{os.getpid()}"


def _another_process_here(trial: optuna.trial.FrozenTrial) -> int | None:
    """The pid of the other process of this machine that ``trial`` is RUNNING for, else
    ``None``."""
    owner_host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
    if trial.state != TrialState.RUNNING or owner_host != _HOST or not pid.isdigit():
        return None
    return None if int(pid) == os.getpid() else int(pid)


def killed_here(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is RUNNING for a process of this machine that is gone (killed)."""
    pid = _another_process_here(trial)
    return pid is not None and not _alive(pid)


def held_here(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is RUNNING in another live process of this machine (worth waiting for
    on any storage; a journal file has no heartbeat to tell a dead one)."""
    pid = _another_process_here(trial)
    return pid is not None and _alive(pid)


def worth_waiting(study: optuna.Study, storage: BaseStorage) -> bool:
    """Whether a trial of ``study`` is running elsewhere and may still finish or come back:
    with a heartbeat (database storages) any running trial, else one held by a live process
    of this machine."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return bool(running) and (has_heartbeat(storage) or any(held_here(t) for t in running))


def fail_if_killed_here(study: optuna.Study, storage: BaseStorage, trial: Any) -> bool:
    """Fail ``trial`` (``fail_reason: killed``) if a process of this machine that is gone was
    running it, so its work runs again now; whether it did (a rival process that finished or
    failed it meanwhile wins)."""
    if not killed_here(trial):
        return False
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", "killed")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True


def claim_up_to(limit: int, claim: Callable[[], T | None]) -> list[T]:
    """Up to ``limit`` claims, each ``claim()`` (``None``: nothing left to claim): the one loop
    behind a population's trials, joint tuning's and the final runs' seeds."""
    batch: list[T] = []
    while len(batch) < limit:
        claimed = claim()
        if claimed is None:
            break
        batch.append(claimed)
    return batch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(
    study: optuna.Study,
    storage: BaseStorage,
    claimable: Callable[[list[optuna.trial.FrozenTrial]], list[optuna.trial.FrozenTrial]],
    on_claim: Callable[[optuna.trial.FrozenTrial], None],
    serialized: bool = False,
) -> tuple[optuna.Trial, int] | None:
    """Claim the first WAITING trial of those ``claimable`` keeps of the live ones. A process
    killed at any point of a claim leaves a trial that comes back: still WAITING, or RUNNING with
    a heartbeat (found stale by Optuna) and, where claims are serialised (no rival can win the
    trial meanwhile), its worker recorded (re-run at the next launch on this machine,
    ``tuning.tune.retry_interrupted``)."""
    worker = worker_id()
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in claimable(study.get_trials(deepcopy=False)):  # by number
        if frozen.state != TrialState.WAITING:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        with contextlib.suppress(RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            if has_heartbeat(storage):
                # Before it runs: a RUNNING trial without any heartbeat is never found stale.
                storage.record_heartbeat(trial_id)
            if serialized:
                storage.set_trial_user_attr(trial_id, "worker", worker)
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                if not serialized:  # only now: a rival may have won the trial
                    storage.set_trial_user_attr(trial_id, "worker", worker)
                on_claim(frozen)
                return optuna.Trial(study, trial_id), trial_id
    return None


@contextlib.contextmanager
def heartbeats(storage: BaseStorage, trial_ids: Sequence[int], interval: int) -> Iterator[None]:
    """``heartbeat`` for every trial of a batch (a population) while the block runs."""
    with contextlib.ExitStack() as stack:
        for trial_id in trial_ids:
            stack.enter_context(heartbeat(storage, trial_id, interval))
        yield


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
