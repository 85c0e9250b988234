"""Lightning callbacks that clip gradients before each optimizer step (the kernels: ``clipping.kernels``).

``GradientClippingCallback`` is the extension point: a rule of one's own subclasses it, takes its
settings as constructor arguments and implements ``clip_``; fit, tune, compare and populations
then work with it, its study name, per-member settings and messages coming from the class.

Add one to ``trainer.callbacks``; from YAML::

    trainer:
      callbacks:
        - class_path: lightning_opt.callbacks.WeightNormClipping
          init_args: {clip_factor: 0.1}

Each logs ``clip/fraction_clipped`` and ``clip/mean_scale`` once per epoch (means over the epoch's
steps, and over members for a model with ``member_dims = 1``) and keeps ``clip_rate()`` for the run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_opt.clipping.kernels import (
    ClipStats,
    check_positive,
    clip_grad_by_weight_norm_,
    clip_grad_norm_global_,
    clip_grad_norm_per_tensor_,
)
from lightning_opt.core.protocols import GradientSource, MemberTraining
from lightning_opt.core.search_space import SearchParam
from lightning_opt.optim.registry import constructor_arguments

FixedMode = Literal["per_tensor", "global"]
Overrides = Mapping[str, Tensor] | None  # per-member values of a population's settings


class GradientClippingCallback(Callback, ABC):
    """Clips in ``on_before_optimizer_step``, after AMP unscaling and before the module's own hook.

    Subclasses take their settings as constructor arguments, store each under its own name
    (``self.clip_factor = clip_factor``) and implement ``clip_``. Per-step stats are summed on the
    device (no host sync) and logged at the end of each training epoch.

    Class attributes a subclass may set:

    - ``search_space``: what ``tune`` searches by default when this callback is on.
    - ``member_hparams``: the settings a population may give per member; by default every
      ``float`` or ``int`` constructor argument.
    - ``short_name``: the tag of a study's default name (``adam-<short_name>``); by default the
      class name in lowercase.
    - ``stacked``: ``True`` if ``clip_`` handles ``member_dims=1`` (every tensor stacks K members)
      with per-member ``overrides`` itself. Otherwise a population clips member by member: each
      member's own tensors, with its own settings set on ``self`` for the call, so a rule written
      for one model is exact for every member.

    A population whose member groups clip by different rules (``PopulationClassifier``'s
    ``member_groups`` with ``clipping``) restricts each rule to its groups' members
    (``restrict_to``): it clips, counts and logs those alone; the others' gradients are left as
    they are and log no ``clip/*`` values, as their own runs without the rule would.

    Args:
        log_stats: log ``clip/fraction_clipped`` and ``clip/mean_scale`` each epoch.
    """

    search_space: ClassVar[tuple[SearchParam, ...]] = ()
    member_hparams: ClassVar[tuple[str, ...]]
    short_name: ClassVar[str]
    stacked: ClassVar[bool] = False
    #: What ``ClipStats.compared`` holds, for the report (``None``: the rule does not say).
    compared_quantity: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "member_hparams" not in cls.__dict__:
            cls.member_hparams = tuple(
                name
                for name, p in constructor_arguments(cls).items()
                if p.annotation in (float, int, "float", "int")
            )
        if "short_name" not in cls.__dict__:
            cls.short_name = cls.__name__.lower()

    def __init__(self, log_stats: bool = True) -> None:
        self.log_stats = log_stats
        # Sums of per-step stats; a 0-dim CPU zero plus a tensor on any device stays on that
        # device, and takes the shape (K,) of a population's per-member stats.
        self._run_fraction, self._run_steps = torch.zeros(()), 0
        self._compared: list[Tensor] = []  # per step, (N, *members): for compared_quantiles
        #: Each epoch's fraction of tensors clipped (a list per epoch; one value per member
        #: it clipped then, whose original indices are ``history_members``'s of that epoch).
        self.fraction_history: list[list[float]] = []
        self.history_members: list[list[int]] = []
        #: The original indices of the population members this rule clips (``restrict_to``),
        #: in the order of its per-member statistics; ``None``: every member.
        self.members: list[int] | None = None
        self._module: Any = None  # the module last clipped, and whether it is a
        self._kinds = (False, False)  # GradientSource and a MemberTraining
        self._reset_epoch()

    def restrict_to(self, members: Sequence[int]) -> None:
        """Clip only the population members of original indices ``members`` (before a fit)."""
        self.members = sorted(members)

    def _reset_epoch(self) -> None:
        self._epoch_fraction = torch.zeros(())
        self._epoch_scale = torch.zeros(())
        self._epoch_steps = 0

    @abstractmethod
    def clip_(
        self, parameters: Sequence[Tensor], member_dims: int = 0, overrides: Overrides = None
    ) -> ClipStats:
        """Clip the gradients of ``parameters`` in place and say what was done.

        Only a ``stacked`` rule is called with ``member_dims=1`` and ``overrides`` (per-member
        values of its ``member_hparams`` that replace its own); any other rule always sees one
        model's tensors and its own attributes."""

    def clip_rate(self) -> float:
        """Mean over the run's steps so far of the fraction of tensors clipped (syncs).

        With the same tensors at every step this is the fraction of tensor-steps clipped; for
        global clipping, the fraction of steps. 0.0 before the first step. For a population,
        the mean over members (``clip_rates`` has each member's).
        """
        if not self._run_steps:
            return 0.0
        return float(self._run_fraction.mean() / self._run_steps)

    def clip_rates(self) -> list[float]:
        """``clip_rate`` of each live member of a population (one entry for a single model)."""
        if not self._run_steps:
            return [0.0]
        return (self._run_fraction / self._run_steps).reshape(-1).tolist()

    def member_fraction_history(self, member: int = 0) -> list[float]:
        """The fraction of tensors clipped at each epoch of population member ``member`` (its
        original index; 0 for a single model), for the epochs it trained."""
        return [
            fractions[members.index(member)]
            for fractions, members in zip(self.fraction_history, self.history_members, strict=True)
            if member in members
        ]

    def select_members(self, index: Tensor, members: Sequence[int] | None = None) -> None:
        """Keep the per-member statistics at positions ``index`` (of this rule's members);
        ``members``: the original indices of the kept ones, for a restricted rule."""
        if members is not None:
            self.members = list(members)
        if self._run_fraction.dim() > 0:
            self._run_fraction = self._run_fraction[index.to(self._run_fraction.device)]
        self._compared = [c.index_select(1, index.to(c.device)) for c in self._compared]

    def compared_quantiles(
        self, qs: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
    ) -> list[dict[str, float]] | None:
        """Quantiles over the run's tensor-steps of what the rule compared with its setting
        (``compared_quantity``), one dict per live member (one for a single model); ``None``
        when the rule reports nothing. Lets a user choose a search range where the rule acts."""
        if not self._compared:
            return None
        values = torch.stack(self._compared).double()  # (steps, N, *members)
        values = values.reshape(-1, *values.shape[2:]) if values.dim() > 2 else values.reshape(-1)
        members = values.reshape(len(values), -1).T if values.dim() > 1 else values.reshape(1, -1)
        levels = torch.tensor(qs, dtype=values.dtype)
        table = torch.quantile(members.cpu(), levels, dim=1).T.tolist()
        return [{str(q): v for q, v in zip(qs, row, strict=True)} for row in table]

    def hparams_for_logging(self) -> dict[str, Any]:
        """The settings shown next to the model's in TensorBoard's HPARAMS tab: the class name
        and every constructor argument kept under its own name."""
        settings = {
            f"clip/{name}": getattr(self, name)
            for name in constructor_arguments(type(self))
            if name != "log_stats" and hasattr(self, name)
        }
        return {"clipping": type(self).__name__, **settings}

    @contextmanager
    def settings(self, **values: Any) -> Iterator[None]:
        """Set ``values`` on ``self`` for the block (one population member's settings)."""
        saved = {name: getattr(self, name) for name in values}
        for name, value in values.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_clipping_callbacks(trainer.callbacks, trainer.gradient_clip_val)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if pl_module is not self._module:  # protocol checks cost ~25 us each: once a module
            self._module = pl_module
            self._kinds = (
                isinstance(pl_module, GradientSource),
                isinstance(pl_module, MemberTraining),
            )
        source, population = self._kinds
        if source:
            params, member_dims = pl_module.gradient_parameters()
        else:  # any LightningModule: the optimizer's parameters
            params, member_dims = [p for g in optimizer.param_groups for p in g["params"]], 0
        if member_dims == 0:
            stats = self.clip_(params, 0, None)
        elif population:
            stats = self._clip_population(pl_module, params)
        else:  # stacked members of a module of the user's own: every member, its own settings
            stats = self.clip_(params, member_dims, {}) if self.stacked else None
            if stats is None:
                raise TypeError(
                    f"{type(self).__name__} clips one model at a time, and "
                    f"{type(pl_module).__name__} stacks members without MemberTraining"
                )
        if stats is None:  # a restricted rule none of whose members is live
            return
        self._epoch_fraction = self._epoch_fraction + stats.fraction_clipped
        self._epoch_scale = self._epoch_scale + stats.mean_scale
        self._epoch_steps += 1
        self._run_fraction = self._run_fraction + stats.fraction_clipped
        self._run_steps += 1
        if getattr(stats, "compared", None) is not None:
            self._compared.append(stats.compared.detach())

    def _clip_population(self, pl_module: Any, params: list[Tensor]) -> ClipStats | None:
        """Clip the population's members (this rule's, if restricted), each with its own
        settings: stacked runs of consecutive members at once where the rule is ``stacked``,
        else member by member; the stats ``(K,)`` of the members clipped, in their order."""
        runs = pl_module.member_runs(self.members)
        if not runs:
            return None
        parts = []
        if self.stacked:
            for start, stop in runs:
                tensors = params if self.members is None else pl_module.member_slice(start, stop)
                own = pl_module.clipping_overrides(start, stop, self.member_hparams)
                parts.append(self.clip_(tensors, 1, own))
        else:
            values = pl_module.clipping_values()
            each = pl_module.member_parameters()
            for start, stop in runs:
                parts += [self._clip_member(each[m], values, m) for m in range(start, stop)]
        return _joined(parts, stacked=self.stacked)

    def _clip_member(
        self, params: list[Tensor], values: dict[str, list[Any]], member: int
    ) -> ClipStats:
        """One member's own tensors clipped with its own settings set on ``self``."""
        own = {n: v[member] for n, v in values.items() if n in self.member_hparams}
        with self.settings(**own):
            return self.clip_(params, 0, None)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_steps:
            fractions = (self._epoch_fraction / self._epoch_steps).reshape(-1).tolist()
            self.fraction_history.append(fractions)
            members = [0]  # one model
            if isinstance(pl_module, MemberTraining) and self._epoch_fraction.dim() > 0:
                runs = pl_module.member_runs(self.members)
                members = [pl_module.member_ids[p] for a, b in runs for p in range(a, b)]
            self.history_members.append(members)
        if self.log_stats and self._epoch_steps:
            fraction = self._epoch_fraction / self._epoch_steps
            scale = self._epoch_scale / self._epoch_steps
            members = fraction.dim() > 0 and isinstance(pl_module, MemberTraining)
            if members:  # a population: each member logs its own, to its own run
                pl_module.log_member_metrics(
                    {"clip/fraction_clipped": fraction, "clip/mean_scale": scale}, self.members
                )
            if self.members is None:  # the progress bar's mean over members
                pl_module.log("clip/fraction_clipped", fraction.mean(), logger=not members)
                pl_module.log("clip/mean_scale", scale.mean(), logger=not members)
        self._reset_epoch()


def _joined(parts: list[ClipStats], stacked: bool) -> ClipStats:
    """The stats of runs of members (stacked: ``(n,)`` each) or of single members (0-dim
    each), as one ``(K,)`` in member order."""
    join = torch.cat if stacked else torch.stack
    fraction = join([p.fraction_clipped for p in parts])
    scale = join([p.mean_scale for p in parts])
    compared = [getattr(p, "compared", None) for p in parts]
    if any(c is None for c in compared):
        return ClipStats(fraction, scale)
    return ClipStats(fraction, scale, join(compared, dim=-1))  # (N, K)


def check_clipping_callbacks(callbacks: Sequence[Callback], gradient_clip_val: Any) -> None:
    """Refuse two clipping rules at once, or one with the Trainer's own ``gradient_clip_val``."""
    clippers = [type(c).__name__ for c in callbacks if isinstance(c, GradientClippingCallback)]
    if clippers and gradient_clip_val not in (None, 0):
        raise ValueError(
            f"{clippers[0]} and Trainer(gradient_clip_val={gradient_clip_val}) both clip; "
            "use one (remove the callback or set gradient_clip_val=None)"
        )
    restricted = [c.members for c in callbacks
                  if isinstance(c, GradientClippingCallback) and c.members is not None]  # fmt: skip
    if len(clippers) > 1 and len(restricted) == len(clippers):
        taken = [m for members in restricted for m in members]
        if len(taken) == len(set(taken)):  # rules of a population's groups, each its own members
            return
        raise ValueError(f"{len(clippers)} gradient clipping callbacks clip the same members")
    if len(clippers) > 1:
        raise ValueError(
            f"{len(clippers)} gradient clipping callbacks were given ({', '.join(clippers)}); "
            "use one"
        )


class WeightNormClipping(GradientClippingCallback):
    """Clip each parameter tensor's gradient norm to ``clip_factor * max(||W||_F, eps)``.

    Args:
        clip_factor: allowed gradient norm per unit of the tensor's own weight norm (> 0); with
            SGD, 0.1 bounds each step to lr * 0.1 * ||W||. To turn clipping off, drop the callback.
        eps: floor on the weight norm (> 0), so zero-initialised tensors (biases) are clipped to
            ``clip_factor * eps`` rather than to zero.
        log_stats: log ``clip/fraction_clipped`` and ``clip/mean_scale`` each epoch.
    """

    search_space = (SearchParam("clip_factor", 1e-3, 10.0, log=True),)
    member_hparams = ("clip_factor",)
    short_name = "wnclip"
    stacked = True
    compared_quantity = "||g|| / max(||W||, eps) per tensor"

    def __init__(self, clip_factor: float, eps: float = 1e-3, log_stats: bool = True) -> None:
        check_positive("clip_factor", clip_factor)
        check_positive("eps", eps)
        super().__init__(log_stats)
        self.clip_factor = clip_factor
        self.eps = eps

    @override
    def clip_(
        self, parameters: Sequence[Tensor], member_dims: int = 0, overrides: Overrides = None
    ) -> ClipStats:
        factor = (overrides or {}).get("clip_factor", self.clip_factor)
        return clip_grad_by_weight_norm_(parameters, factor, self.eps, member_dims=member_dims)


class FixedNormClipping(GradientClippingCallback):
    """Clip gradient norms to a fixed ``clip_value``: the baseline for ``WeightNormClipping``.

    Args:
        clip_value: largest allowed gradient L2 norm (> 0). To turn clipping off, drop the callback.
        mode: ``"per_tensor"`` clips each parameter tensor on its own (like-for-like with
            ``WeightNormClipping``); ``"global"`` clips the norm of all gradients together, like
            ``Trainer(gradient_clip_val=...)``.
        log_stats: log ``clip/fraction_clipped`` and ``clip/mean_scale`` each epoch.
    """

    search_space = (SearchParam("clip_value", 1e-2, 1e2, log=True),)
    member_hparams = ("clip_value",)
    short_name = "fixedclip"
    stacked = True

    @property
    def compared_quantity(self) -> str:  # type: ignore[override]
        return "||g|| per tensor" if self.mode == "per_tensor" else "||g|| (all tensors)"

    def __init__(
        self, clip_value: float, mode: FixedMode = "per_tensor", log_stats: bool = True
    ) -> None:
        check_positive("clip_value", clip_value)
        if mode not in get_args(FixedMode):
            raise ValueError(
                f"unknown mode {mode!r}; choose one of: {', '.join(get_args(FixedMode))}"
            )
        super().__init__(log_stats)
        self.clip_value = clip_value
        self.mode = mode

    @override
    def clip_(
        self, parameters: Sequence[Tensor], member_dims: int = 0, overrides: Overrides = None
    ) -> ClipStats:
        clip = clip_grad_norm_per_tensor_ if self.mode == "per_tensor" else clip_grad_norm_global_
        value = (overrides or {}).get("clip_value", self.clip_value)
        return clip(parameters, value, member_dims=member_dims)
