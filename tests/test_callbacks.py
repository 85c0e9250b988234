"""The clipping callbacks inside a real (tiny, CPU) Lightning fit."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_opt.clipping.callbacks import (
    FixedNormClipping,
    GradientClippingCallback,
    WeightNormClipping,
)

STEPS = 4  # batches per epoch


class TinyRegression(LightningModule):
    """Linear regression on large targets, so raw gradients are far above any small threshold.

    Records, in its own ``on_before_optimizer_step`` (which runs after the callbacks'), each
    tensor's gradient and weight norm at every step.
    """

    def __init__(self, member_dims: int = 0) -> None:
        super().__init__()
        self.member_dims = member_dims
        if member_dims:  # two members: weight (2, 8, 3), bias (2, 3)
            self.weight = nn.Parameter(torch.randn(2, 8, 3) * 0.1)
            self.bias = nn.Parameter(torch.zeros(2, 3))
        else:
            self.layer = nn.Linear(8, 3)
        self.seen: list[list[tuple[Tensor, Tensor]]] = []

    def gradient_parameters(self) -> tuple[list[Tensor], int]:
        """``lightning_opt.core.protocols.GradientSource``: what the clipping rules clip, and its
        member dimensions (the stacked weights of two members, or one plain layer)."""
        return list(self.parameters()), self.member_dims

    def forward(self, x: Tensor) -> Tensor:
        if self.member_dims:
            return torch.einsum("bi,kio->kbo", x, self.weight) + self.bias[:, None]
        return self.layer(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).mean()

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen.append([(p.grad.detach().clone(), p.detach().clone()) for p in self.parameters()])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16 * STEPS, 8, generator=gen)
    y = 100.0 * torch.randn(16 * STEPS, 3, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(model: LightningModule, callbacks: list, epochs: int = 1, **trainer_kwargs) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(model, loader())
    return trainer


def norm(t: Tensor, member_dims: int = 0) -> Tensor:
    return t.flatten(member_dims).norm(dim=-1) if member_dims else t.norm()


def test_weight_norm_clipping_bounds_gradients_the_module_sees():
    clip_factor, eps = 0.05, 1e-3
    off, on = TinyRegression(), TinyRegression()
    fit(off, [])
    fit(on, [WeightNormClipping(clip_factor, eps=eps)])
    assert len(on.seen) == len(off.seen) == STEPS

    def ratios(model: TinyRegression) -> list[float]:
        return [
            (g.norm() / (clip_factor * max(w.norm(), eps))).item()
            for step in model.seen
            for g, w in step
        ]

    assert max(ratios(off)) > 10  # unclipped gradients are far above the threshold
    assert max(ratios(on)) <= 1 + 1e-5
    assert min(ratios(on)) > 1 - 1e-5  # all were above, so all sit exactly at the threshold


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_fixed_norm_clipping_bounds_gradients(mode):
    clip_value = 0.5
    model = TinyRegression()
    trainer = fit(model, [FixedNormClipping(clip_value, mode=mode)])
    for step in model.seen:
        norms = torch.stack([g.norm() for g, _ in step])
        measured = norms if mode == "per_tensor" else norms.norm()
        torch.testing.assert_close(measured, torch.full_like(measured, clip_value))
    assert trainer.callback_metrics["clip/fraction_clipped"].item() == 1.0


def test_stats_are_logged_each_epoch_with_plausible_values():
    callback = WeightNormClipping(0.05)
    trainer = fit(TinyRegression(), [callback], epochs=2)
    metrics = trainer.callback_metrics
    assert metrics["clip/fraction_clipped"].item() == 1.0  # every tensor clipped at every step
    assert 0 < metrics["clip/mean_scale"].item() < 0.5
    assert callback.clip_rate() == 1.0


def test_nothing_clipped_under_a_huge_threshold():
    callback = FixedNormClipping(1e9)
    model = TinyRegression()
    trainer = fit(model, [callback])
    assert trainer.callback_metrics["clip/fraction_clipped"].item() == 0.0
    assert trainer.callback_metrics["clip/mean_scale"].item() == 1.0
    assert callback.clip_rate() == 0.0


class WithIdleParameter(TinyRegression):
    """Adds a parameter whose gradient is always zero, so it is never clipped."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + 0 * self.idle


def test_clip_rate_counts_tensor_steps():
    callback = WeightNormClipping(0.05)
    trainer = fit(WithIdleParameter(), [callback], epochs=2)
    # weight and bias clip at every step, the idle tensor never does
    assert callback.clip_rate() == pytest.approx(2 / 3)
    assert trainer.callback_metrics["clip/fraction_clipped"].item() == pytest.approx(2 / 3)


def test_log_stats_false_logs_nothing():
    trainer = fit(TinyRegression(), [WeightNormClipping(0.05, log_stats=False)])
    assert not [k for k in trainer.callback_metrics if k.startswith("clip/")]


def test_member_dims_are_clipped_per_member():
    clip_factor = 0.05
    model = TinyRegression(member_dims=1)
    fit(model, [WeightNormClipping(clip_factor)])
    for step in model.seen:
        for g, w in step:
            threshold = clip_factor * norm(w, 1).clamp_min(1e-3)
            torch.testing.assert_close(norm(g, 1), threshold)  # (2,) per-member norms


def test_trainer_gradient_clip_val_conflicts():
    with pytest.raises(
        ValueError,
        match=r"WeightNormClipping and Trainer\(gradient_clip_val=1.0\) both clip; use one",
    ):
        fit(TinyRegression(), [WeightNormClipping(0.1)], gradient_clip_val=1.0)


def test_trainer_gradient_clip_val_zero_is_fine():
    fit(TinyRegression(), [WeightNormClipping(0.1)], gradient_clip_val=0)


def test_two_clipping_callbacks_conflict():
    with pytest.raises(
        ValueError,
        match=r"2 gradient clipping callbacks were given "
        r"\(WeightNormClipping, FixedNormClipping\); use one",
    ):
        fit(TinyRegression(), [WeightNormClipping(0.1), FixedNormClipping(1.0)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: WeightNormClipping(-1.0),
            "clip_factor must be a positive finite number, got -1.0",
        ),
        (lambda: WeightNormClipping(0.0), "clip_factor must be a positive finite number, got 0.0"),
        (lambda: WeightNormClipping(math.inf), "clip_factor must be a positive finite number"),
        (lambda: WeightNormClipping(0.1, eps=0.0), "eps must be a positive finite number, got 0.0"),
        (lambda: FixedNormClipping(-3.0), "clip_value must be a positive finite number, got -3.0"),
        (
            lambda: FixedNormClipping(math.nan),
            "clip_value must be a positive finite number, got nan",
        ),
        (
            lambda: FixedNormClipping(1.0, mode="layerwise"),
            "unknown mode 'layerwise'; choose one of: per_tensor, global",
        ),
    ],
)
def test_bad_init_args(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_built_from_yaml_like_lightning_cli():
    from jsonargparse import ArgumentError, ArgumentParser
    from lightning.pytorch import Callback

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    cfg = parser.parse_string(
        "callbacks:\n"
        "  - class_path: lightning_opt.callbacks.WeightNormClipping\n"
        "    init_args: {clip_factor: 0.1}\n"
        "  - class_path: lightning_opt.callbacks.FixedNormClipping\n"
        "    init_args: {clip_value: 2.0, mode: global}\n"
    )
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    weight, fixed = instantiate(cfg).callbacks
    assert isinstance(weight, GradientClippingCallback)
    assert (weight.clip_factor, weight.eps) == (0.1, 1e-3)
    assert (fixed.clip_value, fixed.mode) == (2.0, "global")
    with pytest.raises(ArgumentError, match="layerwise"):
        parser.parse_string(
            "callbacks:\n"
            "  - class_path: lightning_opt.callbacks.FixedNormClipping\n"
            "    init_args: {clip_value: 2.0, mode: layerwise}\n"
        )
