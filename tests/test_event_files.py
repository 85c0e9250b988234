"""The shared event-file writer: what ``MemberTensorBoardLogger`` writes is what Lightning's
``TensorBoardLogger`` writes (events, file names, ``hparams.yaml``), by one thread."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_scalars
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lightning_opt.core import event_files
from lightning_opt.core.event_files import MemberTensorBoardLogger, plain_yaml


def _events(log_dir: Path) -> list[list[tuple]]:
    """Each event file's events (in file-name order), without their wall times."""
    files = sorted(p for p in log_dir.iterdir() if p.name.startswith("events.out.tfevents."))
    out = []
    for path in files:
        events = []
        for event in EventFileLoader(str(path)).Load():
            event.ClearField("wall_time")
            events.append(event.SerializeToString(deterministic=True))
        out.append(events)
    return out


def _log_run(cls: type, save_dir: Path, prefix: str = "") -> TensorBoardLogger:
    logger = cls(save_dir=str(save_dir), name="run", version="v", default_hp_metric=False,
                 prefix=prefix)  # fmt: skip
    logger.log_hyperparams({"optimizer": "torch.optim.Adam", "lr": 1e-3, "seed": 3})
    logger.log_metrics({"train/loss": torch.tensor(2.5), "epoch": 0.0}, step=31)
    logger.log_metrics({"val/loss": 1.25, "val/acc": torch.tensor(0.5, dtype=torch.float64),
                        "epoch": 0}, step=32)  # fmt: skip
    logger.log_metrics({"val/loss": float("nan"), "inf": math.inf}, step=63)
    logger.log_hyperparams({"lr": 1e-3, "seed": 3}, {"hp/val_loss": 1.25})
    logger.experiment.add_histogram("w", torch.arange(4.0), 5)  # the SummaryWriter interface
    logger.finalize("success")
    logger.log_metrics({"test/loss": 3.0}, step=64)  # after finalize: a new event file
    logger.finalize("success")
    return logger


@pytest.mark.parametrize("prefix", ["", "member"])
def test_same_events_and_files_as_lightning(tmp_path: Path, prefix: str) -> None:
    ours = _log_run(MemberTensorBoardLogger, tmp_path / "ours", prefix)
    theirs = _log_run(TensorBoardLogger, tmp_path / "theirs", prefix)
    ours_dir, theirs_dir = Path(ours.log_dir), Path(theirs.log_dir)
    assert [len(f) for f in _events(ours_dir)] == [len(f) for f in _events(theirs_dir)] != []
    assert _events(ours_dir) == _events(theirs_dir)
    assert (ours_dir / "hparams.yaml").read_text() == (theirs_dir / "hparams.yaml").read_text()
    names = sorted(p.name.rsplit(".", 1)[0][:20] for p in ours_dir.glob("events.out.*"))
    assert names == sorted(p.name.rsplit(".", 1)[0][:20] for p in theirs_dir.glob("events.out.*"))


def test_plain_yaml_is_lightnings_text(tmp_path: Path) -> None:
    hparams = {
        "optimizer": "torch.optim.Adam", "optimizer/lr": 0.000123456789, "optimizer/eps": 1e-8,
        "seed": 7, "data/shuffle_seed": None, "log_internals": True, "inf": math.inf,
        "nan": math.nan, "neg": -0.0, "big": 1e300, "text": "a: b # c 'd' \"e\" é\nnext",
        "net/hidden_sizes.0": 100, "long": "x" * 200, "empty": "", "yes": "yes", "zero": 0,
    }  # fmt: skip
    save_hparams_to_yaml(tmp_path / "h.yaml", hparams)
    assert plain_yaml(hparams) == (tmp_path / "h.yaml").read_text()
    assert plain_yaml({"nested": {"a": 1}}) is None  # Lightning's own path
    assert yaml.safe_load(plain_yaml(hparams))["seed"] == 7


def test_a_failed_write_is_raised_not_lost(tmp_path: Path, monkeypatch) -> None:
    logger = MemberTensorBoardLogger(save_dir=str(tmp_path), name="run", version="v")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.experiment.flush()

    def fail(data: bytes) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(event_files, "_record", fail)
    logger.log_metrics({"a": 2.0}, step=1)
    with pytest.raises(OSError, match=r"could not write TensorBoard events .*No space left"):
        logger.experiment.flush()


def test_one_thread_serves_every_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(event_files, "MAX_OPEN_FILES", 3)  # reopened to append beyond it
    before = threading.active_count()
    loggers = [MemberTensorBoardLogger(save_dir=str(tmp_path), name="m", version=str(i))
               for i in range(8)]  # fmt: skip
    for step in range(3):
        for i, logger in enumerate(loggers):
            logger.log_metrics({"loss": float(i * 10 + step)}, step=step)
    assert threading.active_count() <= before + 1
    for logger in loggers:
        logger.finalize("success")
        [events] = _events(Path(logger.log_dir))
        assert len(events) == 4  # file_version + 3 scalars, in order
    assert read_scalars(Path(loggers[5].log_dir))["loss"] == [(0, 50.0), (1, 51.0), (2, 52.0)]


def _log_in_child(save_dir: str) -> None:
    logger = MemberTensorBoardLogger(save_dir=save_dir, name="child", version="v")
    logger.log_metrics({"loss": 7.0}, step=3)
    logger.finalize("success")


def test_a_forked_child_writes_its_own_events(tmp_path: Path) -> None:
    """A process forked after the parent's writer thread started (tune's workers) starts its
    own thread instead of queueing to one that is not there."""
    import multiprocessing

    parent = MemberTensorBoardLogger(save_dir=str(tmp_path), name="parent", version="v")
    parent.log_metrics({"loss": 1.0}, step=0)  # the parent's thread is running
    child = multiprocessing.get_context("fork").Process(target=_log_in_child, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    parent.finalize("success")
    assert read_scalars(tmp_path / "child" / "v")["loss"] == [(3, 7.0)]
    assert read_scalars(tmp_path / "parent" / "v")["loss"] == [(0, 1.0)]


def test_runs_write_no_experiment_of_their_own_so_hparams_leads_with_what_varies(
    tmp_path: Path,
) -> None:
    """Lightning's log_hyperparams writes an experiment summary into every run; TensorBoard
    takes the first run's as the whole experiment's, in which nothing varies, and its HPARAMS
    table listed the constant settings first. A run now writes its session only (start, end),
    the metrics and hparams.yaml as Lightning does, and TensorBoard computes the experiment
    from all runs."""
    from tensorboard.plugins.hparams import metadata

    from lightning_opt.training.hparams import log_hyperparams

    for cls in (TensorBoardLogger, MemberTensorBoardLogger):
        for lr in (1e-3, 3e-3):
            logger = cls(save_dir=str(tmp_path / cls.__name__), name="study", version=f"lr={lr}",
                         default_hp_metric=False)  # fmt: skip
            log_hyperparams(logger, {"data/noise": 0.1, "optimizer/lr": lr}, {"hp/x": lr}, 7)
            logger.finalize("success")
            hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
            assert hparams == {"data/noise": 0.1, "optimizer/lr": lr}
            tags = [
                value.tag
                for path in Path(logger.log_dir).glob("events.out.tfevents.*")
                for event in EventFileLoader(str(path)).Load()
                for value in event.summary.value
            ]
            assert tags == ["hp/x", metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG]
            assert metadata.EXPERIMENT_TAG not in tags
            assert read_scalars(Path(logger.log_dir))["hp/x"] == [(7, pytest.approx(lr))]
