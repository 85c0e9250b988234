"""Where an epoch of ``fit`` goes: the training steps, validation, checkpoint, logging, the rest.

    python perf/bench_fit_parts.py [--epochs 100] [--repeats 3] [--optimizer adam]
                                         [--num_samples 5000]
                                         [--out perf/results/fit_parts.json]

Runs ``python -m lightning_opt fit`` (in this process, through ``cli_main``, all standard logging
on, progress bar off) after one untimed warm-up fit, with wall-clock accumulators wrapped around
the Lightning and lightning_opt functions below, and reports each as ms per epoch and per step
(median over ``--repeats`` fits). The parts nest, as the indentation of the table shows; "loop
machinery" is the fit loop minus its timed parts (batch fetching, hooks, progress tracking). The
bare PyTorch loop of ``bench_fit.py`` (training plus one validation pass per epoch) is timed in
the same process for reference. The wrappers cost a few microseconds per call, a few per epoch.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from _report import machine_info, write_json
from bench_fit import _splits, bare_loop
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.module import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

import lightning_opt.training.classifier as model
from lightning_opt.cli.main import cli_main

# (label, class, method, depth): depth is the nesting shown in the table; -1: calls made inside
# several of the depth-1 parts, shown separately.
PARTS = [
    ("fit loop (all epochs)", _FitLoop, "run", 0),
    ("training steps (_train_chunk)", model.MinibatchTraining, "_train_chunk", 1),
    ("validation loop", _EvaluationLoop, "run", 1),
    ("checkpoint (ModelCheckpoint)", ModelCheckpoint, "_save_checkpoint", 1),
    ("collect state (dump_checkpoint)", _CheckpointConnector, "dump_checkpoint", 2),
    ("torch.save + file write", TorchCheckpointIO, "save_checkpoint", 2),
    ("epoch-end internals (on_train_epoch_end)", model.MNIST1DClassifier, "on_train_epoch_end", 1),
    # Spread over the parts above (the validation step, the epoch end): not in their sum.
    ("LightningModule.log (all calls)", LightningModule, "log", -1),
    ("TensorBoardLogger.log_metrics (all calls)", TensorBoardLogger, "log_metrics", -1),
]


def _instrument(totals: dict[str, float]) -> None:
    for label, cls, name, _ in PARTS:
        original = getattr(cls, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - start

        setattr(cls, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--num_samples", type=int, default=5000, help="data.num_samples")
    parser.add_argument("--out", type=Path, default=Path("perf/results/fit_parts.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    totals: dict[str, float] = defaultdict(float)
    _instrument(totals)
    samples: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        splits = _splits(tmp, num_samples=args.num_samples)
        fit_args = [
            "fit", f"--optimizer={args.optimizer}", f"--data.cache_dir={tmp}",
            f"--data.num_samples={args.num_samples}",
            f"--trainer.logger.init_args.save_dir={tmp}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]  # fmt: skip
        cli_main([*fit_args, "--trainer.max_epochs=2"])  # warm-up
        for _ in range(args.repeats):
            totals.clear()
            cli_main([*fit_args, f"--trainer.max_epochs={args.epochs}"])
            for label, seconds in totals.items():
                samples[label].append(seconds / args.epochs)
            parts = sum(totals[label] for label, *_, depth in PARTS if depth == 1)
            samples["loop machinery (the rest)"].append(
                (totals["fit loop (all epochs)"] - parts) / args.epochs
            )
            bare = bare_loop(splits, args.optimizer, clip=False, epochs=args.epochs)
            samples["bare PyTorch loop (reference)"].append(bare * len(splits["train"][0]) / 100)
    steps = -(-len(splits["train"][0]) // 100)
    depths = {label: depth for label, *_, depth in PARTS}
    depths.update({"loop machinery (the rest)": 1, "bare PyTorch loop (reference)": 0})
    rows = []
    print(
        f"{args.optimizer}, {args.num_samples} samples, {args.epochs} epochs of {steps} steps, "
        f"median of {args.repeats}"
    )
    print(f"{'part':<50} {'ms/epoch':>9} {'ms/step':>8}")
    order = [label for label, *_ in PARTS]
    order.insert(order.index("LightningModule.log (all calls)"), "loop machinery (the rest)")
    for label in [*order, "bare PyTorch loop (reference)"]:
        per_epoch = 1e3 * statistics.median(samples[label])
        rows.append({"part": label, "depth": depths[label], "ms_per_epoch": per_epoch})
        indent = "  " * max(depths[label], 0)
        print(f"{indent + label:<50} {per_epoch:9.3f} {per_epoch / steps:8.4f}")
    machine = machine_info(torch_threads=torch.get_num_threads())
    write_json(
        args.out,
        {"machine": machine, "optimizer": args.optimizer, "epochs": args.epochs,
         "num_samples": args.num_samples,
         "steps_per_epoch": steps, "rows": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
