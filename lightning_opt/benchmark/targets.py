"""``benchmark --set_targets``: each workload's validation-loss target and budget, set by
AlgoPerf's target-setting procedure and written with their provenance.

For each workload the target-setting baselines (``target_setting.setters``, by default every
baseline) are tuned with a larger tuning budget than submissions get (``target_setting.n_trials``
quasi-random trials, one study, each trial its own seed and the whole setting budget: the
workload's ``target_setting.epochs``, else its ``epochs``), the best configuration of each by
validation loss is re-run over ``target_setting.seeds`` fresh seeds, and each run's best (lowest)
validation loss is taken: the target is the median of those of the setter whose median is
lowest. The submissions' budget is the setting budget times ``target_setting.budget_factor``
(rounded up to whole epochs), so the setter's median run reaches the target within it with room
to spare. Everything runs as ``compare`` experiments under ``<output_dir>/<benchmark>/targets/``
(resumable, refused when settings change, shared arms reused), and the result is
``<output_dir>/<benchmark>/targets/targets.yaml``: the suite's whole ``workloads:`` list with
each workload's ``target``, ``epochs`` and a ``target_setting`` record (setters, trials, seeds,
setting budget, each setter's median, the losses behind it, the package version). Stack it after
the suite (``--config SUITE.yaml --config targets.yaml``) or copy it into the suite.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

import lightning_opt
from lightning_opt.core.atomic import no_trace_if_refused, write_text
from lightning_opt.experiments.compare import run_experiment

#: ``target_setting``'s keys and defaults.
DEFAULTS = {"setters": None, "n_trials": 30, "seeds": 5, "budget_factor": 1.5}


def settings(given: dict[str, Any] | None, baselines: list[dict[str, Any]]) -> dict[str, Any]:
    """``target_setting`` checked (one line each), defaults filled in."""
    given = dict(given or {})
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"target_setting keys are {sorted(DEFAULTS)}, got {sorted(unknown)}")
    out = {**DEFAULTS, **given}
    names = [b["name"] for b in baselines]
    setters = out["setters"] or names
    if isinstance(setters, str) or not all(s in names for s in setters):
        raise ValueError(
            f"target_setting.setters {out['setters']!r}: a list of baseline names, from "
            f"{', '.join(names)}"
        )
    out["setters"] = list(setters)
    for key in ("n_trials", "seeds"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"target_setting.{key} is a positive integer, got {value!r}")
    factor = out["budget_factor"]
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 1:
        raise ValueError(
            f"target_setting.budget_factor is a number >= 1 (the submissions' budget over the "
            f"setting budget), got {factor!r}"
        )
    return out


def setting_epochs(workload: dict[str, Any]) -> int:
    """The budget a workload's target is set at: its recorded setting budget, else its own."""
    recorded = (workload.get("target_setting") or {}).get("epochs")
    return int(recorded) if recorded else int(workload["epochs"])


def set_targets(
    config: Any, suite: Any, checked: list[dict[str, Any]], plan_workloads: Any
) -> Path:
    """Run the target setting of every workload of ``suite`` (``command._Suite``; its
    workloads ``checked``, planned by ``plan_workloads``, ``command._plan_workloads``); the path of
    the targets.yaml written."""
    chosen = settings(config.target_setting, suite.baselines)
    setters = [b for b in suite.baselines if b["name"] in chosen["setters"]]
    base = {
        **suite.base, "n_trials": chosen["n_trials"], "study_size": chosen["n_trials"],
        "seeds": chosen["seeds"], "population": chosen["n_trials"],
    }  # fmt: skip
    if base.get("sampler") == "tpe":  # one study of a larger budget: quasi-random, as submissions
        base["sampler"] = "sobol"
    folder = suite.bench_dir / "targets"
    workloads = [{**w, "epochs": setting_epochs(w)} for w in checked]
    with no_trace_if_refused(folder):
        folder.mkdir(parents=True, exist_ok=True)
        planned = plan_workloads(suite.name, base, workloads, setters, folder)
    records = {}
    for number, (workload, path, plan) in enumerate(planned, 1):
        print(f"=== target setting: workload {workload['name']} ({path}; {number} of "
              f"{len(planned)})", flush=True)  # fmt: skip
        experiment = run_experiment(plan)
        results = json.loads((experiment / "results.json").read_text())
        records[workload["name"]] = _record(workload, results, chosen)
    out = []
    for entry in suite.workloads:
        record = records[entry["name"]]
        kept = {k: v for k, v in entry.items() if k not in ("target", "epochs", "target_setting")}
        budget, target = record.pop("budget"), record.pop("target")
        out.append({**kept, "epochs": budget, "target": target, "target_setting": record})
    path = folder / "targets.yaml"
    header = (
        f"# Targets and budgets of benchmark {suite.name!r}, set by `benchmark --set_targets` "
        "(lightning_opt.benchmark.targets):\n# each target is the median, over the best "
        "setter's final seeds, of the lowest validation loss of each run at the setting "
        "budget;\n# epochs is that budget times budget_factor. Stack after the suite: "
        f"--config SUITE.yaml --config {path}\n"
    )
    write_text(path, header + yaml.safe_dump({"workloads": out}, sort_keys=False))
    for entry in out:
        print(f"workload {entry['name']}: target {entry['target']} (setting budget "
              f"{entry['target_setting']['epochs']} epochs), budget {entry['epochs']} epochs",
              flush=True)  # fmt: skip
    print(f"targets: {path}")
    return path


def _record(workload: dict[str, Any], results: dict[str, Any], chosen: dict) -> dict[str, Any]:
    """A workload's target, budget and provenance from its target-setting experiment."""
    medians, losses = {}, {}
    for name, arm in results["arms"].items():
        best = [min(run["val_loss_curve"]) for run in arm["runs"] if run.get("val_loss_curve")]
        best = [b for b in best if math.isfinite(b)]
        if best:
            losses[name] = [round(b, 6) for b in best]
            medians[name] = statistics.median(best)
    if not medians:
        raise ValueError(
            f"workload {workload['name']!r}: no target-setting run reached a finite "
            "validation loss; widen the setters' search spaces or the budget"
        )
    setter = min(medians, key=medians.get)
    epochs = workload["epochs"]
    return {
        "budget": math.ceil(epochs * chosen["budget_factor"]),
        # Rounded up in the 4th decimal: the median run reaches it (never just misses by
        # rounding).
        "target": math.ceil(medians[setter] * 10_000) / 10_000,
        "setter": setter,
        "tuned": results["arms"][setter]["tuned"],
        "setters": {n: round(m, 6) for n, m in medians.items()},
        "best_losses": losses[setter],
        "epochs": epochs,  # the setting budget (setting_epochs reads it back)
        "n_trials": chosen["n_trials"],
        "seeds": chosen["seeds"],
        "budget_factor": chosen["budget_factor"],
        "version": lightning_opt.__version__,
    }
