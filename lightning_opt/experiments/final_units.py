"""An arm's final runs as units of its study storage, claimable from any process that shares it.

Each arm's finals are the study ``<arm's study>.finals``: one trial per seed, enqueued WAITING
with the seed as its user attribute ``seed``. Any process (``compare`` or ``benchmark`` on this
machine or another one, sharing a database storage) claims waiting seeds the way ``tune``'s
workers claim trials (atomically, with a heartbeat while they train), trains them, and records
each seed's result (the ``result.json`` record) on its trial. So every process reads the results
of every seed from the storage, and the guarantees of ``tune`` hold: a seed whose process was
killed is re-run with the same seed (Optuna's heartbeat retry, or at once on this machine), a
Ctrl-C'd one at the next launch, and only the first live unit of each seed ever runs (two
launchers that planned the same seed at once run it once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lightning_opt.tuning import claims as studies
from lightning_opt.tuning import storage as storages
from lightning_opt.tuning.trials import TuneOptions
from lightning_opt.tuning.tune import check_recorded, open_study_storage

SEED = "seed"
RESULT = "result"
SUFFIX = ".finals"
_LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class FinalUnits:
    """The final-run units of one arm: its study, its storage and the seeds it needs."""

    study: optuna.Study
    storage: Any
    seeds: list[int]
    options: TuneOptions

    @classmethod
    def open(
        cls, options: TuneOptions, seeds: list[int], fingerprint: dict[str, Any]
    ) -> FinalUnits:
        """The finals study of the arm whose tuning study ``options`` names, its runs logged in
        ``final/`` of the arm's folder; refused (one line) when it recorded other settings,
        unless ``--overwrite``."""
        name = options.study_name + SUFFIX
        # --overwrite deletes this arm's final runs, never its tuning trials.
        options = replace(
            options, study_name=name, fingerprint=fingerprint, output_dir=str(options.study_dir),
            log_dir_name="final",
        )  # fmt: skip
        storage = open_study_storage(options)
        study = studies.open_study(storage, name, [], "final runs")
        study = check_recorded(study, storage, [], options)
        return cls(study, storage, list(seeds), options)

    def plan(self) -> None:
        """Enqueue every needed seed that has no unit that can still finish (a killed process
        of this machine's unit is failed first, so its seed runs again now)."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            studies.fail_if_killed_here(self.study, self.storage, trial)
        with studies.sqlite_lock(self.storage):  # two launchers at once plan each seed once
            live = self.study.get_trials(deepcopy=False, states=_LIVE)
            planned = {t.user_attrs.get(SEED) for t in live}
            for seed in self.seeds:
                if seed not in planned:
                    self.study.enqueue_trial({}, user_attrs={SEED: seed})
        if storages.has_heartbeat(self.storage):
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's seed comes back

    def claim(self, limit: int) -> list[tuple[optuna.Trial, int, int]]:
        """Up to ``limit`` waiting seeds, claimed: ``(trial, trial_id, seed)`` each."""
        claimed = studies.claim_up_to(
            limit, lambda: studies.claim_waiting_unit(self.study, self.storage, SEED, self.seeds)
        )
        return [(trial, trial_id, int(trial.user_attrs[SEED])) for trial, trial_id in claimed]

    def record(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        """A seed's result, on its unit (then COMPLETE, valued by its final val/loss)."""
        trial.set_user_attr(RESULT, result)
        value = result["final_val_loss"]
        if math.isfinite(value):
            self.study.tell(trial, value, state=TrialState.COMPLETE)
        else:
            self.fail([trial], f"final val/loss {value}")

    def fail(self, trials: list[optuna.Trial], reason: str) -> None:
        for trial in trials:
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)

    @property
    def log_dir(self) -> Path:
        """The folder of the arm's final runs: ``seed_<s>/`` each."""
        return self.options.study_dir

    def results(self) -> dict[int, dict[str, Any]]:
        """The recorded result of every needed seed that has one (its first complete unit)."""
        done: dict[int, dict[str, Any]] = {}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            seed = trial.user_attrs.get(SEED)
            if seed in self.seeds and seed not in done and RESULT in trial.user_attrs:
                done[seed] = trial.user_attrs[RESULT]
        return done

    def running_elsewhere(self) -> list[int]:
        """Needed seeds without a result whose unit another process is training."""
        done = self.results()
        return sorted({
            t.user_attrs.get(SEED)
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(SEED) in self.seeds and t.user_attrs.get(SEED) not in done
        })  # fmt: skip

    @property
    def waits_safely(self) -> bool:
        """Whether another process's unit is known dead when it stops beating (a heartbeat)."""
        return storages.has_heartbeat(self.storage)
