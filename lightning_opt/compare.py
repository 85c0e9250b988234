"""``compare``: a seed note's experiment as one command, made sound.

For each arm: tune on the validation split (the ``tune`` machinery, same budget and sampler seed
for every arm), retrain the best hyperparameters over several seeds (each seed changes
initialisation and data order, never the split), evaluate the untouched test set once per run,
then report means with confidence intervals and the differences between arms.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_opt import report, stats
from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.optim.registry import get_optimizer
from lightning_opt.tune import (
    TuneCLI,
    _callback_class,
    _parse,
    _quiet_lightning,
    build_trial,
    options_from_config,
    run_study,
    trial_config,
)

ARM_KEYS = {"name", "optimizer", "model", "callbacks", "search_space"}


class CompareCLI(TuneCLI):
    """``tune``'s options plus the experiment's: arms, seeds, tuning epochs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        group = parser.add_argument_group("Experiment")
        group.add_argument("--experiment", type=str, default="experiment",
                           help="Name; outputs go to <output_dir>/<experiment>/.")  # fmt: skip
        group.add_argument(
            "--arms", type=list[dict[str, Any]], default=[],
            help="Each arm: {name, optimizer, model: {...}, callbacks: [...], search_space: [...]}.",
        )  # fmt: skip
        group.add_argument("--seeds", type=int, default=5,
                           help="Final runs per arm, seeded seed_everything, +1, ...")  # fmt: skip
        group.add_argument("--tune_max_epochs", type=int, default=25,
                           help="Epochs per tuning trial (trainer.max_epochs: final runs).")  # fmt: skip


def validate_arms(config: Any) -> list[dict[str, Any]]:
    """The arms as plain dicts, checked: one clear error before any training."""
    arms = [dict(a) for a in (config.arms or [])]
    if not arms:
        raise ValueError("the experiment has no arms: list them under `arms:` in its config")
    for key in ("seeds", "tune_max_epochs"):
        if config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
    if not config.trainer.max_epochs or config.trainer.max_epochs < 1:
        raise ValueError(
            f"trainer.max_epochs must be a positive integer, got {config.trainer.max_epochs}"
        )
    names = []
    for arm in arms:
        unknown = set(arm) - ARM_KEYS
        if unknown:
            raise ValueError(
                f"arm {arm.get('name')!r} has unknown keys {sorted(unknown)}; allowed: {sorted(ARM_KEYS)}"
            )
        name = arm.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"arm names are letters, digits, '_', '-' or '.', got {name!r}")
        names.append(name)
        get_optimizer(str(arm.get("optimizer", config.optimizer)))
        for callback in arm.get("callbacks") or []:
            path = dict(callback).get("class_path", "")
            try:
                cls = _callback_class(Namespace(class_path=path))
            except (ImportError, AttributeError, ValueError):
                cls = None
            if cls is None:
                raise ValueError(
                    f"arm {name!r}: unknown clipping {path!r}; use "
                    "lightning_opt.callbacks.WeightNormClipping or FixedNormClipping"
                )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicated)}")
    return arms


def arm_config(base: Any, arm: dict[str, Any], max_epochs: int) -> Any:
    """The fit/tune config of one arm: the shared config with the arm's settings on top."""
    cfg = copy.deepcopy(base)
    cfg.optimizer = cfg.model.optimizer = arm.get("optimizer", base.optimizer)
    for key, value in (arm.get("model") or {}).items():
        if key not in cfg.model:
            raise ValueError(f"arm {arm['name']!r}: the model has no setting {key!r}")
        cfg.model[key] = value
    cfg.trainer.callbacks = [
        Namespace(class_path=c["class_path"], init_args=Namespace(**(c.get("init_args") or {})))
        for c in (arm.get("callbacks") or [])
    ]
    cfg.search_space = arm.get("search_space")
    cfg.trainer.max_epochs = max_epochs
    return cfg


class EpochHistory(Callback):
    """Validation loss and accuracy after every epoch, for the curves of the report."""

    def __init__(self) -> None:
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.val_loss.append(float(trainer.callback_metrics["val/loss"]))
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


def run_final(
    cfg: Any, arm: str, seed: int, exp_dir: Path, data: MNIST1DDataModule
) -> dict[str, Any]:
    """One final run of an arm (resumable: a finished run's result.json is reused)."""
    out = exp_dir / arm / "final" / f"seed_{seed}"
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    cfg = copy.deepcopy(cfg)
    cfg.seed_everything = seed
    seed_everything(seed, verbose=False)
    model, trainer_kwargs = build_trial(cfg)
    history = EpochHistory()
    trainer_kwargs["callbacks"].append(history)
    trainer_kwargs.update(
        logger=TensorBoardLogger(
            save_dir=str(exp_dir / arm), name="final", version=f"seed_{seed}",
            default_hp_metric=False,
        ),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(**trainer_kwargs)
    trainer.fit(model, datamodule=data)
    tested = trainer.test(model, datamodule=data, verbose=False)[0]  # the final weights, once
    clippers = [c for c in trainer.callbacks if isinstance(c, GradientClippingCallback)]
    result = {
        "seed": seed,
        "final_val_loss": history.val_loss[-1],
        "best_val_loss": min(history.val_loss),
        "final_val_acc": history.val_acc[-1],
        "test_loss": float(tested["test/loss"]),
        "test_acc": float(tested["test/acc"]),
        "clip_rate": clippers[0].clip_rate() if clippers else None,
        "val_loss_curve": history.val_loss,
        "val_acc_curve": history.val_acc,
        "seconds": time.perf_counter() - start,
        "log_dir": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(result_path)
    print(
        f"final {arm} seed {seed}: val/loss {result['final_val_loss']:.4f}  "
        f"test/loss {result['test_loss']:.4f}  test/acc {result['test_acc']:.4f}  "
        f"({result['seconds']:.1f} s)",
        flush=True,
    )
    return result


def run_compare(args: list[str]) -> Path:
    """``python -m lightning_opt compare --config EXPERIMENT.yaml``; the experiment directory."""
    _quiet_lightning()
    cli = _parse(args, CompareCLI)
    config = cli.config
    arms = validate_arms(config)
    base_options = options_from_config(config)
    exp_dir = Path(config.output_dir) / config.experiment
    storage = config.storage or f"sqlite:///{exp_dir / 'optuna.db'}"
    plans = []
    for arm in arms:  # validate every arm's configs before anything trains
        tune_cfg = arm_config(config, arm, config.tune_max_epochs)
        final_cfg = arm_config(config, arm, config.trainer.max_epochs)
        build_trial(tune_cfg)
        build_trial(final_cfg)
        options = replace(
            base_options, study_name=arm["name"], output_dir=str(exp_dir), storage=storage
        )
        plans.append((arm["name"], tune_cfg, final_cfg, options))
    data = MNIST1DDataModule(**config.data.as_dict())
    data.prepare_data()

    summary: dict[str, Any] = {}
    for name, tune_cfg, final_cfg, options in plans:
        print(
            f"== arm {name}: tuning ({options.n_trials} trials x {config.tune_max_epochs} epochs)"
        )
        study = run_study(tune_cfg, options)
        completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
        if not completed:
            raise ValueError(f"arm {name!r}: no tuning trial completed; widen the search space")
        best = study.best_trial
        print(f"== arm {name}: {config.seeds} final runs x {config.trainer.max_epochs} epochs "
              f"with {best.params}")  # fmt: skip
        tuned_cfg = trial_config(final_cfg, best.params)
        runs = [
            run_final(tuned_cfg, name, config.seed_everything + s, exp_dir, data)
            for s in range(config.seeds)
        ]
        summary[name] = {
            "optimizer": tuned_cfg.optimizer,
            "clipping": [c.class_path.rsplit(".", 1)[-1] for c in tuned_cfg.trainer.callbacks],
            "tuned": best.params,
            "tuning": {
                "study": name,
                "best_trial": best.number,
                "best_val_loss": best.value,
                "complete": len(completed),
                "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            },
            "runs": runs,
        }
    results = report.summarize(config.experiment, summary, _settings(config))
    report.write_all(exp_dir, results)
    print(report.markdown_table(results))
    for line in results["verdicts"]:
        print(line)
    print(
        f"report: {exp_dir / 'results.md'}, {exp_dir / 'comparison.html'}, {exp_dir / 'comparison.png'}"
    )
    return exp_dir


def _settings(config: Any) -> dict[str, Any]:
    return {
        "seeds": [config.seed_everything + s for s in range(config.seeds)],
        "tuning_trials": config.n_trials,
        "tuning_epochs": config.tune_max_epochs,
        "final_epochs": config.trainer.max_epochs,
        "objective": config.objective,
        "pruner": config.pruner,
        "sampler_seed": config.seed,
        "data": config.data.as_dict(),
        "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA,
    }
