"""Test accuracy of each workload config over seeds, beside the mnist1d paper's (README table).

    python perf/workloads.py [--seeds 0 1 2 3 4] [--only cnn gru] [--out perf/results/workloads.json]

Runs the plain command line for every ``configs/workloads/mnist1d_<net>.yaml`` (and the
shuffled-positions variant, ``--data.shuffle_positions true``, for the MLPs, cnn and gru, as the
paper's table): ``fit --seeds [...]`` trains the seeds as one population (each member exactly
its own run), ``test --seeds [...] --ckpt_path`` evaluates the last weights on the held-out test
split once, and the per-seed ``test/acc`` lines are collected. Prints a markdown table of the
mean test accuracy with its 95% t-interval, and the wall time of each workload. Not a timed
test: minutes on a laptop (the GRU dominates).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine_info, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_opt.reports.stats import mean_ci

#: The mnist1d README's test accuracies (original, shuffled positions).
PAPER = {
    "linear": (32, None),
    "mlp": (None, None),  # one hidden layer: the seed notes' MLP, not one of the paper's
    "resmlp": (68, 68),  # the repository's MLPBase: two layers, the second residual
    "cnn": (94, 56),
    "gru": (91, 57),
}
SHUFFLED = ("mlp", "resmlp", "cnn", "gru")


def run(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lightning_opt", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def measure(net: str, shuffled: bool, seeds: list[int], root: Path) -> dict:
    config = f"configs/workloads/mnist1d_{net}.yaml"
    name = f"{net}{'_shuffled' if shuffled else ''}"
    common = ["--config", config, f"--seeds={json.dumps(seeds)}"]
    if shuffled:
        common.append("--data.shuffle_positions=true")
    logs = ["--trainer.logger.init_args.save_dir", str(root / name)]
    start = time.perf_counter()
    out = run(["fit", *common, *logs, "--trainer.enable_progress_bar=false"])
    seconds = time.perf_counter() - start
    ckpt = re.search(r"checkpoint: (\S+)", out).group(1)
    tested = run(
        [
            "test",
            *common,
            "--trainer.logger=false",
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={root / name}",
        ]
    )  # its config.yaml goes there
    acc = [float(v) for v in re.findall(r"seed \d+: test/loss \S+\s+test/acc (\S+)", tested)]
    if len(acc) != len(seeds):
        raise SystemExit(f"{name}: expected {len(seeds)} test/acc lines, got:\n{tested}")
    ci = mean_ci(acc)
    print(f"{name:>16}: {100 * ci.mean:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}] "
          f"({seconds:.0f} s)", flush=True)  # fmt: skip
    return {"net": net, "shuffled": shuffled, "test_acc": acc, "mean": ci.mean,
            "ci": [ci.low, ci.high], "fit_seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", choices=list(PAPER), default=list(PAPER))
    parser.add_argument("--out", type=Path, default=Path("perf/results/workloads.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.only:
            rows.append(measure(net, False, args.seeds, Path(tmp)))
            if net in SHUFFLED:
                rows.append(measure(net, True, args.seeds, Path(tmp)))
    print("\n| net | paper | ours (test acc, 95% CI) | paper, shuffled | ours, shuffled |")
    print("| --- | --- | --- | --- | --- |")
    for net in args.only:
        cells = []
        for shuffled in (False, True):
            row = next((r for r in rows if r["net"] == net and r["shuffled"] == shuffled), None)
            paper = PAPER[net][shuffled]
            cells.append(f"{paper}%" if paper is not None else "-")
            cells.append(
                f"{100 * row['mean']:.1f}% [{100 * row['ci'][0]:.1f}, {100 * row['ci'][1]:.1f}]"
                if row else "-"
            )  # fmt: skip
        print(f"| {net} | {' | '.join(cells)} |")
    write_json(args.out, {"rows": rows, "seeds": args.seeds, "machine": machine_info()})


if __name__ == "__main__":
    main()
