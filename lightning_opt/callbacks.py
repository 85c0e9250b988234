"""The Lightning callbacks of lightning_opt, under the names configs give in ``trainer.callbacks``
(``lightning_opt.callbacks.WeightNormClipping``), as ``lightning.pytorch.callbacks`` names
Lightning's. They are defined beside what they use: the clipping rules in ``clipping.callbacks``
(their kernels in ``clipping.kernels``), ``PredictionCSV`` in ``training.predictions``."""

from lightning_opt.clipping.callbacks import (
    FixedNormClipping,
    GradientClippingCallback,
    WeightNormClipping,
)
from lightning_opt.training.predictions import PredictionCSV

__all__ = ["FixedNormClipping", "GradientClippingCallback", "PredictionCSV", "WeightNormClipping"]
