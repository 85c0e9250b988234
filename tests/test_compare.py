"""`compare` end to end: outputs, statistics fields, resume, bad input."""

import json
import math
import re
from pathlib import Path

import matplotlib.image
import optuna
import pytest
import yaml
from conftest import TINY_SAMPLES, read_scalars

from lightning_opt.cli.main import cli_main
from lightning_opt.experiments import finals

ROOT = Path(__file__).parents[1]
OUTPUTS = ("comparison.html", "comparison.png", "results.json", "results.md")


@pytest.fixture
def tiny_experiment(tmp_path, data_cache, monkeypatch):
    """A two-arm experiment of a few seconds, written to ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    config = {
        "experiment": "tiny",
        "output_dir": str(tmp_path / "out"),
        "seeds": 2,
        "n_trials": 2,
        "tune_max_epochs": 2,
        "pruner": "none",
        "trainer": {"max_epochs": 2},
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 50},
        "arms": [
            {"name": "adam", "optimizer": "adam"},
            {
                "name": "wnclip",
                "optimizer": "adam",
                "callbacks": [
                    {
                        "class_path": "lightning_opt.callbacks.WeightNormClipping",
                        "init_args": {"clip_factor": 0.1},
                    }
                ],
            },
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def _finite_numbers(value):
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is not None or True


def _check_outputs(exp_dir: Path, arms: list[str], seeds: int) -> dict:
    for name in OUTPUTS:
        assert (exp_dir / name).stat().st_size > 0, name
    results = json.loads((exp_dir / "results.json").read_text())
    assert list(results["arms"]) == arms
    for arm in results["arms"].values():
        assert len(arm["runs"]) == seeds and arm["tuned"]
        for metric in ("test_loss", "test_acc", "final_val_loss", "best_val_loss"):
            ci = arm["metrics"][metric]
            assert ci["low"] <= ci["mean"] <= ci["high"] and ci["n"] == seeds
    for comparison in results["comparisons"]:
        for diff in comparison["differences"].values():
            for key in ("difference", "low", "high", "a12"):
                assert math.isfinite(diff[key])
    assert _finite_numbers(results)
    image = matplotlib.image.imread(exp_dir / "comparison.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    html = (exp_dir / "comparison.html").read_text()
    for arm in arms:
        for seed in results["settings"]["seeds"]:
            assert f"{arm} seed {seed}" in html  # a thin line per seed
    assert "<script src=" not in html and "<link" not in html  # nothing fetched: plotly inlined
    return results


def test_experiment_end_to_end(tiny_experiment, tmp_path, capsys):
    path, _ = tiny_experiment
    cli_main(["compare", f"--config={path}"])
    exp_dir = tmp_path / "out" / "tiny"
    results = _check_outputs(exp_dir, ["adam", "wnclip"], seeds=2)
    assert results["arms"]["wnclip"]["tuned"].keys() == {"lr", "clip_factor"}
    assert results["arms"]["adam"]["clip_rate"] is None
    assert 0 <= results["arms"]["wnclip"]["clip_rate"]["mean"] <= 1
    out = capsys.readouterr().out
    assert "| adam |" in out and "final wnclip seed 1" in out
    verdict = results["comparisons"][0]["verdict"]
    assert "significant" in verdict.lower()
    # TensorBoard logs for every trial and every final run
    for arm in ("adam", "wnclip"):
        for runs in ((exp_dir / arm).glob("trial_*"), (exp_dir / arm / "final").glob("seed_*")):
            runs = list(runs)
            assert len(runs) == 2 and all(list(r.glob("events.out.tfevents.*")) for r in runs)
    # the seeds differ from each other (initialisation and data order), the split does not
    runs = results["arms"]["adam"]["runs"]
    assert runs[0]["val_loss_curve"] != runs[1]["val_loss_curve"]


def test_interrupted_experiment_resumes_without_redoing_trials(
    tiny_experiment, tmp_path, monkeypatch
):
    path, _ = tiny_experiment
    real = finals.run_final
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:  # after the first arm's tuning and one final run
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finals, "run_final", interrupted)
    with pytest.raises(SystemExit):  # exit 130, "run the same command again to resume"
        cli_main(["compare", f"--config={path}", "--population_finals=false"])
    db = f"sqlite:///{tmp_path / 'out' / 'tiny' / 'optuna.db'}"
    before = optuna.load_study(study_name="tiny.adam", storage=db).trials
    first_run = json.loads(
        next((tmp_path / "out" / "tiny" / "adam" / "final").glob("*/result.json")).read_text()
    )

    monkeypatch.setattr(finals, "run_final", real)
    cli_main(["compare", f"--config={path}", "--population_finals=false"])
    after = optuna.load_study(study_name="tiny.adam", storage=db).trials
    assert [(t.number, t.value) for t in after] == [(t.number, t.value) for t in before]
    results = json.loads((tmp_path / "out" / "tiny" / "results.json").read_text())
    assert results["arms"]["adam"]["runs"][0] == first_run  # reused, not retrained


def test_population_finals_equal_separate_runs_and_resume(
    tiny_experiment, tmp_path, monkeypatch, capsys
):
    """The default population finals give the numbers of separate runs (float32 rounding):
    arms of different optimizers (Adam's stacked fast path, SGD with Nesterov one instance per
    member) and clipping rules (wnclip's members clip, the others' do not), each with its
    re-tuned finals, tuned as one population and finished as one. An experiment interrupted
    after the finals population keeps its results."""
    path, config = tiny_experiment
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9, "nesterov": True}}
    space = [{"name": "lr", "low": 0.01, "high": 0.3, "log": True}]
    config["arms"].append({"name": "sgd", "optimizer": sgd, "search_space": space})
    path.write_text(yaml.safe_dump(config))
    retune = "--trainer.max_epochs=3"  # tuned at 2 epochs, re-tuned at 3: the robustness check
    cli_main(["compare", f"--config={path}", "--population_finals=false", retune,
              f"--output_dir={tmp_path / 'separate'}"])  # fmt: skip
    separate = json.loads((tmp_path / "separate" / "tiny" / "results.json").read_text())

    real = finals.run_final_population
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        real(*args, **kwargs)
        raise KeyboardInterrupt  # after the finals population

    monkeypatch.setattr(finals, "run_final_population", interrupted)
    together = "--population=2"  # every arm's trials tune as one population
    capsys.readouterr()
    with pytest.raises(SystemExit):  # exit 130, "run the same command again to resume"
        cli_main(["compare", f"--config={path}", retune, together])
    shown = capsys.readouterr().out
    # Tuned at 2 epochs and re-tuned at 3, every arm: one population, each member ending at
    # its own last epoch and clipping by its own arm's rule.
    labels = "adam, wnclip, sgd, adam/retuned, wnclip/retuned, sgd/retuned"
    assert f"== arms {labels}: tuning together (2 or 3 epochs" in shown
    assert "wnclip/retuned trial   1" in shown
    trained = re.findall(r"^(\S+) trial .*population of (\d+)", shown, re.M)
    assert {int(n) for _, n in trained} == {12}  # 2 trials of each
    assert len(calls) == 1  # every final run in one population
    exp_dir = tmp_path / "out" / "tiny"
    kept = sorted(str(p.parent.relative_to(exp_dir)) for p in exp_dir.glob("*/final/*/result.json"))
    assert kept == [f"{arm}/final/seed_{s}" for arm in ("adam", "sgd", "wnclip") for s in (0, 1)]
    first = [json.loads((exp_dir / k / "result.json").read_text()) for k in kept[:2]]

    monkeypatch.setattr(finals, "run_final_population", real)
    cli_main(["compare", f"--config={path}", retune, together])
    results = _check_outputs(exp_dir, ["adam", "wnclip", "sgd"], seeds=2)
    assert results["arms"]["adam"]["runs"] == first  # reused, not retrained
    pairs = []
    for arm in ("adam", "wnclip", "sgd"):
        ours, theirs = results["arms"][arm], separate["arms"][arm]
        size = 12  # 2 seeds x 2 tunings x 3 arms
        pairs += [
            (ours["runs"], theirs["runs"], size),
            (ours["retuned"]["runs"], theirs["retuned"]["runs"], size),
        ]
    for arm in ("adam", "wnclip", "sgd"):  # tuned together, each trial is its own
        for ours, theirs in ((results["arms"][arm], separate["arms"][arm]),
                             (results["arms"][arm]["retuned"], separate["arms"][arm]["retuned"])):  # fmt: skip
            assert ours["tuned"] == theirs["tuned"]
            assert ours["tuning"]["values"] == pytest.approx(theirs["tuning"]["values"], rel=1e-3)
    for arm_runs, separate_runs, size in pairs:
        for pop, sep in zip(arm_runs, separate_runs, strict=True):
            assert pop["population"] == size and pop["seed"] == sep["seed"]
            for key in ("test_loss", "test_acc", "final_val_loss", "best_val_loss"):
                assert pop[key] == pytest.approx(sep[key], rel=1e-3), key
            assert pop["val_loss_curve"] == pytest.approx(sep["val_loss_curve"], rel=1e-3)
    for arm in ("adam", "wnclip", "sgd"):
        assert (results["arms"][arm]["clip_rate"] is None) == (arm != "wnclip")
        runs = results["arms"][arm]["runs"] + results["arms"][arm]["retuned"]["runs"]
        for run in runs:  # each seed's own TensorBoard run, test included
            scalars = read_scalars(Path(run["log_dir"]))
            assert scalars["test/loss"][-1][1] == pytest.approx(run["test_loss"], rel=1e-6)
            assert [v for _, v in scalars["val/loss"]] == pytest.approx(run["val_loss_curve"])


def test_arms_that_cannot_tune_together_tune_apart_and_say_why(
    tiny_experiment, tmp_path, monkeypatch, capsys
):
    """Where the joint population of a group of arms does not build (the check before the first
    trial), its arms tune one population each and a line says why; an arm whose optimizer
    cannot train as a population says so once, for its trials and its finals."""
    from lightning_opt.experiments import grouping

    path, config = tiny_experiment
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}
    lbfgs = {"class_path": "torch.optim.LBFGS", "init_args": {"max_iter": 2}}
    space = [{"name": "lr", "low": 0.01, "high": 0.3, "log": True}]
    config["arms"] = [
        {"name": "adam", "optimizer": "adam"},
        {"name": "sgd", "optimizer": sgd, "search_space": space},
        {"name": "lbfgs", "optimizer": lbfgs, "search_space": space},
    ]
    config["population"] = 2
    path.write_text(yaml.safe_dump(config))
    real = grouping._builds_together

    def refused(*members, **kwargs):
        raise ValueError("made up for the test")

    def builds_together(labels, plans, final=False):
        if final:  # the final runs: as they are
            return real(labels, plans, final)
        with monkeypatch.context() as patched:
            patched.setattr(grouping, "plan_mixed_population", refused)
            return real(labels, plans, final)

    monkeypatch.setattr(grouping, "_builds_together", builds_together)
    cli_main(["compare", f"--config={path}"])
    shown = capsys.readouterr().out
    assert "arms adam, sgd tune one population each (made up for the test)" in shown
    blocked = [line for line in shown.splitlines() if "LBFGS evaluates" in line]
    assert blocked == [
        "arm lbfgs: LBFGS evaluates the loss 2 times in a step (its closure), which members of "
        "a population cannot share: its trials and final runs train one at a time "
        "(--population 2 ignored)"
    ]
    trained = re.findall(r"^trial .*population of (\d+)", shown, re.M)
    assert trained == ["2"] * 4  # adam's two trials, then sgd's: each arm its own population
    assert "tuning together" not in shown and "== arm sgd: tuning" in shown
    _check_outputs(tmp_path / "out" / "tiny", ["adam", "sgd", "lbfgs"], seeds=2)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["gnw_vs_adam", "wnclip_vs_fixedclip"])
def test_quick_preset_of_each_seed_experiment(experiment, tmp_path, data_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main([
        "compare",
        f"--config={ROOT / 'configs' / 'experiments' / f'{experiment}.yaml'}",
        f"--config={ROOT / 'configs' / 'presets' / 'quick.yaml'}",
        f"--data.cache_dir={data_cache}",
    ])  # fmt: skip
    arms = ["adam", "gnw"] if experiment == "gnw_vs_adam" else ["wnclip", "fixedclip"]
    _check_outputs(tmp_path / "lightning_logs" / "compare" / experiment, arms, seeds=5)


BAD = [
    ({"arms": []}, "the experiment has no arms"),
    ({"arms": [{"name": "a", "optimizer": "adam"}, {"name": "a", "optimizer": "gnw"}]},
     "arm names must be unique; repeated: a"),
    ({"arms": [{"name": "a", "optimizer": "adamm"}]}, "unknown optimizer 'adamm'"),
    ({"arms": [{"name": "a", "callbacks": [{"class_path": "torch.nn.ReLU"}]}]},
     "arm 'a': callbacks are {class_path, init_args} of Lightning Callback classes, got torch.nn.ReLU"),
    ({"arms": [{"name": "a", "colour": "red"}]}, "arm 'a' has unknown keys ['colour']"),
    ({"arms": [{"name": "a", "model": {"depth": 3}}]}, "arm 'a': the model has no setting 'depth'"),
    ({"seeds": 0}, "seeds must be a positive integer, got 0"),
    ({"tune_max_epochs": 0}, "tune_max_epochs must be a positive integer, got 0"),
    ({"n_trials": 0}, "n_trials must be a positive integer, got 0"),
    ({"trainer": {"max_epochs": 0}}, "trainer.max_epochs must be a positive integer, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_experiment_fails_before_training(change, message, tiny_experiment, tmp_path, capsys):
    path, config = tiny_experiment
    path.write_text(yaml.safe_dump({**config, **change}))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", f"--config={path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
