"""What other modules may use of a LightningModule that trains one model or K members at once,
declared here (the bottom of the package) instead of probed with ``hasattr``.

``GradientSource``: the tensors a clipping rule acts on. ``MemberTraining``: a population's
per-member interface (``lightning_opt.population.PopulationClassifier``), used by the clipping
callbacks, ``tune``'s population pruning, ``compare``'s finals and the command line.
``MemberData``: a data module that serves every member its own data order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class GradientSource(Protocol):
    """A module whose gradients a clipping rule clips."""

    #: Leading dimensions of every parameter that index independent members (0: one model).
    member_dims: int

    def gradient_parameters(self) -> tuple[list[Tensor], int]:
        """The parameters whose ``.grad`` are clipped, and their member dimensions."""
        ...


@runtime_checkable
class MemberTraining(GradientSource, Protocol):
    """K members trained at once, each exactly its own run."""

    #: The original index of each live member, and ``{index: reason}`` of the dropped ones.
    member_ids: list[int]
    dropped: dict[int, str]
    #: ``{index: {"val/loss": [...], "val/acc": [...], "optim/...": [...]}}`` by epoch.
    history: dict[int, dict[str, list[float]]]
    #: ``{index: {"test/loss": ..., "test/acc": ...}}`` after a test.
    test_results: dict[int, dict[str, float]]
    #: The seed of each member, by original index (dropped ones included).
    all_seeds: list[int]

    def clipping_overrides(
        self, start: int = 0, stop: int | None = None, names: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Per-member clipping thresholds of the live members, ``{name: (K,)}`` (positions
        ``start:stop``, only ``names``, if given)."""
        ...

    def clipping_values(self) -> dict[str, list[float]]:
        """The same as numbers, for a rule that clips one member at a time."""
        ...

    def member_parameters(self) -> list[list[Tensor]]:
        """Each live member's parameters as its own leaf tensors."""
        ...

    def member_runs(self, members: Sequence[int] | None) -> list[tuple[int, int]]:
        """The live positions of ``members`` (original indices; ``None``: all), as runs
        ``[start, stop)``."""
        ...

    def member_slice(self, start: int, stop: int) -> list[Tensor]:
        """Members ``start:stop``'s stacked parameters, their ``.grad`` the gradients' slices."""
        ...

    def log_member_metrics(
        self, metrics: dict[str, Tensor], members: Sequence[int] | None = None
    ) -> None:
        """Per-member values ``(K,)`` (or one per live member of ``members``) to log with this
        epoch's, each to its member's loggers."""
        ...

    def drop_members(self, members: dict[int, str]) -> None:
        """Stop training ``{index: reason}`` at the end of this epoch."""
        ...


@runtime_checkable
class MemberData(Protocol):
    """A data module that serves population members their own data orders."""

    #: One shuffle seed per live member while a population trains, else ``None``.
    population_seeds: list[int] | None

    @property
    def split_seed_is_per_run(self) -> bool: ...
