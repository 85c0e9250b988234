"""Bring your own optimizer and clipping rule: classes lightning_opt never heard of, defined here.

``QHMomentum`` (quasi-hyperbolic momentum) takes an argument no built-in optimizer has (``nu``);
``ValueClip`` is a clipping rule of its own (every gradient entry clamped to ``[-limit, limit]``,
not ``stacked``). Both are reached by class path (``test_bring_your_own.QHMomentum``), as a
user's module is, and go through fit, populations, tune and compare; numbers are checked
against plain PyTorch loops and separate single runs.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from conftest import (
    MNIST1D,
    TINY_SAMPLES,
    install_entry_point,
    one_thread,
    quiet_trainer,
    read_scalars,
    tune_args,
    version_dirs,
)
from lightning.pytorch import Trainer, seed_everything
from optuna.trial import TrialState
from torch import Tensor

from lightning_opt.cli.main import cli_main
from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.clipping.kernels import ClipStats
from lightning_opt.core.search_space import SearchParam
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import MLP
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier

# The clipping callbacks log their stats with self.log, and the direct runs here have no logger.
pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")

# -- the user's classes ----------------------------------------------------------------------


class QHMomentum(torch.optim.Optimizer):
    """Quasi-hyperbolic momentum (Ma & Yarats, 2019): ``buf = momentum * buf + (1 - momentum)
    * g``, then ``p -= lr * ((1 - nu) * g + nu * buf)``. ``nu`` is its own argument."""

    def __init__(
        self, params: Any, lr: float = 0.05, momentum: float = 0.9, nu: float = 0.7
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        if not 0.0 <= nu <= 1.0:
            raise ValueError(f"Invalid nu: {nu} (must be in [0, 1])")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nu": nu})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, nu = group["lr"], group["momentum"], group["nu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["buf"] = torch.zeros_like(p)
                buf = state["buf"]
                buf.mul_(momentum).add_(p.grad, alpha=1 - momentum)
                p.add_(p.grad, alpha=-lr * (1 - nu)).add_(buf, alpha=-lr * nu)
        return loss


class OneAtATimeQHM(QHMomentum):
    """An optimizer that must not be trained one instance per population member."""

    supports_population = False


class ValueClip(GradientClippingCallback):
    """Clamp every gradient entry to ``[-limit, limit]`` (``torch.nn.utils.clip_grad_value_``)."""

    search_space = (SearchParam("limit", 1e-3, 1.0, log=True),)

    def __init__(self, limit: float = 1.0, log_stats: bool = True) -> None:
        if not limit > 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        super().__init__(log_stats)
        self.limit = limit

    @torch.no_grad()
    def clip_(
        self, parameters: Sequence[Tensor], member_dims: int = 0, overrides: Any = None
    ) -> ClipStats:
        # Not ``stacked``: the package must hand over one model's (one member's) tensors.
        assert member_dims == 0 and not overrides, (member_dims, overrides)
        fractions, scales = [], []
        for p in parameters:
            if p.grad is None:
                continue
            before = torch.linalg.vector_norm(p.grad)
            fractions.append((p.grad.abs() > self.limit).any().to(p.grad.dtype))
            p.grad.clamp_(-self.limit, self.limit)
            scales.append(torch.linalg.vector_norm(p.grad) / before.clamp_min(1e-30))
        return ClipStats(torch.stack(fractions).mean(), torch.stack(scales).mean())


QHM = f"{__name__}.QHMomentum"
ONE_AT_A_TIME = f"{__name__}.OneAtATimeQHM"
VALUE_CLIP = f"{__name__}.ValueClip"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli_main`` puts the working directory on ``sys.path``; undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the matrices are tiny and the machine is busy (as test_population)."""
    with one_thread():
        yield


def _fit(args: list[str], save_dir: Path) -> Path:
    """``fit`` ``args``, logging under ``save_dir``; the run's version directory."""
    cli_main(["fit", *args, f"--trainer.logger.init_args.save_dir={save_dir}"])
    return version_dirs(save_dir)[-1]


def _plain_loop(
    data_cache: Path,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    seed: int = 0,
    epochs: int = 2,
    clip: float | None = None,
) -> list[float]:
    """The validation loss after each epoch of a plain PyTorch loop over ``fit``'s data order
    (a permutation seeded by (seed, epoch), batches of 50)."""
    torch.manual_seed(seed)
    net = MLP(40, 10, [100])
    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache))
    data.setup()
    (x, y), (xv, yv) = data.splits["train"], data.splits["val"]
    opt = make_optimizer(net.parameters())
    val = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        for idx in torch.randperm(len(x), generator=gen).split(50):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_value_(net.parameters(), clip)
            opt.step()
        with torch.no_grad():
            val.append(float(torch.nn.functional.cross_entropy(net(xv), yv)))
    return val


def _values(scalars: dict, tag: str) -> list[float]:
    return [v for _, v in scalars[tag]]


# -- 1. an outside optimizer through fit -----------------------------------------------------


def test_outside_optimizer_trains_saves_its_argument_and_replays(
    tiny_fit_args, tmp_path, data_cache
):
    args = [*tiny_fit_args, "--optimizer", QHM, "--optimizer.nu", "0.3", "--optimizer.lr", "0.1"]
    run = _fit(args, tmp_path / "logs")
    assert run.parent.name == "qhmomentum"  # logs grouped by the class name, lowercase

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optimizer"] == {
        "class_path": QHM,
        "init_args": {"lr": 0.1, "momentum": 0.9, "nu": 0.3},  # the class's default spelled out
    }
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["optimizer"] == QHM and hparams["optimizer/nu"] == 0.3

    # The run is the plain loop with QHMomentum(nu=0.3), and not with the default nu.
    logged = _values(read_scalars(run), "val/loss")
    expected = _plain_loop(data_cache, lambda p: QHMomentum(p, lr=0.1, nu=0.3))
    assert logged == pytest.approx(expected, rel=1e-5)
    other = _plain_loop(data_cache, lambda p: QHMomentum(p, lr=0.1))
    assert logged != pytest.approx(other, rel=1e-3)

    replay = _fit([f"--config={run / 'config.yaml'}"], tmp_path / "replay")
    assert replay.parent.parent == tmp_path / "replay"
    assert _values(read_scalars(replay), "val/loss") == logged  # bit-identical


def test_a_checkpoint_resumes_with_its_own_optimizer(tiny_fit_args, tmp_path, capsys):
    """``fit --ckpt_path`` with no --optimizer resumes the checkpoint's class and arguments
    (not the default adam) and ends where a straight run ends; another class is refused."""
    base = [a for a in tiny_fit_args if not a.startswith("--trainer.max_epochs")]
    qhm = ["--optimizer", QHM, "--optimizer.nu", "0.3", "--optimizer.lr", "0.1"]
    straight = _fit([*base, *qhm, "--trainer.max_epochs=4"], tmp_path / "straight")
    first = _fit([*base, *qhm, "--trainer.max_epochs=2"], tmp_path / "first")
    (ckpt,) = (first / "checkpoints").glob("*.ckpt")
    resumed = _fit([*base, "--trainer.max_epochs=4", f"--ckpt_path={ckpt}"], tmp_path / "resumed")
    saved = yaml.safe_load((resumed / "config.yaml").read_text())
    assert saved["optimizer"]["class_path"] == QHM and saved["optimizer"]["init_args"]["nu"] == 0.3
    assert _values(read_scalars(resumed), "val/loss")[-1] == pytest.approx(
        _values(read_scalars(straight), "val/loss")[-1], rel=1e-6
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *base, "--optimizer=adam", f"--ckpt_path={ckpt}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("leave --optimizer out to resume with the checkpoint's")
    assert f"was trained with {QHM}; its state cannot resume Adam" in err[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer.nu=1.5"], "Invalid nu: 1.5 (must be in [0, 1])"),
        (["--optimizer.nu=-0.5"], "Invalid nu: -0.5 (must be in [0, 1])"),
        (["--optimizer.no_such_argument=1"], "no_such_argument"),
    ],
    ids=["nu_too_big", "nu_negative", "unknown_argument"],
)
def test_outside_optimizer_bad_argument_is_one_line_and_exit_2(
    args, message, tiny_fit_args, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_fit_args, f"--optimizer={QHM}", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lightning_opt: error:") and message in lines[0]
    assert not (tmp_path / "logs").exists()  # nothing ran


# -- 2. --optimizer.help, and a module in the working directory -----------------------------


def test_optimizer_help_lists_the_outside_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--optimizer.help", QHM])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--optimizer.nu" in out and "--optimizer.momentum" in out


@pytest.fixture
def cwd_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``QHMomentum``'s source as ``byo_cwd.py`` in the working directory, not yet imported."""
    header = "from __future__ import annotations\n\nfrom collections.abc import Callable\n"
    header += "from typing import Any\n\nimport torch\n\n\n"
    (tmp_path / "byo_cwd.py").write_text(header + inspect.getsource(QHMomentum))
    monkeypatch.chdir(tmp_path)
    assert "byo_cwd" not in sys.modules
    yield "byo_cwd.QHMomentum"
    sys.modules.pop("byo_cwd", None)


def test_an_optimizer_in_the_working_directory(cwd_module, tiny_fit_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--optimizer.help", cwd_module])
    assert exit_info.value.code == 0 and "--optimizer.nu" in capsys.readouterr().out

    run = _fit(
        [*tiny_fit_args, f"--optimizer={cwd_module}", "--optimizer.nu=0.3"], tmp_path / "logs"
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optimizer"]["class_path"] == cwd_module
    assert saved["optimizer"]["init_args"]["nu"] == 0.3
    assert sys.modules["byo_cwd"].__file__ == str(tmp_path / "byo_cwd.py")


# -- 3. a population of the outside optimizer: one instance per member, exact -----------------


def _trainer(epochs: int, callbacks: Sequence[Any] = ()) -> Trainer:
    return quiet_trainer(epochs, "64-true", callbacks)


def _data(data_cache: Path) -> MNIST1DDataModule:
    return MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache), batch_size=50)


def _single_run(
    data_cache: Path, seed: int, optimizer: Any, epochs: int, callbacks: Sequence[Any] = ()
) -> list[Tensor]:
    """The final weights of ``fit --seed_everything seed`` in float64."""
    seed_everything(seed, verbose=False)
    model = MNIST1DClassifier(**MNIST1D, optimizer=optimizer)
    _trainer(epochs, callbacks).fit(model, datamodule=_data(data_cache))
    return [p.detach().clone() for p in model.net.parameters()]


def _max_difference(population: PopulationClassifier, member: int, single: list[Tensor]) -> float:
    stacked = list(population.net.parameters())
    assert len(stacked) == len(single)
    return max(float((p[member] - q).abs().max()) for p, q in zip(stacked, single, strict=True))


def test_population_of_the_outside_optimizer_matches_single_runs(data_cache):
    """Same seed, per-member lr and nu: each member is the single run of its own values."""
    shared = {"class_path": QHM, "init_args": {"momentum": 0.8}}
    member_hparams = {"lr": [0.05, 0.2], "nu": [0.3, 0.9]}
    population = PopulationClassifier(
        [3, 3], **MNIST1D, optimizer=shared, member_hparams=member_hparams
    )
    assert population.stacked is None  # no fast path for a class the package does not know
    trainer = _trainer(10)
    trainer.fit(population, datamodule=_data(data_cache))
    (optimizer,) = trainer.optimizers
    assert type(optimizer).__name__ == "MemberwiseOptimizer"
    assert [type(o) for o in optimizer.members] == [QHMomentum, QHMomentum]
    assert [o.param_groups[0]["nu"] for o in optimizer.members] == [0.3, 0.9]

    singles = []
    for lr, nu in zip(member_hparams["lr"], member_hparams["nu"], strict=True):
        init_args = {"momentum": 0.8, "lr": lr, "nu": nu}
        singles.append(_single_run(data_cache, 3, {"class_path": QHM, "init_args": init_args}, 10))
    for member in (0, 1):
        assert _max_difference(population, member, singles[member]) < 1e-6
    assert _max_difference(population, 0, singles[1]) > 1e-3  # the values made a difference


# -- 4. an outside clipping rule --------------------------------------------------------------


def test_outside_clipping_rule_through_fit(tiny_fit_args, tmp_path, data_cache):
    clip = [f"--trainer.callbacks+={VALUE_CLIP}", "--trainer.callbacks.limit=0.01"]
    run = _fit(
        ["--optimizer=adam", "--optimizer.lr=0.01", *clip, *tiny_fit_args], tmp_path / "logs"
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (callback,) = saved["trainer"]["callbacks"]
    assert callback["class_path"] == VALUE_CLIP and callback["init_args"]["limit"] == 0.01

    scalars = read_scalars(run)
    assert 0 < scalars["clip/fraction_clipped"][-1][1] <= 1
    assert scalars["clip/mean_scale"][-1][1] < 1
    logged = _values(scalars, "val/loss")
    adam = partial(torch.optim.Adam, lr=0.01)
    assert logged == pytest.approx(_plain_loop(data_cache, adam, clip=0.01), rel=1e-5)
    assert logged != pytest.approx(_plain_loop(data_cache, adam), rel=1e-3)

    replay = _fit([f"--config={run / 'config.yaml'}"], tmp_path / "replay")
    assert _values(read_scalars(replay), "val/loss") == logged


@pytest.mark.parametrize("optimizer", ["adam", QHM], ids=["adam_stacked", "outside_memberwise"])
def test_population_with_per_member_values_of_the_outside_rule_matches_single_runs(
    data_cache, optimizer
):
    limits = [0.003, 0.03]
    population = PopulationClassifier(
        [3, 11], **MNIST1D, optimizer=optimizer, member_hparams={"limit": limits}
    )
    assert (population.stacked is None) == (optimizer == QHM)
    rule = ValueClip(limit=1e6)  # never fires: the clipping seen comes from the member values
    _trainer(5, [rule]).fit(population, datamodule=_data(data_cache))
    rates = rule.clip_rates()
    assert len(rates) == 2 and all(0 < r <= 1 for r in rates)
    for member, (seed, limit) in enumerate(zip([3, 11], limits, strict=True)):
        single = _single_run(data_cache, seed, optimizer, 5, [ValueClip(limit=limit)])
        assert _max_difference(population, member, single) < 1e-6
        unclipped = _single_run(data_cache, seed, optimizer, 5)
        assert _max_difference(population, member, unclipped) > 1e-4


def test_outside_rule_names_the_study_and_brings_its_search_space(
    tmp_path, data_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    cli_main(["tune", *_tune_args(tmp_path, data_cache), "--optimizer=adam",
              f"--trainer.callbacks+={VALUE_CLIP}", "--n_trials=2", "--population=2"])  # fmt: skip
    assert (tmp_path / "out" / "adam-valueclip" / "best.yaml").exists()
    study = _study(tmp_path, "adam-valueclip")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.params.keys() == {"lr", "limit"} for t in study.trials)
    assert "study 'adam-valueclip'" in capsys.readouterr().out


# -- 5-6. tune ------------------------------------------------------------------------------


def _tune_args(tmp_path: Path, data_cache: Path) -> list[str]:
    return tune_args(tmp_path, data_cache)


def _study(tmp_path: Path, name: str) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage)


NU_AND_LR = (
    "--search_space=[{name: lr, low: 0.01, high: 0.3, log: true}, {name: nu, low: 0.0, high: 1.0}]"
)


def test_tune_a_population_of_the_outside_optimizer_and_refit_best(
    tmp_path, data_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = [*_tune_args(tmp_path, data_cache), f"--optimizer={QHM}", "--optimizer.momentum=0.8"]
    cli_main(["tune", *args, NU_AND_LR, "--n_trials=2", "--population=2"])
    out = capsys.readouterr().out
    assert out.count("(population of 2:") == 2  # both trials trained as one population

    study = _study(tmp_path, "qhmomentum")  # the default name: the class name, lowercase
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.params.keys() == {"lr", "nu"} for t in trials)
    assert trials[0].params["nu"] != trials[1].params["nu"]

    best = tmp_path / "out" / "qhmomentum" / "best.yaml"
    saved = yaml.safe_load(best.read_text())
    assert saved["optimizer"]["class_path"] == QHM
    assert saved["optimizer"]["init_args"] == {"momentum": 0.8, **study.best_params}

    run = _fit([f"--config={best}", "--trainer.enable_progress_bar=false"], tmp_path / "refit")
    final = read_scalars(run)["val/loss"][-1][1]
    assert final == pytest.approx(study.best_value, rel=1e-4)  # population vs single: rounding


def test_an_optimizer_without_population_support_runs_trials_one_at_a_time(
    tmp_path, data_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = [*_tune_args(tmp_path, data_cache), f"--optimizer={ONE_AT_A_TIME}"]
    cli_main(["tune", *args, "--n_trials=2", "--population=2", "--study_name=one"])
    lines = capsys.readouterr().out.splitlines()
    fallback = [i for i, line in enumerate(lines) if "supports_population = False" in line]
    trial_lines = [i for i, line in enumerate(lines) if line.startswith("trial ")]
    assert len(fallback) == 1 and len(trial_lines) == 2
    assert "OneAtATimeQHM" in lines[fallback[0]]
    assert fallback[0] < trial_lines[0]  # said before anything trained
    assert not any("population of" in lines[i] for i in trial_lines)
    assert [t.state for t in _study(tmp_path, "one").trials] == [TrialState.COMPLETE] * 2


def test_fit_seeds_refuses_an_optimizer_without_population_support(tiny_fit_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_fit_args, f"--optimizer={ONE_AT_A_TIME}", "--seeds=[0, 1]"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "OneAtATimeQHM declares supports_population = False" in lines[0]
    assert not list((tmp_path / "logs").rglob("events.out.tfevents.*"))  # nothing trained


# -- 7. compare ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "momentum"),
    [
        pytest.param(QHM, 0.9, id="class_path"),
        pytest.param(
            {"class_path": QHM, "init_args": {"momentum": 0.8}}, 0.8, id="class_path_and_init_args"
        ),
    ],
)
def test_compare_an_outside_optimizer_arm_and_an_outside_rule_arm(
    optimizer, momentum, tmp_path, data_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    experiment = {
        "experiment": "byo",
        "output_dir": str(tmp_path / "out"),
        "seeds": 2,
        "n_trials": 2,
        "population": 2,
        "tune_max_epochs": 1,
        "pruner": "none",
        "trainer": {"max_epochs": 2},
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 50},
        "arms": [
            {
                "name": "qhm",
                "optimizer": optimizer,
                "search_space": [
                    {"name": "nu", "low": 0.0, "high": 1.0},
                    {"name": "lr", "low": 0.01, "high": 0.3, "log": True},
                ],
            },
            {
                "name": "adam_valueclip",
                "optimizer": "adam",
                "callbacks": [{"class_path": VALUE_CLIP, "init_args": {"limit": 0.05}}],
            },
        ],
    }
    path = tmp_path / "byo.yaml"
    path.write_text(yaml.safe_dump(experiment))
    cli_main(["compare", f"--config={path}"])
    exp_dir = tmp_path / "out" / "byo"
    results = json.loads((exp_dir / "results.json").read_text())
    arms = results["arms"]
    assert list(arms) == ["qhm", "adam_valueclip"]
    assert arms["qhm"]["optimizer_class"] == QHM and arms["qhm"]["optimizer"] == "qhmomentum"
    assert arms["qhm"]["clipping"] == [] and arms["adam_valueclip"]["clipping"] == ["ValueClip"]
    assert arms["qhm"]["tuned"].keys() == {"nu", "lr"}
    assert arms["adam_valueclip"]["tuned"].keys() == {"lr", "limit"}  # the rule's search space
    for arm in arms.values():
        assert [run["seed"] for run in arm["runs"]] == [0, 1]
    assert 0 <= arms["adam_valueclip"]["clip_rate"]["mean"] <= 1
    # each final run trained the tuned values with the arm's own settings
    for seed in (0, 1):
        hparams = yaml.safe_load(
            (exp_dir / "qhm" / "final" / f"seed_{seed}" / "hparams.yaml").read_text()
        )
        assert hparams["optimizer/momentum"] == momentum
        assert hparams["optimizer/nu"] == pytest.approx(arms["qhm"]["tuned"]["nu"])
    assert "final qhm seed 1" in capsys.readouterr().out


# -- 8. bad search space ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "clipping", "choices"),
    [
        ("nuu", [f"--trainer.callbacks+={VALUE_CLIP}"], {"lr", "momentum", "nu", "limit"}),
        ("limit", [], {"lr", "momentum", "nu"}),  # the rule's argument, but no rule is on
    ],
    ids=["misspelt", "rule_not_on"],
)
def test_a_search_space_name_nothing_takes_is_refused_before_any_trial(
    name, clipping, choices, tmp_path, data_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    space = f"--search_space=[{{name: {name}, low: 0.001, high: 1.0}}]"
    args = [*_tune_args(tmp_path, data_cache), f"--optimizer={QHM}", *clipping, "--population=2"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", *args, space])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"search space parameter {name!r}" in lines[0]
    listed = set(lines[0].rsplit("choose from:", 1)[1].replace(",", " ").split())
    assert choices <= listed and name not in listed
    assert not (tmp_path / "out").exists()  # no study, no trial directory


# -- errors raised while training, and plugins ------------------------------------------------


class FailsAtStep(torch.optim.SGD):
    """SGD that raises its own ValueError at step ``fail_at``: a bug in a user's optimizer."""

    def __init__(self, params: Any, lr: float = 0.01, fail_at: int = 3) -> None:
        super().__init__(params, lr=lr)
        self.fail_at, self.steps = fail_at, 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        self.steps += 1
        if self.steps == self.fail_at:
            raise ValueError("FailsAtStep: something inside the update went wrong")
        return super().step(closure)


def test_an_error_inside_training_keeps_its_traceback_and_exits_1(tiny_fit_args, tmp_path):
    """Only bad input is one line with exit 2; a user's optimizer raising at step 3 is a bug
    to debug, so Python's own traceback and exit code 1 stay."""
    import subprocess

    args = ["fit", f"--optimizer={__name__}.FailsAtStep", *tiny_fit_args]
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_opt", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: FailsAtStep: something inside the update went wrong" in proc.stderr
    assert "lightning_opt: error" not in proc.stderr


def test_installed_packages_register_short_names_through_entry_points(
    tmp_path, monkeypatch, tiny_fit_args
):
    """A distribution declaring ``[lightning_opt.optimizers] qhm = module:Class`` makes
    ``--optimizer qhm`` work, with no import of it anywhere."""
    from lightning_opt.optim import registry

    install_entry_point(
        monkeypatch, tmp_path, registry, "lightning_opt.optimizers", f"qhm = {__name__}:QHMomentum"
    )
    assert "qhm" in registry.list_optimizers()
    assert registry.get_optimizer("qhm").cls is QHMomentum
    run = _fit(["--optimizer=qhm", "--optimizer.nu=0.25", *tiny_fit_args], tmp_path / "logs")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optimizer"]["class_path"].endswith("QHMomentum")
    assert config["optimizer"]["init_args"]["nu"] == 0.25
    assert run.parent.name == "qhm"  # the short name names the run's folder


_SIGN_SGD = """
import torch


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
"""


def test_a_plain_file_optimizer_compares_with_adam(data_cache, tmp_path, monkeypatch, capsys):
    """README's "Benchmark your optimizer", step 3: a compare of adam and a class from a plain
    file, with population final runs. The two step differently (adam's step may evaluate the
    closure first, this one never does), which one population cannot hold: the final runs
    ended in a traceback after all tuning. They now train apart, said in a line."""
    (tmp_path / "sign_opt_lo.py").write_text(_SIGN_SGD)
    monkeypatch.chdir(tmp_path)
    cli_main(["compare", "--experiment=mine", f"--output_dir={tmp_path / 'out'}", "--seeds=2",
              "--n_trials=1", "--tune_max_epochs=1", "--trainer.max_epochs=1", "--pruner=none",
              f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
              "--arms=[{name: adam, optimizer: adam}, "
              "{name: signsgd, optimizer: sign_opt_lo.SignSGD}]"])  # fmt: skip
    shown = capsys.readouterr().out
    assert (
        "arms adam, signsgd train their final runs apart (the member groups' optimizers " in shown
    )
    results = json.loads((tmp_path / "out" / "mine" / "results.json").read_text())
    assert sorted(results["arms"]) == ["adam", "signsgd"]
    assert all(len(arm["runs"]) == 2 for arm in results["arms"].values())
