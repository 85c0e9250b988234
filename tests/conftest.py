"""Shared fixtures: one small cached mnist1d per session, and helpers to read TensorBoard logs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TINY_SAMPLES = 500  # 400 train (320 fit + 80 validation) and 100 test examples
#: The default data's signal length and class count, which the command line links into a model.
MNIST1D = {"input_size": 40, "num_classes": 10}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, restored after: tiny matrices run faster on one on a busy 2-core
    machine, and the thread count changes a float32 run in its last bits (docs/perf.md,
    "Threads"), so runs compared bit for bit use the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests drive the CLI with ``cli_main(args)``; pytest's own argv must not leak into it."""
    monkeypatch.setattr("sys.argv", ["lightning_opt"])


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the session, so tiny datasets are generated once."""
    return tmp_path_factory.mktemp("mnist1d-cache")


@pytest.fixture
def tiny_fit_args(data_cache: Path, tmp_path: Path) -> list[str]:
    """CLI arguments for a run of seconds that logs under ``tmp_path``."""
    return [
        f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=50",
        "--trainer.max_epochs=2",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under ``log_dir``: ``{tag: [(step, value), ...]}``."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def version_dirs(logs: Path) -> list[Path]:
    """The ``version_N`` directories under ``logs``, in creation order."""
    return sorted(logs.rglob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def tune_args(tmp_path: Path, data_cache: Path) -> list[str]:
    """``tune``/``compare`` arguments for a tiny study (2 epochs, no pruning) under ``tmp_path/out``."""
    return [
        f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=50",
        "--trainer.max_epochs=2",
        "--pruner=none",
        f"--output_dir={tmp_path / 'out'}",
    ]


def quiet_trainer(epochs: int, precision: str = "64-true", callbacks=()):
    """A Trainer with nothing but the fit itself: no logger, checkpoint, bar or sanity check."""
    from lightning.pytorch import Trainer

    return Trainer(
        max_epochs=epochs,
        precision=precision,
        callbacks=list(callbacks or []),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def install_entry_point(monkeypatch, tmp_path: Path, registry_module, group: str, line: str):
    """A distribution in ``tmp_path`` declaring ``line`` (``name = module:Class``) in the entry-
    point ``group``, and ``registry_module``'s registry fresh (built-ins kept, plugins unread)."""
    import copy

    name = line.split("=")[0].strip()
    dist = tmp_path / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{line}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = copy.copy(registry_module._REGISTRY)
    fresh._entries, fresh._plugins_loaded = dict(fresh._entries), False
    monkeypatch.setattr(registry_module, "_REGISTRY", fresh)


def tiny_data(data_cache: Path) -> Any:
    """The tiny mnist1d (``TINY_SAMPLES``, batches of 50), generated into ``data_cache``."""
    from lightning_opt.data import MNIST1DDataModule

    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, batch_size=50, cache_dir=str(data_cache))
    data.prepare_data()
    return data


class RecordBatches(Callback):
    """Every minibatch a fit trained on, in order (a population's ``MiniBatches`` unpacked)."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lightning_opt.data import MiniBatches

        self.seen.extend(batch if isinstance(batch, MiniBatches) else [batch])
