"""The demo's start-up and planning, at two commits: what resolving the config once saves.

    python perf/bench_planning.py [--before 6c39790] [--repeats 3] [--out perf/results/planning.json]

For the current tree and for ``--before`` (checked out with ``git worktree`` into a temporary
folder, run with the same virtual environment), ``--repeats`` times each, alternating:

1. *start-up to the first line*: ``make demo``'s command (``configs/experiments/gnw_vs_adam.yaml``,
   a fresh output folder, the data cache warm) until it prints its first line, which it does
   once every arm is planned and the first tuning group is about to open its studies (imports,
   parsing, data, plans); and until its first trial line (studies opened, then the tuning
   population of 40 trained). The command is then stopped: training is not what is timed.
2. *planning alone*: in a fresh process with every module imported, ``compare``'s parse and
   plan of the same experiment (``parse`` + ``plan_arms``), the pre-flight memo empty.

Medians are printed as a table with the ratio after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "configs/experiments/gnw_vs_adam.yaml"

#: Parse and plan the demo's experiment in-process, with whichever layout the tree has.
PLAN_ONLY = """
import json, sys, time, tempfile
try:
    from lightning_opt.experiments.compare import CompareCLI
    from lightning_opt.experiments.plans import plan_arms
    from lightning_opt.tuning.tune import parse
    from lightning_opt.runs.build import quiet_lightning
except ImportError:
    from lightning_opt.compare import CompareCLI
    from lightning_opt.plans import plan_arms
    from lightning_opt.tune import parse
    from lightning_opt.runs import quiet_lightning
quiet_lightning()
out = tempfile.mkdtemp()
args = ["--config", sys.argv[1], "--output_dir", out, "--data.cache_dir", sys.argv[2]]
start = time.perf_counter()
cli = parse(args, CompareCLI)
parsed = time.perf_counter()
plan_arms(cli.config, cli.parser)
done = time.perf_counter()
print(json.dumps({"parse": parsed - start, "plan": done - parsed}))
"""


def _demo_phases(tree: Path, cache: Path) -> dict[str, float]:
    """Seconds from the demo command's start to its first line and to its first trial line."""
    out = tempfile.mkdtemp()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-u", "-m", "lightning_opt", "compare", "--config", EXPERIMENT,
            "--output_dir", out, "--data.cache_dir", str(cache)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    phases: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        phases.setdefault("first line", now)
        if " trial " in line:
            phases["first trial line"] = now
            break
    proc.kill()
    proc.wait()
    shutil.rmtree(out, ignore_errors=True)
    return phases


def _plan_only(tree: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", PLAN_ONLY, EXPERIMENT, str(cache)], cwd=tree,
                          env=env, check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="6c39790")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/planning.json"))
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp())
    before = Path(tempfile.mkdtemp()) / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    trees = {"before": before, "after": ROOT}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    try:
        _plan_only(ROOT, cache)  # generates the data cache once
        for _ in range(args.repeats):
            for name, tree in trees.items():
                for key, value in {**_demo_phases(tree, cache), **_plan_only(tree, cache)}.items():
                    samples[name].setdefault(key, []).append(value)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                       check=False, capture_output=True)  # fmt: skip
    medians = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    print(
        f"| phase (median of {args.repeats}, s) | before ({args.before}) | after | after/before |"
    )
    print("| --- | --- | --- | --- |")
    for key in medians["before"]:
        b, a = medians["before"][key], medians["after"].get(key, float("nan"))
        print(f"| {key} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    write_json(args.out, {"machine": machine_info(), "before": args.before, "samples": samples,
                          "medians": medians})  # fmt: skip


if __name__ == "__main__":
    main()
