"""``benchmark``: AlgoPerf's profile and score against a hand computation, and a tiny suite end
to end (two workloads, a candidate and a baseline), resumed without retraining, then a second
benchmark with two candidates that reuses what the first one trained."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SAMPLES

from lightning_opt import results as results_data
from lightning_opt.benchmark import leaderboard as leaderboards
from lightning_opt.benchmark import scoring
from lightning_opt.cli.main import cli_main
from lightning_opt.reports import stats

INF = math.inf


def test_time_to_target_counts_steps_and_keeps_not_reached():
    assert scoring.steps_to_target([2.0, 1.5, 1.2], 1.5, 32) == 64
    assert scoring.steps_to_target([2.0, 1.9], 1.5, 32) == INF
    assert scoring.median_time([64, INF, INF]) == INF  # most seeds did not reach it
    assert scoring.median_time([64, 96, INF]) == 96


def test_profile_and_score_equal_a_hand_computation():
    """Made-up times: A fastest on w1, never reaches w2, 3x on w3; B 2x on w1, fastest on w2
    and w3; nobody reaches w4."""
    times = {
        "A": {"w1": 100, "w2": INF, "w3": 300, "w4": INF},
        "B": {"w1": 200, "w2": 50, "w3": 100, "w4": INF},
    }
    ratio = scoring.ratios(times)
    assert ratio == {
        "A": {"w1": 1.0, "w2": INF, "w3": 3.0, "w4": INF},
        "B": {"w1": 2.0, "w2": 1.0, "w3": 1.0, "w4": INF},
    }
    assert scoring.profile(ratio["A"], 1.0) == 0.25
    assert scoring.profile(ratio["A"], 3.0) == 0.5
    assert scoring.profile(ratio["B"], 1.5) == 0.5
    assert scoring.profile(ratio["B"], 2.0) == 0.75
    # area under rho on [1, 4] over 3: A: (3 + 0 + 1 + 0) / 4 / 3; B: (2 + 3 + 3 + 0) / 4 / 3
    assert scoring.score(ratio["A"]) == pytest.approx(4 / 12)
    assert scoring.score(ratio["B"]) == pytest.approx(8 / 12)
    # the same as integrating the step function numerically
    taus = [1 + 3 * (i + 0.5) / 30000 for i in range(30000)]
    numeric = sum(scoring.profile(ratio["B"], t) for t in taus) / len(taus)
    assert scoring.score(ratio["B"]) == pytest.approx(numeric, abs=1e-3)


def _refuse(constant: str) -> None:
    raise ValueError(f"not strict JSON: {constant}")


def _board(times: dict, reached: dict, tests: list[dict], models: dict | None = None) -> dict:
    """A leaderboard of made-up median steps (``times[sub][workload]``) and tests."""
    workloads = {
        w: {"model": (models or {}).get(w, {"net": "mlp"}),
            "submissions": {s: {"median_steps": times[s][w], "reached": reached[s][w],
                                "tuning_curve": None} for s in times}}
        for w in next(iter(times.values()))
    }  # fmt: skip
    for workload in workloads.values():
        workload["ranks"] = leaderboards._ranks(workload["submissions"])
    ratio = scoring.ratios(times)
    scores = {s: {"ratios": ratio[s], "score": scoring.score(ratio[s])} for s in times}
    return {"candidates": ["cand"], "workloads": workloads, "scores": scores, "tests": tests,
            "alpha": 0.05, "tau_max": scoring.TAU_MAX, "settings": {"n_trials": 4}}  # fmt: skip


def _test(workload: str, baseline: str, difference: float, significant: bool) -> dict:
    return {"workload": workload, "candidate": "cand", "baseline": baseline,
            "difference": difference, "significant": significant, "detectable_at_holm": 0.1}  # fmt: skip


def test_ranks_follow_the_score_and_ties_share_a_rank():
    board = _board(
        {"cand": {"w": INF}, "a": {"w": INF}, "b": {"w": 64}, "c": {"w": 64}},
        {"cand": {"w": 0}, "a": {"w": 0}, "b": {"w": 3}, "c": {"w": 3}}, [],
    )  # fmt: skip
    assert board["workloads"]["w"]["ranks"] == {"b": 1, "c": 1, "cand": 3, "a": 3}


def test_the_verdict_claims_only_what_its_tests_support():
    times = {"cand": {"w": 64, "v": 64}, "adam": {"w": 96, "v": 96}, "adamw": {"w": 96, "v": 96},
             "broken": {"w": INF, "v": INF}}  # fmt: skip
    reached = {s: {w: 0 if s == "broken" else 3 for w in ("w", "v")} for s in times}
    tests = [_test("w", "broken", -0.5, True), _test("w", "adam", -0.01, False),
             _test("v", "adam", -0.2, True), _test("v", "broken", -0.5, True)]  # fmt: skip
    text = leaderboards.verdict(_board(times, reached, tests))
    # a win against a baseline that never reached the target is said to be only that
    assert "w (only against broken, which never reached the target there)" in text
    assert "v (only" not in text  # v's win is also against adam, which reached it
    # two variants of one net with the same label: no claim that the outcome holds
    assert "holds across the data variants" not in text and "neither shows" in text
    # a tie for the best baseline is called one
    assert "the best baselines, tied (adam, adamw)" in text

    tied = leaderboards.verdict(_board(
        {"cand": {"w": 64}, "adam": {"w": 64}}, {"cand": {"w": 3}, "adam": {"w": 3}},
        [_test("w", "adam", 0.0, False)],
    ))  # fmt: skip
    assert "Tied scores: cand with adam." in tied and "the best baseline (adam)" in tied
    nobody = leaderboards.verdict(_board(
        {"cand": {"w": INF}, "adam": {"w": INF}}, {"cand": {"w": 0}, "adam": {"w": 0}}, [],
    ))  # fmt: skip
    assert "the scores say nothing about time to target" in nobody
    assert "0.000" not in nobody and "Time to target (AlgoPerf" not in nobody
    empty = _board({"cand": {"w": INF}, "adam": {"w": INF}}, {"cand": {"w": 0}, "adam": {"w": 0}},
                   [])  # fmt: skip
    empty.update(benchmark="b", verdict="", settings={
        "n_trials": 4, "budget_cap": 2, "protocol": "compare", "seeds": 3, "seed_everything": 0,
        "sampler": "tpe", "studies": 1, "study_size": 4})  # fmt: skip
    for workload in empty["workloads"].values():
        workload.update(target=1.0, epochs=2, steps_per_epoch=7, logs="x")
        for row in workload["submissions"].values():
            row.update(tuned={}, test_loss={"mean": 1.0, "low": 0.9, "high": 1.1},
                       steps_to_target=[INF], seconds_to_target=[None])  # fmt: skip
    page = leaderboards.markdown(empty)
    assert "Budgets capped at 2 epochs" in page and "there is no score to show" in page
    assert "| submission | score |" not in page and "<svg" not in leaderboards.html(empty)


def test_leaderboard_json_is_strict(tmp_path):
    board = {"benchmark": "b", "candidates": ["c"], "workloads": {}, "scores": {
        "c": {"ratios": {"w": INF}, "profile": {}, "score": 0.0}}, "tests": [{"p_value": math.nan}],
        "verdict": "", "tau_max": 4.0}  # fmt: skip
    (tmp_path / "b").mkdir()
    text = json.dumps({"nulls": leaderboards.NULLS, **leaderboards.strict(board)})
    document = json.loads(text, parse_constant=_refuse)
    assert document["scores"]["c"]["ratios"]["w"] is None
    assert document["tests"][0]["p_value"] is None and "not reached" in document["nulls"]


def test_the_score_interval_resamples_the_seeds():
    steady = {"A": {"w1": [64, 64, 64], "w2": [32, 32, 32]},
              "B": {"w1": [128, 128, 128], "w2": [32, 32, 32]}}  # fmt: skip
    interval = scoring.bootstrap_interval(steady, replicates=200)
    medians = {s: {w: scoring.median_time(t) for w, t in per.items()} for s, per in steady.items()}
    for sub, (low, high) in interval.items():  # no spread: the interval is the score
        assert low == high == pytest.approx(scoring.score(scoring.ratios(medians)[sub]))
    noisy = {"A": {"w1": [64, 96, 160], "w2": [32, 64, INF]},
             "B": {"w1": [96, 128, 64], "w2": [32, 32, 96]}}  # fmt: skip
    first = scoring.bootstrap_interval(noisy, replicates=500)
    assert first == scoring.bootstrap_interval(noisy, replicates=500)  # seeded
    medians = {s: {w: scoring.median_time(t) for w, t in per.items()} for s, per in noisy.items()}
    for sub, (low, high) in first.items():
        assert low < high and low <= scoring.score(scoring.ratios(medians)[sub]) <= high


@pytest.fixture
def tiny_suite(tmp_path, data_cache):
    suite = {
        "benchmark": "tiny", "seeds": 2, "n_trials": 4, "study_size": 2, "population": 4,
        "output_dir": str(tmp_path / "out"),
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 50},
        "workloads": [
            {"name": "mlp", "model": {"net": {"class_path": "mlp"}}, "epochs": 2, "target": 2.2},
            {"name": "shuffled", "model": {"net": {"class_path": "mlp"}},
             "data": {"shuffle_positions": True}, "epochs": 2, "target": 2.2},
        ],
        "baselines": [{
            "name": "nadamw_cosine",
            "optimizer": {"class_path": "torch.optim.NAdam",
                          "init_args": {"decoupled_weight_decay": True}},
            "lr_scheduler": {"class_path": "lightning_opt.optim.schedulers.WarmupCosine"},
            "model": {"lr_interval": "step"},
            "search_space": [{"name": "lr", "low": 1e-3, "high": 1e-2, "log": True}],
        }],
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.slow
def test_a_tiny_suite_scores_and_resumes_without_retraining(tiny_suite, tmp_path, capsys):
    args = ["benchmark", f"--config={tiny_suite}", "--optimizer=adam",
            "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"]  # fmt: skip
    cli_main(args)
    bench = tmp_path / "out" / "tiny"
    board = json.loads((bench / "leaderboard.json").read_text())
    assert board["candidates"] == ["adam"] and set(board["workloads"]) == {"mlp", "shuffled"}
    for name, workload in board["workloads"].items():
        results = json.loads((bench / name / "results.json").read_text())
        assert set(workload["submissions"]) == set(results["arms"]) == {"adam", "nadamw_cosine"}
        draws = {}
        for sub, row in workload["submissions"].items():
            # AlgoPerf's external tuning: 2 studies of 2 trials, each trial its own seed; a
            # study's time is its fastest trial's, one time per study
            trials = results["arms"][sub]["tuning"]["trials"]
            assert [(t["number"], t["study"]) for t in trials] == [(0, 0), (1, 0), (2, 1), (3, 1)]
            assert [t["seed"] for t in trials] == [1_000_000 + n for n in range(4)]
            steps = [scoring.steps_to_target(t["val_loss_curve"], 2.2, workload["steps_per_epoch"])
                     for t in trials]  # fmt: skip
            expected = [min(steps[:2]), min(steps[2:])]
            assert row["steps_to_target"] == leaderboards.strict(expected)  # inf as null
            draws[sub] = [t["params"]["lr"] for t in trials]
            assert all(1e-3 <= lr <= 1e-2 for lr in draws[sub])
            # no final run replays a trial: the finals' seeds are 0 and 1
            assert [r["seed"] for r in results["arms"][sub]["runs"]] == [0, 1]
        # every study and every submission draws its own points
        assert len({lr for lrs in draws.values() for lr in lrs}) == 8
        # the baseline's schedule ran over the workload's budget
        experiment = yaml.safe_load((bench / f"{name}.yaml").read_text())
        scheduler = experiment["arms"][1]["lr_scheduler"]["init_args"]
        assert scheduler["total_steps"] == 2 * workload["steps_per_epoch"] == 2 * 7  # 320 / 50
    times = {s: {w: board["workloads"][w]["submissions"][s]["median_steps"]
                 for w in board["workloads"]} for s in ("adam", "nadamw_cosine")}  # fmt: skip
    for sub, entry in board["scores"].items():
        assert entry["score"] == pytest.approx(scoring.score(scoring.ratios(times)[sub]))
        assert entry["interval"][0] <= entry["score"] <= entry["interval"][1]
    assert len(board["tests"]) == 2 and all("p_holm" in t for t in board["tests"])
    levels = sorted(test["holm_level"] for test in board["tests"])
    assert levels == [0.025, 0.05]  # Holm over the benchmark's two tests
    for test in board["tests"]:  # what the seeds detect at that level, from the spreads
        results = json.loads((bench / test["workload"] / "results.json").read_text())
        (diff,) = [c["differences"]["test_loss"] for c in results["comparisons"]]
        expected = stats.detectable_difference(
            diff["sd_a"], diff["n_a"], diff["sd_b"], diff["n_b"], alpha=test["holm_level"]
        )
        assert test["detectable_at_holm"] == pytest.approx(expected)
    assert board["verdict"].startswith("Test loss, 2 candidate-baseline tests")
    for test in board["tests"]:  # each workload's report quotes the benchmark's Holm family
        report = (bench / test["workload"] / "results.md").read_text()
        quoted = "one Holm family of 2 tests; on this workload: adam vs nadamw_cosine: p = "
        assert quoted in report and f"Holm-adjusted {test['p_holm']:.3g}" in report
        assert "quasi-random (Sobol) in studies of 2, seed 0" in report  # not "TPE"
    text = (bench / "leaderboard.md").read_text()
    assert "Protocol: AlgoPerf's external-tuning ruleset" in text and "2 studies of 2" in text
    assert "| submission | score |" in text and "## shuffled" in text
    page = (bench / "leaderboard.html").read_text()
    assert "<svg" in page and "<a href='mlp/comparison.html'>" in page
    assert page.count("expected best val loss after n trials") == 2  # a tuning plot a workload
    assert (bench / "mlp" / "comparison.html").is_file()
    # every final run as data: 2 workloads x 2 submissions x 2 seeds, and runs.csv beside each
    rows = results_data.rows(bench)
    assert len(rows) == 8 and {r["workload"] for r in rows} == {"mlp", "shuffled"}
    header = (bench / "mlp" / "runs.csv").read_text().splitlines()[0]
    assert header.startswith("experiment,arm,seed,tuned/lr,test_loss")
    assert "## Ranks" in text and board["workloads"]["mlp"]["ranks"].keys() == {
        "adam",
        "nadamw_cosine",
    }

    capsys.readouterr()
    cli_main(args)  # again: every trial and final run is reused, the numbers the same
    assert not re.search(r"^(\S+ )?trial +\d+ ", capsys.readouterr().out, re.M)
    assert json.loads((bench / "leaderboard.json").read_text())["scores"] == board["scores"]
    json.loads((bench / "leaderboard.json").read_text(), parse_constant=_refuse)  # strict JSON
    assert "TensorBoard logs under ../shared_arms/mlp/." in text  # where the runs' logs are
    # its runs trained as populations: the seconds are each submission's own, timed alone,
    # times its steps (never a population's shared time)
    assert "| shared |" not in text
    for workload in board["workloads"].values():
        for row in workload["submissions"].values():
            own = row["seconds_per_step"]
            assert 0 < own < 1
            assert row["seconds_to_target"] == leaderboards.strict(
                [None if s is None else pytest.approx(s * own) for s in row["steps_to_target"]]
            )

    # Another benchmark with two candidates at once: the baseline, and the candidate identical
    # to the first benchmark's adam, are reused (same settings, same storage); only sgd trains.
    space = "{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}"
    candidates = (
        f"[{{name: adam, optimizer: adam, search_space: [{space}]}}, "
        f"{{name: sgd, optimizer: sgd, search_space: [{space}]}}]"
    )
    cli_main(["benchmark", f"--config={tiny_suite}", "--benchmark=other",
              f"--candidates={candidates}"])  # fmt: skip
    out = capsys.readouterr().out
    trained = {line.split()[1] for line in out.splitlines() if line.startswith("final ")}
    assert trained == {"sgd"}, trained
    other = json.loads((tmp_path / "out" / "other" / "leaderboard.json").read_text())
    assert other["candidates"] == ["adam", "sgd"] and len(other["tests"]) == 4
    for name, workload in other["workloads"].items():
        for sub in ("adam", "nadamw_cosine"):
            timed = ("seconds_per_step", "seconds_to_target")  # measured again: the machine's
            now, before = workload["submissions"][sub], board["workloads"][name]["submissions"][sub]
            assert {k: v for k, v in now.items() if k not in timed} == {
                k: v for k, v in before.items() if k not in timed}  # fmt: skip
    studies = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    assert len(studies) == 2 * 3 * 2  # workloads x submissions x (tuning, finals)

    # The first benchmark with other settings, --overwrite: its own outputs start afresh, the
    # shared baseline is reused from the storage, and no run's logs or checkpoint that either
    # benchmark's results point at is gone (they live with the arm's study, not the benchmark).
    pointed = _recorded_paths(tmp_path / "out" / "other")
    assert pointed and all(Path(p).exists() for p in pointed)
    for path in pointed:  # shared_arms/<workload>/<submission>.<digest>/...
        workload, folder = Path(path).relative_to(tmp_path / "out" / "shared_arms").parts[:2]
        assert workload in ("mlp", "shuffled"), path
        assert folder.split(".")[0] in ("adam", "sgd", "nadamw_cosine"), path
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=adamw", "--overwrite=true",
              "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"])  # fmt: skip
    trained = {line.split()[1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("final ")}  # fmt: skip
    assert trained == {"adamw"}, trained
    assert json.loads((bench / "leaderboard.json").read_text())["candidates"] == ["adamw"]
    for results in ("other", "tiny"):
        missing = [p for p in _recorded_paths(tmp_path / "out" / results) if not Path(p).exists()]
        assert not missing, missing


def _recorded_paths(bench: Path) -> list[str]:
    """Every log folder and checkpoint the benchmark's workloads' results.json record."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("log_dir", "checkpoint") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted(bench.glob("*/results.json")):
        walk(json.loads(path.read_text()))
    return found


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workloads": [{"name": "mlp", "epochs": 2}]}, "target is a validation loss > 0"),
        ({"workloads": [{"name": "a/b", "epochs": 2, "target": 1.0}]}, "workloads[].name"),
        ({"baselines": []}, "a benchmark needs baselines"),
        ({"trainer": {"max_epochs": 0}}, "--trainer.max_epochs 0: it caps every workload"),
        ({"candidates": [{"name": "sgd", "optimizer": "sgd"}]}, "not both"),  # and --optimizer
        ({"pruner": "median"}, "--protocol external_tuning times every trial to the target"),
        ({"sampler": "tpe", "study_size": None}, "TPE belongs to --protocol compare"),
        ({"trial_seeds": "same"}, "so no final run replays the trial it was chosen from"),
        ({"protocol": "compare", "trial_seeds": "same"}, "no final run replays the trial"),
        ({"study_size": 3}, "a positive divisor of --n_trials 4"),
        (
            {"workloads": [{"name": "mlp", "epochs": 1, "target": 2.0, "eval_every": 3}]},
            "eval_every 3 does not divide its 7 steps an epoch",
        ),
        (
            {"workloads": [{"name": "mlp", "epochs": 1, "target": 2.0, "eval_every": 0}]},
            "eval_every is a positive number of optimizer steps",
        ),
    ],
)
def test_a_bad_suite_is_one_line_before_anything_trains(
    change, message, tiny_suite, tmp_path, capsys
):
    suite = yaml.safe_load(tiny_suite.read_text())
    suite.update(change)
    tiny_suite.write_text(yaml.safe_dump(suite))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=adam"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "out").rglob("results.json"))


def test_without_a_config_the_default_suite_runs_and_a_tuning_budget_is_refused(capsys):
    """``benchmark --optimizer X`` is the default suite; compare's --tune_max_epochs would be
    silently replaced by each workload's budget, so it is refused (trainer.max_epochs caps)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["benchmark", "--optimizer=adam", "--tune_max_epochs=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "a benchmark tunes and trains each workload for its own budget" in err[0]
    )


@pytest.mark.slow
def test_candidates_benchmarked_into_one_folder_share_one_leaderboard(tiny_suite, tmp_path, capsys):
    """README's second-candidate command as written: the same suite and folder, another
    optimizer. The board then scores both (Holm over all their tests), only the new candidate
    trains; a changed suite, or a known name with other settings, is one line."""
    space = "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=adam", space])
    capsys.readouterr()
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=sgd", space])
    out = capsys.readouterr().out
    assert "sgd joins the board of adam" in out
    trained = {line.split()[1] for line in out.splitlines() if line.startswith("final ")}
    assert trained == {"sgd"}, trained
    board = json.loads((tmp_path / "out" / "tiny" / "leaderboard.json").read_text())
    assert board["candidates"] == ["adam", "sgd"]
    assert len(board["tests"]) == 4  # 2 candidates x 1 baseline x 2 workloads, one Holm family
    levels = sorted(t["holm_level"] for t in board["tests"])
    assert levels == pytest.approx([0.05 / 4, 0.05 / 3, 0.05 / 2, 0.05])
    for name in ("mlp", "shuffled"):
        assert set(board["workloads"][name]["submissions"]) == {"adam", "sgd", "nadamw_cosine"}

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["benchmark", f"--config={tiny_suite}", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "benchmark 'tiny' was run with other settings (seeds: 2 -> 3)" in refused(
        "--optimizer=adamw", space, "--seeds=3"
    )
    assert "candidate 'sgd' was benchmarked in" in refused(
        "--optimizer=sgd", "--optimizer.momentum=0.5", space
    )
    # Without the board's record, each workload's own record refuses, before any workload
    # trains and before any workload's YAML is rewritten with the refused settings.
    bench = tmp_path / "out" / "tiny"
    (bench / "benchmark.json").unlink()
    yamls = {p.name: p.read_text() for p in bench.glob("*.yaml")}
    line = refused("--optimizer=sgd", space, "--seeds=3")
    assert "benchmark 'tiny': workload 'mlp' was run with other settings" in line
    assert "choose another --benchmark, or pass --overwrite" in line and len(line) < 1000
    assert {p.name: p.read_text() for p in bench.glob("*.yaml")} == yamls
    assert not list(bench.glob(".*.yaml"))  # no planning file left behind


@pytest.mark.slow
def test_a_workload_validated_every_step_times_its_trials_at_step_resolution(tiny_suite, tmp_path):
    """``eval_every: 1``: every trial reports one validation loss a step (Lightning's
    ``val_check_interval``), keyed 0, 1, ...; a study's time is counted in single steps."""
    suite = yaml.safe_load(tiny_suite.read_text())
    suite.update(n_trials=2, study_size=1, population=2, seeds=1, workloads=[
        {"name": "mlp", "epochs": 2, "target": 2.25, "eval_every": 1}])  # fmt: skip
    tiny_suite.write_text(yaml.safe_dump(suite))
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=adam",
              "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"])  # fmt: skip
    bench = tmp_path / "out" / "tiny"
    board = json.loads((bench / "leaderboard.json").read_text())
    workload = board["workloads"]["mlp"]
    assert workload["eval_steps"] == 1 and workload["steps_per_epoch"] == 7
    results = json.loads((bench / "mlp" / "results.json").read_text())
    for sub, row in workload["submissions"].items():
        trials = results["arms"][sub]["tuning"]["trials"]
        assert [len(t["val_loss_curve"]) for t in trials] == [14, 14]  # 2 epochs x 7 steps
        expected = [scoring.steps_to_target(t["val_loss_curve"], 2.25, 1) for t in trials]
        assert row["steps_to_target"] == leaderboards.strict(expected)
        # the final run validates as often: its curve has a point a step too
        assert len(results["arms"][sub]["runs"][0]["val_loss_curve"]) == 14
    assert any(s % 7 for r in workload["submissions"].values() for s in r["steps_to_target"]
               if s is not None)  # a time between epoch ends  # fmt: skip
    assert "validated every 1 steps" in (bench / "leaderboard.md").read_text()
    # the workload report plots those points at their epochs (1/7, 2/7, ..., 2), not 1..14
    from lightning_opt.reports import page

    curves = page.bands(results)["adam", "val_loss_curve"]
    assert curves.per_epoch == 7 and curves.epochs[0] == pytest.approx(1 / 7)
    assert curves.epochs[-1] == pytest.approx(2.0)


@pytest.mark.slow
def test_targets_are_set_by_a_command_and_the_suite_runs_on_them(tiny_suite, tmp_path, capsys):
    """``--set_targets``: the setters tuned with a larger budget, the best configuration re-run
    over seeds, the median of each run's best validation loss; the budget the setting budget
    times budget_factor; written with provenance, stacked after the suite, and set again
    without retraining (the same file)."""
    suite = yaml.safe_load(tiny_suite.read_text())
    suite.update(n_trials=2, study_size=1, population=2, seeds=1,
                 target_setting={"n_trials": 3, "seeds": 3, "budget_factor": 1.5},
                 workloads=[suite["workloads"][0]])  # fmt: skip
    tiny_suite.write_text(yaml.safe_dump(suite))
    cli_main(["benchmark", f"--config={tiny_suite}", "--set_targets"])
    path = tmp_path / "out" / "tiny" / "targets" / "targets.yaml"
    (workload,) = yaml.safe_load(path.read_text())["workloads"]
    record = workload["target_setting"]
    results = json.loads((path.parent / "mlp" / "results.json").read_text())
    best = [min(r["val_loss_curve"]) for r in results["arms"]["nadamw_cosine"]["runs"]]
    assert len(best) == 3 and record["setter"] == "nadamw_cosine"
    assert workload["target"] == pytest.approx(sorted(best)[1], abs=1e-4)  # the median, >= it
    assert workload["target"] >= sorted(best)[1]
    assert record["epochs"] == 2 and workload["epochs"] == 3  # ceil(2 x 1.5)
    assert len(results["arms"]["nadamw_cosine"]["tuning"]["trials"]) == 3  # the larger budget
    text = path.read_text()
    capsys.readouterr()
    stacked = [f"--config={tiny_suite}", f"--config={path}"]
    cli_main(["benchmark", *stacked, "--set_targets"])  # the same setting budget: reused
    assert not re.search(r"^(\S+ )?trial +\d+ ", capsys.readouterr().out, re.M)
    assert path.read_text() == text
    cli_main(["benchmark", *stacked, "--optimizer=adam",
              "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"])  # fmt: skip
    board = json.loads((tmp_path / "out" / "tiny" / "leaderboard.json").read_text())
    assert board["workloads"]["mlp"]["target"] == workload["target"]
    assert board["workloads"]["mlp"]["epochs"] == 3


@pytest.mark.slow
def test_a_candidate_with_its_own_logger_and_callback_joins_the_board(tiny_suite, tmp_path):
    """Where runs log is not a setting of the board (a CSVLogger does not refuse the suite), and
    the solo timing trains with the run's loggers (LearningRateMonitor needs one: it ended the
    benchmark after all training)."""
    suite = yaml.safe_load(tiny_suite.read_text())
    suite.update(n_trials=2, study_size=1, population=2, seeds=1,
                 workloads=[suite["workloads"][0]])  # fmt: skip
    tiny_suite.write_text(yaml.safe_dump(suite))
    space = "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2, log: true}]"
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=adam", space])
    cli_main(["benchmark", f"--config={tiny_suite}", "--optimizer=sgd", space,
              "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"])  # fmt: skip
    board = json.loads((tmp_path / "out" / "tiny" / "leaderboard.json").read_text())
    assert board["candidates"] == ["adam", "sgd"]
    rows = board["workloads"]["mlp"]["submissions"]
    assert all(row["seconds_per_step"] > 0 for row in rows.values())
