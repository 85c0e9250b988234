"""The MLP classifier for mnist1d, with the optimizer chosen by name.

Per-step quantities (training loss, gradient norms, GNW's effective step size) are summed on the
device and logged once per epoch, so the training step never waits on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_opt.norms import global_norm
from lightning_opt.optim.registry import get_optimizer

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run was stopped (logs are kept)."""


def build_mlp(
    input_size: int, hidden_sizes: Sequence[int], num_classes: int, activation: str = "relu"
) -> nn.Sequential:
    """``Linear -> activation`` for each hidden size, then a ``Linear`` to the class logits."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    sizes = list(hidden_sizes)
    if not sizes or any(not isinstance(h, int) or h < 1 for h in sizes):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive integers, got {sizes}")
    layers: list[nn.Module] = []
    width = input_size
    for h in sizes:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class _EpochSums:
    """Per-epoch running sums of on-device scalars; read (one host sync) at epoch end."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor, weight: int = 1) -> None:
        value = value.detach() * weight
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + weight

    def pop_means(self) -> dict[str, Tensor]:
        means = {k: s / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


class MNIST1DClassifier(LightningModule):
    """An MLP on mnist1d trained with a registered optimizer.

    Optimizer hyperparameters left at ``None`` take the optimizer's registered default
    (``python -m lightning_opt fit --optimizer gnw`` uses the GNW-Adam seed note's tuned lr);
    setting one the chosen optimizer does not take is an error.

    Args:
        optimizer: registry name: adam, adamw, sgd, gnw (see ``lightning_opt.optim.list_optimizers``).
        lr: base learning rate (``None`` = the optimizer's default).
        weight_decay: L2 penalty (decoupled for adamw); ``0`` turns it off.
        betas: Adam's moment decay rates, each in [0, 1).
        eps: Adam's denominator term.
        momentum: SGD momentum in [0, 1).
        gamma: GNW-Adam's scale: step size ``lr * gamma / (gamma + ||g||)``.
        hidden_sizes: width of each hidden layer (mnist1d's reference MLP: one layer of 100).
        activation: relu, gelu, tanh or silu.
        input_size: length of an mnist1d signal (40 with the default generation arguments).
        num_classes: number of classes (10 digits).
        log_internals: log gradient norms, effective step size and per-layer weight norms each epoch.
    """

    def __init__(
        self,
        optimizer: str = "adam",
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        momentum: float | None = None,
        gamma: float | None = None,
        hidden_sizes: list[int] = [100],  # noqa: B006  (LightningCLI shows the default in --help)
        activation: str = "relu",
        input_size: int = 40,
        num_classes: int = 10,
        log_internals: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Resolve now so an unknown name or a bad value fails before any training.
        self.optimizer_spec = get_optimizer(optimizer)
        self.optimizer_kwargs = self.optimizer_spec.resolve(self._optimizer_overrides())
        self.net = build_mlp(input_size, hidden_sizes, num_classes, activation)
        self.accuracy = nn.ModuleDict(
            {
                stage: MulticlassAccuracy(num_classes=num_classes, average="micro")
                for stage in ("val", "test")
            }
        )
        self._epoch = _EpochSums()
        # The first global step with a non-finite loss (-1: none); moves with the module.
        self.register_buffer("_first_bad_step", torch.tensor(-1), persistent=False)
        self.best_val_loss = float("inf")

    @property
    def first_nonfinite_step(self) -> int | None:
        """The first global step whose training loss was NaN or infinite (syncs), else None."""
        step = int(self._first_bad_step)
        return step if step >= 0 else None

    def _optimizer_overrides(self) -> dict:
        hp = self.hparams
        names = ("lr", "weight_decay", "betas", "eps", "momentum", "gamma")
        return {name: hp[name] for name in names}

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_spec.factory(self.parameters(), **self.optimizer_kwargs)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if stage != "train":
            accuracy = self.accuracy[stage]
            accuracy(logits, y)
            self.log(f"{stage}/loss", loss, batch_size=len(y), prog_bar=stage == "val")
            self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")
        return loss

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        self._epoch.add("train/loss", loss, weight=len(batch[1]))
        # Remember the first global step whose loss is not finite, without a host sync.
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(bad, self.global_step, self._first_bad_step)
        return loss

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _grads(self) -> list[Tensor]:
        return [p.grad for p in self.parameters() if p.grad is not None]

    @override
    def on_after_backward(self) -> None:
        # Runs inside the closure, before any clipping callback.
        if self.hparams.log_internals and (grads := self._grads()):
            self._epoch.add("optim/grad_norm_before_clip", global_norm(grads))

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after the clipping callbacks' on_before_optimizer_step: the norm the optimizer sees.
        if self.hparams.log_internals and (grads := self._grads()):
            self._epoch.add("optim/grad_norm_after_clip", global_norm(grads))

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.hparams.log_internals:
            return
        optimizer = self.optimizers().optimizer
        effective_lr = getattr(optimizer, "effective_lr", None)
        if effective_lr is not None and (value := effective_lr()) is not None:
            self._epoch.add("optim/effective_lr", value)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics.get("val/loss")
        if val_loss is not None:
            self.best_val_loss = min(self.best_val_loss, float(val_loss))

    @override
    def on_train_epoch_end(self) -> None:
        first_bad = self.first_nonfinite_step
        if first_bad is not None:
            raise NonFiniteLossError(
                f"training loss became non-finite at global step {first_bad} "
                f"(epoch {self.current_epoch}); lower the learning rate or add clipping"
            )
        metrics = self._epoch.pop_means()
        if self.hparams.log_internals:
            metrics["optim/lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
            for name, param in self.net.named_parameters():
                metrics[f"weight_norm/{name}"] = torch.linalg.vector_norm(param.detach())
        self.log_dict(metrics, prog_bar=False)

    @override
    def on_train_end(self) -> None:
        # The HPARAMS dashboard: hyperparameters together with the run's final metrics.
        if self.logger is None:
            return
        metrics = self.trainer.callback_metrics
        results = {
            "hp/val_loss": float(metrics.get("val/loss", float("nan"))),
            "hp/val_acc": float(metrics.get("val/acc", float("nan"))),
            "hp/best_val_loss": self.best_val_loss,
        }
        params = {"optimizer": self.hparams.optimizer, **self.optimizer_kwargs}
        params["hidden_sizes"] = str(list(self.hparams.hidden_sizes))
        if self.trainer.datamodule is not None:
            params.update({f"data/{k}": v for k, v in self.trainer.datamodule.hparams.items()})
        for callback in self.trainer.callbacks:
            params.update(getattr(callback, "hparams_for_logging", dict)())
        self.logger.log_hyperparams(params, results)
