"""Each submission's own time per optimizer step on a workload, measured alone: the secondary,
wall-clock column of a leaderboard (steps stay the primary clock).

Tuning trials and final runs train in populations, whose time is every member's together and
never one optimizer's. So after a workload's experiment, each submission's final configuration
(its tuned values) trains alone for ``EPOCHS`` epochs, training only (AlgoPerf's clock leaves
evaluation out: no validation), as the tool trains it (its data path, chunking included), and
its time per step is the fastest epoch after the first (which pays for warm-up) over the
epoch's steps. A submission's seconds to target are its steps to target times that.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from typing_extensions import override

from lightning_opt.data import MNIST1DDataModule
from lightning_opt.runs.build import chunk_where_invisible, run_loggers, with_values
from lightning_opt.runs.runner import Run, train_runs

#: Epochs of a timing run: the first warms up, the fastest of the rest is taken.
EPOCHS = 3


class EpochTimes(Callback):
    """Each training epoch's wall time (the device synchronised at both ends)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @staticmethod
    def _now(pl_module: LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._now(pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.times.append(self._now(pl_module) - self._start)


def seconds_per_step(final_cfg: Any, tuned: dict[str, Any], steps_per_epoch: int) -> float:
    """One submission's seconds per optimizer step, trained alone at its tuned values."""
    cfg = with_values(final_cfg, tuned)  # a copy
    cfg.trainer.max_epochs = EPOCHS
    cfg.trainer.limit_val_batches = 0  # training alone
    cfg.trainer.val_check_interval = None
    cfg.trainer.num_sanity_val_steps = 0
    data = MNIST1DDataModule(**cfg.data.as_dict())
    data.prepare_data()
    chunk_where_invisible(cfg, data)
    seed_everything(cfg.seed_everything, verbose=False)
    timer = EpochTimes()
    # Its own loggers as configured (a callback such as LearningRateMonitor needs one; logging is
    # part of a step's cost), writing to a folder that goes with the timing.
    with tempfile.TemporaryDirectory(prefix="lightning_opt-timing-") as logs:
        run = Run(cfg, tuned, cfg.seed_everything, run_loggers(cfg, logs, "timing"))
        train_runs([run], data, population=False, callbacks=[timer])
    return min(timer.times[1:] or timer.times) / steps_per_epoch


def time_submissions(
    workload: dict[str, Any], plans: list[Any], results: dict[str, Any]
) -> dict[str, float]:
    """Every submission's seconds per step on ``workload`` (``plans``: its experiment's arm
    plans; ``results``: its results.json)."""
    out = {}
    for plan in plans:
        tuned = results["arms"][plan.name]["tuned"]
        out[plan.name] = seconds_per_step(plan.final_cfg, tuned, workload["steps_per_epoch"])
    shown = ", ".join(f"{name} {1000 * s:.2f}" for name, s in out.items())
    print(f"workload {workload['name']}: ms a step, each alone: {shown}", flush=True)
    return out
