"""What a study leaves besides its database: ``best.yaml`` (the best trial as a replayable fit
config), ``history.html`` and ``importance.html``, each written whole (``atomic``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from optuna.trial import TrialState

from lightning_opt.config.fingerprints import EXPERIMENT_KEYS, TUNE_KEYS
from lightning_opt.core.atomic import replacing, write_text
from lightning_opt.runs.build import (
    with_values,
)
from lightning_opt.tuning import claims as studies
from lightning_opt.tuning.trials import (
    TuneOptions,
    format_params,
    ignored_values,
)


def write_outputs(parser: LightningArgumentParser, config: Any, options: TuneOptions,
                  study: optuna.Study) -> Path | None:  # fmt: skip
    """Print the best trial; write ``best.yaml`` and the history/importance plots; best.yaml path."""
    counts = studies.count_states(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    print(
        f"study {options.study_name!r}: {finished}/{options.n_trials} finished "
        f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed)"
    )
    if not counts[TrialState.COMPLETE]:
        print("no trial completed: nothing to report")
        return None
    ignored = ignored_values(study.trials)
    if ignored is not None:
        print(f"warning: {ignored}", flush=True)
    best = study.best_trial
    options.study_dir.mkdir(parents=True, exist_ok=True)
    path = options.study_dir / "best.yaml"
    header = (
        f"# Best trial {best.number} of study {options.study_name!r} "
        f"(val/loss {best.value:.6g}, objective: {options.objective}).\n"
        f"# Retrain it: python -m lightning_opt fit --config {path}\n"
    )
    checkpoint = best.user_attrs.get("checkpoint")
    if checkpoint:
        header += (
            f"# Its weights: python -m lightning_opt test --config {path} "
            f"--ckpt_path {checkpoint}\n"
        )
    best_cfg = with_values(config, best.params)
    if "seed" in best.user_attrs:  # --trial_seeds distinct: the seed it trained with
        best_cfg.seed_everything = best.user_attrs["seed"]
    write_fit_config(parser, best_cfg, path, header)
    print(f"best trial {best.number}: val/loss {best.value:.4f}  {format_params(best.params)}")
    print(f"best config: {path}")
    write_plots(study, options.study_dir)
    return path


def fit_config(parser: LightningArgumentParser, cfg: Any) -> dict[str, Any]:
    """``cfg`` as the ``fit`` config that replays it: its dump, the study's and experiment's own
    keys left out."""
    dumped = yaml.safe_load(parser.dump(cfg, skip_validation=True))
    for key in (*TUNE_KEYS, *EXPERIMENT_KEYS, "config"):
        dumped.pop(key, None)
    return dumped


def write_fit_config(parser: LightningArgumentParser, cfg: Any, path: Path, header: str) -> None:
    """``cfg`` as the ``fit`` config that replays it, written atomically to ``path`` under
    ``header``."""
    write_config(fit_config(parser, cfg), path, header)


def write_config(dumped: dict[str, Any], path: Path, header: str) -> None:
    """A dumped config (``fit_config``), written atomically to ``path`` under ``header``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, header + yaml.safe_dump(dumped, sort_keys=False))


def _write_html(figure: Any, path: Path) -> None:
    with replacing(path) as tmp:  # a full disk never leaves half a page under the final name
        figure.write_html(tmp, include_plotlyjs=True)


def write_plots(study: optuna.Study, out: Path) -> None:
    try:
        from optuna.visualization import plot_optimization_history, plot_param_importances
    except ImportError:  # plotly missing
        return
    _write_html(plot_optimization_history(study), out / "history.html")
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(completed) >= 2 and len(study.best_trial.params) >= 1:
        try:
            figure = plot_param_importances(study)
        except (RuntimeError, ValueError) as err:  # e.g. every completed trial has one value
            print(f"parameter importance skipped: {err}")
        else:
            _write_html(figure, out / "importance.html")
    print(f"plots: {out / 'history.html'}")
