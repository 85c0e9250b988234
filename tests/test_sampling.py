"""AlgoPerf's external-tuning draws (``tuning.sampling``): quasi-random points per study and
per submission, fixed lists without replacement, each trial's own seed; what ``tune`` trains
with them, alone and as a population; and the settings refused before any trial."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from conftest import tune_args

from lightning_opt.benchmark import scoring
from lightning_opt.cli.main import cli_main
from lightning_opt.core.search_space import SearchParam, value_at
from lightning_opt.tuning import sampling

LR = SearchParam("lr", 1e-4, 1e-1, log=True)
SPACE = (LR, SearchParam("momentum", 0.0, 0.99), SearchParam("nesterov", choices=(True, False)))
INF = math.inf


def test_a_coordinate_maps_as_optunas_qmc_sampler_maps_it():
    assert value_at(LR, 0.0) == pytest.approx(1e-4)
    assert value_at(LR, 0.5) == pytest.approx(math.sqrt(1e-4 * 1e-1))  # log space: the middle
    assert value_at(LR, 1.0 - 1e-12) == pytest.approx(1e-1)
    assert value_at(SPACE[1], 0.25) == pytest.approx(0.2475)
    assert [value_at(SPACE[2], u) for u in (0.0, 0.49, 0.5, 0.99)] == [True, True, False, False]


def test_sobol_points_are_per_study_and_per_submission_and_depend_on_the_number_alone():
    def points(key: str, seed: int = 0) -> list[dict]:
        return [sampling.sobol_point(SPACE, n, 5, seed, key) for n in range(15)]

    adam = points("adam")
    assert adam == points("adam")  # a re-run, another worker, another process: the same
    for point in adam:
        assert 1e-4 <= point["lr"] <= 1e-1 and 0 <= point["momentum"] <= 0.99
        assert point["nesterov"] in (True, False)
    studies = [adam[0:5], adam[5:10], adam[10:15]]
    assert studies[0] != studies[1] != studies[2]  # each study draws its own sequence
    assert {p["lr"] for p in adam}.isdisjoint({p["lr"] for p in points("sgd")})  # arms too
    assert adam != points("adam", seed=1)
    # a study's points spread as a Sobol sequence does: its first two halve the unit interval
    first = [math.log10(p["lr"]) for p in studies[0][:2]]
    assert (first[0] < -2.5) != (first[1] < -2.5)


def test_a_fixed_list_is_sampled_without_replacement_per_study():
    points = [{"lr": 10.0**-k} for k in range(1, 8)]
    drawn = [sampling.listed_point(points, n, 3, 0, "adam") for n in range(9)]
    for study in (drawn[0:3], drawn[3:6], drawn[6:9]):
        assert len({p["lr"] for p in study}) == 3 and all(p in points for p in study)
    assert [drawn[0:3], drawn[3:6]] != [drawn[3:6], drawn[0:3]]  # orders drawn per study
    assert drawn == [sampling.listed_point(points, n, 3, 0, "adam") for n in range(9)]


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([{"lr": 0.01}], "give at least as many points as --study_size"),
        ([{"lr": 0.01}, {"lr": 5.0}], "lr=5.0 is outside the search space"),
        ([{"lr": 0.01}, {"rate": 0.1}], "exactly the searched names ['lr']"),
        ({"lr": 0.01}, "--points is a list of {lr} mappings"),
    ],
)
def test_a_fixed_list_is_checked_before_any_trial(points, message):
    with pytest.raises(ValueError, match=None) as err:
        sampling.check_points(points, (LR,), 2)
    assert message in str(err.value)


def test_external_tuning_times_each_study_by_its_fastest_trial():
    trials = [
        {"study": 0, "val_loss_curve": [2.0, 1.4, 1.0]},  # 64 steps
        {"study": 0, "val_loss_curve": [1.4, 1.3]},  # 32: the fastest of study 0
        {"study": 1, "val_loss_curve": [2.0, 1.9]},  # never
        {"study": 2, "val_loss_curve": [2.0, 2.0, 1.5]},  # 96
    ]
    times = scoring.study_times(trials, 4, 1.5, 32)
    assert times == [32, INF, 96, INF]  # study 3 has no trial: infinite
    assert scoring.median_time(times) == INF  # half the studies missed: not reached
    assert scoring.median_time(times[:3]) == 96


def _trials(tmp_path, name="adam"):
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    return sorted(study.trials, key=lambda t: t.number)


@pytest.mark.slow
def test_tune_trains_the_drawn_points_with_their_own_seeds(tmp_path, data_cache):
    """Trial n trains the point ``sobol_point`` gives n, with seed 1000000 + n, alone or as a
    population (the same values, to float rounding), and best.yaml replays its seed."""
    args = ["tune", "--optimizer=adam", "--n_trials=4", "--study_size=2", "--sampler=sobol",
            "--trial_seeds=distinct", *tune_args(tmp_path, data_cache)]  # fmt: skip
    cli_main([*args, "--population=4"])
    together = _trials(tmp_path)
    space = (SearchParam("lr", 1e-4, 1e-1, log=True),)  # adam's default search space
    for trial in together:
        assert trial.params == sampling.sobol_point(space, trial.number, 2, 0, "adam")
        assert trial.user_attrs["seed"] == 1_000_000 + trial.number
    best = yaml.safe_load((tmp_path / "out" / "adam" / "best.yaml").read_text())
    best_trial = min(together, key=lambda t: t.value)
    assert best["seed_everything"] == 1_000_000 + best_trial.number
    assert best["optimizer"]["init_args"]["lr"] == pytest.approx(best_trial.params["lr"])
    alone_dir = tmp_path / "alone"
    cli_main([*args[:-1], f"--output_dir={alone_dir / 'out'}", "--population=1"])
    alone = _trials(alone_dir)
    assert [t.params for t in alone] == [t.params for t in together]
    for a, b in zip(alone, together, strict=True):
        assert a.value == pytest.approx(b.value, rel=1e-4)
        assert list(a.intermediate_values) == [0, 1]  # one report an epoch: the trial's curve
    # the seed matters: the same points with the config's seed give other numbers
    same_dir = tmp_path / "same"
    cli_main([*args[:-1], f"--output_dir={same_dir / 'out'}", "--trial_seeds=same",
              "--population=4"])  # fmt: skip
    same = _trials(same_dir)
    assert [t.params for t in same] == [t.params for t in together]
    assert [t.value for t in same] != pytest.approx([t.value for t in together], rel=1e-6)


@pytest.mark.slow
def test_tune_trains_a_fixed_list_of_points(tmp_path, data_cache):
    points = "[{lr: 0.001}, {lr: 0.003}, {lr: 0.01}]"
    cli_main(["tune", "--optimizer=adam", "--n_trials=4", "--study_size=2", "--sampler=points",
              f"--points={points}", "--population=4", *tune_args(tmp_path, data_cache)])  # fmt: skip
    drawn = [t.params["lr"] for t in _trials(tmp_path)]
    assert len(set(drawn[:2])) == len(set(drawn[2:])) == 2  # without replacement per study
    assert set(drawn) <= {0.001, 0.003, 0.01}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--study_size=2"], "--study_size 2: studies of their own draws are --sampler sobol's"),
        (["--sampler=sobol", "--study_size=3"], "a positive divisor of --n_trials 4"),
        (["--sampler=points"], "--points and --sampler points go together"),
        (["--points=[{lr: 0.01}]"], "--points and --sampler points go together"),
        (["--trial_seeds=distinct", "--seed_everything=4294000000"],
         "the last trial's seed 4295000003 is above the largest seed"),
    ],
)  # fmt: skip
def test_sampling_settings_are_refused_before_any_trial(
    tmp_path, data_cache, capsys, extra, message
):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", "--optimizer=adam", "--n_trials=4", *extra,
                  *tune_args(tmp_path, data_cache)])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "optuna.db").exists()


def test_an_optimizer_argument_set_at_its_default_is_not_silently_searched(tmp_path, capsys):
    """Issue 32, item 5: ``tune --optimizer.lr 1e-3`` was searched over because 1e-3 equals the
    class's default; set on the command line is set, whatever its value."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", "--optimizer=torch.optim.Adam", "--optimizer.lr=1e-3",
                  f"--output_dir={tmp_path}"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimizer.lr is set, and the default search space" in err[0]
