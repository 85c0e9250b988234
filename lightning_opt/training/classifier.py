"""The classifier for mnist1d: any network (``lightning_opt.models``) trained with any
``torch.optim.Optimizer`` by class path or short name (the loop: ``lightning_opt.training.loop``).

Training uses manual optimization: one Lightning batch can hold many minibatches
(``MiniBatches``), and ``training_step`` takes one optimizer step per minibatch, so Lightning's
per-batch machinery does not dominate a tiny model's step. Per-step quantities (training loss,
gradient norms, GNW's effective step size) are summed on the device and logged once per epoch,
so the training step never waits on the host.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_opt.data import MiniBatches
from lightning_opt.models import NetFactory, build_net, resolve_net_argument
from lightning_opt.optim import groups
from lightning_opt.optim.registry import (
    check_optimizer,
    check_required,
    construct,
    resolve_optimizer,
)
from lightning_opt.optim.schedulers import (
    check_scheduler,
    resolve_scheduler,
)
from lightning_opt.training.hparams import global_seed, log_hyperparams, run_hparams
from lightning_opt.training.loop import (
    EpochSums,
    MinibatchTraining,
    NonFiniteLossError,
    check_compile,
)

__all__ = ["MNIST1DClassifier", "ModelPlan", "NonFiniteLossError"]


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
        param_groups: rules that split the net's parameters into groups with their own
            settings (``lightning_opt.optim.groups``): ``[{ndim: 1, weight_decay: 0.0}]`` keeps
            biases and norms out of weight decay.
        input_size: length of an mnist1d signal; the command line links it to the data
            (``--data.final_seq_length``).
        num_classes: number of classes; the command line links it to the data (10 digits).
        log_internals: log gradient norms, effective step size and per-layer weight norms each epoch.
        compile: train with the training loss (the net's forward and backward) compiled by
            ``torch.compile``: ``true`` (``reduce-overhead`` on CUDA: CUDA graphs; ``default``
            elsewhere), ``false`` (eager, the default) or one of torch.compile's modes. It changes
            numbers by float rounding only (fused kernels round differently); the first step
            pays the compilation (seconds). Validation, test and predict stay eager.
    """

    def __init__(
        self,
        net: NetFactory = "mlp",  # type: ignore[assignment]  (a name or {class_path, init_args} too)
        optimizer: str | dict[str, Any] = "adam",
        lr_scheduler: str | dict[str, Any] | None = None,
        lr_interval: Literal["epoch", "step"] = "epoch",
        param_groups: list[dict[str, Any]] | None = None,
        *,
        input_size: int,
        num_classes: int,
        log_internals: bool = True,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        check_compile(compile)
        # Logged flat and resolved by the model itself (on_train_start), not as Lightning would
        # log them (nested, with LightningCLI's _instantiator).
        self.save_hyperparameters(logger=False)
        plan = ModelPlan.of(
            net, optimizer, lr_scheduler, lr_interval, param_groups, input_size=input_size,
            num_classes=num_classes, hparams=self.hparams, seed=None,
        )  # fmt: skip
        self.optimizer_class, self.param_group_rules = plan.optimizer_class, plan.param_group_rules
        self.net_class, self.hparams.net = plan.net_class, plan.net
        self.hparams.optimizer = (
            plan.optimizer
        )  # the class path and every argument, defaults included
        self.optimizer_kwargs = plan.optimizer["init_args"]
        self.scheduler_class, self.hparams.lr_scheduler = plan.scheduler_class, plan.lr_scheduler
        self.net = plan.built_net
        self.step_contract = plan.step_contract
        self._optimizer_mode: str | None = None
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
        params = groups.split(self.net.named_parameters(), self.param_group_rules)
        optimizer = construct(self.optimizer_class, params, self.optimizer_kwargs, self.net)
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
        self._optimizer_states_from_data(checkpoint)

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
        lr = self._logged_lr()
        if lr is not None:  # a class that keeps no learning rate (A2Grad's lr=None) logs none
            internals["optim/lr"] = float(lr)
        for name, value in internals.items():
            if name.startswith("optim/"):
                self.internals_history.setdefault(name, []).append(value)
        for logger in self.loggers:
            logger.log_metrics(internals, step=self._lightning_step() - 1)

    @override
    def on_fit_start(self) -> None:
        # Every logger gets the run's settings when it starts (TensorBoard writes hparams.yaml
        # from the first call); on_train_end adds the final metrics.
        params = run_hparams(self, self.optimizer_kwargs, seed=global_seed())
        for logger in self.loggers:
            logger.log_hyperparams(params)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_in_eval_mode(checkpoint)
        self._optimizer_states_as_data(checkpoint)

    @override
    def on_train_end(self) -> None:
        self._end_training_modes()
        # The HPARAMS dashboard: hyperparameters together with the run's final metrics.
        if not self.loggers:
            return
        metrics = self.trainer.callback_metrics
        results = {
            "hp/val_loss": float(metrics.get("val/loss", float("nan"))),
            "hp/val_acc": float(metrics.get("val/acc", float("nan"))),
            "hp/best_val_loss": self.best_val_loss,
        }
        params = run_hparams(self, self.optimizer_kwargs, seed=global_seed())
        for logger in self.loggers:
            log_hyperparams(logger, params, results, self._lightning_step() - 1)


@dataclass(frozen=True)
class ModelPlan:
    """What ``MNIST1DClassifier``'s constructor checks, as a record: the optimizer's class and
    resolved ``{class_path, init_args}``, the param-group rules, the scheduler's class and
    record, the net's class and record, and the step contract its pre-flight step found.

    ``ModelPlan.of`` is the one place that checks a single run's model settings; a command that
    only needs to know (``tune``'s and ``compare``'s checks before their first trial) asks it
    instead of building the LightningModule."""

    optimizer_class: type
    optimizer: dict[str, Any]
    param_group_rules: list[dict[str, Any]]
    scheduler_class: type | None
    lr_scheduler: dict[str, Any] | None
    net_class: type[nn.Module]
    net: dict[str, Any]
    step_contract: Any
    built_net: nn.Module

    @classmethod
    def of(
        cls,
        net: Any = "mlp",
        optimizer: Any = "adam",
        lr_scheduler: Any = None,
        lr_interval: str = "epoch",
        param_groups: list[dict[str, Any]] | None = None,
        *,
        input_size: int,
        num_classes: int,
        hparams: Any = None,
        seed: int | None = 0,
    ) -> ModelPlan:
        """Check a model of these arguments (``ValueError``/``TypeError``, one line). The net
        is built from torch's global random state as a run builds it (``seed=None``), or, for a
        check, from ``seed`` with the global state left as it was; its pre-flight step is shared
        with every run of the same settings and weights (``optim.registry.check_optimizer``)."""
        optimizer_class, resolved = resolve_optimizer(optimizer)
        check_required(optimizer_class, resolved["init_args"])
        rules = groups.check_rules(param_groups)
        scheduler = resolve_scheduler(lr_scheduler)
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        net_class, net_record = resolve_net_argument(net, hparams or {"net": net})
        scheduler_class, scheduler_record = scheduler or (None, None)
        if scheduler is not None:
            check_scheduler(scheduler_class, scheduler_record["init_args"])
        init_args = net_record["init_args"]
        own_seed = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
        with own_seed:
            if seed is not None:
                torch.manual_seed(seed)
            built = build_net(net_class, init_args, input_size, num_classes)
        # Its own constructor checks the arguments now, and one step on a copy of the net
        # shows what the step needs (a closure, a graph, train/eval modes), before any training.
        contract = check_optimizer(
            optimizer_class, built, resolved["init_args"], input_size, num_classes, rules,
            net_spec=net_record,
        )  # fmt: skip
        return cls(
            optimizer_class, resolved, rules, scheduler_class, scheduler_record, net_class,
            net_record, contract, built,
        )  # fmt: skip
