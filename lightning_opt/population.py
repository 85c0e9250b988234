"""Population training: K independent copies of the MLP trained at once with batched matmuls.

Every parameter stacks the K members along a leading dimension (``member_dims = 1``). Member k
is initialised exactly as ``MNIST1DClassifier`` is after ``seed_everything(seeds[k])``, sees the
batches of the data order of its seed, and is updated by the registry's optimizer with its own
hyperparameters, using the same GNW-Adam and clipping code as the single model. So member k
reproduces the single-model ``fit`` of its seed and hyperparameters (to float rounding: batched
and single matrix products round differently), while K members cost little more than one.

The loss is the sum of the members' mean losses, so each member's gradient is its own. A member
whose loss becomes NaN or infinite is dropped at the end of that epoch, as are members dropped
by a caller (``drop_members``: ``tune`` prunes trials this way); the survivors' tensors and
optimizer state are narrowed, so dropped members stop costing compute and never touch the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    ACTIVATIONS,
    EpochSums,
    MinibatchTraining,
    NonFiniteLossError,
    build_mlp,
)
from lightning_opt.norms import tensor_norms
from lightning_opt.optim.hypers import select
from lightning_opt.optim.registry import get_optimizer

#: Per-member settings of the clipping callbacks (see ``GradientClippingCallback.clip_``).
CLIPPING_HPARAMS = ("clip_factor", "clip_value")
_MODEL_HPARAMS = ("lr", "weight_decay", "betas", "eps", "momentum", "gamma")


class StackedLinear(nn.Module):
    """K independent ``nn.Linear`` layers: ``weight (K, out, in)``, ``bias (K, out)``.

    ``forward`` takes ``(K, batch, in)``, or ``(batch, in)`` shared by every member.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.expand(len(self.weight), *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def stack_mlps(nets: Sequence[nn.Sequential]) -> nn.Sequential:
    """One ``nn.Sequential`` of ``StackedLinear`` layers holding ``nets`` as members.

    Layer indices are kept, so parameter names (``0.weight``, ...) match the single model's.
    """
    layers: list[nn.Module] = []
    for members in zip(*nets, strict=True):
        first = members[0]
        layers.append(StackedLinear(members) if isinstance(first, nn.Linear) else type(first)())
    return nn.Sequential(*layers)


def _per_member(name: str, values: Sequence[Any], members: int) -> list[Any]:
    if not isinstance(values, (list, tuple)) or len(values) != members:
        raise ValueError(
            f"member_hparams[{name!r}] must hold one value per member ({members}), got {values!r}"
        )
    return list(values)


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
        optimizer: registry name; every member uses it.
        member_hparams: per-member values, one list entry per member: any hyperparameter the
            optimizer takes (``lr``, ``betas``, ...) or a clipping callback's ``clip_factor`` /
            ``clip_value``. The other arguments are shared by all members.
        lr, weight_decay, betas, eps, momentum, gamma, hidden_sizes, activation, input_size,
        num_classes, log_internals: as in ``MNIST1DClassifier``.

    Attributes:
        member_loggers: one logger per member (set before ``fit``): each member's metrics go to
            its own, with the names and steps a single ``fit`` logs.
        member_ids: the original index of each live member.
        dropped: ``{member index: reason}`` for the members dropped so far.
        history: ``{member index: {"val/loss": [...], "val/acc": [...]}}``, one entry per epoch.
        test_results: ``{member index: {"test/loss": ..., "test/acc": ...}}`` after ``test``.
    """

    member_dims = 1

    def __init__(
        self,
        seeds: list[int],
        optimizer: str = "adam",
        member_hparams: dict[str, list] | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        momentum: float | None = None,
        gamma: float | None = None,
        hidden_sizes: list[int] = [100],  # noqa: B006
        activation: str = "relu",
        input_size: int = 40,
        num_classes: int = 10,
        log_internals: bool = True,
    ) -> None:
        super().__init__()
        # The population's own arguments go into the checkpoint under "population" (see
        # on_save_checkpoint): LightningCLI gives a checkpoint's hyper_parameters to the model's
        # arguments on resume, which are those of a single model.
        self.save_hyperparameters(ignore=["seeds", "member_hparams"])
        if not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds
        ):
            raise ValueError(
                f"seeds must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        self.optimizer_spec = spec = get_optimizer(optimizer)
        if spec.population is None:
            raise ValueError(f"optimizer '{optimizer}' cannot train a population")
        k = len(seeds)
        shared = {name: self.hparams[name] for name in _MODEL_HPARAMS}
        member_hparams = dict(member_hparams or {})
        unknown = sorted(set(member_hparams) - set(spec.hyperparameters) - set(CLIPPING_HPARAMS))
        if unknown:
            raise ValueError(
                f"member_hparams {', '.join(unknown)} are not taken by optimizer '{optimizer}' "
                f"or a clipping callback; allowed: "
                f"{', '.join((*spec.hyperparameters, *CLIPPING_HPARAMS))}"
            )
        columns = {name: _per_member(name, v, k) for name, v in member_hparams.items()}
        # Each member's settings are checked as a single model's would be.
        self.member_kwargs = [
            spec.resolve({**shared, **{n: v[i] for n, v in columns.items() if n in _MODEL_HPARAMS}})
            for i in range(k)
        ]
        self.member_clipping = {n: v for n, v in columns.items() if n in CLIPPING_HPARAMS}
        for name, values in self.member_clipping.items():
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                   for v in values):  # fmt: skip
                raise ValueError(f"{name} must be positive numbers, got {values}")
        self.optimizer_kwargs = self._stack_hypers(self.member_kwargs, set(columns))

        with torch.random.fork_rng(devices=[]):
            nets = []
            for seed in seeds:
                torch.manual_seed(seed)  # what seed_everything does before fit builds the model
                nets.append(build_mlp(input_size, hidden_sizes, num_classes, activation))
        self.net = stack_mlps(nets)
        self.seeds = list(seeds)
        self.all_seeds = list(seeds)  # by member index, including dropped members
        self.member_hparams = {name: list(v) for name, v in member_hparams.items()}
        self.member_ids = list(range(k))
        self.member_loggers: list[Logger] | None = None
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

    @staticmethod
    def _stack_hypers(member_kwargs: list[dict[str, Any]], per_member: set[str]) -> dict[str, Any]:
        """One value per hyperparameter: a tensor of the members' values for those given per
        member, else the shared number. A tensor even when the values happen to be equal: a
        number takes other kernels, so changing one member's value would round the others'
        steps differently."""
        stacked: dict[str, Any] = {}
        for name in member_kwargs[0]:
            values = [kw[name] for kw in member_kwargs]
            if name not in per_member:
                stacked[name] = values[0]
            elif name == "betas":
                stacked[name] = tuple(
                    torch.tensor(b, dtype=torch.float64) for b in zip(*values, strict=True)
                )
            else:
                stacked[name] = torch.tensor(values, dtype=torch.float64)
        return stacked

    @property
    def num_members(self) -> int:
        return len(self.member_ids)

    def clipping_overrides(self) -> dict[str, Tensor]:
        """Per-member clipping thresholds of the live members, on the parameters' device."""
        if self._clip_overrides is None:
            like = self.net[0].weight
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
        return self.optimizer_spec.population(
            self.net.parameters(), member_dims=1, **self.optimizer_kwargs
        )

    @override
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is None or not hasattr(data, "population_seeds"):
            raise ValueError(
                "PopulationClassifier needs a datamodule with population_seeds "
                "(lightning_opt.data.MNIST1DDataModule)"
            )
        shuffle_seed = data.hparams.get("shuffle_seed")
        self._data_seeds[:] = [
            s % 2**31 if shuffle_seed is None else shuffle_seed for s in self.seeds
        ]
        data.population_seeds = self._data_seeds
        names = {name for cb in self._clippers() for name in cb.member_hparams}
        missing = sorted(set(self.member_clipping) - names)
        if missing:
            raise ValueError(
                f"member_hparams {', '.join(missing)} need the clipping callback that takes them"
            )

    @override
    def teardown(self, stage: str) -> None:
        for logger in self.member_loggers or []:
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

    @override
    def training_step(self, batch: tuple[Tensor, Tensor] | MiniBatches, batch_idx: int) -> None:
        """One optimizer step per minibatch, for every member at once."""
        self._train_chunk(batch)

    def _minibatch_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return _member_losses(self(x), y).mean(1)  # each member's mean loss

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._record_clipped_norm()

    def log_member_metrics(self, metrics: dict[str, Tensor]) -> None:
        """Per-member values ``(K,)`` to log with this epoch's (used by the clipping callbacks)."""
        self._member_metrics.update(metrics)

    def _lightning_step(self) -> int:
        """The step Lightning's logger connector gives ``self.log`` values right now."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

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
            self.member_loggers[member].log_metrics(record, step=step)

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
            lr = self.optimizers().param_groups[0]["lr"]
            metrics["optim/lr"] = lr.to(self.device) if isinstance(lr, Tensor) else lr
        metrics.update(self._member_metrics)
        self._member_metrics = {}
        # The steps a single fit's loggers see: Lightning logs self.log values at the index of
        # the last Lightning batch, and the model logs its internals at the global step.
        internal = {n: v for n, v in metrics.items() if n.startswith(("optim/", "weight_norm/"))}
        self._log_members(internal, self.global_step)
        logged = {n: v for n, v in metrics.items() if n not in internal}
        logged["epoch"] = float(self.current_epoch)
        self._log_members(logged, self._lightning_step() - 1)

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
                logger = self.member_loggers[self.member_ids.index(member)]
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
        for optimizer in self.trainer.optimizers if self._trainer else []:
            optimizer.select_members(index)  # a MemberOptimizer (the registry's population)
        if self._trainer:
            for clipper in self._clippers():
                clipper.select_members(index)
        # The optimizer's arguments too: a resumed run builds its optimizer after this.
        self.optimizer_kwargs = {k: select(v, index) for k, v in self.optimizer_kwargs.items()}
        self._first_bad_step = self._first_bad_step.index_select(0, index)
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

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume: the members still alive when the checkpoint was saved, with their history.

        Runs before the weights and optimizer state are loaded, so their shapes then match.
        """
        saved = checkpoint.get("population")
        if saved is None:
            raise ValueError("not a population checkpoint (it has no 'population' entry)")
        if saved["seeds"] != self.all_seeds or saved["member_hparams"] != self.member_hparams:
            raise ValueError(
                f"the checkpoint is of a population with seeds {saved['seeds']} and "
                f"member_hparams {saved['member_hparams']}; this one has {self.all_seeds} and "
                f"{self.member_hparams}"
            )
        positions = [self.member_ids.index(m) for m in saved["member_ids"]]
        if positions != list(range(self.num_members)):
            self.select_members(positions)
        self.dropped = {int(m): why for m, why in saved["dropped"].items()}
        self.history = {int(m): h for m, h in saved["history"].items()}

    # -- HPARAMS ----------------------------------------------------------------------------

    @override
    def on_train_end(self) -> None:
        if not self.member_loggers:
            return
        data = self.trainer.datamodule
        for logger, member in zip(self.member_loggers, self.member_ids, strict=True):
            history = self.history[member]
            results = {
                "hp/val_loss": history["val/loss"][-1] if history["val/loss"] else float("nan"),
                "hp/val_acc": history["val/acc"][-1] if history["val/acc"] else float("nan"),
                "hp/best_val_loss": min(history["val/loss"], default=float("inf")),
            }
            params = {"optimizer": self.hparams.optimizer, **self.member_kwargs[member]}
            params["hidden_sizes"] = str(list(self.hparams.hidden_sizes))
            params["seed"] = self.all_seeds[member]
            if data is not None:
                params.update({f"data/{k}": v for k, v in data.hparams.items()})
            for callback in self._clippers():
                params.update(callback.hparams_for_logging())
            for name, values in self.member_clipping.items():
                params[name] = values[member]
            logger.log_hyperparams(params, results)
