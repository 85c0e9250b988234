"""Results as data: one row per final run of an experiment (or of every workload of a benchmark),
its arm, seed, tuned values, metrics and files, for pandas, a spreadsheet or a plotting script.

``compare`` writes ``runs.csv`` beside ``results.json`` (the same rows); ``lightning_opt.results``
is the public face: ``rows(path)`` and ``load(path)`` (a pandas DataFrame) read an experiment's
folder, its ``results.json``, or a benchmark's folder (one ``workload`` column more).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

#: A run's recorded values, in the columns' order (what results.json's runs hold, curves aside).
RUN_COLUMNS = (
    "test_loss", "test_acc", "final_val_loss", "final_val_acc", "best_val_loss", "best_epoch",
    "test_loss_best_epoch", "test_acc_best_epoch", "clip_rate", "seconds", "population",
    "log_dir", "checkpoint",
)  # fmt: skip
#: The file ``compare`` writes beside results.json.
RUNS_CSV = "runs.csv"


def run_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per final run of an experiment's ``results`` (its results.json): ``experiment``,
    ``arm`` (``ARM/retuned`` for the robustness re-tune), ``seed``, ``tuned/NAME`` for each tuned
    value, then ``RUN_COLUMNS``."""
    rows = []
    for name, arm in results["arms"].items():
        for label, summary in ((name, arm), (f"{name}/retuned", arm.get("retuned"))):
            if not summary:
                continue
            tuned = {f"tuned/{k}": v for k, v in (summary.get("tuned") or {}).items()}
            for run in summary.get("runs") or []:
                row = {"experiment": results.get("experiment"), "arm": label,
                       "seed": run.get("seed"), **tuned}  # fmt: skip
                row.update({column: run.get(column) for column in RUN_COLUMNS})
                rows.append(row)
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV, every column any row has (in first-seen order), empty for none."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an experiment (its folder or results.json) or of a benchmark (its folder, with
    leaderboard.json: every workload's experiment, a ``workload`` column first). ``ValueError``
    (one line) for a path that is neither."""
    path = Path(path)
    if path.is_dir() and (path / "leaderboard.json").is_file():
        board = json.loads((path / "leaderboard.json").read_text())
        out = []
        for workload, entry in board["workloads"].items():
            folder = Path(entry.get("experiment") or path / workload)
            out += [{"workload": workload, **row} for row in rows(folder)]
        return out
    results = path / "results.json" if path.is_dir() else path
    if not results.is_file():
        raise ValueError(
            f"{path}: no results.json or leaderboard.json there; give an experiment's folder "
            "(<output_dir>/<experiment>), its results.json, or a benchmark's folder"
        )
    return run_rows(json.loads(results.read_text()))


def load(path: str | Path) -> Any:
    """``rows(path)`` as a pandas DataFrame (pandas is not a dependency: install it to use this;
    ``rows`` needs nothing)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "lightning_opt.results.load needs pandas (pip install pandas); rows() returns the "
            "same rows as a list of dicts, and compare writes them as runs.csv"
        ) from None
    return pd.DataFrame(rows(path))
