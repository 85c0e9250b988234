"""`tune` end to end: a study, best.yaml, pruning, resume after Ctrl-C, parallel workers, bad input."""

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SAMPLES, read_scalars, version_dirs
from optuna.trial import TrialState

from lightning_opt.cli.main import cli_main
from lightning_opt.tuning import trials, tune, workers
from lightning_opt.tuning.storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def study_args(data_cache, tmp_path, monkeypatch):
    """A study of ~0.1 s trials whose files all land in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    return [
        "--optimizer=gnw",
        f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=50",
        "--trainer.max_epochs=2",
        "--study_name=unit",
        f"--output_dir={tmp_path / 'out'}",
    ]


def _study(tmp_path, name="unit", storage=None):
    url = storage or f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _states(study):
    return [t.state for t in study.trials]


def test_study_writes_best_config_that_fit_reproduces(study_args, tmp_path, capsys):
    cli_main(["tune", *study_args, "--n_trials=3", "--pruner=none"])
    out = capsys.readouterr().out
    assert out.count("trial ") >= 3 and "best config:" in out
    study = _study(tmp_path)
    assert _states(study) == [TrialState.COMPLETE] * 3
    assert len({t.params["lr"] for t in study.trials}) == 3
    for trial in study.trials:  # every trial logged to its own TensorBoard directory
        log_dir = Path(trial.user_attrs["log_dir"])
        assert log_dir.name == f"trial_{trial.number}-lr={trial.params['lr']:.3g}"  # its values
        assert read_scalars(log_dir)["val/loss"][-1][1] == pytest.approx(trial.value, rel=1e-6)
    best = tmp_path / "out" / "unit" / "best.yaml"
    assert (tmp_path / "out" / "unit" / "history.html").exists()

    cli_main(["fit", f"--config={best}", "--trainer.enable_progress_bar=false"])
    (run,) = version_dirs(tmp_path / "lightning_logs")
    assert read_scalars(run)["val/loss"][-1][1] == study.best_value  # bit-identical


def test_rerun_resumes_and_never_redoes_finished_trials(study_args, tmp_path):
    cli_main(["tune", *study_args, "--n_trials=2", "--pruner=none"])
    before = {t.number: t.value for t in _study(tmp_path).trials}
    cli_main(["tune", *study_args, "--n_trials=2", "--pruner=none"])  # nothing left to do
    assert {t.number: t.value for t in _study(tmp_path).trials} == before
    cli_main(["tune", *study_args, "--n_trials=4", "--pruner=none"])
    after = _study(tmp_path).trials
    assert [t.number for t in after] == [0, 1, 2, 3]
    assert {t.number: t.value for t in after[:2]} == before


def test_a_deterministic_pruner_prunes_every_trial(study_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        workers, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(upper=0.0)
    )
    cli_main(["tune", *study_args, "--n_trials=2"])
    assert _states(_study(tmp_path)) == [TrialState.PRUNED] * 2
    out = capsys.readouterr().out
    assert out.count("pruned at epoch 0") == 2 and "no trial completed" in out


def test_median_pruner_prunes_a_clearly_worse_trial(study_args, tmp_path):
    args = [*study_args, "--trainer.max_epochs=4", "--optimizer=adam"]
    cli_main(["tune", *args, "--n_trials=3"])  # the median pruner's 3 start-up trials
    _study(tmp_path).enqueue_trial({"lr": 0.1}, user_attrs={"why": "absurd"})
    cli_main(["tune", *args, "--n_trials=4"])
    absurd = _study(tmp_path).trials[3]
    assert absurd.user_attrs["why"] == "absurd" and absurd.params["lr"] == 0.1
    assert absurd.state == TrialState.PRUNED
    assert len(absurd.intermediate_values) < 4  # stopped early


def test_non_finite_trial_is_pruned_with_its_reason_and_the_study_goes_on(study_args, tmp_path):
    args = [*study_args, "--optimizer=sgd", "--pruner=none"]
    space = "--search_space=[{name: lr, low: 1.0e+4, high: 1.0e+6, log: true}]"
    cli_main(["tune", *args, space, "--n_trials=2"])
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["pruned_reason"] == "non-finite training loss" for t in trials)


def test_population_mode_records_the_study_sequential_mode_would(study_args, tmp_path):
    """Same sampled params (random start-up phase, per-trial sampler seeds), same trial values
    to float32 rounding, same states, intermediate values and per-trial logs."""
    args = [*study_args, "--n_trials=5", "--pruner=none"]
    cli_main(["tune", *args])
    sequential = _study(tmp_path).trials
    cli_main(["tune", *args, "--population=3", "--study_name=pop"])
    population = _study(tmp_path, "pop").trials
    assert [t.number for t in population] == [0, 1, 2, 3, 4]  # two populations: 3 + 2
    for seq, pop in zip(sequential, population, strict=True):
        assert pop.state == seq.state == TrialState.COMPLETE
        assert pop.params == seq.params
        assert pop.value == pytest.approx(seq.value, rel=1e-4)
        assert sorted(pop.intermediate_values) == sorted(seq.intermediate_values) == [0, 1]
        log_dir = Path(pop.user_attrs["log_dir"])
        assert log_dir.name.startswith(f"trial_{pop.number}-")
        scalars = read_scalars(log_dir)
        assert scalars["val/loss"][-1][1] == pytest.approx(pop.value, rel=1e-6)
        assert scalars.keys() == read_scalars(Path(seq.user_attrs["log_dir"])).keys()


def test_population_mode_prunes_members_and_fails_only_the_non_finite(
    study_args, tmp_path, monkeypatch, capsys
):
    """A pruned member is dropped from the population while the others train on; a member
    whose loss blows up is pruned with its reason."""
    monkeypatch.setattr(
        workers, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(upper=2.25)
    )
    args = [*study_args, "--optimizer=sgd", "--trainer.max_epochs=3", "--population=4"]
    (tmp_path / "out").mkdir()
    study = optuna.create_study(
        study_name="unit", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    )
    for lr in (1e-4, 0.2, 1e6, 0.15):  # too slow: pruned; fine; non-finite; fine
        study.enqueue_trial({"lr": lr})
    cli_main(
        [
            "tune",
            *args,
            "--n_trials=4",
            "--search_space=[{name: lr, low: 1.0e-5, high: 1.0e+7, log: true}]",
        ]
    )
    trials = _study(tmp_path).trials
    assert [t.params["lr"] for t in trials] == [1e-4, 0.2, 1e6, 0.15]
    assert [t.state for t in trials] == [
        TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
    ]  # fmt: skip
    assert len(trials[0].intermediate_values) == 1  # stopped after its first epoch
    assert trials[2].user_attrs["pruned_reason"] == "non-finite training loss"
    assert len(trials[1].intermediate_values) == len(trials[3].intermediate_values) == 3
    out = capsys.readouterr().out
    assert "pruned at epoch 0" in out and "non-finite" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("population", "stop"),
    [(1, signal.SIGINT), (2, signal.SIGINT), (1, signal.SIGTERM)],
    ids=["ctrl-c", "ctrl-c-population", "sigterm"],
)
def test_ctrl_c_keeps_finished_trials_and_rerun_completes_exactly(
    study_args, tmp_path, population, stop
):
    """Ctrl-C, or SIGTERM (what a batch system sends before it kills: exit 143, not 0)."""
    args = [
        *study_args, "--n_trials=5", "--trainer.max_epochs=60", "--pruner=none",
        f"--population={population}",
    ]  # fmt: skip
    command = [sys.executable, "-m", "lightning_opt", "tune", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("trial "):
            break  # one trial finished; the next is running
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + stop, err
    assert "trials finished and are kept; run the same command again to resume" in err
    assert "Traceback" not in err
    interrupted = _study(tmp_path).trials
    kept = {t.number: t.value for t in interrupted if t.state in FINISHED}
    assert 1 <= len(kept) < 5
    failed = [t.user_attrs.get("fail_reason") for t in interrupted if t.state == TrialState.FAIL]
    assert failed in ([], ["interrupted"] * population)  # the trials that were running

    subprocess.run(command, check=True, capture_output=True, timeout=300)
    final = _study(tmp_path).trials
    assert sum(t.state in FINISHED for t in final) == 5
    assert len({t.number for t in final}) == len(final)
    assert {t.number: t.value for t in final if t.number in kept} == kept


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_finish_exactly_n_trials(study_args, tmp_path, storage):
    url = f"sqlite:///{tmp_path / 'two.db'}" if storage == "sqlite" else str(tmp_path / "two.log")
    cli_main(["tune", *study_args, "--n_trials=6", "--n_workers=2", f"--storage={url}"])
    trials = _study(tmp_path, storage=url).trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in FINISHED for t in trials)
    assert len({Path(t.user_attrs["log_dir"]) for t in trials}) == 6


BAD = [
    (["--storage=redis://localhost/0"], "unknown storage scheme 'redis'"),
    (["--n_trials=0"], "n_trials must be a positive integer, got 0"),
    (["--n_workers=-1"], "n_workers must be a positive integer, got -1"),
    (["--population=0"], "population must be a positive integer, got 0"),
    (
        ["--search_space=[{name: lr, low: 0.1, high: 0.01}]"],
        "search space 'lr': low must be < high, got low=0.1, high=0.01",
    ),
    (
        ["--search_space=[{name: lr, low: 0, high: 0.1, log: true}]"],
        "search space 'lr': a log scale needs low > 0, got low=0",
    ),
    (
        ["--search_space=[{name: momentum, low: 0.1, high: 0.9}]"],
        "search space parameter 'momentum' is not an argument of GNWAdam or of a clipping callback",
    ),
    (
        ["--optimizer.lr=-1", "--search_space=[{name: gamma, low: 0.1, high: 10, log: true}]"],
        "Invalid learning rate: -1.0",
    ),
    (
        ["--optimizer.lr=0.02"],
        "--optimizer.lr 0.02 is set, and the default search space searches lr (0.0001 to 0.1), "
        "which would replace it: leave it out to search it, or give search_space entries "
        "without lr to keep it fixed",
    ),
    (["--trainer.gradient_clip_val=1"], "Trainer(gradient_clip_val=...) is not supported"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_fails_before_any_trial(args, message, study_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", *study_args, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "unit").exists()  # no trial ran


def test_existing_study_with_another_search_space_or_direction_is_refused(
    study_args, tmp_path, capsys
):
    cli_main(["tune", *study_args, "--n_trials=1"])
    with pytest.raises(SystemExit):
        cli_main(["tune", *study_args, "--search_space=[{name: lr, low: 1.0e-3, high: 1.0e-2}]"])
    assert "study 'unit' exists with another search space" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    optuna.create_study(study_name="up", storage=url, direction="maximize")
    with pytest.raises(SystemExit):
        cli_main(["tune", *study_args, "--study_name=up"])
    assert "study 'up' exists with direction MAXIMIZE" in capsys.readouterr().err


def test_default_search_spaces_match_the_seed_notes():
    def space(args):
        return [p.name for p in trials.resolve_search_space(tune.parse(args).config)]

    root = Path(__file__).parents[1] / "configs"
    assert space(["--optimizer=gnw"]) == ["lr"]  # note 000 tunes the learning rate
    assert space([f"--config={root / 'tune' / 'adam_wnclip.yaml'}"]) == ["lr", "clip_factor"]
    assert space([f"--config={root / 'tune' / 'adam_fixedclip.yaml'}"]) == ["lr", "clip_value"]
