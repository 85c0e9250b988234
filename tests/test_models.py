"""Networks as an argument: the built-ins, a module of the user's, the GRU written from matrix
products against ``nn.GRU``, populations of every architecture against separate runs, and the
nets that cannot run as a population (refused, or trained one run at a time)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MNIST1D, TINY_SAMPLES, one_thread, quiet_trainer
from lightning.pytorch import seed_everything
from torch import Tensor, nn

from lightning_opt.cli.main import cli_main
from lightning_opt.clipping.callbacks import WeightNormClipping
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.experiments.finals import EpochHistory
from lightning_opt.models import GRULayer, list_nets, resolve_net
from lightning_opt.population import PopulationClassifier
from lightning_opt.population.stacking import StackedModule, why_not_stackable
from lightning_opt.training.classifier import MNIST1DClassifier

pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")


class TinyResNet1d(nn.Module):
    """A net this package knows nothing about: a conv stem, one residual conv block, a head."""

    def __init__(self, input_size: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, width, 3, padding=1)
        self.block = nn.Conv1d(width, width, 3, padding=1)
        self.head = nn.Linear(width * input_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x.unsqueeze(-2)).relu()
        h = h + self.block(h).relu()
        return self.head(h.flatten(-2))


class TorchGRUNet(nn.Module):
    """A net around ``nn.GRU``, which has no vmap batching rule."""

    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, 4, batch_first=True)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x.unsqueeze(-1))[0][:, -1])


class DropoutNet(nn.Module):
    def __init__(self, input_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, 16), nn.Dropout(0.5))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


USER_NET = f"{__name__}.TinyResNet1d"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


# -- the GRU written from matmuls is nn.GRU ----------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gru_layer_is_nn_gru(bidirectional):
    torch.manual_seed(0)
    ours = GRULayer(1, 6, bidirectional).double()
    torch.manual_seed(0)
    theirs = nn.GRU(1, 6, batch_first=True, bidirectional=bidirectional).double()
    # The same names, shapes and initialisation (same seed, same order), so weights move both ways.
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():  # other weights than the initial ones
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 40, 1, dtype=torch.float64)
    out, expected = ours(x), theirs(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    out.square().sum().backward()
    expected.square().sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11)


# -- the registry ----------------------------------------------------------------------------


def test_built_in_nets_are_registered_and_spelled_out():
    assert list_nets() == ["cnn", "gru", "linear", "mlp", "resmlp"]
    _, config = resolve_net("cnn")
    assert config == {
        "class_path": "lightning_opt.models.cnn.ConvNet",
        "init_args": {"channels": 25},
    }
    _, config = resolve_net({"class_path": USER_NET, "init_args": {"width": 4}})
    assert config["init_args"] == {"width": 4}
    with pytest.raises(ValueError, match=r"unknown net .resnet.; .* one of: cnn, gru, linear, mlp"):
        resolve_net("resnet")
    with pytest.raises(ValueError, match="TinyResNet1d takes no argument depth"):
        resolve_net({"class_path": USER_NET, "init_args": {"depth": 2}})


@pytest.mark.parametrize(
    ("net", "parameters", "accuracy_class"),
    [("linear", 410, "LinearNet"), ("mlp", 5110, "MLP"), ("cnn", 5210, "ConvNet")],
)
def test_built_ins_have_the_papers_sizes(net, parameters, accuracy_class):
    model = MNIST1DClassifier(**MNIST1D, net=net)
    assert type(model.net).__name__ == accuracy_class
    assert sum(p.numel() for p in model.net.parameters()) == parameters
    assert model(torch.zeros(3, 40)).shape == (3, 10)


def test_gru_head_reads_every_time_step():
    model = MNIST1DClassifier(**MNIST1D, net="gru")
    assert model.net.linear.in_features == 2 * 6 * 40
    assert model(torch.zeros(3, 40)).shape == (3, 10)


# -- population member k is the separate run of its seed, for every architecture -------------

NETS = {
    "mlp": "mlp",
    "resmlp": {"class_path": "resmlp", "init_args": {"width": 32}},
    "cnn": {"class_path": "cnn", "init_args": {"channels": 8}},
    "gru": {"class_path": "gru", "init_args": {"hidden_size": 3}},
    "user": {"class_path": USER_NET, "init_args": {"width": 4}},
}


def _single_run(data, net, seed, lr, clip_factor, epochs) -> list[float]:
    seed_everything(seed, verbose=False)
    model = MNIST1DClassifier(
        **MNIST1D, net=net, optimizer={"class_path": "adam", "init_args": {"lr": lr}}
    )
    history = EpochHistory()
    clipper = WeightNormClipping(clip_factor=clip_factor)
    quiet_trainer(epochs, callbacks=[history, clipper]).fit(model, datamodule=data)
    return history.val_loss


@pytest.mark.parametrize("name", list(NETS))
def test_population_members_are_their_separate_runs(name, data_cache):
    """float64, 10 epochs, per-member lr and weight-norm clipping (conv kernels and GRU
    matrices included): each member's validation curve within 1e-6 of its own fit."""
    net, epochs, seeds = NETS[name], 10, [3, 11]
    lrs, factors = [0.01, 0.003], [0.05, 0.5]
    samples = TINY_SAMPLES if name == "gru" else 1000  # a GRU step costs ~25 ms
    data = MNIST1DDataModule(num_samples=samples, cache_dir=str(data_cache), batch_size=100)
    population = PopulationClassifier(
        seeds, **MNIST1D, net=net, optimizer="adam",
        member_hparams={"lr": lrs, "clip_factor": factors},
    )  # fmt: skip
    assert population.stacked is not None  # Adam's stacked fast path over any net's parameters
    quiet_trainer(epochs, callbacks=[WeightNormClipping(clip_factor=1e6)]).fit(
        population, datamodule=data
    )
    for k, seed in enumerate(seeds):
        expected = _single_run(data, net, seed, lrs[k], factors[k], epochs)
        actual = population.history[k]["val/loss"]
        assert len(actual) == epochs
        for epoch, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert math.isfinite(a) and abs(a - e) <= 1e-6 * abs(e), (name, k, epoch, a, e)


def test_stacked_module_keeps_the_single_nets_names_and_runs_each_member():
    nets = [TinyResNet1d(40, 10) for _ in range(3)]
    stacked = StackedModule(nets)
    assert [n for n, _ in stacked.named_parameters()] == [n for n, _ in nets[0].named_parameters()]
    assert stacked.stem.weight.shape == (3, *nets[0].stem.weight.shape)
    x = torch.randn(3, 7, 40)
    out = stacked(x)  # each member its own examples
    shared = stacked(x[0])  # every member the same examples
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x[k]))
        torch.testing.assert_close(shared[k], net(x[0]))


# -- nets that cannot run as members ----------------------------------------------------------


def test_why_not_stackable_names_the_reason():
    assert why_not_stackable(TinyResNet1d(40, 10), 40) is None
    assert "does not run under torch.vmap" in why_not_stackable(TorchGRUNet(40, 10), 40)
    assert "has dropout" in why_not_stackable(DropoutNet(40, 10), 40)
    batchnorm = nn.Sequential(nn.Linear(40, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    assert "keeps buffers (1.running_mean" in why_not_stackable(batchnorm, 40)
    with pytest.raises(ValueError, match=r"has dropout .*: train it one run at a time"):
        PopulationClassifier([0, 1], **MNIST1D, net=f"{__name__}.DropoutNet")


def test_fit_seeds_refuses_a_net_without_vmap_in_one_line(tiny_fit_args, capsys):
    net = f"{__name__}.TorchGRUNet"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_fit_args, f"--model.net={net}", "--seeds=[0,1]"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TorchGRUNet does not run under torch.vmap" in err[0]


def test_tune_trains_one_trial_at_a_time_when_the_net_cannot_vmap(tmp_path, data_cache, capsys):
    from conftest import tune_args

    net = f"{__name__}.TorchGRUNet"
    args = [*tune_args(tmp_path, data_cache), f"--model.net={net}", "--trainer.max_epochs=1"]
    cli_main(["tune", *args, "--n_trials=2", "--population=2"])
    out = capsys.readouterr().out
    assert "TorchGRUNet does not run under torch.vmap" in out
    assert "the trials run one at a time (--population 2 ignored)" in out
    assert (tmp_path / "out" / "adam" / "best.yaml").exists()


# -- every built-in net and a user's module through the command line -------------------------


@pytest.mark.parametrize(
    "net_args",
    [["--model.net=linear"], ["--model.net=resmlp"], ["--model.net=cnn"],
     ["--model.net=gru", "--model.net.hidden_size=3"],
     [f"--model.net={USER_NET}", "--model.net.width=4"]],
    ids=["linear", "resmlp", "cnn", "gru", "user"],
)  # fmt: skip
def test_fit_test_predict_replay_each_net(net_args, tiny_fit_args, tmp_path):
    fit_args = [*tiny_fit_args, "--trainer.max_epochs=1", *net_args]
    cli_main(["fit", *fit_args])
    run = next((tmp_path / "logs").glob("adam/version_*"))
    ckpt = next(run.glob("checkpoints/*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]
    expected = resolve_net(net_args[0].split("=", 1)[1])[1]["class_path"]
    assert saved["class_path"] == expected
    config = run / "config.yaml"
    assert "net:" in config.read_text()
    # The saved config and checkpoint replay with the plain CLI, the net rebuilt from them.
    cli_main(["test", "--config", str(config), f"--ckpt_path={ckpt}"])
    cli_main(["predict", "--config", str(config), f"--ckpt_path={ckpt}"])
    assert list(run.parent.rglob("predictions*.csv"))


def test_a_checkpoints_net_cannot_be_swapped_by_a_flag(tiny_fit_args, tmp_path, capsys):
    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1", "--model.net=cnn"])
    ckpt = next((tmp_path / "logs").rglob("*.ckpt"))
    with pytest.raises(SystemExit):
        cli_main(["test", *tiny_fit_args, f"--ckpt_path={ckpt}", "--model.net=mlp"])
    err = capsys.readouterr().err
    assert "--model.net mlp: the weights of --ckpt_path" in err and "net='cnn'" not in err
    with pytest.raises(SystemExit):
        cli_main(["test", *tiny_fit_args, f"--ckpt_path={ckpt}", "--model.net.channels=3"])
    assert "trained with net.channels=25" in capsys.readouterr().err


def test_signal_length_follows_the_data(tiny_fit_args, tmp_path):
    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1", "--model.net=cnn",
              "--data.final_seq_length=60"])  # fmt: skip
    ckpt = next((tmp_path / "logs").rglob("*.ckpt"))
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["input_size"] == 60 and hparams["num_classes"] == 10
    # 60 -> 29 -> 15 -> 8 positions: the head takes 25 channels x 8
    weight = torch.load(ckpt, weights_only=True)["state_dict"]["net.linear.weight"]
    assert weight.shape == (10, 200)


def test_compare_records_each_arms_net(tmp_path, data_cache):
    from conftest import tune_args

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "experiment: nets\nseeds: 2\nn_trials: 2\npopulation: 2\ntune_max_epochs: 1\n"
        "arms:\n  - {name: adam_cnn, optimizer: adam}\n"
        "  - {name: adam_mlp, optimizer: adam, model: {net: mlp}}\n"
    )
    args = [*tune_args(tmp_path, data_cache), "--trainer.max_epochs=1"]
    cli_main(["compare", "--config", str(experiment), *args, "--model.net=cnn",
              "--model.net.channels=4"])  # fmt: skip
    import json

    results = json.loads((tmp_path / "out" / "nets" / "results.json").read_text())
    cnn, mlp = results["arms"]["adam_cnn"], results["arms"]["adam_mlp"]
    assert cnn["net"] == {"class_path": "lightning_opt.models.cnn.ConvNet",
                          "init_args": {"channels": 4}}  # fmt: skip
    assert mlp["net"]["class_path"] == "lightning_opt.models.mlp.MLP"
    assert all(run["net"] == cnn["net"] for run in cnn["runs"])
    markdown = (tmp_path / "out" / "nets" / "results.md").read_text()
    assert "adam_cnn: net" in markdown and "cnn (channels=4)" in markdown


@pytest.mark.parametrize("net", ["mlp", "cnn", "gru"])
def test_fast_paths_compute_what_the_generic_vmap_path_computes(net):
    """The registered fast paths (batched matmuls, im2col, one scan for all members) give the
    outputs and gradients of ``StackedModule`` (vmap) on the same members, float64."""
    from lightning_opt.models import build_net
    from lightning_opt.population.stacking import stack_nets

    cls, config = resolve_net(net)
    nets = [build_net(cls, config["init_args"], 40, 10).double() for _ in range(3)]
    fast, generic = stack_nets(nets), StackedModule(nets)
    assert type(fast) is not StackedModule
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in generic.named_parameters()]
    x = torch.randn(3, 9, 40, dtype=torch.float64)
    for inputs in (x, x[0]):  # each member its own examples, or all the same
        out_fast, out_generic = fast(inputs), generic(inputs)
        torch.testing.assert_close(out_fast, out_generic, rtol=1e-10, atol=1e-12)
        out_fast.square().sum().backward()
        out_generic.square().sum().backward()
        for a, b in zip(fast.parameters(), generic.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11)
            a.grad = b.grad = None


def test_clipping_rules_and_internals_cover_conv_and_gru_parameters(tiny_fit_args, tmp_path):
    """Unit-wise AGC (every dim but the first: conv kernels), global fixed clipping and the
    weight_norm/<param> tags, for a CNN and a GRU, single and as a population."""
    from conftest import read_scalars

    agc = ["--trainer.callbacks+=examples.agc.AGC", "--trainer.callbacks.clipping=0.01"]
    fixed = ["--trainer.callbacks+=lightning_opt.callbacks.FixedNormClipping",
             "--trainer.callbacks.clip_value=0.1", "--trainer.callbacks.mode=global"]  # fmt: skip
    for net, clip, seeds in (
        ("cnn", agc, []),
        ("gru", fixed, []),
        ("cnn", fixed, ["--seeds=[0,1]"]),
    ):
        args = [*tiny_fit_args, "--trainer.max_epochs=1", f"--model.net={net}", *clip, *seeds]
        if net == "gru":
            args.append("--model.net.hidden_size=2")
        cli_main(["fit", *args])
    runs = sorted((tmp_path / "logs" / "adam").glob("version_*"))
    cnn, gru, population = runs
    tags = read_scalars(cnn)
    assert {
        "weight_norm/conv1.weight",
        "weight_norm/conv3.bias",
        "weight_norm/linear.weight",
    } <= set(tags)
    assert 0 < tags["clip/fraction_clipped"][-1][1] <= 1
    tags = read_scalars(gru)
    assert "weight_norm/rnn.weight_hh_l0_reverse" in tags
    assert tags["clip/fraction_clipped"][-1][1] == 1.0  # a global norm of 0.1: every step clips
    member = read_scalars(population / "seed_1")
    assert "weight_norm/conv2.weight" in member and "clip/fraction_clipped" in member


def test_tune_trains_a_cnn_population(tmp_path, data_cache, capsys):
    from conftest import tune_args

    args = [*tune_args(tmp_path, data_cache), "--model.net=cnn", "--model.net.channels=4",
            "--trainer.max_epochs=1", "--n_trials=3", "--population=3"]  # fmt: skip
    cli_main(["tune", *args])
    out = capsys.readouterr().out
    assert out.count("(population of 3:") == 3
    best = (tmp_path / "out" / "adam" / "best.yaml").read_text()
    assert "class_path: lightning_opt.models.ConvNet" in best and "channels: 4" in best


def test_installed_packages_register_nets_through_entry_points(
    tmp_path, monkeypatch, tiny_fit_args
):
    """A distribution declaring ``[lightning_opt.models] tinyres = module:Class`` makes
    ``--model.net tinyres`` work."""
    from conftest import install_entry_point

    from lightning_opt.models import registry

    target = USER_NET.replace(".TinyResNet1d", ":TinyResNet1d")
    install_entry_point(
        monkeypatch, tmp_path, registry, "lightning_opt.models", f"tinyres = {target}"
    )
    assert "tinyres" in list_nets() and registry.get_net("tinyres").cls is TinyResNet1d
    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1", "--model.net=tinyres",
              "--model.net.width=2"])  # fmt: skip
    ckpt = next((tmp_path / "logs").rglob("*.ckpt"))
    net = torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]
    assert net == {"class_path": USER_NET, "init_args": {"width": 2}}


def test_an_argument_the_nets_class_lacks_is_one_line_naming_what_it_takes(tiny_fit_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_fit_args, "--model.net=cnn", "--model.net.width=3"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--model.net.width: ConvNet takes no argument 'width' (it takes: channels)" in line


@pytest.mark.parametrize("net", ["cnn", "gru", USER_NET])
def test_stacked_nets_follow_members_dropped_by_narrowing(net):
    """A population drops members by narrowing every parameter; the stacked forward (fast path
    or vmap) then runs the survivors, on shared and on per-member examples."""
    from lightning_opt.models import build_net
    from lightning_opt.population.stacking import stack_nets

    cls, config = resolve_net(net)
    nets = [build_net(cls, config["init_args"], 40, 10) for _ in range(3)]
    stacked = stack_nets(nets)
    keep = torch.tensor([0, 2])
    for p in stacked.parameters():
        p.data = p.data.index_select(0, keep)
    x = torch.randn(7, 40)
    out = stacked(x)
    assert out.shape == (2, 7, 10)
    torch.testing.assert_close(out[1], nets[2](x))
    assert stacked(torch.randn(2, 7, 40)).shape == (2, 7, 10)
