"""Time ``benchmark`` and ``compare`` end to end, against bare PyTorch loops of the same work.

    python perf/bench_benchmark.py [--candidate gnw] [--second sgd] [--skip-demo] [--skip-suite]
                                   [--experiment gnw_vs_adam] [--out perf/results/benchmark.json]

1. The demo (``make demo``'s experiment, ``configs/experiments/gnw_vs_adam.yaml``) as a
   subprocess in a fresh output directory (the data cache warmed first): its wall time, start-up
   and report included, and the model-epochs it trained (every tuning trial's epochs, a pruned
   one's up to its pruning, and every final run's), against the time a bare PyTorch loop (per
   epoch: the minibatches, one validation pass) takes for those model-epochs one model at a time,
   each arm's optimizer timed on its own (``perf/bench_fit.py``'s loop, clipping each step for an
   arm with a clipping rule). The issue's goal: at most 0.5x. ``--experiment`` times another
   experiment of ``configs/experiments/`` the same way (``wnclip_vs_fixedclip``).
2. The default suite (``configs/benchmarks/mnist1d.yaml``) with ``--optimizer CANDIDATE`` in a
   fresh output directory, then a second benchmark with ``--optimizer SECOND`` in the same one:
   the first trains every baseline, the second reuses them (one storage, arms named by their
   settings) and trains only its candidate. Reported: both wall times, and every population
   trained (per workload: tuning or finals, its size and the submissions in it), from the
   commands' own lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from _report import machine_info, write_json
from bench_fit import _splits, bare_loop

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> tuple[float, str]:
    """The command's wall time and its standard output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lightning_opt", *args], cwd=cwd, check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    return time.perf_counter() - start, done.stdout


def _trained_populations(output: str) -> list[dict]:
    """Each population a command trained, from its lines: the workload, what trained (tuning
    trials or final runs), its size and the labels of its members."""
    populations: dict[tuple, dict] = {}
    workload = arm = None
    for line in output.splitlines():
        if line.startswith("=== workload "):
            workload = line.split()[2]
            continue
        if line.startswith("== arm "):  # the study whose trials print as "trial N"
            arm = line.split()[2].rstrip(":")
            continue
        found = re.search(r"\(population of (\d+): ([\d.]+) s\)", line)
        if found is None:
            continue
        kind = "finals" if line.startswith("final ") else "tuning"
        if kind == "finals":
            label = line.split()[1]
        else:
            label = arm if line.startswith("trial ") else line.split(" trial ")[0]
        key = (workload, kind, found.group(2), found.group(1))
        entry = populations.setdefault(
            key, {"workload": workload, "kind": kind, "size": int(found.group(1)),
                  "seconds": float(found.group(2)), "labels": []},
        )  # fmt: skip
        if label not in entry["labels"]:
            entry["labels"].append(label)
    return list(populations.values())


def _model_epochs(exp_dir: Path) -> dict[str, int]:
    """Per arm: the epochs its tuning trials and final runs trained (from the study and the
    results)."""
    results = json.loads((exp_dir / "results.json").read_text())
    storage = f"sqlite:///{exp_dir / 'optuna.db'}"
    counts = {}
    for arm, summary in results["arms"].items():
        total = 0
        for entry in (summary, summary.get("retuned")):
            if entry is None:
                continue
            study = optuna.load_study(study_name=entry["tuning"]["study"], storage=storage)
            for trial in study.trials:
                if trial.state.is_finished() and trial.state.name in ("COMPLETE", "PRUNED"):
                    total += len(trial.intermediate_values) or entry["tune_max_epochs"]
            total += sum(len(run["val_loss_curve"]) for run in entry["runs"])
        counts[arm] = total
    return counts


def bench_demo(tmp: Path, cache: str, experiment: str = "gnw_vs_adam") -> dict:
    config = ROOT / "configs" / "experiments" / f"{experiment}.yaml"
    wall, output = _run(["compare", f"--config={config}", f"--output_dir={tmp / experiment}",
                         f"--data.cache_dir={cache}"], tmp)  # fmt: skip
    exp_dir = tmp / experiment / experiment
    epochs = _model_epochs(exp_dir)
    splits = _splits(cache, batch_size=100, val_fraction=0.2)
    steps_per_epoch = -(-len(splits["train"][0]) // 100)
    bare = {}
    for arm in yaml.safe_load(config.read_text())["arms"]:
        # Each arm's optimizer; a clipping arm's loop clips each step (weight-norm clipping's
        # arithmetic: per-tensor norms, as the fixed per-tensor rule's).
        clip = bool(arm.get("callbacks"))
        per_step = min(bare_loop(splits, arm["optimizer"], clip, 5) for _ in range(3))
        bare[arm["name"]] = per_step * steps_per_epoch * epochs[arm["name"]]
    total_bare = sum(bare.values())
    populations = _trained_populations(output)
    row = {"experiment": experiment, "wall_s": wall, "model_epochs": epochs, "bare_loop_s": bare,
           "bare_loop_total_s": total_bare, "ratio": wall / total_bare,
           "populations": populations}  # fmt: skip
    print(f"{experiment}: {wall:.1f} s for {sum(epochs.values())} model-epochs; bare loops one model at a "
          f"time {total_bare:.1f} s; ratio {row['ratio']:.2f}x")  # fmt: skip
    for p in populations:
        print(f"  {p['kind']} population of {p['size']} ({', '.join(p['labels'])}): "
              f"{p['seconds']:.1f} s")  # fmt: skip
    return row


def bench_suite(tmp: Path, cache: str, candidate: str, second: str) -> dict:
    out = tmp / "suite"
    common = [f"--output_dir={out}", f"--data.cache_dir={cache}"]
    first, output = _run(
        ["benchmark", f"--optimizer={candidate}", "--benchmark=first", *common], tmp
    )
    again, second_output = _run(
        ["benchmark", f"--optimizer={second}", "--benchmark=second", *common], tmp
    )
    row = {
        "first_s": first, "second_s": again, "candidate": candidate, "second": second,
        "populations": _trained_populations(output),
        "second_populations": _trained_populations(second_output),
    }  # fmt: skip
    print(f"default suite, {candidate}: {first:.1f} s (every baseline trained); then {second}: "
          f"{again:.1f} s (the baselines reused)")  # fmt: skip
    for name, populations in (("first", row["populations"]),
                              ("second", row["second_populations"])):  # fmt: skip
        print(f" {name}: {len(populations)} populations")
        for p in populations:
            print(f"  {p['workload']:<14} {p['kind']:<7} population of {p['size']:>2} "
                  f"({', '.join(p['labels'])}): {p['seconds']:.1f} s")  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", default="gnw")
    parser.add_argument("--second", default="sgd")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-suite", action="store_true")
    parser.add_argument(
        "--experiment",
        default="gnw_vs_adam",
        help="the compare experiment timed as the demo (configs/experiments/)",
    )
    parser.add_argument("--out", default=str(ROOT / "perf" / "results" / "benchmark.json"))
    args = parser.parse_args()
    result = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = str(tmp / "cache")
        _splits(cache, batch_size=100, val_fraction=0.2)  # generated once, not timed
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        if not args.skip_demo:
            result["demo"] = bench_demo(tmp, cache, args.experiment)
        if not args.skip_suite:
            result["suite"] = bench_suite(tmp, cache, args.candidate, args.second)
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
