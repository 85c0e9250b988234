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

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from lightning_opt.data import MiniBatches
from lightning_opt.models import NetFactory, build_net, resolve_net_argument
from lightning_opt.norms import tensor_norms
from lightning_opt.optim import groups
from lightning_opt.optim.contract import StepContract
from lightning_opt.optim.memberwise import GroupedOptimizer, MemberwiseOptimizer
from lightning_opt.optim.registry import (
    check_optimizer,
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
from lightning_opt.population.rules import MemberClipping, group_rules
from lightning_opt.population.selection import FINISHED, MemberSelection
from lightning_opt.population.settings import NOT_GIVEN, MemberGroup, member_settings
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


def _group_specs(
    optimizer: Any, lr_scheduler: Any, lr_interval: str, member_hparams: dict[str, list] | None,
    member_groups: list[dict[str, Any]] | None, members: int,
) -> list[tuple[dict[str, Any], int]]:  # fmt: skip
    """Each group's ``{optimizer, lr_scheduler, size, member_hparams}`` and its first member."""
    if member_groups is None:
        spec = {"optimizer": optimizer, "lr_scheduler": lr_scheduler, "size": members,
                "member_hparams": dict(member_hparams or {}), "lr_interval": lr_interval}  # fmt: skip
        return [(spec, 0)]
    if member_hparams:
        raise ValueError("with member_groups, give each group's member_hparams in its entry")
    if not member_groups:
        raise ValueError("member_groups must hold at least one group")
    own_clipping = any("clipping" in e for e in member_groups)  # a group without clips nothing
    specs, start = [], 0
    for entry in member_groups:
        unknown = set(entry) - {"optimizer", "lr_scheduler", "size", "member_hparams",
                                "lr_interval", "clipping"}  # fmt: skip
        size = entry.get("size")
        if unknown or isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                "each member_groups entry is {optimizer, lr_scheduler, size, member_hparams, "
                f"lr_interval, clipping}}}} with a positive size, got {entry!r}"
            )
        spec = {"lr_scheduler": None, "member_hparams": {}, "lr_interval": lr_interval, **entry}
        if own_clipping:
            spec.setdefault("clipping", None)
        if spec["lr_scheduler"] is not None and spec["lr_interval"] != lr_interval:
            raise ValueError(
                f"a member group steps its scheduler every {spec['lr_interval']} and the "
                f"population every {lr_interval}: train them as separate populations"
            )
        specs.append((spec, start))
        start += size
    if start != members:
        raise ValueError(f"member_groups hold {start} members; seeds give {members}")
    first = specs[0][0]
    same = (
        resolve_optimizer(optimizer)[1] == resolve_optimizer(first["optimizer"])[1]
        and (resolve_scheduler(lr_scheduler) or (None, None))[1]
        == (resolve_scheduler(first["lr_scheduler"]) or (None, None))[1]
    )
    if not same:
        raise ValueError("with member_groups, optimizer and lr_scheduler must be the first group's")
    return specs


def _population_contract(contracts: list[StepContract]) -> StepContract:
    """One step contract for a population's groups: their step must be taken alike."""
    first = contracts[0]
    for contract in contracts[1:]:
        if contract.evaluate_first != first.evaluate_first:
            raise ValueError(
                "the member groups' optimizers differ in whether they read the gradients "
                "before their closure: train them as separate populations"
            )
    return dataclasses.replace(first, modes=any(c.modes for c in contracts))


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
        net, lr_scheduler, lr_interval, param_groups, input_size, num_classes, log_internals: as in
            ``MNIST1DClassifier``; each member gets its own scheduler. A net that cannot run as
            members (``lightning_opt.stacking.why_not_stackable``) is refused (``ValueError``).
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
        member_groups: list[dict[str, Any]] | None = None,
        member_epochs: list[int] | None = None,
    ) -> None:
        super().__init__()
        # The population's own arguments go into the checkpoint under "population" (see
        # on_save_checkpoint): LightningCLI gives a checkpoint's hyper_parameters to the model's
        # arguments on resume, which are those of a single model.
        if lr_interval not in ("epoch", "step"):
            raise ValueError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        self.save_hyperparameters(
            ignore=["seeds", "member_hparams", "member_groups", "member_epochs"], logger=False
        )
        self.net_class, self.hparams.net = resolve_net_argument(net, self.hparams)
        if not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds
        ):
            raise ValueError(
                f"seeds must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}"
            )
        k = len(seeds)
        if member_epochs is not None and (
            len(member_epochs) != k
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in member_epochs)
        ):
            raise ValueError(
                f"member_epochs must hold one positive integer per member ({k}), got "
                f"{member_epochs!r}"
            )
        #: Each member's own last epoch (its runs' max_epochs), or ``None``: the trainer's.
        self.member_epochs = None if member_epochs is None else list(member_epochs)
        #: ``{member: epochs}`` of the members that ended at their own last epoch, before the
        #: population's, and each one's single-model checkpoint of then.
        self.finished: dict[int, int] = {}
        self.finished_checkpoints: dict[int, dict[str, Any]] = {}
        self.param_group_rules = groups.check_rules(param_groups)
        specs = _group_specs(optimizer, lr_scheduler, lr_interval, member_hparams, member_groups, k)
        self.groups = [self._member_group(spec, start) for spec, start in specs]
        first = self.groups[0]
        self.optimizer_class = first.optimizer_class
        self.hparams.optimizer = first.optimizer
        self.scheduler_class, self.hparams.lr_scheduler = first.scheduler_class, first.lr_scheduler
        #: Each member's group (its position in ``groups``), by original index.
        self.member_group = [g for g, group in enumerate(self.groups) for _ in group.members]
        self.member_kwargs = [kw for g in self.groups for kw in g.settings.optimizer_kwargs]
        self.member_scheduler_kwargs = [
            kw for g in self.groups
            for kw in (g.settings.scheduler_kwargs or [None] * len(g.members))
        ]  # fmt: skip
        #: The population's own clipping rules, each restricted to its groups' members, where
        #: the groups give theirs (``None``: the trainer's rules act on every member); each
        #: member's rule; each member's clipping settings (checked in setup()).
        self.clipping_rules, self.member_rule, self.member_clipping = group_rules(self.groups)
        # The stacked fast paths know one group: rules train each member's own instance. With
        # several groups each takes its own (``_stacked_path``) in configure_optimizers.
        self.stacked = self._stacked_path(first) if len(self.groups) == 1 else None
        self._member_params: list[list[Tensor]] = []
        self._slices: list[tuple[int, int]] = []  # each stacked part's positions [a, b)
        self._slice_params: list[list[Tensor]] = []  # and its slices of the stacked params
        #: Keep each member's weights of its lowest val/loss epoch (``use_best_weights``).
        self.track_best = False
        self._best_loss: Tensor | None = None
        self._best_state: list[Tensor] = []
        self._share = False  # whether member views get the gradients (see on_train_start)
        self._share_members = False  # each member's (else only the stacked parts' slices)

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
        contracts = []
        for group in self.groups:
            cls = group.optimizer_class
            if takes_model(cls):
                raise ValueError(
                    f"{cls.__name__} takes the model itself: train it one run at a time"
                )
            for member in group.members:
                # As a single fit would, first; each group's first step stands for its class's.
                sizes = (input_size, num_classes) if member == group.members[0] else (None, None)
                contract = check_optimizer(
                    cls, nets[member], self.member_kwargs[member], *sizes, self.param_group_rules
                )
                if member == group.members[0]:
                    contracts.append(contract)
            why = contracts[-1].why_not_population(cls.__name__)
            if why is not None:
                raise ValueError(f"{why}: train it one run at a time")
        self.step_contract = _population_contract(contracts)
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

    def _member_group(self, spec: dict[str, Any], start: int) -> MemberGroup:
        cls, resolved = resolve_optimizer(spec["optimizer"])
        scheduler = resolve_scheduler(spec["lr_scheduler"])
        if not supports_population(cls):
            raise ValueError(
                f"{cls.__name__} declares supports_population = False: train it one run at a time"
            )
        size, member_hparams = spec["size"], dict(spec["member_hparams"] or {})
        settings = member_settings(
            cls, resolved["init_args"], scheduler[0] if scheduler else None,
            scheduler[1]["init_args"] if scheduler else None, member_hparams, size,
        )  # fmt: skip
        return MemberGroup(
            cls, resolved, *(scheduler or (None, None)), range(start, start + size), settings,
            {name: list(v) for name, v in member_hparams.items()}, spec["lr_interval"],
            spec.get("clipping", NOT_GIVEN),
        )  # fmt: skip

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
            metrics["optim/lr"] = self._logged_lr()
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
