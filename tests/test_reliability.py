"""Results that cannot be silently wrong: changed settings never reuse old results, interrupted
trials are re-run with their own parameters, and bad input is one line before anything runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import TINY_SAMPLES, one_thread
from optuna.trial import TrialState

from lightning_opt.cli.main import cli_main
from lightning_opt.config.fingerprints import differences
from lightning_opt.core import signals
from lightning_opt.tuning import trials as trials_module
from lightning_opt.tuning.storage import open_storage

ROOT = Path(__file__).parents[1]


def _tune(tmp_path: Path, data_cache: Path, *args: str) -> None:
    cli_main([
        "tune", f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
        "--data.batch_size=50", f"--output_dir={tmp_path / 'out'}", "--pruner=none", *args,
    ])  # fmt: skip


def _study(tmp_path: Path, name: str = "adam") -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    return optuna.load_study(study_name=name, storage=storage)


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning_opt: error: "), lines
    return lines[0]


def test_a_study_refuses_other_settings_and_overwrite_starts_afresh(tmp_path, data_cache, capsys):
    _tune(tmp_path, data_cache, "--trainer.max_epochs=3", "--n_trials=2")
    values = [t.value for t in _study(tmp_path).trials]
    with pytest.raises(SystemExit) as exit_info:
        _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=3")
    assert exit_info.value.code == 2
    line = _one_error_line(capsys)
    assert "study 'adam' was run with other settings (trainer.max_epochs: 3 -> 1)" in line
    assert "choose another --study_name, or pass --overwrite" in line
    assert [t.value for t in _study(tmp_path).trials] == values  # nothing lost

    # another optimizer under the same study name is refused too
    with pytest.raises(SystemExit):
        _tune(tmp_path, data_cache, "--trainer.max_epochs=3", "--optimizer=gnw",
              "--study_name=adam")  # fmt: skip
    assert "optimizer.class_path: 'torch.optim.Adam' -> 'lightning_opt" in _one_error_line(capsys)

    # more trials with the same settings extend the study
    _tune(tmp_path, data_cache, "--trainer.max_epochs=3", "--n_trials=3")
    assert [t.value for t in _study(tmp_path).trials][:2] == values

    _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=2", "--overwrite=true")
    study = _study(tmp_path)
    assert len(study.trials) == 2 and study.user_attrs["run_config"]["trainer"]["max_epochs"] == 1
    best = yaml.safe_load((tmp_path / "out" / "adam" / "best.yaml").read_text())
    assert best["trainer"]["max_epochs"] == 1


def _tune_with_second_trial_raising(tmp_path, data_cache, monkeypatch, error) -> None:
    """A 3-trial study whose second trial raises ``error`` (the run is restored after)."""
    real = trials_module.TrialRunner.run
    calls = []

    def raising_second(self, trial, params):
        calls.append(params)
        if len(calls) == 2:
            raise error
        return real(self, trial, params)

    with monkeypatch.context() as patched:
        patched.setattr(trials_module.TrialRunner, "run", raising_second)
        _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=3")


def _relaunch(tmp_path, data_cache, capsys, stopped) -> tuple[Any, Any]:
    """The same study launched again: it says it re-runs one trial; the study and the re-run
    of ``stopped``."""
    _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=3")
    assert "re-running 1 interrupted trial(s) with their own parameters" in capsys.readouterr().out
    study = _study(tmp_path)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == stopped.number)
    return study, retry


def test_an_interrupted_trial_is_rerun_with_its_own_parameters(
    tmp_path, data_cache, monkeypatch, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        _tune_with_second_trial_raising(tmp_path, data_cache, monkeypatch, KeyboardInterrupt)
    assert exit_info.value.code == 130
    interrupted = next(t for t in _study(tmp_path).trials if t.state == TrialState.FAIL)
    assert interrupted.user_attrs["fail_reason"] == "interrupted"

    study, retry = _relaunch(tmp_path, data_cache, capsys, interrupted)
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3

    # the same parameters as an uninterrupted study of the same settings
    _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=3", "--study_name=straight")
    straight = _study(tmp_path, "straight")
    assert sorted(t.params["lr"] for t in finished) == sorted(
        t.params["lr"] for t in straight.trials
    )
    assert sorted(t.value for t in finished) == pytest.approx(
        sorted(t.value for t in straight.trials), rel=1e-6
    )


def test_a_trial_of_a_killed_worker_is_rerun(tmp_path, data_cache, capsys):
    _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=1")
    study = _study(tmp_path)
    # What SIGKILL leaves in a SQLite study: a RUNNING trial of a process that is gone.
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    trial.set_user_attr("worker", f"{socket.gethostname()}:999999999")
    lr = trial.params["lr"]
    _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=2")
    assert "re-running 1 interrupted trial(s)" in capsys.readouterr().out
    study = _study(tmp_path)
    killed = study.trials[trial.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == "killed"
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE
    assert rerun[0].params["lr"] == lr


def _compare(tmp_path: Path, data_cache: Path, *args: str) -> None:
    cli_main([
        "compare", f"--config={ROOT / 'configs' / 'experiments' / 'gnw_vs_adam.yaml'}",
        f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
        "--data.batch_size=50", f"--output_dir={tmp_path / 'cmp'}", "--n_trials=2",
        "--population=2", "--seeds=2", "--tune_max_epochs=1", "--robustness=false", *args,
    ])  # fmt: skip


@pytest.mark.slow
def test_an_experiment_refuses_other_settings(tmp_path, data_cache, capsys):
    _compare(tmp_path, data_cache, "--trainer.max_epochs=2")
    exp = tmp_path / "cmp" / "gnw_vs_adam"
    results = json.loads((exp / "results.json").read_text())
    with pytest.raises(SystemExit) as exit_info:
        _compare(tmp_path, data_cache, "--trainer.max_epochs=3")
    assert exit_info.value.code == 2
    line = _one_error_line(capsys)
    assert "experiment 'gnw_vs_adam' was run with other settings" in line
    assert "trainer.max_epochs: 2 -> 3" in line and "--overwrite" in line
    assert json.loads((exp / "results.json").read_text()) == results  # untouched
    _compare(tmp_path, data_cache, "--trainer.max_epochs=3", "--overwrite=true")
    runs = json.loads((exp / "results.json").read_text())["arms"]["adam"]["runs"]
    assert all(len(run["val_loss_curve"]) == 3 for run in runs)


def test_overwrite_on_a_storage_of_its_own_starts_the_experiment_afresh(
    tmp_path, data_cache, capsys
):
    """On a --storage outside the experiment's folder, --overwrite deletes the experiment's own
    studies with its outputs: a study of unchanged settings is trained again, never reused with
    its logs and checkpoints gone; another experiment's studies on the storage stay."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _compare(tmp_path, data_cache, f"--storage={storage}", "--experiment=other")
    _compare(tmp_path, data_cache, f"--storage={storage}")
    capsys.readouterr()
    _compare(tmp_path, data_cache, f"--storage={storage}", "--seeds=3", "--overwrite=true")
    out = capsys.readouterr().out
    assert "--overwrite: deleted the studies gnw_vs_adam.adam, gnw_vs_adam.adam.finals" in out
    assert sum(line.startswith("final ") for line in out.splitlines()) == 2 * 3  # every seed
    assert "adam trial   0" in out  # tuned again
    results = json.loads((tmp_path / "cmp" / "gnw_vs_adam" / "results.json").read_text())
    paths = [run[key] for arm in results["arms"].values() for run in arm["runs"]
             for key in ("log_dir", "checkpoint")]  # fmt: skip
    assert len(paths) == 2 * 3 * 2 and all(Path(p).exists() for p in paths)
    names = optuna.get_all_study_names(storage)
    assert {"other.adam", "other.gnw", "other.adam.finals", "other.gnw.finals"} <= set(names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment=../../x"], "experiment names are letters, digits"),
        (["--output_dir={file}/x"], "is a file, not a directory"),
    ],
)
def test_bad_experiment_input_is_one_line_before_anything_runs(
    args, message, tmp_path, data_cache, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = [a.replace("{file}", str(a_file)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _compare(tmp_path, data_cache, *args)
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "cmp").exists()


def test_a_search_space_with_a_bad_bound_is_one_line(tmp_path, data_cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tune(tmp_path, data_cache, "--search_space=[{name: lr, low: abc, high: 1.0}]")
    assert exit_info.value.code == 2
    assert "search space 'lr': low must be a number, got 'abc'" in _one_error_line(capsys)
    assert not (tmp_path / "out" / "adam").exists()


def test_a_model_flag_the_checkpoint_overrides_is_refused(tiny_fit_args, tmp_path, capsys):
    cli_main(["fit", *tiny_fit_args])
    (ckpt,) = (tmp_path / "logs").rglob("*.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", *tiny_fit_args, f"--ckpt_path={ckpt}", "--model.net.hidden_sizes=[50]"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys)
    assert "--model.net.hidden_sizes [50]: the weights of --ckpt_path" in line
    assert "trained with net.hidden_sizes=[100]" in line
    cli_main(["test", *tiny_fit_args, f"--ckpt_path={ckpt}", "--model.net.hidden_sizes=[100]"])


@pytest.mark.parametrize("content", [b"not a checkpoint", b""], ids=["text", "empty"])
def test_an_unreadable_checkpoint_is_one_line(content, tiny_fit_args, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    for subcommand in ("fit", "test"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([subcommand, *tiny_fit_args, f"--ckpt_path={bad}"])
        assert exit_info.value.code == 2
        assert "is not a readable checkpoint" in _one_error_line(capsys)
    with pytest.raises(SystemExit):
        cli_main(["test", *tiny_fit_args, f"--ckpt_path={tmp_path / 'missing.ckpt'}"])
    assert "no such file" in _one_error_line(capsys)


def _numbers(results: dict) -> dict:
    """Every number of results.json but timings and paths."""
    drop = {"seconds", "log_dir", "checkpoint", "versions"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(results)


def test_an_interrupted_experiment_resumes_to_the_same_numbers(
    tmp_path, data_cache, monkeypatch, capsys
):
    """Ctrl-C in tuning, then in the finals; each resume ends where an uninterrupted run ends,
    in every number of results.json (timings aside)."""
    from lightning_opt.experiments import finals as finals_module

    args = ["--pruner=none", "--population=1", "--population_finals=false",
            "--trainer.max_epochs=2"]  # fmt: skip
    _compare(tmp_path / "straight", data_cache, *args)
    straight = json.loads(
        (tmp_path / "straight" / "cmp" / "gnw_vs_adam" / "results.json").read_text()
    )

    real_run, real_history = trials_module.TrialRunner.run, finals_module.EpochHistory
    calls = []

    def stop_second_trial(self, trial, params):
        calls.append(params)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, trial, params)

    monkeypatch.setattr(trials_module.TrialRunner, "run", stop_second_trial)
    with pytest.raises(SystemExit):
        _compare(tmp_path, data_cache, *args)
    monkeypatch.setattr(trials_module.TrialRunner, "run", real_run)

    finals = []

    class SigtermInSecondFinal(finals_module.EpochHistory):
        """SIGTERM (a batch system's stop) in the middle of the second final run's training,
        inside Lightning's fit (which has its own SIGTERM handler and used to exit with 0)."""

        def __init__(self):
            super().__init__()
            finals.append(self)

        def on_train_epoch_end(self, trainer, pl_module):
            if len(finals) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(finals_module, "EpochHistory", SigtermInSecondFinal)
    with pytest.raises(SystemExit) as exit_info:
        _compare(tmp_path, data_cache, *args)
    assert exit_info.value.code == 143
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(finals_module, "EpochHistory", real_history)
    _compare(tmp_path, data_cache, *args)
    resumed = json.loads((tmp_path / "cmp" / "gnw_vs_adam" / "results.json").read_text())
    diffs = differences(_numbers(straight), _numbers(resumed))
    assert not diffs, diffs[:5]


def _kill_when(command: list[str], cwd: Path, ready, what: str) -> None:
    """Run ``command`` and SIGKILL it as soon as ``ready()`` holds (polled every 20 ms)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the experiment finished before it could be killed {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"the experiment did not get {what} within 120 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


@pytest.mark.slow
def test_a_killed_experiment_resumes_to_the_same_numbers(tmp_path, data_cache):
    """SIGKILL while the first arm tunes, then in the finals: the trial left RUNNING belongs
    to a dead process of this machine, so the next launch re-runs it with its parameters; a
    final run without result.json runs again from the start, its partial logs replaced. The
    numbers equal an uninterrupted run's."""
    import sqlite3
    import sys

    args = ["--pruner=none", "--population=1", "--population_finals=false",
            "--trainer.max_epochs=2", "--tune_max_epochs=20", "--n_trials=4"]  # fmt: skip
    _compare(tmp_path / "straight", data_cache, *args)
    straight = json.loads(
        (tmp_path / "straight" / "cmp" / "gnw_vs_adam" / "results.json").read_text()
    )

    command = [
        sys.executable, "-m", "lightning_opt", "compare",
        f"--config={ROOT / 'configs' / 'experiments' / 'gnw_vs_adam.yaml'}",
        f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
        "--data.batch_size=50", f"--output_dir={tmp_path / 'cmp'}", "--seeds=2",
        "--robustness=false", *args,
    ]  # fmt: skip
    exp = tmp_path / "cmp" / "gnw_vs_adam"

    def a_trial_finished() -> bool:
        try:
            with sqlite3.connect(f"file:{exp / 'optuna.db'}?mode=ro", uri=True, timeout=1) as con:
                done = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")
                return done.fetchone()[0] >= 1
        except sqlite3.Error:
            return False  # not created yet

    def a_final_started() -> bool:
        return any(exp.glob("*/final/seed_*/events.out.tfevents.*"))

    _kill_when(command, tmp_path, a_trial_finished, "while tuning")
    _kill_when(command, tmp_path, a_final_started, "in the finals")
    _compare(tmp_path, data_cache, *args)
    resumed = json.loads((exp / "results.json").read_text())
    diffs = differences(_numbers(straight), _numbers(resumed))
    assert not diffs, diffs[:5]
    for run in exp.glob("*/final/seed_*"):  # one process's logs each, none from a killed one
        writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}
        assert len(writers) == 1, sorted(p.name for p in run.iterdir())


# -- names that become folders; files written by concurrent writers -------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../escape", "--study_name '../../escape': study names are letters, digits"),
        ("..", "--study_name '..': study names are letters"),
        ("a/b", "never a path"),
        ("", "--study_name: the study name is empty"),
        ("x" * 300, "a study name of 300 bytes is longer than the 200"),
    ],
)
def test_a_study_name_is_one_folder_under_the_output_directory(
    name, message, tmp_path, data_cache, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        _tune(tmp_path, data_cache, f"--study_name={name}", "--n_trials=1")
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written, anywhere


@pytest.mark.parametrize("arm", ["..", "../x", "a b"])
def test_an_arm_name_is_checked_as_a_study_name_is(arm, tmp_path, data_cache, capsys):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        f"experiment: e\narms:\n  - {{name: {json.dumps(arm)}, optimizer: adam}}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", f"--config={experiment}", f"--output_dir={tmp_path / 'cmp'}",
                  f"--data.cache_dir={data_cache}"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "arms[].name" in _one_error_line(capsys) and not (tmp_path / "cmp").exists()


def test_concurrent_writers_of_one_output_never_collide(tmp_path):
    """Each writer renames a temporary file of its own (process and thread in its name): no
    writer finds its temporary file taken by another's rename, and the file is whole."""
    import threading

    from lightning_opt.core.atomic import temporary_path
    from lightning_opt.experiments.finals import _write_result

    assert temporary_path(tmp_path / "x.json") != temporary_path(tmp_path / "y.json")
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(30):
                _write_result({"writer": k, "i": i, "pad": "x" * 5000}, tmp_path)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads((tmp_path / "result.json").read_text())["i"] == 29
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--seed_everything=-1"], "--seed_everything -1: a seed is an integer from 0 to"),
        (["fit", "--seed_everything=99999999999999"], "--seed_everything 99999999999999: a seed"),
        (["tune", "--seed=-1"], "--seed -1: the sampler's seed is an integer from 0 to 2**32 - 1"),
        (["fit", "--data.generation_seed=-5"], "--data.generation_seed -5: an integer from 0"),
        (["fit", "--data.cache_dir={file}"], "--data.cache_dir {file} is a file; give a folder"),
        (["fit", "--trainer.default_root_dir={file}"], "default_root_dir {file} is a file"),
        (["fit", "--config={binary}"], "--config {binary} is not a UTF-8 text file (byte 0"),
        (["fit", "--trainer.max_epochs=0"], "--trainer.max_epochs 0 trains nothing (its "
                                             "checkpoint would hold the untrained weights)"),
        (["tune", "--trainer.max_steps=0"], "--trainer.max_steps 0 trains nothing"),
        (["frobnicate"], "unknown subcommand 'frobnicate'; choose one of: fit, validate, test, "
                         "predict, tune, compare, benchmark"),
    ],
)  # fmt: skip
def test_bad_input_found_by_the_reliability_battery_is_one_line(
    args, message, tmp_path, capsys, monkeypatch
):
    a_file, binary = tmp_path / "a_file", tmp_path / "model.ckpt"
    a_file.write_text("")
    binary.write_bytes(b"\xff\xfe\x00\x01PK")
    subs = {"{file}": str(a_file), "{binary}": str(binary)}
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, f"--output_dir={tmp_path / 'out'}"] if args[0] == "tune" else args)
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "out").exists()


def _sigterm_when(command: list[str], cwd: Path, ready, timeout: float = 120) -> tuple[int, str]:
    """Run ``command``, send SIGTERM once ``ready()`` holds; its exit code and stderr."""

    proc = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the command finished before it could be stopped"
        assert time.monotonic() < deadline, "the command did not get there in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_stops_fit_with_exit_143_and_keeps_its_checkpoint(tiny_fit_args, tmp_path):
    """What a batch system sends before it kills: not a success (exit 0), one line, no
    traceback, and the checkpoints written so far stay."""

    command = [sys.executable, "-m", "lightning_opt", "fit", *tiny_fit_args,
               "--trainer.max_epochs=100000", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    code, err = _sigterm_when(command, tmp_path, lambda: list(tmp_path.rglob("*.ckpt")))
    assert code == 143, err
    assert "interrupted (SIGTERM): the run stopped" in err and "Traceback" not in err
    assert list(tmp_path.rglob("*.ckpt"))


def test_a_command_honours_ctrl_c_even_where_it_was_started_ignoring_it():
    """A command started with ``&`` from a script inherits SIGINT ignored: tuning used to honour
    Ctrl-C (its own handler) while a final run did not."""

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.handled():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            with pytest.raises(KeyboardInterrupt):
                signals._on_sigterm(signal.SIGTERM, None)  # no handler of its own: Ctrl-C's
            assert signals.terminated() and signals.interrupt_exit_code() == 143
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # given back afterwards
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_study_database_damaged_in_the_middle_is_one_line(tmp_path, data_cache):
    """A page in the middle of the SQLite file overwritten: the file opens, the study fails
    when it reads its trials. One line, exit 1 (the machine, not the input)."""
    import sqlite3

    db = tmp_path / "out" / "optuna.db"
    # Processes of their own: a live connection keeps the pages in its WAL and cache.
    command = [
        sys.executable, "-m", "lightning_opt", "tune", f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}", "--data.batch_size=50", "--trainer.max_epochs=1",
        f"--output_dir={tmp_path / 'out'}", "--pruner=none",
    ]  # fmt: skip
    subprocess.run([*command, "--n_trials=3"], check=True, capture_output=True, timeout=300)
    with sqlite3.connect(db) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        sql = "SELECT rootpage FROM sqlite_master WHERE name = 'trial_params'"
        page = connection.execute(sql).fetchone()[0]  # read for every trial, not on opening
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(os.urandom(page_size))
    done = subprocess.run([*command, "--n_trials=4"], capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].endswith(
        "failed while the study ran: database disk image is malformed; move it away or choose "
        "another --storage"
    ), lines


def test_a_full_disk_while_a_study_runs_is_one_line_with_exit_1(
    tmp_path, data_cache, capsys, monkeypatch
):
    """The machine, not the input: exit 1 (the README's runtime failure), as fit says it."""
    import errno

    def no_space(self, trial, params):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(trials_module.TrialRunner, "run", no_space)
    with pytest.raises(SystemExit) as exit_info:
        _tune(tmp_path, data_cache, "--trainer.max_epochs=1", "--n_trials=2")
    assert exit_info.value.code == 1
    line = _one_error_line(capsys)
    assert "No space left on device" in line and "free space or choose another" in line
    failed = _study(tmp_path).trials[0]
    assert failed.user_attrs["fail_reason"].startswith("OSError")  # recorded as failed


def test_a_full_disk_on_opening_the_storage_is_a_runtime_failure():
    from lightning_opt.tuning import storage as storage_module

    full = storage_module._storage_error(
        "sqlite:///x.db", Exception("database or disk is full"), None
    )
    assert isinstance(full, storage_module.StorageMachineError)
    assert str(full).endswith("database or disk is full; free space or choose another --storage")
    bad = storage_module._storage_error("sqlite:///x.db", Exception("no such table: studies"), None)
    assert not isinstance(bad, storage_module.StorageMachineError)


@pytest.mark.slow
def test_two_processes_on_one_storage_finish_exactly_the_planned_units(tmp_path, data_cache):
    """Two compare processes sharing one SQLite storage (as two machines share a PostgreSQL
    one) split the tuning trials and final runs: each study ends with exactly the planned
    units, every seed trained once, and both write the results of one process alone."""
    args = ["--pruner=none", "--population=1", "--population_finals=false",
            "--trainer.max_epochs=2", "--seeds=3"]  # fmt: skip
    with one_thread():  # as the launchers below (OMP_NUM_THREADS=1)
        _compare(tmp_path / "alone", data_cache, *args)
    alone = json.loads((tmp_path / "alone" / "cmp" / "gnw_vs_adam" / "results.json").read_text())

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [
        sys.executable, "-m", "lightning_opt", "compare",
        f"--config={ROOT / 'configs' / 'experiments' / 'gnw_vs_adam.yaml'}",
        f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
        "--data.batch_size=50", "--n_trials=2", "--tune_max_epochs=1", "--robustness=false",
        f"--storage={storage}", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([*command, f"--output_dir={tmp_path / name}"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in ("one", "two")
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for arm in ("gnw", "adam"):
        tuning = optuna.load_study(study_name=f"gnw_vs_adam.{arm}", storage=storage).trials
        assert [t.state for t in tuning] == [TrialState.COMPLETE] * 2
        units = optuna.load_study(study_name=f"gnw_vs_adam.{arm}.finals", storage=storage)
        complete = [t for t in units.trials if t.state == TrialState.COMPLETE]
        assert sorted(t.user_attrs["seed"] for t in complete) == [0, 1, 2]
        # The launchers plan under SQLite's lock: each seed once, nothing left over (on a server
        # database two plans at once leave a later unit WAITING, never run).
        assert len(units.trials) == len(complete)
    trained = [
        line.split(":")[0].split()[1:4:2] for out in outputs for line in out.splitlines()
        if line.startswith("final ")
    ]  # fmt: skip
    assert sorted(trained) == sorted([arm, str(s)] for arm in ("gnw", "adam") for s in range(3))
    for name in ("one", "two"):
        shared = json.loads((tmp_path / name / "gnw_vs_adam" / "results.json").read_text())
        assert not differences(_numbers(alone), _numbers(shared))


def test_a_trial_that_failed_with_an_error_is_rerun_and_the_study_completes(
    tmp_path, data_cache, monkeypatch, capsys
):
    """A trial that raised (a bug of an optimizer, since fixed) was never re-run: the next
    launch planned a fresh trial in its place, which the study cannot count as the failed one,
    so every later launch stopped at "trials [n] did not finish"."""
    with pytest.raises(RuntimeError, match="optimizer bug"):
        _tune_with_second_trial_raising(
            tmp_path, data_cache, monkeypatch, RuntimeError("optimizer bug")
        )
    failed = next(t for t in _study(tmp_path).trials if t.state == TrialState.FAIL)
    assert failed.user_attrs["fail_reason"] == "RuntimeError: optimizer bug"

    study, retry = _relaunch(tmp_path, data_cache, capsys, failed)
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3
    assert len(study.trials) == 4  # no fresh trial in its place
