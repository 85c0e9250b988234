"""Time one training step: a bare PyTorch loop, textbook Lightning, and lightning_opt's ``fit``.

    python perf/bench_fit.py [--epochs 10] [--repeats 3] [--out perf/results/fit.json]
    python perf/bench_fit.py --net cnn --arms adam      # any net: mlp (default), cnn, gru, ...

All train the seed-1 net (``--net``; the MLP 40 -> 100 -> 10 by default, batch 100) on the same 3,200 mnist1d training
examples with the same optimizer, in this one process, repetitions interleaved. "ours" is the
default ``fit`` (one minibatch per Lightning batch, Lightning's contract); "chunked" is the same
with ``--data.steps_per_chunk=0`` (a whole epoch per Lightning batch, the opt-in fast path). Each reports the
training time per optimizer step (``on_train_start`` to ``on_train_end`` for the Lightning
variants, so start-up is excluded; validation once per epoch is included for all three) and the
medians and ratios to the bare loop are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import machine_info, write_json
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_opt.cli.main import cli_main
from lightning_opt.clipping.callbacks import WeightNormClipping
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import build_net, resolve_net
from lightning_opt.optim.registry import resolve_optimizer

ARMS = {  # name -> (optimizer, fit arguments for the clipping callback)
    "adam": ("adam", []),
    "gnw": ("gnw", []),
    "adam+wnclip": (
        "adam",
        [
            "--trainer.callbacks=lightning_opt.callbacks.WeightNormClipping",
            "--trainer.callbacks.clip_factor=0.1",
        ],
    ),
}


def _splits(cache: str, **data_args) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    data = MNIST1DDataModule(cache_dir=cache, **data_args)
    data.setup()
    return data.splits


def _build_optimizer(name: str, params) -> torch.optim.Optimizer:
    cls, config = resolve_optimizer(name)
    return cls(params, **config["init_args"])


def make_net(name: str) -> torch.nn.Module:
    cls, config = resolve_net(name)
    return build_net(cls, config["init_args"], 40, 10)


def bare_loop(splits, optimizer: str, clip: bool, epochs: int, net_name: str = "mlp") -> float:
    """Seconds per step of a plain PyTorch loop (with per-epoch validation)."""
    torch.manual_seed(0)
    x, y = splits["train"]
    xv, yv = splits["val"]
    net = make_net(net_name)
    opt = _build_optimizer(optimizer, net.parameters())
    clipper = WeightNormClipping(0.1) if clip else None
    steps = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(100):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if clipper is not None:
                clipper.clip_(list(net.parameters()), 0)
            opt.step()
            steps += 1
        with torch.no_grad():
            F.cross_entropy(net(xv), yv)
    return (time.perf_counter() - start) / steps


class _StepTimer(Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.per_step = (time.perf_counter() - self.start) / trainer.global_step


class _Textbook(LightningModule):
    """The tutorial version: DataLoader(TensorDataset), self.log every step."""

    def __init__(self, optimizer: str, splits, net: str = "mlp"):
        super().__init__()
        self.net, self.optimizer_name, self.splits = make_net(net), optimizer, splits

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return _build_optimizer(self.optimizer_name, self.parameters())

    def train_dataloader(self):
        return DataLoader(TensorDataset(*self.splits["train"]), batch_size=100, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.splits["val"]), batch_size=800)


def textbook_lightning(
    splits, optimizer: str, clip: bool, epochs: int, logs: str, net: str = "mlp"
) -> float:
    torch.manual_seed(0)
    timer = _StepTimer()
    callbacks = [timer] + ([WeightNormClipping(0.1)] if clip else [])
    trainer = Trainer(
        max_epochs=epochs, default_root_dir=logs, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_Textbook(optimizer, splits, net))
    return timer.per_step


def lightning_opt_fit(
    optimizer: str, extra: list[str], epochs: int, cache: str, logs: str
) -> float:
    """The CLI's own ``fit`` path, with all of its standard logging on."""
    timer = _StepTimer()
    import lightning_opt.cli.main as cli

    original = cli.LightningOptCLI.instantiate_trainer

    def with_timer(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(timer)
        return trainer

    cli.LightningOptCLI.instantiate_trainer = with_timer
    try:
        cli_main([
            "fit", f"--optimizer={optimizer}", f"--trainer.max_epochs={epochs}",
            f"--data.cache_dir={cache}", f"--trainer.logger.init_args.save_dir={logs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            *extra,
        ])  # fmt: skip
    finally:
        cli.LightningOptCLI.instantiate_trainer = original
    return timer.per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/fit.json"))
    parser.add_argument("--net", default="mlp", help="a short name or class path (mlp, cnn, gru)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        splits = _splits(tmp)
        times: dict[str, dict[str, list[float]]] = {
            arm: {"bare": [], "textbook": [], "lightning_opt": [], "chunked": []}
            for arm in args.arms
        }
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            for arm in args.arms:
                optimizer, extra = ARMS[arm]
                extra = [*extra, f"--model.net={args.net}"]
                clip = len(extra) > 1
                times[arm]["bare"].append(bare_loop(splits, optimizer, clip, args.epochs, args.net))
                times[arm]["textbook"].append(
                    textbook_lightning(splits, optimizer, clip, args.epochs, tmp, args.net)
                )
                times[arm]["lightning_opt"].append(
                    lightning_opt_fit(optimizer, extra, args.epochs, tmp, tmp)
                )
                times[arm]["chunked"].append(  # the opt-in: a whole epoch per Lightning batch
                    lightning_opt_fit(
                        optimizer, [*extra, "--data.steps_per_chunk=0"], args.epochs, tmp, tmp
                    )
                )
    rows = []
    print(
        f"{'arm':<12} {'bare ms':>8} {'textbook ms':>12} {'ours ms':>8} {'chunked ms':>11} "
        f"{'b/a':>6} {'c/a':>6} {'d/a':>6}"
    )
    for arm, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {
            "arm": arm,
            **{f"{k}_ms_per_step": 1e3 * v for k, v in med.items()},
            "textbook_over_bare": med["textbook"] / med["bare"],
            "ours_over_bare": med["lightning_opt"] / med["bare"],
            "chunked_over_bare": med["chunked"] / med["bare"],
            "samples_ms": {k: [1e3 * x for x in v] for k, v in t.items()},
        }
        rows.append(row)
        print(
            f"{arm:<12} {1e3 * med['bare']:8.3f} {1e3 * med['textbook']:12.3f} "
            f"{1e3 * med['lightning_opt']:8.3f} {1e3 * med['chunked']:11.3f} "
            f"{row['textbook_over_bare']:6.2f} {row['ours_over_bare']:6.2f} "
            f"{row['chunked_over_bare']:6.2f}"
        )
    machine = machine_info(torch_threads=torch.get_num_threads())
    write_json(args.out, {"machine": machine, "epochs": args.epochs, "net": args.net, "rows": rows})


if __name__ == "__main__":
    main()
