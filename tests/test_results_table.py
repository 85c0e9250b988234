"""Results as data (``lightning_opt.results``): one row per final run, from an experiment's
results.json or a benchmark's folder, and the ``runs.csv`` compare writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_opt import results
from lightning_opt.reports.table import csv_text, run_rows


def _results(experiment: str = "e") -> dict:
    def run(seed: int, loss: float) -> dict:
        return {"seed": seed, "test_loss": loss, "test_acc": 0.5, "val_loss_curve": [2.0, 1.0],
                "best_epoch": 1, "clip_rate": None, "population": 2, "log_dir": f"/l/{seed}"}  # fmt: skip

    return {
        "experiment": experiment,
        "arms": {
            "adam": {"tuned": {"lr": 0.001}, "runs": [run(0, 1.0), run(1, 1.5)],
                     "retuned": {"tuned": {"lr": 0.002}, "runs": [run(0, 0.9)]}},
            "gnw": {"tuned": {"lr": 0.003, "gamma": 1.0}, "runs": [run(0, 1.2)]},
        },
    }  # fmt: skip


def test_one_row_per_final_run_with_its_arm_seed_values_and_metrics():
    rows = run_rows(_results())
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("adam", 0), ("adam", 1), ("adam/retuned", 0), ("gnw", 0),
    ]  # fmt: skip
    assert rows[1]["test_loss"] == 1.5 and rows[2]["tuned/lr"] == 0.002
    assert rows[3]["tuned/gamma"] == 1.0 and "val_loss_curve" not in rows[0]
    parsed = list(csv.DictReader(csv_text(rows).splitlines()))
    assert parsed[3]["tuned/gamma"] == "1.0" and parsed[0]["tuned/gamma"] == ""  # every column
    assert parsed[0]["clip_rate"] == "" and parsed[1]["test_loss"] == "1.5"


def test_rows_of_an_experiment_and_of_a_benchmark(tmp_path: Path):
    for name in ("mlp", "cnn"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(name)))
    assert len(results.rows(tmp_path / "mlp")) == 4
    assert results.rows(tmp_path / "mlp" / "results.json") == results.rows(tmp_path / "mlp")
    board = {"workloads": {"mlp": {"experiment": str(tmp_path / "mlp")},
                           "cnn": {"experiment": str(tmp_path / "cnn")}}}  # fmt: skip
    (tmp_path / "leaderboard.json").write_text(json.dumps(board))
    rows = results.rows(tmp_path)
    assert [r["workload"] for r in rows] == ["mlp"] * 4 + ["cnn"] * 4
    assert rows[4]["experiment"] == "cnn"
    with pytest.raises(ValueError, match=r"no results\.json or leaderboard\.json"):
        results.rows(tmp_path / "nowhere")


def test_load_is_a_dataframe_or_says_what_to_install(tmp_path: Path):
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs pandas"):
            results.load(tmp_path)
    else:
        frame = results.load(tmp_path)
        assert list(frame["arm"]) == ["adam", "adam", "adam/retuned", "gnw"]
