from pathlib import Path

import pytest
import torch
import yaml
from conftest import MNIST1D
from lightning.pytorch import Callback, Trainer

from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import MLP
from lightning_opt.optim import get_optimizer, list_optimizers
from lightning_opt.training.classifier import MNIST1DClassifier, NonFiniteLossError

CONFIGS = Path(__file__).parents[1] / "configs"


def _tiny_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 40, generator=gen)
    y = (x[:, :10].argmax(1)).long()  # learnable labels
    return x, y


def _train(model, steps, x, y):
    opt = model.configure_optimizers()
    losses = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
    return opt, losses


@pytest.mark.parametrize("name", list_optimizers())
def test_every_registered_optimizer_lowers_the_loss(name):
    torch.manual_seed(0)
    model = MNIST1DClassifier(
        **MNIST1D, optimizer=name, net={"class_path": "mlp", "init_args": {"hidden_sizes": [16]}}
    )
    _, losses = _train(model, 100, *_tiny_problem())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name", list_optimizers())
def test_every_registered_optimizer_survives_a_state_dict_round_trip(name):
    x, y = _tiny_problem()
    torch.manual_seed(0)
    straight = MNIST1DClassifier(
        **MNIST1D, optimizer=name, net={"class_path": "mlp", "init_args": {"hidden_sizes": [16]}}
    )
    _train(straight, 10, x, y)

    torch.manual_seed(0)
    first = MNIST1DClassifier(
        **MNIST1D, optimizer=name, net={"class_path": "mlp", "init_args": {"hidden_sizes": [16]}}
    )
    opt, _ = _train(first, 5, x, y)
    saved_model, saved_opt = first.state_dict(), opt.state_dict()
    resumed = MNIST1DClassifier(
        **MNIST1D, optimizer=name, net={"class_path": "mlp", "init_args": {"hidden_sizes": [16]}}
    )
    resumed.load_state_dict(saved_model)
    opt2 = resumed.configure_optimizers()
    opt2.load_state_dict(saved_opt)
    resumed.configure_optimizers = lambda: opt2
    _train(resumed, 5, x, y)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_default_learning_rates_come_from_the_seed_and_match_the_configs():
    for arm in ("adam", "gnw"):
        config = yaml.safe_load((CONFIGS / "fit" / f"{arm}.yaml").read_text())
        assert config["optimizer"]["class_path"] == arm
        assert config["optimizer"]["init_args"]["lr"] == get_optimizer(arm).defaults["lr"]
        model = MNIST1DClassifier(
            **MNIST1D, optimizer=arm
        )  # a short name alone takes the seed's lr
        assert model.optimizer_kwargs["lr"] == get_optimizer(arm).defaults["lr"]
    assert get_optimizer("adam").defaults["lr"] == 0.00624  # seed note 000
    assert get_optimizer("gnw").defaults["lr"] == 0.00585


def test_hyperparameters_reach_the_optimizer():
    gnw = {"class_path": "gnw", "init_args": {"lr": 0.01, "gamma": 2.0, "betas": (0.8, 0.9)}}
    group = MNIST1DClassifier(**MNIST1D, optimizer=gnw).configure_optimizers().param_groups[0]
    assert (group["lr"], group["gamma"], group["betas"]) == (0.01, 2.0, (0.8, 0.9))
    sgd = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.1, "nesterov": True, "momentum": 0.5},
    }
    opt = MNIST1DClassifier(**MNIST1D, optimizer=sgd).configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["nesterov"]) == (0.5, True)
    # every constructor default is written out: what hparams.yaml shows
    model = MNIST1DClassifier(**MNIST1D, optimizer="torch.optim.RAdam")
    assert model.hparams.optimizer["init_args"]["decoupled_weight_decay"] is False


def opt(name: str, **init_args) -> dict:
    return {"class_path": name, "init_args": init_args}


def test_mlp_shape():
    net = MLP(40, 10, [32, 16], "gelu")
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert net(torch.zeros(3, 40)).shape == (3, 10)


def mlp(**init_args):
    return {"net": {"class_path": "mlp", "init_args": init_args}}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"optimizer": "adamm"},
            r"unknown optimizer 'adamm'; give a class path .* or one of: adam, adamw, gnw, sgd",
        ),
        ({"optimizer": opt("adam", lr=-1e-3)}, r"Adam\(lr=-0.001.*Invalid learning rate: -0.001"),
        ({"optimizer": opt("adam", eps=-1.0)}, "Invalid epsilon value: -1.0"),
        ({"optimizer": opt("adam", betas=(0.9, 1.0))}, r"Invalid beta parameter at index 1: 1.0"),
        ({"optimizer": opt("gnw", gamma=0.0)}, r"GNWAdam\(.*Invalid gamma value: 0.0"),
        ({"optimizer": opt("sgd", weight_decay=-1.0)}, "Invalid weight_decay value: -1.0"),
        ({"optimizer": opt("adam", momentum=0.9)}, "unexpected keyword argument 'momentum'"),
        ({"optimizer": opt("torch.optim.Nope")}, "cannot import 'torch.optim.Nope'"),
        ({"optimizer": "torch.nn.Linear"}, "torch.nn.Linear is not a torch.optim.Optimizer"),
        (mlp(hidden_sizes=[]), "hidden_sizes must be a non-empty list of positive integers, got"),
        (mlp(hidden_sizes=[100, 0]), r"hidden_sizes must be .*, got \[100, 0\]"),
        (mlp(activation="swish"), "unknown activation 'swish'; choose one of: relu, gelu"),
        ({"net": "cnnn"}, "unknown net 'cnnn'; give a class path .* or one of: cnn, gru, linear"),
        ({"net": {"class_path": "cnn", "init_args": {"width": 3}}}, "ConvNet takes no argument"),
        ({"net": {"class_path": "cnn", "init_args": {"channels": 0}}}, "channels must be a posi"),
        ({"net": "torch.optim.Adam"}, "torch.optim.Adam is not a torch.nn.Module subclass"),
        (
            {"net": "torch.nn.Identity"},
            r"Identity maps a batch of 2 signals of length 40 to \(2, 40\)",
        ),
        (
            {"net": {"class_path": "torch.nn.Conv1d", "init_args": {"kernel_size": 3}}},
            "Conv1d fails on a batch of 2 signals of length 40: RuntimeError",
        ),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNIST1DClassifier(**MNIST1D, **kwargs)


def test_non_finite_loss_stops_the_run_and_names_the_step(data_cache):
    data = MNIST1DDataModule(num_samples=500, batch_size=50, cache_dir=str(data_cache))
    model = MNIST1DClassifier(**MNIST1D, optimizer=opt("sgd", lr=1e6, momentum=0.0))
    trainer = Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite at global step \d+ \(epoch 0\)"):
        trainer.fit(model, datamodule=data)
    assert trainer.current_epoch == 0  # stopped at the end of the first epoch, not after 3


class _CountingHooks(Callback):
    """Overrides on_after_backward, which makes the model take Lightning's own stepping path."""

    def __init__(self) -> None:
        self.backward = self.before_step = 0

    def on_after_backward(self, trainer, pl_module):
        self.backward += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step += 1


class _CountingStep(Callback):
    def __init__(self) -> None:
        self.before_step = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step += 1


@pytest.mark.parametrize("clipping", [False, True])
def test_direct_stepping_equals_lightnings_path(data_cache, clipping):
    """The direct path (loss.backward, hooks, optimizer.step, the loop's step count) gives the
    numbers, global_step and hook calls of manual_backward + LightningOptimizer.step."""
    from lightning_opt.clipping.callbacks import WeightNormClipping

    runs = {}
    for path, counter in (("direct", _CountingStep()), ("lightning", _CountingHooks())):
        torch.manual_seed(0)
        data = MNIST1DDataModule(num_samples=500, batch_size=50, cache_dir=str(data_cache))
        model = MNIST1DClassifier(**MNIST1D, optimizer="gnw")
        callbacks = [counter] + ([WeightNormClipping(clip_factor=0.05)] if clipping else [])
        trainer = Trainer(
            max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=callbacks,
        )  # fmt: skip
        trainer.fit(model, datamodule=data)
        assert model._direct == (path == "direct")
        assert trainer.global_step == 2 * 7 == counter.before_step  # 320 examples / 50
        assert getattr(counter, "backward", 14) == 14
        if clipping:
            assert callbacks[1].clip_rate() > 0
        runs[path] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(runs["direct"], runs["lightning"], strict=True):
        assert torch.equal(a, b)
