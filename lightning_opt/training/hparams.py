"""A run's settings, flat and resolved, for every logger's hyperparameters (TensorBoard's HPARAMS
tab, CSV's hparams.yaml): the net's and the optimizer's class and every argument, the model's and
the data's settings, the seed and the callbacks' own."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only


def global_seed() -> int | None:
    """The seed ``seed_everything`` set (Lightning records it in ``PL_GLOBAL_SEED``)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def run_hparams(
    module: LightningModule, optimizer_kwargs: dict[str, Any], seed: Any,
    hparams: dict[str, Any] | None = None, callbacks: Any = None,
) -> dict:  # fmt: skip
    """One run's settings for the HPARAMS tab, flat and resolved: the net's and the optimizer's
    class and every argument, the model's and the data's settings, the seed, and each callback's
    ``hparams_for_logging``. Sequences become one entry per item (``optimizer/betas.0``).
    ``hparams``: the run's model hyperparameters where they are not ``module``'s own (a
    population member's); ``callbacks``: the run's callbacks where they are not all the
    trainer's (a member's clipping rule among several)."""
    hp = module.hparams if hparams is None else hparams
    params: dict[str, Any] = {"optimizer": hp["optimizer"]["class_path"], "seed": seed}
    params.update({f"optimizer/{k}": v for k, v in optimizer_kwargs.items()})
    net = hp.get("net")
    if isinstance(net, dict):  # the net's class and every argument, as the optimizer's
        params["net"] = net["class_path"]
        params.update({f"net/{k}": v for k, v in net["init_args"].items()})
    params.update(
        {k: v for k, v in hp.items() if k not in ("optimizer", "net") and not k.startswith("_")}
    )
    trainer = module.trainer
    if trainer.datamodule is not None:
        data = trainer.datamodule.hparams
        params.update({f"data/{k}": v for k, v in data.items() if not k.startswith("_")})
    for callback in trainer.callbacks if callbacks is None else callbacks:
        params.update(getattr(callback, "hparams_for_logging", dict)())
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat


def log_hyperparams(logger: Any, params: dict, metrics: dict, step: int) -> None:
    """``params`` with ``metrics`` to any Lightning logger: TensorBoard takes the metrics with the
    hyperparameters (its HPARAMS tab); CSV, MLflow and the others take hyperparameters alone, so
    the metrics go to them as metrics."""
    import inspect

    from lightning.pytorch.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger) and hasattr(logger.experiment, "_get_file_writer"):
        _tensorboard_session(logger, params, metrics, step)
    elif "metrics" in inspect.signature(logger.log_hyperparams).parameters:
        logger.log_hyperparams(params, metrics)
    else:
        logger.log_hyperparams(params)
        logger.log_metrics(metrics, step=step)


@rank_zero_only
def _tensorboard_session(logger: Any, params: dict, metrics: dict, step: int) -> None:
    """What ``TensorBoardLogger.log_hyperparams(params, metrics)`` writes (the metrics, the
    hyperparameters for hparams.yaml, the run's session), but the experiment summary it adds to
    every run: TensorBoard reads the first run's as the whole experiment's, in which nothing
    varies, so the HPARAMS table listed its ~40 columns by name (``compile``, ``data/*``, ...).
    Without it TensorBoard computes the experiment from all runs and leads with the settings
    that differ between them (a study's searched ``optimizer/lr``)."""
    from torch.utils.tensorboard.summary import hparams

    logger.hparams.update(params)  # hparams.yaml, as log_hyperparams keeps it
    logger.log_metrics(metrics, step)
    _, start, end = hparams(logger._sanitize_params(dict(params)), metrics)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(start, step)
    writer.add_summary(end, step)
