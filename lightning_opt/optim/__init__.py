"""Optimizers: GNW-Adam and the registry that selects optimizers by name."""

from lightning_opt.optim.gnw_adam import GNWAdam
from lightning_opt.optim.registry import (
    OptimizerSpec,
    get_optimizer,
    list_optimizers,
    register_optimizer,
)

__all__ = ["GNWAdam", "OptimizerSpec", "get_optimizer", "list_optimizers", "register_optimizer"]
