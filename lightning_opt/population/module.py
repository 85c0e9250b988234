"""Population training (the LightningModule; its jobs are in the sibling modules): K independent copies of any network trained at once.

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
from torch import Tensor
from typing_extensions import override

from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.data import MiniBatches
from lightning_opt.models import NetFactory, build_net, resolve_net_argument
from lightning_opt.norms import tensor_norms
from lightning_opt.optim import groups
from lightning_opt.optim.registry import (
    check_optimizer,
    constructor_arguments,
    resolve_optimizer,
    supports_population,
    takes_model,
)
from lightning_opt.optim.schedulers import (
    resolve_scheduler,
)
from lightning_opt.population.checkpoints import MemberCheckpoints
from lightning_opt.population.member_logging import MemberLogging, as_list
from lightning_opt.population.optimizers import MemberOptimizers
from lightning_opt.population.selection import MemberSelection
from lightning_opt.population.settings import member_settings
from lightning_opt.protocols import MemberData
from lightning_opt.stacking import stack_nets, why_not_stackable
from lightning_opt.training import EpochSums, MinibatchTraining


def _member_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of logits ``(K, B, C)`` against labels ``(K, B)``: ``(K, B)``.

    The classes go on dimension 1, where the log-softmax vectorises over the examples: over a
    last dimension of 10 classes it is 2-3x slower on CPU for the whole loss and its gradient
    (K=16: 118 vs 252 microseconds a step), with the same values to float rounding.
    """
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none")


class PopulationClassifier(
    MemberOptimizers,
    MemberSelection,
    MemberCheckpoints,
    MemberLogging,
    MinibatchTraining,
    LightningModule,
):
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
        net, lr_scheduler, lr_interval, param_groups, input_size, num_classes, log_internals: as in
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
        param_groups: list[dict[str, Any]] | None = None,
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
        settings = member_settings(
            cls, resolved["init_args"], self.scheduler_class,
            scheduler[1]["init_args"] if scheduler else None, member_hparams, k,
        )  # fmt: skip
        self.member_kwargs = settings.optimizer_kwargs
        self.member_scheduler_kwargs = settings.scheduler_kwargs
        self.member_clipping = settings.clipping  # checked against the clipping rules in setup()
        self.param_group_rules = groups.check_rules(param_groups)
        # The stacked fast paths know one group: rules train each member's own instance.
        self.stacked = None if self.param_group_rules else settings.stacked
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
                # Every member has the same architecture: the first one's probe speaks for all.
                probe = not nets
                nets.append(build_net(self.net_class, init_args, input_size, num_classes, probe))
        why = why_not_stackable(nets[0], input_size)
        if why is not None:
            raise ValueError(f"{why}: train it one run at a time")
        if takes_model(cls):
            raise ValueError(f"{cls.__name__} takes the model itself: train it one run at a time")
        for member, (member_net, kwargs) in enumerate(zip(nets, self.member_kwargs, strict=True)):
            # As a single fit would, first; the first member's step stands for the class's.
            sizes = (input_size, num_classes) if member == 0 else (None, None)
            contract = check_optimizer(cls, member_net, kwargs, *sizes, self.param_group_rules)
            if member == 0:
                self.step_contract = contract
        why = self.step_contract.why_not_population(cls.__name__)
        if why is not None:
            raise ValueError(f"{why}: train it one run at a time")
        self._optimizer_mode: str | None = None
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

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if not isinstance(data, MemberData):
            raise ValueError(
                "PopulationClassifier needs a datamodule with population_seeds "
                "(lightning_opt.data.MNIST1DDataModule)"
            )
        if data.split_seed_is_per_run:
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

    @override
    def teardown(self, stage: str) -> None:
        for loggers in self.member_loggers or []:
            for logger in as_list(loggers):
                logger.finalize("success")  # flush and close; a later test() reopens the writer
        data = self.trainer.datamodule
        if isinstance(data, MemberData) and data.population_seeds is self._data_seeds:
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
                optimizer.select_members(torch.arange(self.num_members), self._grouped_views())

    @override
    def training_step(self, batch: tuple[Tensor, Tensor] | MiniBatches, batch_idx: int) -> None:
        """One optimizer step per minibatch, for every member at once."""
        self._train_chunk(batch)

    def _minibatch_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return _member_losses(self(x), y).mean(1)  # each member's mean loss

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._record_clipped_norm()

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
