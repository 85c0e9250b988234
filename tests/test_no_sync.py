"""No host sync in a population's step loop: loss finiteness, clip statistics, effective step
sizes and metrics stay on the device during the training steps and are read once an epoch.

On CPU every way a tensor's value reaches Python (``item``, ``tolist``, ``bool``, ``float``,
``int``, ``numpy``) is counted while Lightning runs the training batches of a population of each
built-in stacked path (every net, every stacked optimizer, every clipping rule); at the epoch's
end reads are allowed, and the counter proves it counts them. On a GPU, the same populations run
their steps under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import MNIST1D, one_thread
from lightning.pytorch import Callback, Trainer

from lightning_opt.clipping.callbacks import FixedNormClipping, WeightNormClipping
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.population import PopulationClassifier

pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")
STACKED_PATHS = [
    ("adam", "mlp", None), ("adamw", "mlp", None), ("sgd", "mlp", None), ("gnw", "mlp", None),
    ("adam", "cnn", None), ("adam", "gru", None),
    ("adam", "mlp", "weight_norm"), ("gnw", "mlp", "fixed"),
]  # fmt: skip
RULES = {
    "weight_norm": lambda: WeightNormClipping(clip_factor=0.1),
    "fixed": lambda: FixedNormClipping(clip_value=1.0),
}


class StepWindow(Callback):
    """Open from each training batch's start to its end: the step loop."""

    def __init__(self) -> None:
        self.open = False

    def on_train_batch_start(self, *args: object) -> None:
        self.open = True

    def on_train_batch_end(self, *args: object) -> None:
        self.open = False


@contextmanager
def counted_reads(window: StepWindow) -> Iterator[collections.Counter]:
    """Count each read of a tensor's value while ``window`` is open (and, as "outside", after)."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name: str):
        original = originals[name]

        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            counts[name if window.open else "outside"] += 1
            return original(self, *args, **kwargs)

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, counting(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _fit(data: MNIST1DDataModule, optimizer: str, net: str, rule: str | None,
         callbacks: list[Callback], accelerator: str = "cpu") -> None:  # fmt: skip
    rules = [RULES[rule]()] if rule else []
    model = PopulationClassifier([0, 1, 2], **MNIST1D, optimizer=optimizer, net=net)
    Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator=accelerator,
        devices=1, limit_train_batches=3, callbacks=[*rules, *callbacks],
    ).fit(model, datamodule=data)  # fmt: skip


@pytest.fixture
def data(data_cache: Path) -> MNIST1DDataModule:
    return MNIST1DDataModule(num_samples=1000, cache_dir=str(data_cache))


@pytest.mark.parametrize(("optimizer", "net", "rule"), STACKED_PATHS)
def test_no_value_is_read_during_the_steps(data, optimizer: str, net: str, rule: str | None):
    window = StepWindow()
    with one_thread(), counted_reads(window) as counts:
        _fit(data, optimizer, net, rule, [window])
    reads_in_steps = {name: n for name, n in counts.items() if name != "outside"}
    assert reads_in_steps == {}
    assert counts["outside"] > 0  # the counter sees the epoch end's reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("optimizer", "net", "rule"), STACKED_PATHS)
def test_no_sync_during_the_steps_on_a_gpu(data, optimizer: str, net: str, rule: str | None):
    class SyncErrors(StepWindow):
        def on_train_batch_start(self, *args: object) -> None:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, *args: object) -> None:
            torch.cuda.set_sync_debug_mode("default")

    try:
        _fit(data, optimizer, net, rule, [SyncErrors()], accelerator="gpu")
    finally:
        torch.cuda.set_sync_debug_mode("default")
