"""A population's throughput against a hand-written batched reference of the same math, in one run.

    python perf/bench_throughput.py [--members 16 64 256 1024] [--epochs 3] [--accelerator cpu]
                                    [--graphs] [--no-logger] [--compile MODE]
                                    [--out perf/results/throughput.json]

For each K, on the default data (mnist1d, 5,000 samples: 32 steps of 100 an epoch):

- **the command**: ``fit --optimizer adam --seeds [0..K-1] --data.steps_per_chunk 0
  --trainer.max_epochs E+1`` (an epoch's steps in one Lightning batch, as the issue measured) run
  in this process through the CLI (``lightning_opt.cli.main.cli_main``) as a user runs it: its
  TensorBoard loggers (one run per member; ``--no-logger``: none), its checkpoint and its
  results, in a fresh folder. A callback of this file (given with ``--trainer.callbacks``)
  records the time of each epoch's start: **set-up** is the command's start to the first
  epoch's (parsing, the K members built, their loggers and hyperparameters; not the
  interpreter's imports, which ``perf/bench_startup.py`` times), **s/epoch** the median
  over the last E epochs of one epoch's start to the next's (its steps, its validation, its
  logging), and **end** the last epoch's end to the command's return (results, checkpoints,
  the loggers' files closed).
- **the reference** (``perf/reference_population.py``): the same layers, loss, Adam and
  batches by hand, with one validation pass an epoch; s/epoch is the median of E epochs after
  one untimed one. ``--graphs`` captures its step as a CUDA graph on a GPU.

Printed and written: per K, set-up, s/epoch of both, their ratio and member-steps/s. The issue's
targets on a CPU: set-up of K=1024 <= 3 s, s/epoch <= 1.5x the reference for K=16..1024; on a
GPU: K=1024 >= 25% of the reference's member-steps/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _report import machine_info, write_json
from lightning.pytorch import Callback
from reference_population import ReferencePopulation, seconds_per_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this module, for --trainer.callbacks

import itertools

from lightning_opt.cli.main import cli_main
from lightning_opt.core.allocator import keep_large_blocks
from lightning_opt.data import MNIST1DDataModule

STEPS_PER_EPOCH = 32


class EpochClock(Callback):
    """Records when each training epoch starts and when the fit's last one ends."""

    starts: list[float] = []
    last_end: float = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        EpochClock.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        EpochClock.last_end = time.perf_counter()


def run_command(
    k: int, epochs: int, accelerator: str, logger: bool, compile_: str | None = None
) -> dict[str, float]:
    clock = sys.modules.setdefault("bench_throughput", sys.modules[__name__]).EpochClock
    clock.starts, clock.last_end = [], 0.0
    seeds = "[" + ",".join(map(str, range(k))) + "]"
    argv = [
        "fit", "--optimizer", "adam", "--seeds", seeds, "--trainer.max_epochs", str(epochs + 1),
        "--data.steps_per_chunk", "0",
        "--trainer.accelerator", accelerator, "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.callbacks+", "bench_throughput.EpochClock",
    ]  # fmt: skip
    if not logger:
        argv += ["--trainer.logger", "false"]
    if compile_:
        argv += ["--model.compile", compile_]
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        start = time.perf_counter()
        try:
            cli_main(argv)
        except SystemExit as exit_:
            if exit_.code:
                raise
        finally:
            end = time.perf_counter()
            os.chdir(cwd)
    starts = clock.starts
    epoch_times = [b - a for a, b in itertools.pairwise(starts)]
    epoch_times.append(clock.last_end - starts[-1])
    return {
        "setup_s": starts[0] - start,
        "s_per_epoch": statistics.median(epoch_times[1:]),
        "epoch_s": epoch_times,
        "end_s": end - clock.last_end,
        "wall_s": end - start,
    }


def run_reference(k: int, epochs: int, device: str, graphs: bool, data: MNIST1DDataModule) -> dict:
    x, y = (t.to(device) for t in data.splits["train"])
    xv, yv = (t.to(device) for t in data.splits["val"])
    ref = ReferencePopulation(k, x, y, xv, yv, graphs=graphs)
    times = seconds_per_epoch(ref, epochs)
    return {"s_per_epoch": statistics.median(times), "epoch_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (one more untimed)")
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--graphs", action="store_true", help="the reference as a CUDA graph")
    parser.add_argument("--no-logger", action="store_true", help="the command without loggers")
    parser.add_argument("--compile", help="the command with --model.compile MODE (true, ...)")
    parser.add_argument("--out", type=Path, default=Path("perf/results/throughput.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    keep_large_blocks()  # as the CLI's process does, so both sides allocate alike
    device = "cuda" if args.accelerator in ("cuda", "gpu") or (
        args.accelerator == "auto" and torch.cuda.is_available()) else "cpu"  # fmt: skip
    data = MNIST1DDataModule()
    data.prepare_data()
    data.setup()
    rows = []
    print(f"{'K':>6} {'set-up s':>9} {'end s':>6} {'s/epoch':>8} {'ref s/epoch':>11} "
          f"{'ratio':>6} {'member-steps/s':>15} {'ref member-steps/s':>19}")  # fmt: skip
    for k in args.members:
        ref = run_reference(k, args.epochs, device, args.graphs, data)
        cmd = run_command(k, args.epochs, args.accelerator, not args.no_logger, args.compile)
        row = {"members": k, "command": cmd, "reference": ref,
               "ratio": cmd["s_per_epoch"] / ref["s_per_epoch"],
               "member_steps_s": k * STEPS_PER_EPOCH / cmd["s_per_epoch"],
               "reference_member_steps_s": k * STEPS_PER_EPOCH / ref["s_per_epoch"]}  # fmt: skip
        rows.append(row)
        print(f"{k:>6} {cmd['setup_s']:9.2f} {cmd['end_s']:6.2f} {cmd['s_per_epoch']:8.3f} "
              f"{ref['s_per_epoch']:11.3f} {row['ratio']:6.2f} {row['member_steps_s']:15,.0f} "
              f"{row['reference_member_steps_s']:19,.0f}", flush=True)  # fmt: skip
    write_json(args.out, {
        "machine": machine_info(torch_threads=torch.get_num_threads(), device=device,
                                gpu=torch.cuda.get_device_name() if device == "cuda" else None),
        "accelerator": args.accelerator, "graphs": args.graphs, "logger": not args.no_logger,
        "compile": args.compile,
        "epochs": args.epochs, "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
