"""The training loop shared by the single model and the population: one optimizer step per
minibatch (a Lightning batch may hold many, ``MiniBatches``), per-step values summed on the device
and logged once per epoch, and Lightning's manual-optimization machinery bypassed only where
nothing a user can observe changes (``MinibatchTraining``'s docstring)."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.core.norms import global_norm
from lightning_opt.data import MiniBatches
from lightning_opt.optim import state_data
from lightning_opt.optim.contract import run_step, takes_closure
from lightning_opt.optim.schedulers import (
    needs_metric,
    step_scheduler,
)

#: ``torch.compile``'s modes: what ``compile`` may name (``True``: see ``compile_mode``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(value: Any) -> None:
    """Refuse a ``compile`` setting that is neither a bool nor one of torch.compile's modes."""
    if not (isinstance(value, bool) or value is None or value in COMPILE_MODES):
        raise ValueError(
            f"compile must be true, false or one of torch.compile's modes "
            f"({', '.join(COMPILE_MODES)}); got {value!r}"
        )


def compile_mode(value: Any, device_type: str) -> str | None:
    """The ``torch.compile`` mode of a ``compile`` setting on ``device_type`` (``None``: eager).
    ``True`` is ``reduce-overhead`` on CUDA (the step as CUDA graphs: its launches are what a
    small population's step costs there) and ``default`` elsewhere."""
    if value is None or value is False:
        return None
    if value is True:
        return "reduce-overhead" if device_type == "cuda" else "default"
    return str(value)


#: torch's warning for every backward with create_graph=True (harmless when grads go to None).
_GRAPH_CYCLE = "Using backward\\(\\) with create_graph=True"


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
        self._with_closure = takes_closure(self.optimizers().optimizer)
        self._set_optimizer_mode("train")
        schedulers = self.lr_schedulers()
        self._schedulers = [] if schedulers is None else list(_as_list(schedulers))
        self._step_schedulers = bool(self._schedulers) and self.hparams.lr_interval == "step"
        self._validated = False
        mode = compile_mode(self.hparams.get("compile"), self.device.type)
        # The training loss (forward and, through AOTAutograd, its backward) as one compiled
        # graph; the optimizer, the clipping rules and Lightning's hooks run as they do eagerly.
        self._loss_fn = (
            self._minibatch_loss if mode is None else torch.compile(self._minibatch_loss, mode=mode)
        )

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
        """The learning rate (``None`` for a class that keeps none: A2Grad, Adafactor)."""
        return self.optimizers().param_groups[0].get("lr")

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

    def _step(self, optimizer: Any, closure: Callable[[], Tensor]) -> None:
        """``optimizer.step(closure)`` of the ``LightningOptimizer`` ``optimizer``: the
        ``on_before_optimizer_step`` hooks (the clipping callbacks) run after every evaluation
        of the closure, as in Lightning's precision plugin."""
        raw = optimizer.optimizer
        if not self._direct:
            if self.step_contract.evaluate_first:  # the evaluation before Lightning's step:
                closure()  # its hooks are ours to run, as the plugin runs them after its own
                self._before_step(raw)
            optimizer.step(closure=closure)  # Lightning's plugin runs the hooks after it
            return

        def hooked() -> Tensor:
            loss = closure()
            self._before_step(raw)
            return loss

        optimizer._on_before_step()  # the manual-optimization loop counts the step
        run_step(raw, hooked, self._with_closure, self.step_contract.evaluate_first)
        optimizer._on_after_step()

    def _before_step(self, raw: Any) -> None:
        """The ``on_before_optimizer_step`` hooks: the callbacks' (clipping), then the module's."""
        for hook in self._before_step_hooks:
            hook(self.trainer, self, raw)
        self.on_before_optimizer_step(raw)

    def _backward(self, total: Tensor) -> None:
        backward = (
            total.backward if self._direct else functools.partial(self.manual_backward, total)
        )
        if not self.step_contract.create_graph:
            backward()
            return
        with warnings.catch_warnings():  # the gradients are set to None before each backward
            warnings.filterwarnings("ignore", message=_GRAPH_CYCLE)
            backward(create_graph=True)

    # Schedule-free optimizers: train mode for the training steps, eval mode for everything
    # that evaluates (validation, test, predict) and for the weights a checkpoint keeps.
    def on_train_epoch_start(self) -> None:
        self._set_optimizer_mode("train")

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self._set_optimizer_mode("eval")

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        # Back to training within a fit: after a validation at an epoch's end, and after one
        # within an epoch (``val_check_interval``), where the next step comes before any epoch
        # start (Lightning sets ``trainer.training`` again only after this hook).
        if self.trainer.state.fn == TrainerFn.FITTING:
            self._set_optimizer_mode("train")

    def on_test_model_eval(self) -> None:
        super().on_test_model_eval()
        self._set_optimizer_mode("eval")

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()
        self._set_optimizer_mode("eval")

    def _end_training_modes(self) -> None:
        """Call from ``on_train_end``: the weights a fit leaves are the ones to evaluate."""
        self._set_optimizer_mode("eval")

    def _checkpoint_in_eval_mode(self, checkpoint: dict[str, Any]) -> None:
        """Call from ``on_save_checkpoint``: a checkpoint saved while the optimizer trains
        (at an epoch's end without validation) holds its evaluation weights and state, as one
        saved after validation does; training then goes on from where it was."""
        if getattr(self, "_optimizer_mode", None) != "train":
            return
        self._set_optimizer_mode("eval")
        checkpoint["state_dict"] = {k: v.clone() for k, v in self.state_dict().items()}
        checkpoint["optimizer_states"] = [
            copy.deepcopy(o.state_dict()) for o in self.trainer.optimizers
        ]
        self._set_optimizer_mode("train")

    def _state_owners(self) -> set[str]:
        """The packages of the optimizer classes this module trains with: their objects in
        an optimizer's state are written to checkpoints as data (``optim.state_data``)."""
        groups = getattr(self, "groups", None)
        classes = [g.optimizer_class for g in groups] if groups else [self.optimizer_class]
        return state_data.packages(classes)

    def _optimizer_states_as_data(self, checkpoint: dict[str, Any]) -> None:
        """Call from ``on_save_checkpoint`` (last): objects in the optimizers' state as data,
        so a weights-only load (``test``, ``validate``, a resume) reads the checkpoint."""
        if "optimizer_states" in checkpoint:
            owners = self._state_owners()
            states = checkpoint["optimizer_states"]
            checkpoint["optimizer_states"] = [state_data.as_data(s, owners) for s in states]

    def _optimizer_states_from_data(self, checkpoint: dict[str, Any]) -> None:
        """Call from ``on_load_checkpoint``: the objects ``_optimizer_states_as_data`` wrote,
        as objects again, before a resume gives the state to the optimizers."""
        if "optimizer_states" in checkpoint:
            owners = self._state_owners()
            states = checkpoint["optimizer_states"]
            checkpoint["optimizer_states"] = [state_data.from_data(s, owners) for s in states]

    def _set_optimizer_mode(self, mode: str) -> None:
        """``train()`` or ``eval()`` of an optimizer with modes (schedule-free): its weights for
        evaluation differ from the ones it trains."""
        if not self.step_contract.modes or self._trainer is None:
            return
        for optimizer in self.trainer.optimizers:
            getattr(optimizer, mode)()
        self._optimizer_mode = mode

    def _record_clipped_norm(self) -> None:
        """From ``on_before_optimizer_step``, after the clipping callbacks': the norm the
        optimizer sees."""
        # The step logs its first evaluation's norm: later evaluations (LBFGS) need none.
        if self.hparams.log_internals and self._clipping and not self._clipped_norms:
            self._clipped_norms.append(global_norm(self._grads(), self.member_dims))

    def _train_chunk(self, batch: tuple[Tensor, Tensor] | MiniBatches) -> None:
        optimizer = self.optimizers()
        effective_lr = getattr(optimizer.optimizer, "effective_lr", None)
        internals = self.hparams.log_internals
        first_step = self.global_step
        losses, sizes, before, after, lrs = [], [], [], [], []
        for x, y in batch if isinstance(batch, MiniBatches) else [batch]:
            evaluations: list[Tensor] = []

            def closure(x: Tensor = x, y: Tensor = y, evaluations: list = evaluations) -> Tensor:
                # zero_grad, forward, backward: what the optimizer may call several times
                # (LBFGS, SAM); the step's logged loss and norms are the first evaluation's.
                with torch.enable_grad():
                    loss = self._loss_fn(x, y)
                    self._zero_grad(optimizer)
                    total = loss.sum()  # a population's sum gives each member its own gradient
                    self._backward(total)
                self._share_grads()
                if internals and not evaluations:
                    before.append(global_norm(self._grads(), self.member_dims))
                evaluations.append(loss.detach())
                return total

            self._clipped_norms.clear()
            self._step(optimizer, closure)  # the clipping callbacks run after each evaluation
            if self._step_schedulers:
                self._lr_used = self._current_lr()  # what optim/lr reports for this epoch
                self._scheduler_step()
            loss = evaluations[0]
            losses.append(loss)
            sizes.append(y.shape[self.member_dims])
            lr = effective_lr() if internals and effective_lr is not None else None
            if lr is not None:
                lrs.append(lr.expand(loss.shape))
                norm = optimizer.optimizer.last_grad_norm  # the norm GNW-Adam used
                lacking = getattr(optimizer.optimizer, "lacking_effective_lr", None)
                if lacking is not None:  # members whose optimizer keeps no norm of its own
                    fallback = self._clipped_norms[0] if self._clipped_norms else before[-1]
                    norm = torch.where(lacking, fallback, norm)
                after.append(norm)
            elif internals:
                after.append(self._clipped_norms[0] if self._clipped_norms else before[-1])
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
