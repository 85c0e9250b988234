"""Runs and what they leave behind: LR schedulers (fit, resume, populations, tune), ``predict``'s
CSV, the checkpoints tune and compare keep (and replaying them), the default output layout, and
loggers and callbacks passing through tune and compare.

With ``--data.num_samples=500`` the fit split is 319 examples: at ``--data.batch_size=50`` an
epoch is 7 optimizer steps, and the epoch-level scalars sit at steps 6, 13, 20, ...
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import MNIST1D, TINY_SAMPLES, quiet_trainer, read_scalars, version_dirs
from conftest import tune_args as tiny_tune_args
from lightning.pytorch import Callback, Trainer, seed_everything
from optuna.trial import TrialState

from lightning_opt.cli.main import cli_main
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import MLP
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier
from lightning_opt.tuning.storage import open_storage

ADAM_LR = 0.00624  # adam's registered default learning rate
STEPS_PER_EPOCH = 7  # ceil(319 / 50)
NO_BAR = "--trainer.enable_progress_bar=false"
STEP_LR = "torch.optim.lr_scheduler.StepLR"
PLATEAU = "torch.optim.lr_scheduler.ReduceLROnPlateau"
HALVING = [
    "--lr_scheduler",
    STEP_LR,
    "--lr_scheduler.step_size",
    "1",
    "--lr_scheduler.gamma",
    "0.5",
]
TUNING_SCHEDULE = [
    "--lr_scheduler", STEP_LR, "--lr_scheduler.step_size", "1",
    "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}, "
    "{name: gamma, low: 0.1, high: 0.9}]",
]  # fmt: skip

#: What ``EpochCounter`` saw: (tag, the run's log directory) once per training epoch.
SEEN: list[tuple[str, Path]] = []


class EpochCounter(Callback):
    """Counts training epochs per run (by the run's log directory), under ``tag``."""

    def __init__(self, tag: str = "experiment") -> None:
        self.tag = tag

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        log_dir = trainer.logger.log_dir if trainer.logger else None
        SEEN.append((self.tag, Path(log_dir).resolve() if log_dir else None))


# -- helpers ---------------------------------------------------------------------------------


def _values(scalars: dict, tag: str) -> list[float]:
    return [v for _, v in scalars[tag]]


def _fit(args: list[str], logs: Path) -> Path:
    """``fit args``; its run directory (the newest ``version_N`` under ``logs``)."""
    cli_main(["fit", *args])
    return version_dirs(logs)[-1]


def _checkpoint(run: Path) -> Path:
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    return ckpt


def _without(args: list[str], prefix: str) -> list[str]:
    return [a for a in args if not a.startswith(prefix)]


def _data(data_cache: Path) -> MNIST1DDataModule:
    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache), batch_size=50)
    data.setup()
    return data


def _nets(checkpoint: Path) -> list[torch.nn.Module]:
    """The MLP(s) a checkpoint holds, rebuilt by hand: one, or one per population member."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    members = len(weights["0.weight"]) if weights["0.weight"].dim() == 3 else None
    nets = []
    for k in range(members or 1):
        net = MLP(40, 10, [100])
        net.load_state_dict({n: w[k] if members else w for n, w in weights.items()})
        nets.append(net.eval())
    return nets


@torch.no_grad()
def _loss(net: torch.nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = split
    return float(F.cross_entropy(net(x), y))


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _study(storage: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{storage}"))


def _one_line_exit_2(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def tune_args(data_cache, tmp_path, monkeypatch):
    """A tiny study writing to ``tmp_path/out``; best.yaml's runs log under ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    return tiny_tune_args(tmp_path, data_cache)


def _experiment(tmp_path: Path, data_cache: Path, **changes) -> Path:
    config = {
        "experiment": "tiny",
        "seeds": 2,
        "n_trials": 1,
        "tune_max_epochs": 1,
        "pruner": "none",
        "trainer": {"max_epochs": 2},
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 50},
        "arms": [{"name": "a", "optimizer": "adam"}],
        **changes,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- 1. LR schedulers in fit -------------------------------------------------------------------


def test_step_lr_halves_the_logged_lr_trains_as_plain_torch_and_replays(
    tiny_fit_args, tmp_path, data_cache
):
    args = [*_without(tiny_fit_args, "--trainer.max_epochs"), "--trainer.max_epochs=3"]
    run = _fit([*args, *HALVING], tmp_path / "logs")
    logged = read_scalars(run)
    assert [s for s, _ in logged["optim/lr"]] == [6, 13, 20]
    assert _values(logged, "optim/lr") == pytest.approx([ADAM_LR * 0.5**e for e in range(3)])

    # The same schedule in a plain PyTorch loop (seed 0: the data order of test_cli.py's loop).
    torch.manual_seed(0)
    net = MLP(40, 10, [100])
    data = _data(data_cache)
    (x, y), val = data.splits["train"], data.splits["val"]
    opt = torch.optim.Adam(net.parameters(), lr=ADAM_LR)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    losses = []
    for epoch in range(3):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(50):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(_loss(net, val))
        schedule.step()
    assert _values(logged, "val/loss") == pytest.approx(losses, rel=1e-5)

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["lr_scheduler"]["class_path"] == STEP_LR
    assert config["lr_scheduler"]["init_args"]["gamma"] == 0.5
    assert config["lr_scheduler"]["init_args"]["step_size"] == 1
    replay = read_scalars(_fit([f"--config={run / 'config.yaml'}"], tmp_path / "logs"))
    assert replay["val/loss"] == logged["val/loss"] and replay["optim/lr"] == logged["optim/lr"]


def test_step_interval_trains_exactly_as_the_epoch_interval(tiny_fit_args, tmp_path):
    """StepLR(step_size=7) stepped every optimizer step decays at the same steps as
    StepLR(step_size=1) stepped every epoch of 7 steps: the same training, number for number."""
    args = [*_without(tiny_fit_args, "--trainer.max_epochs"), "--trainer.max_epochs=3"]
    per_epoch = read_scalars(_fit([*args, *HALVING], tmp_path / "logs"))
    per_step = read_scalars(
        _fit(
            [*args, *HALVING, f"--lr_scheduler.step_size={STEPS_PER_EPOCH}",
             "--model.lr_interval=step"],
            tmp_path / "logs",
        )
    )  # fmt: skip
    assert [s for s, _ in per_step["val/loss"]] == [6, 13, 20]
    assert per_step["val/loss"] == per_epoch["val/loss"]
    assert per_step["train/loss"] == per_epoch["train/loss"]
    constant = read_scalars(_fit(args, tmp_path / "logs"))
    assert constant["val/loss"][-1] != per_step["val/loss"][-1]  # the schedule does act


def test_step_interval_logs_the_lr_each_epoch_trained_with(tiny_fit_args, tmp_path):
    args = [*_without(tiny_fit_args, "--trainer.max_epochs"), "--trainer.max_epochs=3"]
    monitor = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
        "--trainer.callbacks.logging_interval=step",
        "--trainer.log_every_n_steps=1",
    ]
    run = _fit(
        [*args, *HALVING, f"--lr_scheduler.step_size={STEPS_PER_EPOCH}",
         "--model.lr_interval=step", *monitor],
        tmp_path / "logs",
    )  # fmt: skip
    scalars = read_scalars(run)
    lightning = dict(scalars["lr-Adam"])  # the lr each step used, by step
    assert len(lightning) == 3 * STEPS_PER_EPOCH
    assert _values(scalars, "optim/lr") == pytest.approx([ADAM_LR * 0.5**e for e in range(3)])
    assert [v for _, v in scalars["optim/lr"]] == [lightning[s] for s, _ in scalars["optim/lr"]]


def test_reduce_on_plateau_cuts_the_lr_after_each_epoch_val_loss_did_not_improve(
    tiny_fit_args, tmp_path
):
    args = [*_without(tiny_fit_args, "--trainer.max_epochs"), "--trainer.max_epochs=4"]
    run = _fit(
        [*args, "--optimizer.lr=0.3", "--lr_scheduler", PLATEAU, "--lr_scheduler.patience", "0",
         "--lr_scheduler.factor", "0.1"],
        tmp_path / "logs",
    )  # fmt: skip
    logged = read_scalars(run)
    val, lrs = _values(logged, "val/loss"), _values(logged, "optim/lr")
    assert any(b >= a for a, b in itertools.pairwise(val)), val  # lr 0.3 makes val/loss rise
    # torch's own ReduceLROnPlateau fed the logged val/loss, stepped after each epoch's validation
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    expected = []
    for loss in val:
        expected.append(opt.param_groups[0]["lr"])
        plateau.step(loss)
    assert expected[-1] < 0.3  # the rise was seen
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert all(b <= a for a, b in itertools.pairwise(lrs))


BAD_SCHEDULERS = [
    (["--lr_scheduler", STEP_LR, "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "abc"],
     "gamma: expected float, got abc"),
    (["--lr_scheduler", STEP_LR, "--lr_scheduler.step_size", "abc"],
     "step_size: expected int, got abc"),
    (["--lr_scheduler", STEP_LR], "step_size"),
    (["--lr_scheduler", STEP_LR, "--lr_scheduler.step_size", "1", "--lr_scheduler.nope", "1"],
     "nope"),
    (["--lr_scheduler", "torch.optim.SGD"], "torch.optim.SGD"),
    (["--lr_scheduler", "torch.optim.lr_scheduler.NoSuch"], "NoSuch"),
    (["--lr_scheduler", PLATEAU, "--lr_scheduler.factor", "2"], "Factor should be < 1.0"),
    (["--lr_scheduler", PLATEAU, "--lr_scheduler.mode", "sideways"], "sideways"),
    (["--lr_scheduler", "ReduceLROnPlateau"], "Multiple subclasses with name ReduceLROnPlateau"),
    (["--model.lr_interval", "sometimes"], "sometimes"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_SCHEDULERS, ids=[m for _, m in BAD_SCHEDULERS])
def test_a_bad_scheduler_value_is_one_line_and_exit_2(args, message, tiny_fit_args, tmp_path,
                                                      capsys):  # fmt: skip
    err = _one_line_exit_2(["fit", *tiny_fit_args, *args], capsys)
    assert message in err
    assert not (tmp_path / "logs").exists()  # nothing ran


def test_a_step_size_of_zero_is_one_line_and_exit_2(tiny_fit_args, capsys):
    args = ["--lr_scheduler", STEP_LR, "--lr_scheduler.step_size", "0"]
    _one_line_exit_2(["fit", *tiny_fit_args, *args], capsys)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_resume_mid_schedule_ends_where_a_straight_run_ends(interval, tiny_fit_args, tmp_path):
    step_size = 1 if interval == "epoch" else STEPS_PER_EPOCH
    args = [*_without(tiny_fit_args, "--trainer.max_epochs"), *HALVING,
            f"--lr_scheduler.step_size={step_size}", f"--model.lr_interval={interval}"]  # fmt: skip
    logs = tmp_path / "logs"
    straight = read_scalars(_fit([*args, "--trainer.max_epochs=4"], logs))
    stopped = _fit([*args, "--trainer.max_epochs=2"], logs)
    resumed = read_scalars(
        _fit([*args, "--trainer.max_epochs=4", f"--ckpt_path={_checkpoint(stopped)}"], logs)
    )
    assert [s for s, _ in resumed["val/loss"]] == [20, 27]
    assert resumed["optim/lr"] == straight["optim/lr"][2:]
    assert resumed["val/loss"] == straight["val/loss"][2:]
    assert resumed["train/loss"] == straight["train/loss"][2:]
    assert straight["optim/lr"][0][1] > straight["optim/lr"][-1][1]  # it was decaying


# -- 2. a population with a scheduler ---------------------------------------------------------


def _float64_trainer(epochs: int) -> Trainer:
    return quiet_trainer(epochs, "64-true")


def test_population_members_with_their_own_gamma_equal_single_runs(data_cache):
    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache), batch_size=50)
    optimizer = {"class_path": "adam", "init_args": {"lr": 0.01}}
    seeds, gammas, epochs = [3, 11], [0.5, 0.9], 3
    population = PopulationClassifier(
        seeds,
        **MNIST1D,
        optimizer=optimizer,
        lr_scheduler={"class_path": STEP_LR, "init_args": {"step_size": 1}},
        member_hparams={"gamma": gammas},
    )
    _float64_trainer(epochs).fit(population, datamodule=data)
    members = population.lr_schedulers().members
    for k, (seed, gamma) in enumerate(zip(seeds, gammas, strict=True)):
        assert members[k].get_last_lr() == pytest.approx([0.01 * gamma**epochs])
        seed_everything(seed, verbose=False)
        single = MNIST1DClassifier(
            **MNIST1D,
            optimizer=optimizer,
            lr_scheduler={"class_path": STEP_LR, "init_args": {"step_size": 1, "gamma": gamma}},
        )
        _float64_trainer(epochs).fit(single, datamodule=data)
        assert single.lr_schedulers().get_last_lr() == pytest.approx([0.01 * gamma**epochs])
        difference = max(
            float((p.detach()[k] - q.detach()).abs().max())
            for p, q in zip(population.net.parameters(), single.net.parameters(), strict=True)
        )
        assert difference < 1e-6, (seed, gamma, difference)


# -- 3. tune searches the scheduler's arguments -----------------------------------------------


@pytest.mark.parametrize("population", [1, 2])
def test_tune_searches_gamma_and_best_yaml_holds_it(population, tune_args, tmp_path):
    args = [*_without(tune_args, "--trainer.max_epochs"), "--trainer.max_epochs=3"]
    cli_main(["tune", *args, *TUNING_SCHEDULE, "--n_trials=3", f"--population={population}",
              "--study_name=sched"])  # fmt: skip
    study = _study(tmp_path / "out" / "optuna.db", "sched")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["gamma"] for t in study.trials}) == 3
    for trial in study.trials:  # each trial trained with its own gamma
        lr, gamma = trial.params["lr"], trial.params["gamma"]
        logged = _values(read_scalars(Path(trial.user_attrs["log_dir"])), "optim/lr")
        assert logged == pytest.approx([lr * gamma**e for e in range(3)], rel=1e-6)
    best = yaml.safe_load((tmp_path / "out" / "sched" / "best.yaml").read_text())
    assert best["lr_scheduler"]["class_path"] == STEP_LR
    assert best["lr_scheduler"]["init_args"]["gamma"] == study.best_params["gamma"]
    assert best["lr_scheduler"]["init_args"]["step_size"] == 1
    assert best["optimizer"]["init_args"]["lr"] == study.best_params["lr"]
    assert "gamma" not in best["optimizer"]["init_args"]

    cli_main(["fit", f"--config={tmp_path / 'out' / 'sched' / 'best.yaml'}", NO_BAR])
    (run,) = version_dirs(tmp_path / "lightning_logs")
    assert read_scalars(run)["val/loss"][-1][1] == pytest.approx(study.best_value, rel=1e-4)


def test_a_population_trials_checkpoint_records_its_own_gamma(tune_args, tmp_path):
    cli_main(["tune", *tune_args, *TUNING_SCHEDULE, "--n_trials=2", "--population=2",
              "--study_name=sched"])  # fmt: skip
    for trial in _study(tmp_path / "out" / "optuna.db", "sched").trials:
        checkpoint = torch.load(trial.user_attrs["checkpoint"], weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        assert hparams["optimizer"]["init_args"]["lr"] == trial.params["lr"]
        assert hparams["lr_scheduler"]["init_args"]["gamma"] == trial.params["gamma"]


# -- 4. predict --------------------------------------------------------------------------------


def test_predict_writes_one_row_per_test_example(tiny_fit_args, tmp_path, data_cache, capsys):
    logs = tmp_path / "logs"
    run = _fit(tiny_fit_args, logs)
    ckpt = _checkpoint(run)
    cli_main(["predict", *tiny_fit_args, f"--ckpt_path={ckpt}"])
    predicted_in = version_dirs(logs)[-1]
    assert predicted_in != run
    path = predicted_in / "predictions.csv"
    assert f"predictions: {path}" in capsys.readouterr().out
    columns, rows = _csv(path)
    assert columns == ["index", "label", "predicted", *(f"p{c}" for c in range(10))]
    x_test, y_test = _data(data_cache).splits["test"]
    assert len(rows) == len(y_test) == 100
    assert [int(r["index"]) for r in rows] == list(range(100))
    assert [int(r["label"]) for r in rows] == y_test.tolist()
    probs = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in rows])
    assert probs.sum(1).tolist() == pytest.approx([1.0] * 100, abs=1e-5)
    assert [int(r["predicted"]) for r in rows] == probs.argmax(1).tolist()
    (net,) = _nets(ckpt)  # the checkpoint's weights, evaluated by hand
    with torch.no_grad():
        assert torch.allclose(probs, net(x_test).softmax(-1), atol=1e-6)

    cli_main(["test", *tiny_fit_args, f"--ckpt_path={ckpt}"])
    tested = read_scalars(version_dirs(logs)[-1])
    accuracy = sum(int(r["label"]) == int(r["predicted"]) for r in rows) / len(rows)
    assert tested["test/acc"][-1][1] == pytest.approx(accuracy, abs=1e-6)
    assert tested["test/loss"][-1][1] == pytest.approx(_loss(net, (x_test, y_test)), rel=1e-5)


def test_predict_of_a_population_has_a_seed_column_and_a_row_per_member(
    tiny_fit_args, tmp_path, data_cache
):
    logs = tmp_path / "logs"
    run = _fit([*tiny_fit_args, "--seeds=[0, 1]"], logs)
    ckpt = _checkpoint(run)
    cli_main(["predict", *tiny_fit_args, "--seeds=[0, 1]", f"--ckpt_path={ckpt}"])
    columns, rows = _csv(version_dirs(logs)[-1] / "predictions.csv")
    assert columns == ["seed", "index", "label", "predicted", *(f"p{c}" for c in range(10))]
    assert len(rows) == 200
    x_test, y_test = _data(data_cache).splits["test"]
    nets = _nets(ckpt)
    assert len(nets) == 2
    for seed, net in zip((0, 1), nets, strict=True):
        mine = [r for r in rows if r["seed"] == str(seed)]
        assert [int(r["index"]) for r in mine] == list(range(100))
        assert [int(r["label"]) for r in mine] == y_test.tolist()
        probs = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in mine])
        assert [int(r["predicted"]) for r in mine] == probs.argmax(1).tolist()
        with torch.no_grad():
            assert torch.allclose(probs, net(x_test).softmax(-1), atol=1e-6)
    zero = [r["p0"] for r in rows if r["seed"] == "0"]
    assert zero != [r["p0"] for r in rows if r["seed"] == "1"]


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_one_line_and_exit_2(subcommand, tiny_fit_args,
                                                               tmp_path, capsys):  # fmt: skip
    err = _one_line_exit_2([subcommand, *tiny_fit_args], capsys)
    assert f"{subcommand} needs --ckpt_path" in err
    assert not list(tmp_path.glob("logs/*/*/predictions.csv"))


# -- 5. tune and compare keep checkpoints that replay -----------------------------------------


@pytest.mark.parametrize("population", [1, 2])
def test_tune_keeps_each_trials_checkpoint_and_best_yaml_replays_it(
    population, tune_args, tmp_path, data_cache
):
    cli_main(["tune", *tune_args, "--n_trials=3", f"--population={population}",
              "--study_name=keep"])  # fmt: skip
    study_dir = tmp_path / "out" / "keep"
    study = _study(tmp_path / "out" / "optuna.db", "keep")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        path = Path(trial.user_attrs["log_dir"]) / "checkpoints" / "final.ckpt"
        assert path.parent.parent.parent == study_dir
        assert Path(trial.user_attrs["checkpoint"]).resolve() == path and path.is_file()
    ckpt = study.best_trial.user_attrs["checkpoint"]
    best_yaml = study_dir / "best.yaml"
    header = [line for line in best_yaml.read_text().splitlines() if line.startswith("#")]
    assert any(f"test --config {best_yaml} --ckpt_path {ckpt}" in line for line in header), header

    cli_main(["validate", f"--config={best_yaml}", f"--ckpt_path={ckpt}", NO_BAR])
    (run,) = version_dirs(tmp_path / "lightning_logs")
    validated = read_scalars(run)["val/loss"][-1][1]
    assert validated == pytest.approx(study.best_value, rel=1e-6 if population == 1 else 1e-4)
    cli_main(["test", f"--config={best_yaml}", f"--ckpt_path={ckpt}", NO_BAR])
    tested = read_scalars(version_dirs(tmp_path / "lightning_logs")[-1])
    (net,) = _nets(Path(ckpt))
    assert tested["test/loss"][-1][1] == pytest.approx(
        _loss(net, _data(data_cache).splits["test"]), rel=1e-5
    )


@pytest.mark.parametrize("population_finals", [True, False])
def test_compare_final_runs_keep_a_checkpoint_and_config_that_replay(
    population_finals, tmp_path, data_cache, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path = _experiment(tmp_path, data_cache, output_dir=str(tmp_path / "out"),
                       population_finals=population_finals)  # fmt: skip
    cli_main(["compare", f"--config={path}"])
    arm = tmp_path / "out" / "tiny" / "a"
    (trial_0,) = arm.glob("trial_0-lr=*")  # a trial's folder carries its values
    assert (trial_0 / "checkpoints" / "final.ckpt").is_file()
    for k, seed in enumerate((0, 1)):
        out = arm / "final" / f"seed_{seed}"
        result = json.loads((out / "result.json").read_text())
        # 2 seeds, and 2 more of the re-tuned arm (tuned at 1 epoch, re-tuned at 2) beside them
        assert result.get("population") == (4 if population_finals else None)
        assert Path(result["checkpoint"]).resolve() == out / "checkpoints" / "final.ckpt"
        assert Path(result["log_dir"]).resolve() == out
        config = out / "config.yaml"
        assert yaml.safe_load(config.read_text())["seed_everything"] == seed
        assert f"--ckpt_path {result['checkpoint']}" in config.read_text().splitlines()[1]
        cli_main(["test", f"--config={config}", f"--ckpt_path={result['checkpoint']}", NO_BAR])
        tested = read_scalars(version_dirs(tmp_path / "lightning_logs")[k])
        assert tested["test/loss"][-1][1] == pytest.approx(result["test_loss"], rel=1e-4)
        assert tested["test/acc"][-1][1] == pytest.approx(result["test_acc"], abs=1e-6)


# -- 6. the default output layout ---------------------------------------------------------------


def test_fit_runs_default_to_lightning_logs_by_optimizer(data_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]  # fmt: skip
    cli_main(["fit", *args])
    cli_main(["fit", *args, "--optimizer=sgd"])
    cli_main(["fit", *args])
    logs = tmp_path / "lightning_logs"
    assert sorted(p.relative_to(logs).as_posix() for p in version_dirs(logs)) == [
        "adam/version_0", "adam/version_1", "sgd/version_0",
    ]  # fmt: skip
    for run in version_dirs(logs):
        assert _checkpoint(run).is_file() and (run / "config.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["lightning_logs"]


def test_tune_defaults_to_lightning_logs_tune(data_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(["tune", f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
              "--trainer.max_epochs=1", "--n_trials=1"])  # fmt: skip
    out = tmp_path / "lightning_logs" / "tune"
    study = _study(out / "optuna.db", "adam")
    (trial,) = study.trials
    name = f"trial_0-lr={trial.params['lr']:.3g}"
    assert Path(trial.user_attrs["log_dir"]).resolve() == out / "adam" / name
    assert (out / "adam" / name / "checkpoints" / "final.ckpt").is_file()
    assert (out / "adam" / "best.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["lightning_logs"]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["tune"]


def test_compare_defaults_to_lightning_logs_compare_experiment(data_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _experiment(tmp_path, data_cache, experiment="layout", seeds=1)
    cli_main(["compare", f"--config={path}"])
    exp_dir = tmp_path / "lightning_logs" / "compare" / "layout"
    for name in (
        "results.json",
        "results.md",
        "optuna.db",
        "a/final/seed_0/result.json",
        "a/final/seed_0/checkpoints/final.ckpt",
    ):
        assert (exp_dir / name).is_file(), name  # fmt: skip
    assert list(exp_dir.glob("a/trial_0-lr=*/checkpoints/final.ckpt"))
    assert _study(exp_dir / "optuna.db", "layout.a").trials[0].state == TrialState.COMPLETE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "lightning_logs"]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["compare"]


# -- 7. loggers and callbacks pass through tune and compare -------------------------------------


def test_tune_runs_every_configured_logger_in_each_trial(tune_args, tmp_path):
    cli_main(["tune", *tune_args, "--n_trials=2", "--study_name=two",
              "--trainer.logger+=lightning.pytorch.loggers.CSVLogger",
              "--trainer.logger.save_dir", str(tmp_path / "x")])  # fmt: skip
    study = _study(tmp_path / "out" / "optuna.db", "two")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        trial_dir = Path(trial.user_attrs["log_dir"])
        tensorboard = read_scalars(trial_dir / "tensorboardlogger")
        assert tensorboard["val/loss"][-1][1] == pytest.approx(trial.value, rel=1e-6)
        _, rows = _csv(trial_dir / "csvlogger" / "metrics.csv")
        val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
        assert len(val) == 2 and val[-1] == pytest.approx(trial.value, rel=1e-6)
        assert (trial_dir / "checkpoints" / "final.ckpt").is_file()
    assert not (tmp_path / "x").exists()  # each logger writes to the trial's folder


def test_tune_population_with_a_callback_runs_the_trials_one_at_a_time(tune_args, tmp_path,
                                                                      capsys):  # fmt: skip
    cli_main(["tune", *tune_args, "--n_trials=3", "--population=2", "--study_name=lrm",
              "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"])  # fmt: skip
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "one at a time" in line]
    assert len(said) == 1 and "LearningRateMonitor" in said[0] and "--population 2" in said[0]
    assert "population of" not in out
    study = _study(tmp_path / "out" / "optuna.db", "lrm")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        scalars = read_scalars(Path(trial.user_attrs["log_dir"]))
        assert _values(scalars, "lr-Adam") == pytest.approx([trial.params["lr"]] * 2, rel=1e-6)


def test_compare_runs_the_experiments_callbacks_in_every_run_and_an_arms_on_top(
    tmp_path, data_cache, monkeypatch
):
    seen = importlib.import_module("test_runs_and_outputs").SEEN  # what the CLI imports
    seen.clear()
    counter = f"{EpochCounter.__module__}.{EpochCounter.__name__}"
    path = _experiment(
        tmp_path,
        data_cache,
        output_dir=str(tmp_path / "out"),
        n_trials=2,
        trainer={"max_epochs": 2, "callbacks": [{"class_path": counter}]},
        arms=[
            {"name": "a", "optimizer": "adam"},
            {"name": "b", "optimizer": "sgd",
             "callbacks": [{"class_path": counter, "init_args": {"tag": "arm"}}]},
        ],
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    cli_main(["compare", f"--config={path}"])
    exp_dir = (tmp_path / "out" / "tiny").resolve()
    expected = Counter()
    for arm, tags in (("a", ["experiment"]), ("b", ["experiment", "arm"])):
        for tag in tags:
            for trial in (0, 1):
                expected[(tag, exp_dir / arm / f"trial_{trial}")] = 1  # tune_max_epochs
                # the robustness re-tune: the arm tuned and re-run at the final budget
                expected[(tag, exp_dir / arm / "retuned" / f"trial_{trial}")] = 2
            for seed in (0, 1):
                expected[(tag, exp_dir / arm / "final" / f"seed_{seed}")] = 2  # max_epochs
                expected[(tag, exp_dir / arm / "retuned" / "final" / f"seed_{seed}")] = 2

    def numbered(path: Path) -> Path:  # a trial's folder carries its values: trial_0-lr=...
        return path.with_name(path.name.split("-")[0]) if path.name.startswith("trial_") else path

    assert Counter((tag, numbered(Path(path))) for tag, path in seen) == expected
    seen.clear()
