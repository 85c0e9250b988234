"""Time the command line end to end: a default ``fit``, the import of the CLI, and what it imports.

    python perf/bench_startup.py [--repeats 3] [--out perf/results/startup.json]

- ``python -m lightning_opt fit --optimizer gnw`` with the seed defaults (50 epochs, 5,000 samples)
  as a subprocess in a temp dir (logs and checkpoints there via
  ``--trainer.logger.init_args.save_dir``), ``--repeats`` times after one untimed run that warms the
  data cache (``--data.cache_dir`` in the temp dir); the target is well under 10 s. The same
  command with ``--trainer.max_epochs 1`` separates the fixed cost from the 49 further epochs.
- ``python -c "import lightning_opt.cli.main"`` alone, ``--repeats`` times.
- ``python -X importtime -c "import lightning_opt.cli.main"``: the 15 most expensive top-level packages
  by cumulative time: the sum, over every place another package imports one of its modules, of
  that import's cumulative time (so it includes what the package drags in, and the figures nest:
  ``torch`` is inside ``lightning``), with the module that first pulls the most in, and each
  package's own ("self") time summed over its modules, which does add up to the total.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _report import machine_info, write_json

IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def _timed(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def fit_command(tmp: str, epochs: int | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "lightning_opt", "fit", "--optimizer", "gnw",
        f"--data.cache_dir={tmp}/cache", f"--trainer.logger.init_args.save_dir={tmp}/logs",
    ]  # fmt: skip
    return cmd if epochs is None else [*cmd, f"--trainer.max_epochs={epochs}"]


def import_profile(cwd: str) -> dict:
    """Parse ``-X importtime``: per top-level package, outermost cumulative and summed self (us)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import lightning_opt.cli.main"],
        cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"import failed:\n{proc.stderr[-3000:]}")
    rows = []  # (self, cumulative, depth, module), children before their parent
    for line in proc.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            rows.append((int(m[1]), int(m[2]), (len(m[3]) - 1) // 2, m[4]))
    parents: list[int | None] = []  # a line's parent is the next line less indented
    for i, (_, _, depth, _) in enumerate(rows):
        parents.append(next((j for j in range(i + 1, len(rows)) if rows[j][2] < depth), None))
    root = [name.split(".")[0] for _, _, _, name in rows]
    self_us: dict[str, int] = defaultdict(int)
    entries: dict[str, list[int]] = defaultdict(list)  # lines where another package imports it
    for i, (own, _, _, _) in enumerate(rows):
        self_us[root[i]] += own
        parent = parents[i]
        if parent is None or root[parent] != root[i]:
            entries[root[i]].append(i)
    packages = []
    for package, lines in entries.items():
        if package == "lightning_opt":  # the import being measured: its time is the total
            continue
        biggest = max(lines, key=lambda i: rows[i][1])
        parent = parents[biggest]
        packages.append({
            "package": package, "cumulative_us": sum(rows[i][1] for i in lines),
            "self_us": self_us[package], "entries": len(lines),
            "imported_by": "" if parent is None else rows[parent][3],
        })  # fmt: skip
    packages.sort(key=lambda r: -r["cumulative_us"])
    total = sum(rows[i][1] for i in entries["lightning_opt"])
    return {"total_us": total, "total_self_us": sum(self_us.values()), "packages": packages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/startup.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        first = _timed(fit_command(tmp, None), tmp)  # also generates the data cache
        fit, fit1, imp = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift hits each alike
            fit.append(_timed(fit_command(tmp, None), tmp))
            fit1.append(_timed(fit_command(tmp, 1), tmp))
            imp.append(_timed([sys.executable, "-c", "import lightning_opt.cli.main"], tmp))
        bare = _timed([sys.executable, "-c", "pass"], tmp)
        profile = import_profile(tmp)

    med = {"fit": statistics.median(fit), "fit1": statistics.median(fit1),
           "import": statistics.median(imp)}  # fmt: skip
    rows = [
        ("fit --optimizer gnw (50 epochs), first run", first, [first]),
        ("fit --optimizer gnw (50 epochs), warm", med["fit"], fit),
        ("fit --optimizer gnw --trainer.max_epochs 1", med["fit1"], fit1),
        ("  = 49 further epochs", med["fit"] - med["fit1"], []),
        ('python -c "import lightning_opt.cli.main"', med["import"], imp),
        ('python -c "pass"', bare, [bare]),
    ]
    header = f"command (median of {args.repeats})"
    print(f"{header:<46} {'wall s':>7}  runs")
    for name, value, samples in rows:
        print(f"{name:<46} {value:7.2f}  {' '.join(f'{s:.2f}' for s in samples)}")
    total_ms = profile["total_us"] / 1e3
    print(f"\nimport lightning_opt.cli.main, -X importtime: {total_ms:.0f} ms cumulative")
    print(f"{'package':<20} {'cumulative ms':>13} {'self ms':>8}  imported by (largest entry)")
    for row in profile["packages"][:15]:
        print(
            f"{row['package']:<20} {row['cumulative_us'] / 1e3:13.1f} "
            f"{row['self_us'] / 1e3:8.1f}  {row['imported_by']}"
        )
    by_self = sorted(profile["packages"], key=lambda r: -r["self_us"])[:10]
    print("largest own (self) times: " + ", ".join(
        f"{r['package']} {r['self_us'] / 1e3:.0f} ms" for r in by_self))  # fmt: skip

    machine = machine_info(loadavg_before=load_before)
    result = {
        "machine": machine,
        "repeats": args.repeats,
        "fit_first_run_s": first,
        "fit_s": fit,
        "fit_median_s": med["fit"],
        "fit_1_epoch_s": fit1,
        "fit_1_epoch_median_s": med["fit1"],
        "import_cli_s": imp,
        "import_cli_median_s": med["import"],
        "python_bare_s": bare,
        "importtime": profile,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
