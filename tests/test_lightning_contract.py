"""The Lightning contract, through the CLI: one Lightning batch is one optimizer step, so every
Trainer setting that counts batches counts steps; any logger (or several) works; every scalar
is on Lightning's x-axis; bad callback and logger values are one line; a population member logs
what the single fit with its seed logs.

With ``--data.num_samples=500`` the fit split is about 320 examples (319: the validation split
is rounded per class): at ``--data.batch_size=50`` an epoch is 7 optimizer steps, 6 of 50
examples and a last, smaller one.
"""

import csv
import re
from pathlib import Path

import pytest
import yaml
from conftest import MNIST1D, TINY_SAMPLES, read_scalars, version_dirs
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_opt.cli.main import cli_main
from lightning_opt.data import MNIST1DDataModule

STEPS_PER_EPOCH = 7  # ceil(319 / 50)
CLIP = [
    "--trainer.callbacks+=lightning_opt.callbacks.WeightNormClipping",
    "--trainer.callbacks.clip_factor=0.1",
]
COUNTER = "--trainer.callbacks+=test_lightning_contract.Counter"

#: What ``Counter`` saw in the current test (reset before each test).
EVENTS: list[tuple] = []


def _shapes(batch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    x, y = batch if isinstance(batch, (tuple, list)) else (batch.x, batch.y)  # or a chunk
    return tuple(x.shape), tuple(y.shape)


class Counter(Callback):
    """Records each training batch it is handed, each validation run and the final step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        EVENTS.append(("start", trainer.current_epoch, batch_idx, trainer.global_step,
                       *_shapes(batch), id(batch)))  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        EVENTS.append(("end", trainer.current_epoch, batch_idx, trainer.global_step,
                       *_shapes(batch), id(batch)))  # fmt: skip

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            EVENTS.append(("val", trainer.current_epoch, trainer.global_step))

    def on_fit_end(self, trainer, pl_module):
        EVENTS.append(("fit_end", trainer.global_step))


@pytest.fixture(autouse=True)
def _fresh_events():
    EVENTS.clear()
    yield
    EVENTS.clear()


def _events(kind):
    return [e[1:] for e in EVENTS if e[0] == kind]


def _final_step():
    (step,) = [e[0] for e in _events("fit_end")]
    return step


@pytest.fixture
def base_args(data_cache):
    """A run of seconds with no logger setting of its own (``tiny_fit_args`` less its save_dir)."""
    return [
        f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=50",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


# --- 1. one Lightning batch is one minibatch -----------------------------------------------------


def test_steps_per_chunk_defaults_to_null(base_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *base_args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["steps_per_chunk"] is None


def _train_size(data_cache: Path) -> int:
    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache))
    data.setup()
    return len(data.splits["train"][1])


def test_each_batch_hook_gets_one_minibatch_and_takes_one_step(tiny_fit_args, data_cache):
    n_train = _train_size(data_cache)
    assert -(-n_train // 50) == STEPS_PER_EPOCH
    sizes = [50] * (STEPS_PER_EPOCH - 1) + [n_train - 50 * (STEPS_PER_EPOCH - 1)]
    cli_main(["fit", *tiny_fit_args, COUNTER])
    starts, ends = _events("start"), _events("end")
    assert len(starts) == len(ends) == 2 * STEPS_PER_EPOCH
    for epoch in range(2):
        mine = [s for s in starts if s[0] == epoch]
        assert [s[1] for s in mine] == list(range(STEPS_PER_EPOCH))  # batch_idx
        assert [s[3] for s in mine] == [(n, 40) for n in sizes]  # x: the minibatch
        assert [s[4] for s in mine] == [(n,) for n in sizes]  # y
    # the step counter moves by exactly one per batch: before it k, after it k + 1
    assert [s[2] for s in starts] == list(range(2 * STEPS_PER_EPOCH))
    assert [e[2] for e in ends] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # the end hook gets the very batch (object) the start hook got
    assert [e[:2] + e[3:] for e in ends] == [s[:2] + s[3:] for s in starts]
    assert _final_step() == 2 * STEPS_PER_EPOCH


def test_max_steps_counts_optimizer_steps(tiny_fit_args):
    cli_main(["fit", *tiny_fit_args, COUNTER, "--trainer.max_steps=5"])
    assert _final_step() == 5
    assert len(_events("start")) == 5
    assert [s[3] for s in _events("start")] == [(50, 40)] * 5


@pytest.mark.parametrize("limit", ["3", "0.5"])
def test_limit_train_batches_counts_optimizer_steps(tiny_fit_args, limit):
    cli_main(["fit", *tiny_fit_args, COUNTER, f"--trainer.limit_train_batches={limit}"])
    per_epoch = 3  # 3, or int(0.5 * 7)
    starts = _events("start")
    assert [(s[0], s[1]) for s in starts] == [(e, b) for e in range(2) for b in range(per_epoch)]
    assert [s[3] for s in starts] == [(50, 40)] * 2 * per_epoch
    assert _final_step() == 2 * per_epoch


def test_fast_dev_run_takes_exactly_one_step(tiny_fit_args):
    cli_main(["fit", *tiny_fit_args, COUNTER, "--trainer.fast_dev_run=true"])
    (start,) = _events("start")
    (end,) = _events("end")
    assert start[3] == end[3] == (50, 40)
    assert _final_step() == 1


def test_val_check_interval_validates_mid_epoch(tiny_fit_args):
    cli_main(["fit", *tiny_fit_args, COUNTER, "--trainer.val_check_interval=3"])
    # (epoch, global_step): after the 3rd and the 6th optimizer step of each 7-step epoch
    assert _events("val") == [(0, 3), (0, 6), (1, 10), (1, 13)]


def test_check_val_every_n_epoch_validates_only_every_second_epoch(tiny_fit_args):
    args = [a for a in tiny_fit_args if not a.startswith("--trainer.max_epochs")]
    cli_main(
        ["fit", *args, COUNTER, "--trainer.max_epochs=4", "--trainer.check_val_every_n_epoch=2"]
    )
    assert _events("val") == [(1, 2 * STEPS_PER_EPOCH), (3, 4 * STEPS_PER_EPOCH)]


# --- 2. loggers ------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_hparams(hparams: dict) -> None:
    """Resolved values: the seed, the optimizer's learning rate (not null), sequences flattened."""
    assert hparams["seed"] == 0, sorted(hparams)
    assert isinstance(hparams["optimizer/lr"], float) and hparams["optimizer/lr"] > 0
    assert hparams["optimizer/betas.0"] == pytest.approx(0.9)
    assert hparams["optimizer/betas.1"] == pytest.approx(0.999)


def _no_instantiator(hparams) -> None:
    assert not [k for k in hparams if "_instantiator" in str(k)], sorted(hparams)


def test_csv_logger_gets_the_metrics_and_resolved_hparams(base_args, tmp_path):
    save_dir = tmp_path / "csv"
    cli_main(["fit", *base_args, "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.save_dir={save_dir}"])  # fmt: skip
    (run,) = version_dirs(save_dir)
    rows = _csv_rows(run / "metrics.csv")
    columns = set(rows[0])
    assert {"train/loss", "val/loss", "hp/val_loss", "hp/val_acc", "hp/best_val_loss"} <= columns
    assert len([r for r in rows if r["val/loss"]]) == 2  # one per epoch
    assert len([r for r in rows if r["hp/val_loss"]]) == 1
    text = (run / "hparams.yaml").read_text()
    # every learning rate the file holds (flat `optimizer/lr`, nested `lr`) is a number
    lr_lines = re.findall(r"^\s*(?:optimizer/)?lr:.*$", text, flags=re.MULTILINE)
    assert lr_lines and not [line for line in lr_lines if "null" in line], lr_lines
    _check_hparams(yaml.safe_load(text))


def test_several_loggers_at_once(base_args, tmp_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    config = tmp_path / "loggers.yaml"
    loggers = [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(d1), "name": "tb"}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(d2), "name": "csv"}},
    ]  # fmt: skip
    config.write_text(yaml.safe_dump({"trainer": {"logger": loggers}}))
    cli_main(["fit", f"--config={config}", *base_args])
    (tb,) = version_dirs(d1 / "tb")
    scalars = read_scalars(tb)
    assert {"train/loss", "val/loss", "val/acc", "optim/lr", "hp/val_loss"} <= set(scalars)
    (run,) = version_dirs(d2 / "csv")
    rows = _csv_rows(run / "metrics.csv")
    assert {"train/loss", "val/loss", "optim/lr", "hp/val_loss"} <= set(rows[0])
    _check_hparams(yaml.safe_load((run / "hparams.yaml").read_text()))


def _epoch_ends(epochs: int) -> list[int]:
    return [(e + 1) * STEPS_PER_EPOCH - 1 for e in range(epochs)]


def test_every_tensorboard_scalar_is_at_each_epochs_last_step(tiny_fit_args, tmp_path):
    cli_main(["fit", *tiny_fit_args, *CLIP])
    (run,) = version_dirs(tmp_path / "logs")
    scalars = read_scalars(run)
    for tag in ("train/loss", "val/loss", "val/acc", "optim/lr", "optim/grad_norm_before_clip",
                "weight_norm/0.weight", "clip/fraction_clipped", "hp/val_loss"):  # fmt: skip
        assert tag in scalars, sorted(scalars)
    assert _epoch_ends(2) == [6, 13]  # global_step - 1 at each epoch's end
    steps = {tag: [s for s, _ in points] for tag, points in scalars.items()}
    # Lightning's own `epoch` goes with each self.log call (training and validation): twice
    assert sorted(set(steps.pop("epoch", _epoch_ends(2)))) == _epoch_ends(2)
    assert {t: s for t, s in steps.items() if not t.startswith("hp/")} == {
        t: _epoch_ends(2) for t in steps if not t.startswith("hp/")
    }


def _tensorboard_hparams(run: Path) -> set[str]:
    """The keys of the run's HPARAMS entry (the event file's hparams plugin)."""
    acc = EventAccumulator(str(run))
    acc.Reload()
    keys = set()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        keys |= set(data.session_start_info.hparams)
    return keys


def test_tensorboard_hparams_entry_is_flat_resolved_and_seeded(tiny_fit_args, tmp_path):
    cli_main(["fit", *tiny_fit_args])
    (run,) = version_dirs(tmp_path / "logs")
    keys = _tensorboard_hparams(run)
    assert keys, "no HPARAMS entry"
    _no_instantiator(keys)
    assert {"seed", "optimizer", "optimizer/lr", "optimizer/betas.0", "optimizer/betas.1"} <= keys


def test_tensorboard_hparams_yaml_is_flat_resolved_and_seeded(tiny_fit_args, tmp_path):
    cli_main(["fit", *tiny_fit_args])
    (run,) = version_dirs(tmp_path / "logs")
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    _check_hparams(hparams)
    _no_instantiator(hparams)


def test_csv_hparams_yaml_has_no_instantiator(base_args, tmp_path):
    save_dir = tmp_path / "csv"
    cli_main(["fit", *base_args, "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.save_dir={save_dir}"])  # fmt: skip
    (run,) = version_dirs(save_dir)
    _no_instantiator(yaml.safe_load((run / "hparams.yaml").read_text()))


# --- 3. default_root_dir ---------------------------------------------------------------------------


def test_default_root_dir_holds_the_logs_and_the_checkpoint(base_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    cli_main(["fit", *base_args, "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}"])
    run = root / "lightning_logs" / "adam" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "hparams.yaml").exists()
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing outside ROOT


# --- 4. bad callback and logger values --------------------------------------------------------------

BAD_VALUES = [
    (
        ["--trainer.callbacks=lightning_opt.callbacks.WeightNormClipping",
         "--trainer.callbacks.clip_factor=abc"],
        "clip_factor: expected float, got abc",
    ),
    (
        ["--trainer.callbacks=lightning_opt.callbacks.FixedNormClipping",
         "--trainer.callbacks.clip_value=1", "--trainer.callbacks.mode=bogus"],
        "mode: expected Literal['per_tensor', 'global'], got bogus",
    ),
    (
        ["--trainer.logger=lightning.pytorch.loggers.CSVLogger",
         "--trainer.logger.flush_logs_every_n_steps=x"],
        "flush_logs_every_n_steps: expected int, got x",
    ),
    (["--optimizer.lr=abc"], "lr: expected float, got abc"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES]
)
def test_bad_value_is_one_line_exit_2(args, message, base_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *base_args, *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lightning_opt: error: ")
    assert message in lines[0]
    assert not list(tmp_path.iterdir())  # nothing ran


# --- 5. a population under the same default ------------------------------------------------------


def test_population_member_logs_what_its_single_fit_logs(tiny_fit_args, tmp_path):
    cli_main(["fit", *tiny_fit_args, "--seeds=[0, 1]"])
    (population,) = version_dirs(tmp_path / "logs")
    cli_main(["fit", *tiny_fit_args, "--seed_everything=0"])
    single = read_scalars(version_dirs(tmp_path / "logs")[-1])
    member = read_scalars(population / "seed_0")
    assert member.keys() == single.keys()
    for tag, points in single.items():
        assert [s for s, _ in member[tag]] == [s for s, _ in points], tag
        values = [v for _, v in member[tag]]
        assert values == pytest.approx([v for _, v in points], rel=1e-4), tag
    assert single["val/loss"][-1][0] == _epoch_ends(2)[-1]
    other = read_scalars(population / "seed_1")
    assert {t: [s for s, _ in p] for t, p in other.items()} == {
        t: [s for s, _ in p] for t, p in member.items()
    }


# --- the fast path tune and compare take where it is invisible ---------------------------------


def _run_with_chunks(chunk, data_cache, log_dir, population: bool = False):
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_opt.clipping.callbacks import WeightNormClipping
    from lightning_opt.data import MNIST1DDataModule
    from lightning_opt.population import PopulationClassifier
    from lightning_opt.training.classifier import MNIST1DClassifier

    seed_everything(0, verbose=False)
    data = MNIST1DDataModule(
        num_samples=500, batch_size=50, steps_per_chunk=chunk, cache_dir=str(data_cache)
    )
    logger = TensorBoardLogger(str(log_dir), name="run", version="")
    if population:
        model = PopulationClassifier([0, 1], **MNIST1D, optimizer="gnw")
        other = TensorBoardLogger(str(log_dir), name="member_1", version="")
        model.member_loggers = [logger, other]  # member 0's run, as fit --seeds writes it
        logger = False
    else:
        model = MNIST1DClassifier(**MNIST1D, optimizer="gnw")
    trainer = Trainer(
        max_epochs=3, logger=logger, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[WeightNormClipping(0.05)],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    params = [p.detach().clone() for p in model.parameters()]
    return params, read_scalars(log_dir / "run"), trainer.global_step


@pytest.mark.parametrize("population", [False, True], ids=["single", "population"])
def test_chunked_batches_are_bit_identical_to_one_minibatch_per_batch(
    population, data_cache, tmp_path
):
    """The fast path tune and compare use where nothing can observe it (runs.
    chunk_where_invisible): whole epochs per Lightning batch give the same parameters,
    global_step, and every logged scalar (tag, step and value) to the bit."""
    import torch

    plain = _run_with_chunks(None, data_cache, tmp_path / "plain", population)
    for chunk in (0, 3):
        chunked = _run_with_chunks(chunk, data_cache, tmp_path / f"chunk{chunk}", population)
        assert all(torch.equal(a, b) for a, b in zip(plain[0], chunked[0], strict=True))
        assert chunked[2] == plain[2] == 21
        assert chunked[1] == plain[1]  # {tag: [(step, value), ...]} equal, bit for bit


def test_tune_chunks_only_where_nothing_can_see_it(tmp_path):
    from lightning_opt.data import MNIST1DDataModule
    from lightning_opt.runs import build as runs
    from lightning_opt.tuning.tune import parse

    def decided(*args):
        config = parse([*args, f"--output_dir={tmp_path}"]).config
        data = MNIST1DDataModule(**config.data.as_dict())
        invisible = runs.chunk_where_invisible(config, data)
        return invisible, data._steps_per_chunk()  # what the training loader uses

    assert decided() == (True, 0)
    assert decided("--trainer.max_steps=5") == (False, None)
    assert decided("--trainer.limit_train_batches=3") == (False, None)
    assert decided("--trainer.val_check_interval=3") == (False, None)
    assert decided("--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor") == (
        False,
        None,
    )
    # A callback whose hooks are per epoch cannot tell; one with a per-step hook can.
    stop = ["--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
            "--trainer.callbacks.monitor=val/loss"]  # fmt: skip
    assert decided(*stop) == (True, 0)
    assert decided("--trainer.callbacks+=lightning.pytorch.callbacks.Timer") == (False, None)
    assert decided("--data.steps_per_chunk=2") == (False, 2)  # the user's own choice stands
    clip = ["--trainer.callbacks+=lightning_opt.callbacks.WeightNormClipping",
            "--trainer.callbacks.clip_factor=0.1"]  # fmt: skip
    assert decided(*clip) == (True, 0)  # clipping rules step per minibatch either way
