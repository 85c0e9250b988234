"""Population training (the LightningModule; its jobs are in the sibling modules): K independent copies of any network trained at once.

Every parameter stacks the K members along a leading dimension (``member_dims = 1``; see
``lightning_opt.population.stacking``: ``vmap`` for any module, batched matmuls for the MLP). Member k
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

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from lightning_opt.core import event_files
from lightning_opt.core.norms import tensor_norms
from lightning_opt.core.protocols import MemberData
from lightning_opt.data import MiniBatches
from lightning_opt.models import NetFactory
from lightning_opt.optim.memberwise import GroupedOptimizer, MemberwiseOptimizer
from lightning_opt.population.checkpoints import MemberCheckpoints
from lightning_opt.population.member_logging import MemberLogging, as_list
from lightning_opt.population.optimizers import MemberOptimizers
from lightning_opt.population.plan import PopulationPlan
from lightning_opt.population.rules import MemberClipping
from lightning_opt.population.selection import FINISHED, MemberSelection
from lightning_opt.population.settings import MemberGroup
from lightning_opt.population.stacking import stack_nets
from lightning_opt.training.loop import EpochSums, MinibatchTraining, check_compile


def _member_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of logits ``(K, B, C)`` against labels ``(K, B)``: ``(K, B)``.

    The classes go on dimension 1, where the log-softmax vectorises over the examples: over a
    last dimension of 10 classes it is 2-3x slower on CPU for the whole loss and its gradient
    (K=16: 118 vs 252 microseconds a step), with the same values to float rounding.
    """
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none")


class PopulationClassifier(
    MemberOptimizers,
    MemberClipping,
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
        optimizer: as in ``MNIST1DClassifier``; every member uses the class (but see
            ``member_groups``).
        member_hparams: per-member values, one list entry per member: any constructor argument
            of the optimizer (``lr``, ``betas``, ...), else of the LR scheduler (``gamma`` of
            StepLR where the optimizer takes none), else a ``member_hparams`` setting of the
            clipping callback (``clip_factor``). The other arguments are shared by all members.
        net, lr_scheduler, lr_interval, param_groups, input_size, num_classes, log_internals,
            compile: as in
            ``MNIST1DClassifier``; each member gets its own scheduler. A net that cannot run as
            members (``lightning_opt.population.stacking.why_not_stackable``) is refused (``ValueError``).
        member_groups: members of several optimizers in one population: one entry per group
            of consecutive members, ``{optimizer, lr_scheduler, size, member_hparams,
            lr_interval}`` (as above, for its members; ``lr_interval`` of a group without a
            scheduler is what its runs record); ``optimizer`` and ``lr_scheduler`` must then be
            the first group's, and ``member_hparams`` is not given. Each group steps as its own
            population would (its stacked fast path over its slice of the parameters, or one
            instance per member). Without ``clipping`` entries the trainer's clipping rules act
            on every member, so every group gives the same per-member clipping settings. With
            them, each group clips by its own rule: ``clipping`` is ``{class_path, init_args}``
            of a ``GradientClippingCallback`` (``None`` or absent: no clipping); groups of one
            rule share one instance, restricted to their members, which the population puts in
            the trainer's callbacks (``configure_callbacks``); a group's ``member_hparams`` may
            then give its rule's per-member settings.
        member_epochs: each member's own last epoch (its runs' ``max_epochs``; the trainer's
            is the largest): a member ends there as its single fit would (``finished``,
            ``finished_checkpoints``; results logged), and the others go on.

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
        compile: bool | str = False,
        member_groups: list[dict[str, Any]] | None = None,
        member_epochs: list[int] | None = None,
    ) -> None:
        super().__init__()
        check_compile(compile)
        # The population's own arguments go into the checkpoint under "population" (see
        # on_save_checkpoint): LightningCLI gives a checkpoint's hyper_parameters to the model's
        # arguments on resume, which are those of a single model.
        self.save_hyperparameters(
            ignore=["seeds", "member_hparams", "member_groups", "member_epochs"], logger=False
        )
        plan = PopulationPlan.of(
            seeds, optimizer, member_hparams, lr_scheduler, lr_interval, net, param_groups,
            input_size=input_size, num_classes=num_classes, member_groups=member_groups,
            member_epochs=member_epochs, hparams=self.hparams, build=True,
        )  # fmt: skip
        k = len(seeds)
        self.net_class, self.hparams.net = plan.net_class, plan.net
        #: Each member's own last epoch (its runs' max_epochs), or ``None``: the trainer's.
        self.member_epochs = plan.member_epochs
        #: ``{member: epochs}`` of the members that ended at their own last epoch, before the
        #: population's, and each one's single-model checkpoint of then.
        self.finished: dict[int, int] = {}
        self.finished_checkpoints: dict[int, dict[str, Any]] = {}
        self.param_group_rules = plan.param_group_rules
        self.groups = plan.groups
        first = self.groups[0]
        self.optimizer_class = first.optimizer_class
        self.hparams.optimizer = first.optimizer
        self.scheduler_class, self.hparams.lr_scheduler = first.scheduler_class, first.lr_scheduler
        #: Each member's group (its position in ``groups``), by original index.
        self.member_group = [g for g, group in enumerate(self.groups) for _ in group.members]
        self.member_kwargs = plan.member_kwargs
        self.member_scheduler_kwargs = plan.member_scheduler_kwargs
        #: The population's own clipping rules, each restricted to its groups' members, where
        #: the groups give theirs (``None``: the trainer's rules act on every member); each
        #: member's rule; each member's clipping settings (checked in setup()).
        self.clipping_rules, self.member_rule = plan.clipping_rules, plan.member_rule
        self.member_clipping = plan.member_clipping
        # The stacked fast paths know one group: rules train each member's own instance. With
        # several groups each takes its own (``_stacked_path``) in configure_optimizers.
        self.stacked = plan.stacked
        self._member_params: list[list[Tensor]] = []
        self._slices: list[tuple[int, int]] = []  # each stacked part's positions [a, b)
        self._slice_params: list[list[Tensor]] = []  # and its slices of the stacked params
        #: Keep each member's weights of its lowest val/loss epoch (``use_best_weights``).
        self.track_best = False
        self._best_loss: Tensor | None = None
        self._best_state: list[Tensor] = []
        self._share = False  # whether member views get the gradients (see on_train_start)
        self._share_members = False  # each member's (else only the stacked parts' slices)
        self.step_contract = plan.step_contract
        nets = plan.nets
        self._optimizer_mode: str | None = None
        self.net = stack_nets(nets)
        self.seeds = list(seeds)
        self.all_seeds = list(seeds)  # by member index, including dropped members
        self.member_hparams = {name: list(v) for name, v in (member_hparams or {}).items()}
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
        self._metric_lacking: dict[str, list[bool]] = {}  # of the members a value is not for
        self._reset_clip_caches()  # built at the first step
        self._epoch = EpochSums()  # training sums, then each evaluation's loss and acc
        self.register_buffer("_first_bad_step", torch.full((k,), -1), persistent=False)

    def _stacked_path(self, group: MemberGroup) -> Any:
        """``group``'s stacked fast path, or ``None``: one instance per member."""
        return None if self.param_group_rules else group.settings.stacked

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

    @override
    def teardown(self, stage: str) -> None:
        event_files.SERVICE.wait()  # every member's events on disk at once, not file by file
        for loggers in self.member_loggers or []:
            for logger in as_list(loggers):
                logger.finalize("success")  # flush and close; a later test() reopens the writer
        data = self.trainer.datamodule
        if isinstance(data, MemberData) and data.population_seeds is self._data_seeds:
            data.population_seeds = None  # the next single-model fit shuffles as usual

    @override
    def on_train_start(self) -> None:
        # Built on the training device at the first step, over the parameters of now.
        self._reset_clip_caches()
        self._start_training()
        optimizer = self._memberwise()
        views = any(not c.stacked for c in self._clippers())  # clipping member by member
        if isinstance(optimizer, GroupedOptimizer):  # stacked parts take slices of the grads
            parts = optimizer.members
            views = views or any(isinstance(p, MemberwiseOptimizer) for p in parts)
        else:
            views = views or optimizer is not None
        self._share_members = views
        self._share = views or bool(self._slices)
        if self._share and not self._views_current():
            # The parameters were moved or converted (device, precision) after the optimizer
            # was built: point every member's optimizer at views of the new tensors.
            self._member_params = self._member_views()
            if isinstance(optimizer, GroupedOptimizer):
                self.select_parts(optimizer, list(range(self.num_members)))
            elif optimizer is not None:
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
            lr = self._logged_lr()
            if lr is not None:  # a class that keeps no learning rate logs none
                metrics["optim/lr"] = lr
        metrics.update(self._member_metrics)
        self._member_metrics = {}
        self._record_internals(metrics)
        # The step a single fit's loggers see: Lightning logs epoch-end self.log values at the
        # index of the epoch's last batch, and the model logs its internals there too.
        metrics["epoch"] = float(self.current_epoch)
        self._log_members(metrics, self._lightning_step() - 1)
        self._metric_lacking = {}
        self._epoch_end_schedulers()

        first_bad = self._first_bad_step.tolist()
        for member, step in zip(list(self.member_ids), first_bad, strict=True):
            if step >= 0 and member not in self._to_drop:
                self._to_drop[member] = (
                    f"training loss became non-finite at global step {step} "
                    f"(epoch {self.current_epoch})"
                )
        self._finish_members()
        self._apply_drops()

    def _finish_members(self) -> None:
        """Members whose own last epoch this was end here, as their single fit ends: their
        results logged and their checkpoint taken (in evaluation mode), then they leave."""
        epochs = self.current_epoch + 1
        if self.member_epochs is None or epochs >= self.trainer.max_epochs:
            return  # the members of the population's budget end with the fit
        ending = [m for m in self.member_ids
                  if self.member_epochs[m] == epochs and m not in self._to_drop]  # fmt: skip
        if not ending:
            return
        if self.step_contract.modes:
            self._set_optimizer_mode("eval")
        for member in ending:
            self.finished[member] = epochs
            self.finished_checkpoints[member] = self.member_checkpoint(member, epochs)
            if self.member_loggers:
                loggers = self.member_loggers[self.member_ids.index(member)]
                self._log_member_results(member, loggers)
            self._to_drop[member] = FINISHED
        if self.step_contract.modes:
            self._set_optimizer_mode("train")

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
