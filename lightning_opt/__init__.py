"""lightning_opt: rigorous optimizer experiments on mnist1d with PyTorch Lightning and Optuna.

The public API is imported lazily, so ``python -m lightning_opt --help`` and light tools do not
pay for importing Lightning until they use it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MNIST1DDataModule": "lightning_opt.data",
    "load_mnist1d": "lightning_opt.data",
    "MNIST1DClassifier": "lightning_opt.training.classifier",
    "NonFiniteLossError": "lightning_opt.training.loop",
    "GNWAdam": "lightning_opt.optim",
    "OptimizerSpec": "lightning_opt.optim",
    "get_optimizer": "lightning_opt.optim",
    "list_optimizers": "lightning_opt.optim",
    "register_optimizer": "lightning_opt.optim",
    "WeightNormClipping": "lightning_opt.callbacks",
    "FixedNormClipping": "lightning_opt.callbacks",
    "clip_grad_by_weight_norm_": "lightning_opt.clipping.kernels",
    "clip_grad_norm_per_tensor_": "lightning_opt.clipping.kernels",
    "clip_grad_norm_global_": "lightning_opt.clipping.kernels",
    "cli_main": "lightning_opt.cli.main",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightning_opt' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
