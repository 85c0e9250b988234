"""One runner for every run: a tuning trial or a final run, one at a time or K as a population.

``train_runs`` builds the model of a set of runs (a single model for one run, else a population
whose member k is run k), gives each run its own loggers, fits it and returns one
``RunOutcome`` per run, plus the trained model behind them (``TrainedRuns``) for what the caller
does next: its checkpoints, its test at the last and at the best-validation epoch. Trials
(``tuning.trials``) and final runs (``experiments.finals``) differ only in that next step, in the
callbacks they add (pruning) and in how they record an outcome.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger

from lightning_opt.core import progress
from lightning_opt.runs.build import (
    QUIET_TRAINER,
    build_mixed_population,
    build_model,
    build_trainer,
    save_final_checkpoint,
    save_member_checkpoint,
)
from lightning_opt.training.loop import NonFiniteLossError


@dataclass(frozen=True)
class Run:
    """One run to train: its config (its tuned values set: what a ``fit`` of it trains), those
    values (a population member's own settings), its seed and its loggers."""

    cfg: Any
    values: dict[str, Any]
    seed: int
    loggers: list[Logger] = field(default_factory=list)


@dataclass(frozen=True)
class RunOutcome:
    """What one run did: its validation loss and accuracy after each epoch, and why it ended
    before its last epoch (``None``: it did not)."""

    val_loss: list[float]
    val_acc: list[float]
    stopped: str | None = None


class Interruptible(Protocol):
    """What stops a run at the next batch: Ctrl-C sets ``interrupted`` and stops ``trainer``."""

    trainer: Trainer | None
    interrupted: bool


class EpochHistory(Callback):
    """Validation loss and accuracy after every epoch, for the curves of the report, and the
    weights of the epoch with the lowest validation loss (the early-stopping checkpoint)."""

    def __init__(self) -> None:
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []
        self.best_state: dict[str, Any] | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = float(trainer.callback_metrics["val/loss"])
        if self.best_state is None or loss < min(self.val_loss):
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.best_epoch = len(self.val_loss)
        self.val_loss.append(loss)
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


class Progress(Callback):
    """A line now and then while a long fit runs (``every`` seconds at the most, none for a fit
    shorter than that): its label, the epoch, the time so far and an estimate of the rest, so
    a population of many trials is not minutes of silence before its lines."""

    def __init__(self, label: str, every: float | None = None) -> None:
        self.label = label
        self.every = progress.every() if every is None else every
        self._start = self._shown = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._shown = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        now = time.perf_counter()
        if now - self._shown < self.every or trainer.max_epochs in (None, -1):
            return
        self._shown = now
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        left = (now - self._start) / done * (total - done)
        live = getattr(pl_module, "member_ids", None)  # a population drops pruned members
        members = "" if live is None else f", {len(live)} members training"
        progress.say(f"  {self.label}: epoch {done} of {total}{members}, "
                     f"{now - self._start:.0f} s so far, ~{left:.0f} s left")  # fmt: skip


@dataclass
class TrainedRuns:
    """The runs of one ``train_runs`` call after their fit: one outcome per run (in order), the
    model and the trainer that trained them, and the seconds it took."""

    runs: list[Run]
    outcomes: list[RunOutcome]
    model: Any
    trainer: Trainer
    seconds: float
    population: bool
    #: A single run's non-finite loss, as its ``fit`` raised it.
    error: NonFiniteLossError | None = None
    history: EpochHistory | None = None

    def checkpoint(self, index: int, log_dir: Path) -> str:
        """Run ``index``'s checkpoint of its last weights (a member that ended at its own last
        epoch: of then): ``<log_dir>/checkpoints/final.ckpt``."""
        if not self.population:
            return save_final_checkpoint(self.trainer, log_dir)
        finished = self.model.finished_checkpoints.get(index)
        return save_member_checkpoint(self.model, index, log_dir, finished)

    def test(self, data: Any) -> dict[int, dict[str, float]]:
        """Each trained run's test metrics at its last weights, once (logged by its loggers)."""
        if not self.population:
            return {0: self.trainer.test(self.model, datamodule=data, verbose=False)[0]}
        if not self.model.num_members:
            return {}
        self.trainer.test(self.model, datamodule=data, verbose=False)
        return dict(self.model.test_results)

    def test_best(self, data: Any) -> dict[int, dict[str, float]]:
        """Each trained run's test metrics at the weights of its lowest val/loss epoch (the
        early-stopping view), tested without loggers: the runs' logs keep the last weights'."""
        if not self.population:
            assert self.history is not None
            self.model.load_state_dict(self.history.best_state)
            quiet = Trainer(logger=False, **QUIET_TRAINER)
            return {0: quiet.test(self.model, datamodule=data, verbose=False)[0]}
        if not self.model.num_members:
            return {}
        self.model.use_best_weights()
        loggers, self.model.member_loggers = self.model.member_loggers, None
        self.trainer.test(self.model, datamodule=data, verbose=False)
        self.model.member_loggers = loggers
        return dict(self.model.test_results)


def train_runs(
    runs: Sequence[Run],
    data: Any,
    *,
    population: bool,
    callbacks: Sequence[Callback] = (),
    trainer_cfg: Any = None,
    track_best: bool = False,
    ends: dict[type[BaseException], str] | None = None,
    driver: Interruptible | None = None,
    history: EpochHistory | None = None,
) -> TrainedRuns:
    """Train ``runs`` and return each one's outcome. One run (``population`` false) is the
    ``fit`` of its config, built from torch's random state as it is now (the caller seeds); a
    population's member k is run k, exactly as it would train alone (``runs.build``), each
    ending at its own config's last epoch.

    Args:
        callbacks: more callbacks for the trainer (pruning).
        trainer_cfg: the config whose trainer settings train a population (default: the run of
            the most epochs).
        track_best: keep each member's weights of its lowest val/loss epoch (``test_best``).
        ends: exceptions out of a single run's ``fit`` that end it early, each with the reason
            it gives (``{epoch}``: the epoch it ended at): ``{TrialPruned: "pruned at epoch
            {epoch}"}``. A non-finite loss ends it too (``error``).
        driver: stopped at the next batch by Ctrl-C; ``KeyboardInterrupt`` after the fit.
        history: the callback that records a single run's curves and best weights (default: a
            new ``EpochHistory``).
    """
    runs = list(runs)
    if not population:
        (run,) = runs
        model = build_model(run.cfg)
        history = history if history is not None else EpochHistory()
        trainer = build_trainer(run.cfg, run.loggers or False, [*callbacks, history])
        stopped, error = None, None
        if driver is not None:
            driver.trainer = trainer
        start = time.perf_counter()
        try:
            trainer.fit(model, datamodule=data)
        except tuple(ends or ()) as err:
            stopped = (ends or {})[type(err)].format(epoch=trainer.current_epoch)
        except NonFiniteLossError as err:
            stopped, error = str(err), err
        finally:
            if driver is not None:
                driver.trainer = None
        _raise_if_interrupted(driver)
        outcome = RunOutcome(history.val_loss, history.val_acc, stopped)
        seconds = time.perf_counter() - start
        return TrainedRuns(runs, [outcome], model, trainer, seconds, False, error, history)
    epochs = [run.cfg.trainer.max_epochs for run in runs]
    model = build_mixed_population([(run.cfg, run.values) for run in runs], [r.seed for r in runs])
    if len(set(epochs)) > 1:
        model.member_epochs = epochs
    model.track_best = track_best
    model.member_loggers = [run.loggers for run in runs]
    if trainer_cfg is None:  # the longest budget's: each member ends at its own last epoch
        trainer_cfg = runs[epochs.index(max(epochs))].cfg
    progress = Progress(f"population of {len(runs)}")
    trainer = build_trainer(trainer_cfg, False, [*callbacks, progress])
    if driver is not None:
        driver.trainer = trainer
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=data)
    except NonFiniteLossError:
        pass  # every member is dropped; each one's reason is in model.dropped
    finally:
        if driver is not None:
            driver.trainer = None
    _raise_if_interrupted(driver)
    outcomes = [
        RunOutcome(
            model.history[member]["val/loss"], model.history[member]["val/acc"],
            model.dropped.get(member),
        )
        for member in range(len(runs))
    ]  # fmt: skip
    return TrainedRuns(runs, outcomes, model, trainer, time.perf_counter() - start, True)


def _raise_if_interrupted(driver: Interruptible | None) -> None:
    if driver is not None and driver.interrupted:
        raise KeyboardInterrupt
