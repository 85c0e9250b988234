"""Population training: K independent copies of any network trained at once.

Every parameter stacks the K members along a leading dimension (``member_dims = 1``; see
``lightning_opt.stacking``: ``vmap`` for any module, batched matmuls for the MLP). Member k
is initialised exactly as ``MNIST1DClassifier`` is after ``seed_everything(seeds[k])``, sees the
batches of the data order of its seed, and is updated by the registry's optimizer with its own
hyperparameters, using the same optimizer class and clipping code as the single model. So member k
reproduces the single-model ``fit`` of its seed and hyperparameters (to float rounding: batched
and single matrix products round differently), while K members cost little more than one.

Any ``torch.optim.Optimizer`` trains a population: each member gets its own instance of the class
over its own parameters (views of the stacked ones), built exactly as a single ``fit`` builds it
(``MemberwiseOptimizer``). Adam, AdamW, SGD and GNW-Adam take a stacked fast path instead where it
computes the same steps (``lightning_opt.optim.stacked``).

The loss is the sum of the members' mean losses, so each member's gradient is its own. A member
whose loss becomes NaN or infinite is dropped at the end of that epoch, as are members dropped
by a caller (``drop_members``: ``tune`` prunes trials this way); the survivors' tensors and
optimizer state are narrowed, so dropped members stop costing compute and never touch the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from typing_extensions import override

from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.data import MiniBatches
from lightning_opt.model import (
    EpochSums,
    MinibatchTraining,
    NonFiniteLossError,
    log_hyperparams,
    resolve_net_argument,
    run_hparams,
)
from lightning_opt.models import NetFactory, build_net
from lightning_opt.norms import tensor_norms
from lightning_opt.optim.hypers import select
from lightning_opt.optim.memberwise import MemberwiseOptimizer
from lightning_opt.optim.registry import (
    check_optimizer,
    constructor_arguments,
    resolve_optimizer,
    supports_population,
)
from lightning_opt.optim.schedulers import (
    MemberwiseScheduler,
    check_scheduler,
    resolve_scheduler,
    scheduler_arguments,
)
from lightning_opt.optim.stacked import stacked_optimizer
from lightning_opt.stacking import stack_nets, why_not_stackable


def _per_member(name: str, values: Sequence[Any], members: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != members:
        raise ValueError(
            f"member_hparams[{name!r}] must hold one value per member ({members}), got {values!r}"
        )
    return [tuple(v) if isinstance(v, list) else v for v in values]  # betas=[0.9, 0.99]


def _as_list(loggers: Logger | list[Logger]) -> list[Logger]:
    return loggers if isinstance(loggers, list) else [loggers]


def _member_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of logits ``(K, B, C)`` against labels ``(K, B)``: ``(K, B)``.

    The classes go on dimension 1, where the log-softmax vectorises over the examples: over a
    last dimension of 10 classes it is 2-3x slower on CPU for the whole loss and its gradient
    (K=16: 118 vs 252 microseconds a step), with the same values to float rounding.
    """
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none")


class PopulationClassifier(MinibatchTraining, LightningModule):
    """K members of ``MNIST1DClassifier`` trained at once (see the module docstring).

    Metrics go to ``member_loggers``, one per member; ``self.log`` only feeds the progress bar
    and ``trainer.callback_metrics`` with the mean over live members.

    Args:
        seeds: one seed per member: its initialisation and (unless ``data.shuffle_seed`` is set)
            its data order, exactly as ``fit --seed_everything SEED``.
        optimizer: as in ``MNIST1DClassifier``; every member uses the class.
        member_hparams: per-member values, one list entry per member: any constructor argument
            of the optimizer (``lr``, ``betas``, ...), else of the LR scheduler (``gamma`` of
            StepLR where the optimizer takes none), else a ``member_hparams`` setting of the
            clipping callback (``clip_factor``). The other arguments are shared by all members.
        net, lr_scheduler, lr_interval, input_size, num_classes, log_internals: as in
            ``MNIST1DClassifier``; each member gets its own scheduler. A net that cannot run as
            members (``lightning_opt.stacking.why_not_stackable``) is refused (``ValueError``).

    Attributes:
        member_loggers: one entry per member (set before ``fit``): a logger or a list of loggers;
            each member's metrics go to its own, with the names and steps a single ``fit`` logs.
        member_ids: the original index of each live member.
        dropped: ``{member index: reason}`` for the members dropped so far.
        history: ``{member index: {"val/loss": [...], "val/acc": [...]}}``, one entry per epoch.
        test_results: ``{member index: {"test/loss": ..., "test/acc": ...}}`` after ``test``.
    """

    member_dims = 1

    def __init__(
        self,
        seeds: list[int],
        optimizer: str | dict[str, Any] = "adam",
        member_hparams: dict[str, list] | None = None,
        lr_scheduler: str | dict[str, Any] | None = None,
        lr_interval: Literal["epoch", "step"] = "epoch",
        net: NetFactory = "mlp",  # type: ignore[assignment]  (a name or {class_path, init_args} too)
        *,
        input_size: int,
        num_classes: int,
        log_internals: bool = True,
    ) -> None:
        super().__init__()
        # The population's own arguments go into the checkpoint under "population" (see
        # on_save_checkpoint): LightningCLI gives a checkpoint's hyper_parameters to the model's
        # arguments on resume, which are those of a single model.
        cls, resolved = resolve_optimizer(optimizer)
        self.optimizer_class = cls
        scheduler = resolve_scheduler(lr_scheduler)
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        self.save_hyperparameters(ignore=["seeds", "member_hparams"], logger=False)
        self.net_class, self.hparams.net = resolve_net_argument(net, self.hparams)
        self.hparams.optimizer = resolved
        self.scheduler_class, self.hparams.lr_scheduler = scheduler or (None, None)
        if not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds
        ):
            raise ValueError(
                f"seeds must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}"
            )
        if not supports_population(cls):
            raise ValueError(
                f"{cls.__name__} declares supports_population = False: train it one run at a time"
            )
        k = len(seeds)
        member_hparams = dict(member_hparams or {})
        columns = {name: _per_member(name, v, k) for name, v in member_hparams.items()}
        taken = constructor_arguments(cls)
        scheduled = scheduler_arguments(self.scheduler_class) if scheduler else {}
        scheduled = {n: v for n, v in columns.items() if n in scheduled and n not in taken}
        self.member_scheduler_kwargs = [
            {**self.hparams.lr_scheduler["init_args"], **{n: v[i] for n, v in scheduled.items()}}
            for i in range(len(seeds))
        ] if scheduler else []  # fmt: skip
        for kwargs in self.member_scheduler_kwargs:
            check_scheduler(self.scheduler_class, kwargs)
        # The rest are clipping settings, checked against the clipping callback in setup().
        self.member_clipping = {
            n: v for n, v in columns.items() if n not in taken and n not in scheduled
        }
        for name, values in self.member_clipping.items():
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise ValueError(
                    f"member_hparams[{name!r}]: {cls.__name__} takes no argument {name!r}, and a "
                    f"clipping setting is a number per member, got {values}"
                )
        self.member_kwargs = [
            {**resolved["init_args"], **{n: v[i] for n, v in columns.items() if n in taken}}
            for i in range(k)
        ]
        per_member = {n for n in columns if n in taken}
        # A scheduler sets each param group's lr as one number: the per-member optimizers then.
        self.stacked = None if scheduler else stacked_optimizer(cls, self.member_kwargs, per_member)
        self._member_params: list[list[Tensor]] = []
        #: Keep each member's weights of its lowest val/loss epoch (``use_best_weights``).
        self.track_best = False
        self._best_loss: Tensor | None = None
        self._best_state: list[Tensor] = []
        self._share = False  # whether member views get the gradients (see on_train_start)

        with torch.random.fork_rng(devices=[]):
            nets = []
            for seed in seeds:
                torch.manual_seed(seed)  # what seed_everything does before fit builds the model
                init_args = self.hparams.net["init_args"]
                nets.append(build_net(self.net_class, init_args, input_size, num_classes))
        why = why_not_stackable(nets[0], input_size)
        if why is not None:
            raise ValueError(f"{why}: train it one run at a time")
        for member_net, kwargs in zip(nets, self.member_kwargs, strict=True):
            check_optimizer(cls, member_net.parameters(), kwargs)  # as a single fit would, first
        self.net = stack_nets(nets)
        self.seeds = list(seeds)
        self.all_seeds = list(seeds)  # by member index, including dropped members
        self.member_hparams = {name: list(v) for name, v in member_hparams.items()}
        self.member_ids = list(range(k))
        self.member_loggers: list[Logger | list[Logger]] | None = None
        self.dropped: dict[int, str] = {}
        self.history: dict[int, dict[str, list[float]]] = {i: {"val/loss": [], "val/acc": []}
                                                           for i in range(k)}  # fmt: skip
        self.test_results: dict[int, dict[str, float]] = {}
        self.automatic_optimization = False
        self._data_seeds: list[int] = []
        self._to_drop: dict[int, str] = {}
        self._member_metrics: dict[str, Tensor] = {}
        self._clip_overrides: dict[str, Tensor] | None = None
        self._epoch = EpochSums()  # training sums, then each evaluation's loss and acc
        self.register_buffer("_first_bad_step", torch.full((k,), -1), persistent=False)

    @property
    def num_members(self) -> int:
        return len(self.member_ids)

    def clipping_overrides(self) -> dict[str, Tensor]:
        """Per-member clipping thresholds of the live members, on the parameters' device."""
        if self._clip_overrides is None:
            like = next(self.net.parameters())
            self._clip_overrides = {
                name: like.new_tensor([values[i] for i in self.member_ids])
                for name, values in self.member_clipping.items()
            }
        return self._clip_overrides

    # -- training ---------------------------------------------------------------------------

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.stacked is not None:
            factory, kwargs = self.stacked
            return factory(self.net.parameters(), member_dims=1, **kwargs)
        self._member_params = self._member_views()
        optimizer = MemberwiseOptimizer(
            [
                self.optimizer_class(params, **self.member_kwargs[member])
                for member, params in zip(self.member_ids, self._member_params, strict=True)
            ]
        )
        if self.scheduler_class is None:
            return optimizer
        scheduler = MemberwiseScheduler(
            [
                self.scheduler_class(member_optimizer, **self.member_scheduler_kwargs[member])
                for member, member_optimizer in zip(self.member_ids, optimizer.members, strict=True)
            ],
            optimizer,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval},
        }

    @override
    def _plateau_metric(self) -> Tensor:
        return self.val_loss  # each member's own

    @override
    def _current_lr(self) -> Tensor | float:
        """Each member's learning rate, ``(K,)`` (a shared number on the stacked path)."""
        optimizer = self.optimizers().optimizer
        if isinstance(optimizer, MemberwiseOptimizer):
            rates = [float(o.param_groups[0]["lr"]) for o in optimizer.members]
            return torch.tensor(rates, device=self.device)
        lr = optimizer.param_groups[0]["lr"]
        return lr.to(self.device) if isinstance(lr, Tensor) else lr

    def _member_views(self) -> list[list[Tensor]]:
        """Each member's parameters as leaf tensors sharing the stacked parameters' memory: what
        member k's own optimizer updates in place."""
        params = list(self.net.parameters())
        return [[nn.Parameter(p.data[j]) for p in params] for j in range(len(params[0]))]

    def _memberwise(self) -> MemberwiseOptimizer | None:
        if not self._trainer:
            return None
        found = [o for o in self.trainer.optimizers if isinstance(o, MemberwiseOptimizer)]
        return found[0] if found else None

    @override
    def _zero_grad(self, optimizer: Any) -> None:
        optimizer.zero_grad()
        for p in self._params:  # the stacked gradients, when member optimizers hold views
            p.grad = None

    @override
    def _share_grads(self) -> None:
        if not self._share:
            return
        for member, views in enumerate(self._member_params):
            for view, p in zip(views, self._params, strict=True):
                view.grad = None if p.grad is None else p.grad[member]

    @override
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is None or not hasattr(data, "population_seeds"):
            raise ValueError(
                "PopulationClassifier needs a datamodule with population_seeds "
                "(lightning_opt.data.MNIST1DDataModule)"
            )
        if getattr(data, "split_seed_is_per_run", False):
            raise ValueError(
                "data.split_seed per_run gives every seed its own validation split, and a "
                "population trains its members on one: set an integer split_seed, or train "
                "the seeds one at a time"
            )
        shuffle_seed = data.hparams.get("shuffle_seed")
        self._data_seeds[:] = [
            s % 2**31 if shuffle_seed is None else shuffle_seed for s in self.seeds
        ]
        data.population_seeds = self._data_seeds
        self.check_clipping(self.trainer.callbacks)

    def check_clipping(self, callbacks: Sequence[Any]) -> None:
        """Refuse per-member settings that neither the optimizer nor a clipping callback among
        ``callbacks`` takes (before any training)."""
        clippers = [c for c in callbacks if isinstance(c, GradientClippingCallback)]
        names = {name for cb in clippers for name in cb.member_hparams}
        missing = sorted(set(self.member_clipping) - names)
        if missing:
            takes = ", ".join(f"{type(c).__name__}: {', '.join(c.member_hparams) or 'nothing'}"
                              for c in clippers) or "no clipping callback is on"  # fmt: skip
            raise ValueError(
                f"member_hparams {', '.join(missing)}: {self.optimizer_class.__name__} takes no "
                f"such argument and no clipping callback sets it per member ({takes})"
            )
        for clipper in clippers:  # each member's settings, checked by the rule's constructor
            cls = type(clipper)
            own = {
                n: getattr(clipper, n) for n in constructor_arguments(cls) if hasattr(clipper, n)
            }
            for member in range(len(self.all_seeds)):
                values = {n: v[member] for n, v in self.member_clipping.items()
                          if n in clipper.member_hparams}  # fmt: skip
                if values:
                    cls(**{**own, **values})

    def member_parameters(self) -> list[list[Tensor]]:
        """Each live member's parameters as its own leaf tensors (views of the stacked ones),
        whose ``.grad`` are views of the stacked gradients after each backward."""
        return self._member_params

    def clipping_values(self) -> dict[str, list[float]]:
        """The live members' per-member clipping settings, ``{name: [value of each member]}``."""
        return {n: [v[i] for i in self.member_ids] for n, v in self.member_clipping.items()}

    @override
    def teardown(self, stage: str) -> None:
        for loggers in self.member_loggers or []:
            for logger in _as_list(loggers):
                logger.finalize("success")  # flush and close; a later test() reopens the writer
        data = self.trainer.datamodule
        if data is not None and getattr(data, "population_seeds", None) is self._data_seeds:
            data.population_seeds = None  # the next single-model fit shuffles as usual

    def _clippers(self) -> list[GradientClippingCallback]:
        return [c for c in self.trainer.callbacks if isinstance(c, GradientClippingCallback)]

    @override
    def on_train_start(self) -> None:
        self._clip_overrides = None  # built on the training device at the first step
        self._start_training()
        optimizer = self._memberwise()
        self._share = optimizer is not None or any(not c.stacked for c in self._clippers())
        if self._share and not self._views_current():
            # The parameters were moved or converted (device, precision) after the optimizer
            # was built: point every member's optimizer at views of the new tensors.
            self._member_params = self._member_views()
            if optimizer is not None:
                optimizer.select_members(torch.arange(self.num_members), self._member_params)

    def _views_current(self) -> bool:
        return len(self._member_params) == self.num_members and all(
            v.data_ptr() == p.data[j].data_ptr() and v.dtype == p.dtype
            for j, views in enumerate(self._member_params)
            for v, p in zip(views, self.net.parameters(), strict=True)
        )

    @override
    def training_step(self, batch: tuple[Tensor, Tensor] | MiniBatches, batch_idx: int) -> None:
        """One optimizer step per minibatch, for every member at once."""
        self._train_chunk(batch)

    def _minibatch_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return _member_losses(self(x), y).mean(1)  # each member's mean loss

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._record_clipped_norm()

    def _record_internals(self, metrics: dict[str, Tensor | float]) -> None:
        """Each member's epoch means of the optim/* values, in ``history`` (one sync)."""
        names = [n for n in metrics if n.startswith("optim/")]
        if not names:
            return
        columns = [
            metrics[n].tolist() if isinstance(metrics[n], Tensor) and metrics[n].dim() else None
            for n in names
        ]
        for position, member in enumerate(self.member_ids):
            for name, column in zip(names, columns, strict=True):
                value = column[position] if column is not None else float(metrics[name])
                self.history[member].setdefault(name, []).append(value)

    def log_member_metrics(self, metrics: dict[str, Tensor]) -> None:
        """Per-member values ``(K,)`` to log with this epoch's (used by the clipping callbacks)."""
        self._member_metrics.update(metrics)

    def _log_members(self, metrics: dict[str, Tensor | float], step: int) -> None:
        """Send ``metrics`` (per-member tensors ``(K,)`` or shared numbers) to member loggers."""
        if not self.member_loggers:
            return
        names = list(metrics)
        per_member = [v for v in metrics.values() if isinstance(v, Tensor)]
        rows = torch.stack(per_member, 1).tolist() if per_member else [[]] * self.num_members
        for member, row in enumerate(rows):
            values = iter(row)
            record = {n: next(values) if isinstance(metrics[n], Tensor) else metrics[n]
                      for n in names}  # fmt: skip
            for logger in _as_list(self.member_loggers[member]):
                logger.log_metrics(record, step=step)

    @override
    def on_train_epoch_end(self) -> None:
        means = self._epoch.pop_means()
        self.log("train/loss", means["train/loss"].mean(), prog_bar=True, logger=False)
        metrics: dict[str, Tensor | float] = {"train/loss": means.pop("train/loss")}
        if self.hparams.log_internals:
            metrics.update(means)
            for (name, _), norms in zip(
                self.net.named_parameters(), tensor_norms(self._params, 1), strict=True
            ):
                metrics[f"weight_norm/{name}"] = norms
            metrics["optim/lr"] = self._logged_lr()
        metrics.update(self._member_metrics)
        self._member_metrics = {}
        self._record_internals(metrics)
        # The step a single fit's loggers see: Lightning logs epoch-end self.log values at the
        # index of the epoch's last batch, and the model logs its internals there too.
        metrics["epoch"] = float(self.current_epoch)
        self._log_members(metrics, self._lightning_step() - 1)
        self._epoch_end_schedulers()

        first_bad = self._first_bad_step.tolist()
        for member, step in zip(list(self.member_ids), first_bad, strict=True):
            if step >= 0 and member not in self._to_drop:
                self._to_drop[member] = (
                    f"training loss became non-finite at global step {step} "
                    f"(epoch {self.current_epoch})"
                )
        self._apply_drops()

    # -- evaluation -------------------------------------------------------------------------

    def _eval_step(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        logits = self(x)  # (K, N, C): every member on the same examples
        loss = _member_losses(logits, y.expand(self.num_members, -1))
        self._add_total("loss", loss.sum(1), len(y))
        self._add_total("acc", (logits.argmax(-1) == y).sum(1).to(loss.dtype), len(y))

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    @override
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        """Each live member's class probabilities ``(K, N, C)`` for the batch, with the labels
        and the members' seeds."""
        x, y = batch
        seeds = [self.all_seeds[m] for m in self.member_ids]
        return {"label": y, "probs": self(x).softmax(-1), "seeds": seeds}

    def _pop_eval(self) -> tuple[Tensor, Tensor]:
        return self._epoch.pop_mean("loss"), self._epoch.pop_mean("acc")

    @override
    def on_validation_epoch_end(self) -> None:
        loss, acc = self._pop_eval()
        if self.trainer.sanity_checking:
            return
        self.log("val/loss", loss.mean(), prog_bar=True, logger=False)
        self.log("val/acc", acc.mean(), prog_bar=True, logger=False)
        self.val_loss, self.val_acc = loss, acc  # (K,) for callbacks (tune's pruning)
        self._validated = True
        if self.track_best:
            self._keep_best(loss)
        for member, lv, av in zip(self.member_ids, loss.tolist(), acc.tolist(), strict=True):
            self.history[member]["val/loss"].append(lv)
            self.history[member]["val/acc"].append(av)
        self._log_members({"val/loss": loss, "val/acc": acc, "epoch": float(self.current_epoch)},
                          self._lightning_step())  # fmt: skip

    @override
    def on_test_epoch_end(self) -> None:
        loss, acc = self._pop_eval()
        self.log("test/loss", loss.mean(), logger=False)
        self.log("test/acc", acc.mean(), logger=False)
        for member, lv, av in zip(self.member_ids, loss.tolist(), acc.tolist(), strict=True):
            self.test_results[member] = {"test/loss": lv, "test/acc": av}
        self._log_members({"test/loss": loss, "test/acc": acc, "epoch": float(self.current_epoch)},
                          self._lightning_step())  # fmt: skip

    @torch.no_grad()
    def _keep_best(self, loss: Tensor) -> None:
        params = list(self.net.parameters())
        if self._best_loss is None:
            self._best_loss = torch.full_like(loss, float("inf"))
            self._best_state = [p.detach().clone() for p in params]
        improved = loss < self._best_loss  # NaN never improves
        self._best_loss = torch.where(improved, loss, self._best_loss)
        for best, p in zip(self._best_state, params, strict=True):
            mask = improved.reshape(-1, *([1] * (p.dim() - 1)))
            best.copy_(torch.where(mask, p.detach(), best))

    @torch.no_grad()
    def use_best_weights(self) -> None:
        """Put each live member's weights of its lowest val/loss epoch in place (needs
        ``track_best`` during the fit); the optimizer state is left as it is."""
        if self._best_loss is None:
            raise RuntimeError("use_best_weights needs track_best = True during fit")
        for best, p in zip(self._best_state, self.net.parameters(), strict=True):
            p.copy_(best)

    # -- members ----------------------------------------------------------------------------

    def drop_members(self, members: dict[int, str]) -> None:
        """Stop training ``{member index: reason}`` at the end of this epoch."""
        for member, reason in members.items():
            if member in self.member_ids:
                self._to_drop.setdefault(member, reason)

    def _apply_drops(self) -> None:
        if not self._to_drop:
            return
        keep = [i for i, m in enumerate(self.member_ids) if m not in self._to_drop]
        for member, reason in self._to_drop.items():
            self.dropped[member] = reason
            if self.member_loggers:
                loggers = self.member_loggers[self.member_ids.index(member)]
                for logger in _as_list(loggers):
                    logger.finalize("failed" if "non-finite" in reason else "success")
        self._to_drop = {}
        if not keep:
            self.trainer.should_stop = True
            self.member_ids, self._data_seeds[:] = [], []
            if self.member_loggers:
                self.member_loggers = []
            if all("non-finite" in r for r in self.dropped.values()):
                raise NonFiniteLossError(
                    "every member's training loss became non-finite; "
                    "lower the learning rate or add clipping"
                )
            return
        self.select_members(keep)

    @torch.no_grad()
    def select_members(self, keep: list[int]) -> None:
        """Keep only the live members at positions ``keep``: parameters, optimizer state,
        hyperparameters, data orders, loggers and clipping statistics are narrowed together."""
        index = torch.tensor(keep, device=self.device)
        for p in self.net.parameters():
            p.data = p.data.index_select(0, index)
            p.grad = None
        memberwise = self._memberwise()
        if self._member_params:
            self._member_params = self._member_views()
        if memberwise is not None:
            memberwise.select_members(index, self._member_params)
            for scheduler in self.lr_schedulers() if self.scheduler_class else []:
                scheduler.select_members(index)
        else:
            for optimizer in self.trainer.optimizers if self._trainer else []:
                optimizer.select_members(index)  # the stacked fast path's MemberOptimizer
        if self._trainer:
            for clipper in self._clippers():
                clipper.select_members(index)
        if self.stacked is not None:  # a resumed run builds its optimizer after this
            factory, kwargs = self.stacked
            self.stacked = factory, {k: select(v, index) for k, v in kwargs.items()}
        self._first_bad_step = self._first_bad_step.index_select(0, index)
        if self._best_loss is not None:
            self._best_loss = self._best_loss.index_select(0, index.to(self._best_loss.device))
            self._best_state = [t.index_select(0, index) for t in self._best_state]
        self.member_ids = [self.member_ids[i] for i in keep]
        self.seeds = [self.seeds[i] for i in keep]
        if self._data_seeds:  # set up by a fit: the data order narrows in place
            self._data_seeds[:] = [self._data_seeds[i] for i in keep]
        if self.member_loggers:
            self.member_loggers = [self.member_loggers[i] for i in keep]
        self._params = list(self.net.parameters())
        self._clip_overrides = None

    # -- checkpoints --------------------------------------------------------------------------

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["population"] = {
            "seeds": self.all_seeds,
            "member_hparams": self.member_hparams,
            "member_ids": self.member_ids,
            "dropped": self.dropped,
            "history": self.history,
        }

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of a single model or of another population (``ValueError``)."""
        saved = checkpoint.get("population")
        if saved is None:
            raise ValueError("not a population checkpoint (it has no 'population' entry)")
        if saved["seeds"] != self.all_seeds or saved["member_hparams"] != self.member_hparams:
            raise ValueError(
                f"the checkpoint is of a population with seeds {saved['seeds']} and "
                f"member_hparams {saved['member_hparams']}; this one has {self.all_seeds} and "
                f"{self.member_hparams}"
            )

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume: the members still alive when the checkpoint was saved, with their history.

        Runs before the weights and optimizer state are loaded, so their shapes then match.
        """
        self.check_checkpoint(checkpoint)
        saved = checkpoint["population"]
        positions = [self.member_ids.index(m) for m in saved["member_ids"]]
        if positions != list(range(self.num_members)):
            self.select_members(positions)
        self.dropped = {int(m): why for m, why in saved["dropped"].items()}
        self.history = {int(m): h for m, h in saved["history"].items()}

    def member_checkpoint(self, member: int) -> dict[str, Any]:
        """A single-model checkpoint of live member ``member`` (its original index): its weights
        and the ``MNIST1DClassifier`` hyperparameters it trained with, so ``test``, ``validate``
        and ``predict --ckpt_path`` load it as the run of its own seed."""
        import lightning

        position = self.member_ids.index(member)
        state = {k: v[position].detach().clone() for k, v in self.net.state_dict().items()}
        hparams = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        hparams["optimizer"] = {
            "class_path": self.hparams.optimizer["class_path"],
            "init_args": dict(self.member_kwargs[member]),
        }
        if self.scheduler_class is not None:  # the member's own schedule
            hparams["lr_scheduler"] = {
                "class_path": self.hparams.lr_scheduler["class_path"],
                "init_args": dict(self.member_scheduler_kwargs[member]),
            }
        return {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": {f"net.{k}": v for k, v in state.items()},
            "hyper_parameters": hparams,
        }

    # -- HPARAMS ----------------------------------------------------------------------------

    def _member_hparams_for_logging(self, member: int) -> dict[str, Any]:
        params = run_hparams(self, self.member_kwargs[member], seed=self.all_seeds[member])
        for name, values in self.member_clipping.items():
            params[f"clip/{name}"] = values[member]
        return params

    @override
    def on_fit_start(self) -> None:
        if not self.member_loggers:
            return
        for loggers, member in zip(self.member_loggers, self.member_ids, strict=True):
            for logger in _as_list(loggers):
                logger.log_hyperparams(self._member_hparams_for_logging(member))

    @override
    def on_train_end(self) -> None:
        if not self.member_loggers:
            return
        for loggers, member in zip(self.member_loggers, self.member_ids, strict=True):
            history = self.history[member]
            results = {
                "hp/val_loss": history["val/loss"][-1] if history["val/loss"] else float("nan"),
                "hp/val_acc": history["val/acc"][-1] if history["val/acc"] else float("nan"),
                "hp/best_val_loss": min(history["val/loss"], default=float("inf")),
            }
            params = self._member_hparams_for_logging(member)
            for logger in _as_list(loggers):
                log_hyperparams(logger, params, results, self._lightning_step() - 1)
