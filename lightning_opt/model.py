"""The MLP classifier for mnist1d, with any ``torch.optim.Optimizer`` by class path or short name.

Training uses manual optimization: one Lightning batch can hold many minibatches
(``MiniBatches``), and ``training_step`` takes one optimizer step per minibatch, so Lightning's
per-batch machinery does not dominate a tiny model's step. Per-step quantities (training loss,
gradient norms, GNW's effective step size) are summed on the device and logged once per epoch,
so the training step never waits on the host.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.data import MiniBatches
from lightning_opt.models import NetFactory, build_net, resolve_net
from lightning_opt.norms import global_norm
from lightning_opt.optim.registry import check_optimizer, resolve_optimizer
from lightning_opt.optim.schedulers import (
    check_scheduler,
    needs_metric,
    resolve_scheduler,
    step_scheduler,
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run was stopped (logs are kept)."""


class EpochSums:
    """Per-epoch running sums of on-device scalars; read (one host sync) at epoch end."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add_total(self, name: str, total: Tensor, count: int) -> None:
        """Add ``total``, the sum of ``count`` values."""
        total = total.detach()
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.counts[name] = self.counts.get(name, 0) + count

    def pop_mean(self, name: str) -> Tensor:
        return self.sums.pop(name) / self.counts.pop(name)

    def pop_means(self) -> dict[str, Tensor]:
        means = {k: s / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class MinibatchTraining:
    """The training loop shared by the single model and the population (``member_dims`` 0 or 1).

    One Lightning batch is a ``MiniBatches`` chunk; ``_train_chunk`` takes one optimizer step per
    minibatch and sums per-step values (training loss, gradient norms, GNW's effective step size)
    on the device, for the epoch-end logging. Subclasses give ``_minibatch_loss`` (each member's
    mean loss: 0-dim, or ``(K,)``) and keep the sums in ``_epoch`` (an ``EpochSums``) and a
    ``_first_bad_step`` buffer.

    **Direct stepping.** Under manual optimization ``manual_backward`` and
    ``LightningOptimizer.step`` route every step through the strategy and precision plugin and
    dispatch five hooks to every callback, about half of a tiny model's step. With one device,
    full precision (32 or 64 bit) and no ``on_before_backward`` / ``on_after_backward`` /
    ``backward`` overrides, that machinery reduces to ``loss.backward()``, the
    ``on_before_optimizer_step`` hooks (callbacks first, then the module: the clipping callbacks
    run there) and ``optimizer.step()``, with the loop's own step counting around it
    (``global_step``, checkpoints and the profiler see every step). That is what runs then; any
    other setting takes Lightning's path.
    """

    member_dims = 0
    _BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")

    def _minibatch_loss(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _add_total(self, name: str, total: Tensor, count: int) -> None:
        self._epoch.add_total(name, total, count)

    def _start_training(self) -> None:
        """Call from ``on_train_start``."""
        from lightning.pytorch import Callback
        from lightning.pytorch.plugins.precision import DoublePrecision, Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy
        from lightning.pytorch.utilities.model_helpers import is_overridden

        trainer = self.trainer
        callbacks = trainer.callbacks
        self._params = list(self.net.parameters())  # walking the module tree costs ~70 us a step
        self._clipping = any(isinstance(c, GradientClippingCallback) for c in callbacks)
        self._clipped_norms: list[Tensor] = []
        backward_hooked = any(
            is_overridden(hook, cb, Callback) for hook in self._BACKWARD_HOOKS for cb in callbacks
        ) or any(
            is_overridden(hook, self, LightningModule)
            for hook in (*self._BACKWARD_HOOKS, "backward")
        )
        self._direct = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.precision_plugin) in (Precision, DoublePrecision)
            and not backward_hooked
        )
        self._before_step_hooks = [
            cb.on_before_optimizer_step
            for cb in callbacks
            if is_overridden("on_before_optimizer_step", cb, Callback)
        ]
        schedulers = self.lr_schedulers()
        self._schedulers = [] if schedulers is None else list(_as_list(schedulers))
        self._step_schedulers = bool(self._schedulers) and self.hparams.lr_interval == "step"
        self._validated = False

    def _scheduler_step(self) -> None:
        """Step the LR schedulers (manual optimization: Lightning leaves it to the module). A
        ``ReduceLROnPlateau`` steps only after a validation, with its ``val/loss``."""
        for scheduler in self._schedulers:
            metric = None
            if needs_metric(scheduler):
                if not self._validated:
                    continue
                metric = self._plateau_metric()
            step_scheduler(scheduler, metric)
        self._validated = False

    def _plateau_metric(self) -> Tensor:
        return self.trainer.callback_metrics["val/loss"]

    def _current_lr(self) -> Any:
        return self.optimizers().param_groups[0]["lr"]

    def _logged_lr(self) -> Any:
        """The learning rate of the epoch's last step (a step-interval scheduler has moved on)."""
        return self._lr_used if self._step_schedulers else self._current_lr()

    def _epoch_end_schedulers(self) -> None:
        """Call last in ``on_train_epoch_end``: after validation and the epoch's logging, as
        Lightning steps an epoch-interval scheduler."""
        if self._schedulers and self.hparams.lr_interval == "epoch":
            self._scheduler_step()

    def _lightning_step(self) -> int:
        """The step Lightning's logger connector gives ``self.log`` values right now: epoch-end
        values go to this minus one, the index of the epoch's last batch (with one minibatch per
        batch, the last optimizer step's). Everything the model logs itself uses the same x-axis."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

    def _zero_grad(self, optimizer: Any) -> None:
        optimizer.zero_grad()

    def _share_grads(self) -> None:
        """After backward: hand the gradients to the optimizer's parameters where they are not
        the module's own (a population with one optimizer per member)."""

    def gradient_parameters(self) -> tuple[list[Tensor], int]:
        """The tensors whose gradients clipping acts on, and how many leading member dims they
        have (a population's stacked parameters: 1)."""
        return self._params, self.member_dims

    def _grads(self) -> list[Tensor]:
        return [p.grad for p in self._params if p.grad is not None]

    def _step(self, optimizer: Any) -> None:
        """``optimizer.step()`` of the ``LightningOptimizer`` ``optimizer``."""
        if not self._direct:
            optimizer.step()
            return
        raw = optimizer.optimizer
        optimizer._on_before_step()  # the manual-optimization loop counts the step
        for hook in self._before_step_hooks:
            hook(self.trainer, self, raw)
        self.on_before_optimizer_step(raw)
        raw.step()
        optimizer._on_after_step()

    def _record_clipped_norm(self) -> None:
        """From ``on_before_optimizer_step``, after the clipping callbacks': the norm the
        optimizer sees."""
        if self.hparams.log_internals and self._clipping:
            self._clipped_norms.append(global_norm(self._grads(), self.member_dims))

    def _train_chunk(self, batch: tuple[Tensor, Tensor] | MiniBatches) -> None:
        optimizer = self.optimizers()
        effective_lr = getattr(optimizer.optimizer, "effective_lr", None)
        internals = self.hparams.log_internals
        first_step = self.global_step
        losses, sizes, before, after, lrs = [], [], [], [], []
        for x, y in batch if isinstance(batch, MiniBatches) else [batch]:
            loss = self._minibatch_loss(x, y)
            self._zero_grad(optimizer)
            total = loss.sum()  # a population's sum gives each member its own gradient
            if self._direct:
                total.backward()
            else:
                self.manual_backward(total)
            self._share_grads()
            if internals:
                before.append(global_norm(self._grads(), self.member_dims))
            self._step(optimizer)  # the clipping callbacks run first, in on_before_optimizer_step
            if self._step_schedulers:
                self._lr_used = self._current_lr()  # what optim/lr reports for this epoch
                self._scheduler_step()
            losses.append(loss.detach())
            sizes.append(y.shape[self.member_dims])
            lr = effective_lr() if internals and effective_lr is not None else None
            if lr is not None:
                lrs.append(lr.expand(loss.shape))
                after.append(optimizer.optimizer.last_grad_norm)  # the norm GNW-Adam used
            elif internals:
                after.append(self._clipped_norms.pop() if self._clipped_norms else before[-1])
        if len(losses) > 1:
            # A chunk of n minibatches is n optimizer steps: Lightning counted one batch, so its
            # loggers' x-axis (the step of epoch-level values) moves on by the other n - 1, and
            # every scalar lands where one-minibatch batches would put it.
            self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(losses) - 1
        # Added step by step, in order: the epoch's sums are the same bits whether a Lightning
        # batch holds one minibatch or many.
        per_step = (
            ("optim/grad_norm_before_clip", before),
            ("optim/grad_norm_after_clip", after),
            ("optim/effective_lr", lrs),
        )
        for i, (loss, size) in enumerate(zip(losses, sizes, strict=True)):
            self._add_total("train/loss", loss * size, size)
            for name, values in per_step:
                if values:
                    self._add_total(name, values[i], 1)
        losses = torch.stack(losses)  # (steps,) or (steps, K)
        # Remember the first global step whose loss is not finite, without a host sync.
        bad = ~torch.isfinite(losses)
        first = torch.where(bad.any(0), first_step + bad.int().argmax(0), -1)
        self._first_bad_step = torch.where(self._first_bad_step < 0, first, self._first_bad_step)


def resolve_net_argument(net: Any, hparams: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and spelled-out ``{class_path, init_args}`` of a module's ``net`` argument.

    LightningCLI hands the module a factory (the class with its ``--model.net.ARG`` values
    bound) and records the parsed ``{class_path, init_args}`` in ``hparams``: the record is what
    is resolved, so checkpoints and ``config.yaml`` replay it.
    """
    recorded = hparams.get("net", net)
    if callable(recorded) and not isinstance(recorded, type):
        raise ValueError(
            "net must be a short name, a class path or {class_path, init_args}, "
            f"got the callable {recorded!r}"
        )
    return resolve_net(recorded)


class MNIST1DClassifier(MinibatchTraining, LightningModule):
    """Any network on mnist1d trained with any ``torch.optim.Optimizer``.

    Args:
        net: the network: a short name (linear, mlp, resmlp, cnn, gru:
            ``lightning_opt.models.list_nets``), a class path (``my_nets.TinyResNet1d``) or
            ``{class_path, init_args}``; on the command line ``--model.net NAME`` and
            ``--model.net.ARG VALUE`` (the class's own arguments). The class is called as
            ``cls(input_size, num_classes, **init_args)``.
        optimizer: a short name (adam, adamw, sgd, gnw: ``lightning_opt.optim.list_optimizers``),
            a class path (``my_opts.Lion``), or ``{class_path, init_args}``. On the command line
            it is set with ``--optimizer`` / ``--optimizer.ARG`` (the class's own arguments).
        lr_scheduler: ``None`` (a constant learning rate), or any torch LR scheduler as a class
            path or ``{class_path, init_args}`` (``--lr_scheduler`` / ``--lr_scheduler.ARG``).
        lr_interval: step the scheduler after every ``step`` or at the end of every ``epoch``
            (after validation: ``ReduceLROnPlateau`` follows ``val/loss``).
        input_size: length of an mnist1d signal; the command line links it to the data
            (``--data.final_seq_length``).
        num_classes: number of classes; the command line links it to the data (10 digits).
        log_internals: log gradient norms, effective step size and per-layer weight norms each epoch.
    """

    def __init__(
        self,
        net: NetFactory = "mlp",  # type: ignore[assignment]  (a name or {class_path, init_args} too)
        optimizer: str | dict[str, Any] = "adam",
        lr_scheduler: str | dict[str, Any] | None = None,
        lr_interval: Literal["epoch", "step"] = "epoch",
        *,
        input_size: int,
        num_classes: int,
        log_internals: bool = True,
    ) -> None:
        super().__init__()
        self.optimizer_class, resolved = resolve_optimizer(optimizer)
        scheduler = resolve_scheduler(lr_scheduler)
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        # Logged flat and resolved by the model itself (on_train_start), not as Lightning would
        # log them (nested, with LightningCLI's _instantiator).
        self.save_hyperparameters(logger=False)
        self.net_class, self.hparams.net = resolve_net_argument(net, self.hparams)
        self.hparams.optimizer = resolved  # the class path and every argument, defaults included
        self.optimizer_kwargs = resolved["init_args"]
        self.scheduler_class, self.hparams.lr_scheduler = scheduler or (None, None)
        if scheduler is not None:
            check_scheduler(self.scheduler_class, self.hparams.lr_scheduler["init_args"])
        self.net = build_net(self.net_class, self.hparams.net["init_args"], input_size, num_classes)
        # Its own constructor checks the arguments now, before any training.
        check_optimizer(self.optimizer_class, self.net.parameters(), self.optimizer_kwargs)
        self.accuracy = nn.ModuleDict(
            {
                stage: MulticlassAccuracy(num_classes=num_classes, average="micro")
                for stage in ("val", "test")
            }
        )
        self.automatic_optimization = False  # training_step steps once per minibatch
        self._epoch = EpochSums()
        self._clipping, self._clipped_norms = False, []
        # The first global step with a non-finite loss (-1: none); moves with the module.
        self.register_buffer("_first_bad_step", torch.tensor(-1), persistent=False)
        self.best_val_loss = float("inf")
        #: Each epoch's means of the logged optim/* values (the report's internals curves).
        self.internals_history: dict[str, list[float]] = {}

    @property
    def first_nonfinite_step(self) -> int | None:
        """The first global step whose training loss was NaN or infinite (syncs), else None."""
        step = int(self._first_bad_step)
        return step if step >= 0 else None

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_class(self.parameters(), **self.optimizer_kwargs)
        if self.scheduler_class is None:
            return optimizer
        scheduler = self.scheduler_class(optimizer, **self.hparams.lr_scheduler["init_args"])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval},
        }

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if stage != "train":
            accuracy = self.accuracy[stage]
            accuracy.update(logits, y)
            self.log(f"{stage}/loss", loss, batch_size=len(y), prog_bar=stage == "val")
            self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")
        return loss

    @override
    def training_step(self, batch: tuple[Tensor, Tensor] | MiniBatches, batch_idx: int) -> None:
        """One optimizer step per minibatch (a ``MiniBatches`` chunk holds several)."""
        self._train_chunk(batch)

    def _minibatch_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self._shared_step((x, y), "train")

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Each example's label and class probabilities (``predict`` writes them as CSV)."""
        x, y = batch
        return {"label": y, "probs": self(x).softmax(-1)}

    @override
    def on_train_start(self) -> None:
        self._start_training()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a population's checkpoint (``ValueError``)."""
        population = checkpoint.get("population")
        if population is not None:
            raise ValueError(
                f"the checkpoint holds a population of seeds {population['seeds']}: load it with "
                f"--seeds {population['seeds']} (PopulationClassifier)"
            )

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._record_clipped_norm()

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics.get("val/loss")
        if val_loss is not None:
            self.best_val_loss = min(self.best_val_loss, float(val_loss))
            self._validated = True

    @override
    def on_train_epoch_end(self) -> None:
        first_bad = self.first_nonfinite_step
        if first_bad is not None:
            raise NonFiniteLossError(
                f"training loss became non-finite at global step {first_bad} "
                f"(epoch {self.current_epoch}); lower the learning rate or add clipping"
            )
        means = self._epoch.pop_means()
        self.log("train/loss", means.pop("train/loss"), prog_bar=True)  # monitors can use it
        if self.hparams.log_internals:
            self._log_internals(means)
        self._epoch_end_schedulers()

    def _log_internals(self, means: dict[str, Tensor]) -> None:
        # The internals go straight to the loggers in one call: self.log costs ~0.4 ms per
        # metric, which would dominate a tiny model's epoch.
        names = [f"weight_norm/{name}" for name, _ in self.net.named_parameters()]
        norms = torch._foreach_norm([p.detach() for p in self._params])
        values = torch.stack([*means.values(), *norms]).tolist()  # one host sync
        internals = dict(zip([*means, *names], values, strict=True))
        internals["optim/lr"] = float(self._logged_lr())
        for name, value in internals.items():
            if name.startswith("optim/"):
                self.internals_history.setdefault(name, []).append(value)
        for logger in self.loggers:
            logger.log_metrics(internals, step=self._lightning_step() - 1)

    @override
    def on_fit_start(self) -> None:
        # Every logger gets the run's settings when it starts (TensorBoard writes hparams.yaml
        # from the first call); on_train_end adds the final metrics.
        params = run_hparams(self, self.optimizer_kwargs, seed=_global_seed())
        for logger in self.loggers:
            logger.log_hyperparams(params)

    @override
    def on_train_end(self) -> None:
        # The HPARAMS dashboard: hyperparameters together with the run's final metrics.
        if not self.loggers:
            return
        metrics = self.trainer.callback_metrics
        results = {
            "hp/val_loss": float(metrics.get("val/loss", float("nan"))),
            "hp/val_acc": float(metrics.get("val/acc", float("nan"))),
            "hp/best_val_loss": self.best_val_loss,
        }
        params = run_hparams(self, self.optimizer_kwargs, seed=_global_seed())
        for logger in self.loggers:
            log_hyperparams(logger, params, results, self._lightning_step() - 1)


def _global_seed() -> int | None:
    """The seed ``seed_everything`` set (Lightning records it in ``PL_GLOBAL_SEED``)."""
    import os

    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def run_hparams(module: LightningModule, optimizer_kwargs: dict[str, Any], seed: Any) -> dict:
    """One run's settings for the HPARAMS tab, flat and resolved: the net's and the optimizer's
    class and every argument, the model's and the data's settings, the seed, and each callback's
    ``hparams_for_logging``. Sequences become one entry per item (``optimizer/betas.0``)."""
    hp = module.hparams
    params: dict[str, Any] = {"optimizer": hp.optimizer["class_path"], "seed": seed}
    params.update({f"optimizer/{k}": v for k, v in optimizer_kwargs.items()})
    net = hp.get("net")
    if isinstance(net, dict):  # the net's class and every argument, as the optimizer's
        params["net"] = net["class_path"]
        params.update({f"net/{k}": v for k, v in net["init_args"].items()})
    params.update(
        {k: v for k, v in hp.items() if k not in ("optimizer", "net") and not k.startswith("_")}
    )
    trainer = module.trainer
    if trainer.datamodule is not None:
        data = trainer.datamodule.hparams
        params.update({f"data/{k}": v for k, v in data.items() if not k.startswith("_")})
    for callback in trainer.callbacks:
        params.update(getattr(callback, "hparams_for_logging", dict)())
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat


def log_hyperparams(logger: Any, params: dict, metrics: dict, step: int) -> None:
    """``params`` with ``metrics`` to any Lightning logger: TensorBoard takes the metrics with the
    hyperparameters (its HPARAMS tab); CSV, MLflow and the others take hyperparameters alone, so
    the metrics go to them as metrics."""
    import inspect

    if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
        logger.log_hyperparams(params, metrics)
    else:
        logger.log_hyperparams(params)
        logger.log_metrics(metrics, step=step)
