"""What a class's step needs is found by its behaviour, and a class that keeps no learning rate
trains (issue "optimizer long tail", items 3 and 5)."""

from __future__ import annotations

import torch
import yaml

from lightning_opt.cli import cli_main
from lightning_opt.models import build_net, resolve_net
from lightning_opt.optim.registry import check_optimizer


def _evaluate(closure):
    """The loss of the step's closure, if it has one (as torch's optimizers call it)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class WordedSecondOrder(torch.optim.Optimizer):
    """A Hutchinson-style step that differentiates the gradients again, refusing a gradient
    without a graph in its own words (torch-optimizer's Adahessian says "does not have
    grad_fn", not torch's "does not have a grad_fn")."""

    def __init__(self, params, lr: float = 0.01) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        for p in params:
            if p.grad.grad_fn is None:
                raise RuntimeError("Gradient tensor does not have grad_fn; set create_graph")
        with torch.enable_grad():
            probes = [torch.ones_like(p) for p in params]
            hv = torch.autograd.grad(params[0].grad.mul(probes[0]).sum(), params[0])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad / (1 + hv[0].abs().mean()))
        return loss


class KeepsNoLr(torch.optim.Optimizer):
    """A step of its own size: ``lr`` defaults to None and stays so (A2Grad, Adafactor)."""

    def __init__(self, params, lr: float | None = None, step_size: float = 0.05) -> None:
        super().__init__(params, {"lr": lr, "step_size": step_size})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["step_size"] * p.grad)
        return loss


def test_a_second_order_step_is_found_by_trying_it_whatever_its_error_says():
    spec = resolve_net("mlp")[1]
    net = build_net(resolve_net("mlp")[0], spec["init_args"], 40, 10)
    contract = check_optimizer(WordedSecondOrder, net, {"lr": 0.01}, 40, 10)
    assert contract.create_graph


def test_a_class_that_keeps_no_lr_trains_and_logs_its_internals(tmp_path, tiny_fit_args):
    path = f"{__name__}.KeepsNoLr"
    cli_main(["fit", f"--optimizer={path}", *tiny_fit_args])
    (hparams,) = (tmp_path / "logs").rglob("hparams.yaml")
    assert yaml.safe_load(hparams.read_text())["optimizer"].endswith("KeepsNoLr")
    cli_main(["fit", f"--optimizer={path}", "--seeds=[0,1]", *tiny_fit_args])
    members = {p.parent.name for p in (tmp_path / "logs").rglob("seed_*/hparams.yaml")}
    assert members == {"seed_0", "seed_1"}


class LrFreeGuess(torch.optim.SGD):
    """A default lr of 1.0 that multiplies a tiny step of its own (as Prodigy's d0 = 1e-6) and
    no declared search space: tune guesses 0.1..10."""

    def __init__(self, params, lr: float = 1.0) -> None:
        super().__init__(params, lr=lr * 1e-5)


class SignStepOfOne(torch.optim.Optimizer):
    """A default lr of 1.0 that is a plain learning rate (timm's AdafactorBigVision): its first
    step moves every weight by 1, far more than their norm, so tune keeps the usual range."""

    def __init__(self, params, lr: float = 1.0) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


class IgnoresLr(KeepsNoLr):
    """Takes an lr and never uses it (torch-optimizer's A2Grad): every trial is the same."""

    def __init__(self, params, lr: float = 0.001, step_size: float = 0.05) -> None:
        super().__init__(params, lr=lr, step_size=step_size)


def _searched_lrs(output_dir) -> list[float]:
    import optuna

    storage = f"sqlite:///{output_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    lrs = [t.params["lr"] for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert len(lrs) == 2
    return lrs


def test_tune_says_when_its_range_is_a_guess_and_when_values_change_nothing(
    tmp_path, data_cache, capsys
):
    """Issue items 2: the lr range of a class whose default lr is >= 0.5 is a guess, said in a
    line; a class that ignores the searched values reaches one value in every trial, said too."""
    from conftest import TINY_SAMPLES

    common = ["--n_trials=2", "--trainer.max_epochs=1", "--pruner=none",
              f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}"]  # fmt: skip
    cli_main(["tune", f"--optimizer={__name__}.LrFreeGuess", *common,
              f"--output_dir={tmp_path / 'a'}"])  # fmt: skip
    out = capsys.readouterr().out
    assert "LrFreeGuess's default lr 1 reads as a learning-rate-free method's multiplier (its " \
           "first step at it moved the weights by 3e-06 of their norm)" in out  # fmt: skip
    assert all(0.1 <= lr <= 10 for lr in _searched_lrs(tmp_path / "a"))
    cli_main(["tune", f"--optimizer={__name__}.SignStepOfOne", *common,
              f"--output_dir={tmp_path / 'c'}"])  # fmt: skip
    assert "multiplier" not in capsys.readouterr().out
    assert all(1e-4 <= lr <= 0.1 for lr in _searched_lrs(tmp_path / "c"))
    cli_main(
        ["tune", f"--optimizer={__name__}.IgnoresLr", *common, f"--output_dir={tmp_path / 'b'}"]
    )
    out = capsys.readouterr().out
    assert "warning: every completed trial reached" in out and "whatever its lr" in out
