"""Each question asked once: a two-arm compare and a two-workload benchmark, with counters on
the expensive steps (pre-flight steps, models and populations built, storages opened, workloads
parsed and planned). The bounds are what one plan resolved once allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SAMPLES
from counting import count_calls
from lightning.pytorch import Trainer

from lightning_opt.cli import cli_main
from lightning_opt.experiments import compare, plans
from lightning_opt.optim import contract, registry
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier
from lightning_opt.tuning import storage, tune

ROOT = Path(__file__).parents[1]


def _steps_asked(monkeypatch) -> set[tuple]:
    """Record each distinct (optimizer class and arguments, net) a pre-flight step is asked."""
    asked: set[tuple] = set()
    check = registry.check_optimizer

    def recording(cls, net, init_args, input_size=None, num_classes=None, *rest, **kwargs):
        if input_size is not None:
            spec = kwargs.get("net_spec")
            asked.add((cls, json.dumps(init_args, sort_keys=True, default=str),
                       json.dumps(spec, sort_keys=True)))  # fmt: skip
        return check(cls, net, init_args, input_size, num_classes, *rest, **kwargs)

    for module in (registry, *_binders("check_optimizer", check)):
        monkeypatch.setattr(module, "check_optimizer", recording)
    return asked


def _binders(name: str, value) -> list:
    import sys

    return [m for n, m in list(sys.modules.items())
            if n.startswith("lightning_opt") and getattr(m, name, None) is value]  # fmt: skip


@pytest.mark.slow
def test_a_two_arm_compare_resolves_each_question_once(tmp_path, data_cache, monkeypatch):
    registry._PREFLIGHTS.clear()  # what earlier tests found is not this command's work
    asked = _steps_asked(monkeypatch)
    targets = {
        "preflight": (contract, "preflight"),
        "population built": (PopulationClassifier, "__init__"),
        "single built": (MNIST1DClassifier, "__init__"),
        "fit": (Trainer, "fit"),
        "storage opened": (storage, "_open_storage"),
        "parsed": (tune, "parse"),
        "planned": (plans, "plan_arms"),
    }
    args = [
        "compare", f"--config={ROOT / 'configs' / 'experiments' / 'gnw_vs_adam.yaml'}",
        f"--config={ROOT / 'configs' / 'presets' / 'quick.yaml'}",
        "--seeds=2", "--n_trials=2", "--population=2", f"--output_dir={tmp_path}",
        f"--data.cache_dir={data_cache}", f"--data.num_samples={TINY_SAMPLES}",
    ]  # fmt: skip
    with count_calls(targets) as counts:
        cli_main(args)
    assert (tmp_path / "gnw_vs_adam" / "results.json").exists()
    # adam and gnw, each tuned twice (the quick budget and the finals'), two trials as one
    # population per study and one population of both arms' seeds: two populations train.
    assert counts["fit"] == counts["population built"] + counts["single built"]
    assert counts["population built"] == 2 and counts["single built"] == 0
    assert 0 < counts["preflight"] <= len(asked), (counts, len(asked))
    assert counts["storage opened"] <= 2
    assert counts["parsed"] == 1 and counts["planned"] == 1


@pytest.mark.slow
def test_a_benchmark_parses_and_plans_each_workload_once(tmp_path, data_cache):
    suite = {
        "benchmark": "tiny", "seeds": 2, "n_trials": 1, "study_size": 1, "population": 1,
        "output_dir": str(tmp_path / "out"),
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 100},
        "workloads": [
            {"name": "mlp", "model": {"net": {"class_path": "mlp"}}, "epochs": 1, "target": 2.2},
            {"name": "shuffled", "model": {"net": {"class_path": "mlp"}},
             "data": {"shuffle_positions": True}, "epochs": 1, "target": 2.2},
        ],
        "baselines": [{"name": "sgd", "optimizer": "sgd",
                       "search_space": [{"name": "lr", "low": 1e-3, "high": 1e-2, "log": True}]}],
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    targets = {
        "parsed": (tune, "parse"),
        "planned": (plans, "plan_arms"),
        "experiments run": (compare, "run_experiment"),
        "storage opened": (storage, "_open_storage"),
    }
    with count_calls(targets) as counts:
        cli_main(["benchmark", f"--config={path}", "--optimizer=adam"])
    assert (tmp_path / "out" / "tiny" / "leaderboard.json").exists()
    # The benchmark's own arguments, then each workload's compare config: once each.
    assert counts["parsed"] == 1 + 2
    assert counts["planned"] == 2 and counts["experiments run"] == 2
    assert counts["storage opened"] == 1  # the benchmarks' one database
