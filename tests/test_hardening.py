"""Hardening, second round: the cases of the issue that are handled, each as a user meets it.

Data loss (``--overwrite`` of a folder that holds the shared arms' runs), the SQLite log folded
into the database file, paths that a storage URL would misread, names that collide with the
tool's own files, a choices search in the report, ``--ckpt_path last`` with nothing trained and
a benchmark's ``--trainer.max_epochs`` cap at the default's value."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_SAMPLES

from lightning_opt.benchmark import command as benchmark_command
from lightning_opt.cli import cli_main


def _refused(args: list[str], capsys) -> str:
    """The one line a refused command prints (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _experiment(tmp_path: Path, data_cache: Path, **changes) -> Path:
    config = {
        "experiment": "a", "output_dir": str(tmp_path / "out"), "seeds": 2, "n_trials": 1,
        "tune_max_epochs": 1, "pruner": "none", "trainer": {"max_epochs": 1},
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 100},
        "arms": [{"name": "adam", "optimizer": "adam"}, {"name": "sgd", "optimizer": "sgd"}],
        **changes,
    }  # fmt: skip
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _suite(tmp_path: Path, data_cache: Path, workloads: list[dict], **changes) -> Path:
    """A one-baseline suite of tiny workloads, written to ``tmp_path``."""
    suite = {
        "benchmark": "tiny", "output_dir": str(tmp_path / "out"),
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache)},
        "workloads": workloads, "baselines": [{"name": "sgd", "optimizer": "sgd"}], **changes,
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _checkpoints(results: Path) -> list[Path]:
    found = json.loads(results.read_text())
    paths = [Path(run["checkpoint"]) for arm in found["arms"].values() for run in arm["runs"]]
    assert paths
    return paths


@pytest.mark.slow
def test_overwrite_of_an_experiment_over_the_shared_arms_is_refused(tmp_path, data_cache, capsys):
    """Issue case 1a: experiment ``a`` shares its arms through ``out/optuna.db``; an experiment
    named ``shared_arms`` (the shared arms' folder) with ``--overwrite`` would delete them."""
    path = _experiment(tmp_path, data_cache)
    shared = ["--share_arms=true", f"--storage=sqlite:///{tmp_path / 'out' / 'optuna.db'}"]
    cli_main(["compare", f"--config={path}", *shared])
    checkpoints = _checkpoints(tmp_path / "out" / "a" / "results.json")
    assert all(p.is_file() for p in checkpoints)
    line = _refused(["compare", f"--config={path}", *shared, "--experiment=shared_arms",
                     "--overwrite=true", "--seeds=3"], capsys)  # fmt: skip
    assert "--experiment shared_arms" in line and "overlap" in line
    assert all(p.is_file() for p in checkpoints)


def test_shared_arms_inside_a_workload_folder_are_refused_before_training(
    tmp_path, data_cache, capsys
):
    """Issue case 1b: ``--shared_arms_dir`` inside the benchmark's own workload folder (which
    its ``--overwrite`` deletes) is refused before anything trains."""
    path = _suite(
        tmp_path,
        data_cache,
        [{"name": "mlp", "model": {"net": {"class_path": "mlp"}}, "epochs": 1, "target": 2.2}],
        seeds=2,
        n_trials=1,
    )
    inside = tmp_path / "out" / "tiny" / "mlp" / "logs"
    line = _refused(["benchmark", f"--config={path}", "--optimizer=adam",
                     f"--shared_arms_dir={inside}"], capsys)  # fmt: skip
    assert "--benchmark tiny" in line and "overlap" in line
    assert not list((tmp_path / "out").rglob("*.ckpt"))


@pytest.mark.slow
def test_the_study_database_alone_holds_every_study_after_a_command(tmp_path, data_cache):
    """Issue case 4: after a command, ``optuna.db`` copied without its ``-wal`` file holds
    every study and trial (the log is folded into the file)."""
    path = _experiment(tmp_path, data_cache)
    cli_main(["compare", f"--config={path}"])
    database = tmp_path / "out" / "a" / "optuna.db"
    copy = tmp_path / "copy.db"
    shutil.copy(database, copy)  # the file alone, as a backup or a move would take it
    with sqlite3.connect(copy) as connection:
        studies = {row[0] for row in connection.execute("SELECT study_name FROM studies")}
        trials = connection.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    assert studies == {"a.adam", "a.sgd", "a.adam.finals", "a.sgd.finals"}
    assert trials == 2 * 1 + 2 * 2  # one trial per arm, two final units per arm


@pytest.mark.parametrize(
    "command", [["tune", "--optimizer=adam"], ["compare"], ["benchmark", "--optimizer=adam"]]
)
@pytest.mark.parametrize("output_dir", ["o?mode=ro", "o?x=1", "o#1", "o%41"])
def test_an_output_folder_a_storage_url_would_misread_is_refused(
    command, output_dir, tmp_path, data_cache, capsys, monkeypatch
):
    """Issue case 3: ``?``, ``#`` and ``%`` in the folder of the default SQLite storage: one
    line, and nothing written (``o?mode=ro`` used to write the database as ``./o``)."""
    monkeypatch.chdir(tmp_path)
    args = [*command, f"--output_dir={output_dir}", f"--data.cache_dir={data_cache}"]
    if command == ["compare"]:
        args.append(f"--config={_experiment(tmp_path, data_cache)}")
        args = [*args[:1], args[-1], *args[1:-1]]
    line = _refused(args, capsys)
    assert "--output_dir" in line and "SQLite URL" in line
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["experiment.yaml"])


@pytest.mark.parametrize(
    ("where", "name"),
    [("arm", "results.json"), ("arm", "comparison.html"), ("arm", "optuna.db"),
     ("arm", "experiment.json"), ("experiment", "optuna.db"), ("study", "optuna.db"),
     ("workload", "leaderboard.md"), ("workload", "mlp.yaml"), ("benchmark", "optuna.db")],
)  # fmt: skip
def test_a_name_of_the_tools_own_files_is_refused(where, name, tmp_path, data_cache, capsys):
    """Issue case 2: names that become folders beside the tool's own files (which then could
    not be written, after all training) are refused before anything trains."""
    if where == "study":
        args = ["tune", "--optimizer=adam", f"--study_name={name}",
                f"--output_dir={tmp_path / 'out'}", f"--data.cache_dir={data_cache}"]  # fmt: skip
    elif where in ("workload", "benchmark"):
        workload = name if where == "workload" else "mlp"
        path = _suite(tmp_path, data_cache, [{"name": workload, "epochs": 1, "target": 2.2}])
        args = ["benchmark", f"--config={path}", "--optimizer=adam"]
        args += [f"--benchmark={name}"] if where == "benchmark" else []
    elif where == "arm":
        arms = [{"name": name, "optimizer": "adam"}, {"name": "sgd", "optimizer": "sgd"}]
        args = ["compare", f"--config={_experiment(tmp_path, data_cache, arms=arms)}"]
    else:
        args = ["compare", f"--config={_experiment(tmp_path, data_cache)}", f"--experiment={name}"]
    line = _refused(args, capsys)
    assert repr(name) in line
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_a_choices_search_is_reported(tmp_path, data_cache, capsys):
    """Issue case 2: a search over choices that are not numbers (``amsgrad: [true, false]``,
    ``foreach: [null, false]``) ends in a report, its values written as they are."""
    space = [{"name": "lr", "low": 1e-3, "high": 1e-2, "log": True},
             {"name": "amsgrad", "choices": [True, False]},
             {"name": "foreach", "choices": [None, False]}]  # fmt: skip
    arms = [{"name": "adam", "optimizer": "adam", "search_space": space},
            {"name": "sgd", "optimizer": "sgd"}]  # fmt: skip
    cli_main(["compare", f"--config={_experiment(tmp_path, data_cache, arms=arms)}"])
    text = (tmp_path / "out" / "a" / "results.md").read_text()
    assert "amsgrad in {True, False}" in text and "foreach in {None, False}" in text
    tuned = json.loads((tmp_path / "out" / "a" / "results.json").read_text())["arms"]["adam"]
    assert f"amsgrad={tuned['tuned']['amsgrad']}" in text


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
@pytest.mark.parametrize("name", ["last", "best", "hpc"])
def test_a_named_checkpoint_with_nothing_trained_is_refused(subcommand, name, tmp_path, capsys):
    """Issue cases 5 and 8: ``test --ckpt_path last`` evaluated untrained weights (exit 0);
    ``best`` and ``hpc`` ended in a traceback. A command that trains nothing has no such
    checkpoint: one line."""
    line = _refused([subcommand, f"--ckpt_path={name}",
                     f"--trainer.default_root_dir={tmp_path}"], capsys)  # fmt: skip
    assert f"--ckpt_path {name}" in line and "give the checkpoint file" in line


def test_a_benchmark_cap_equal_to_the_fit_default_caps(tmp_path, data_cache, monkeypatch, capsys):
    """Issue case 5: ``--trainer.max_epochs 50`` (the fit default) caps a 52-epoch workload."""
    path = _suite(
        tmp_path,
        data_cache,
        [
            {"name": "long", "epochs": 52, "target": 2.2},
            {"name": "short", "epochs": 3, "target": 2.2},
        ],
    )
    budgets = {}

    def planned_only(experiment):
        budgets[experiment.config.experiment] = experiment.config.trainer.max_epochs
        raise SystemExit(0)  # what was planned is what is checked; nothing trains

    monkeypatch.setattr(benchmark_command, "run_experiment", planned_only)
    with pytest.raises(SystemExit):
        cli_main(["benchmark", f"--config={path}", "--optimizer=adam", "--trainer.max_epochs=50"])
    assert "trainer.max_epochs 50 caps every workload's budget" in capsys.readouterr().out
    assert budgets == {"long": 50}  # the first workload, capped
    written = yaml.safe_load((tmp_path / "out" / "tiny" / "short.yaml").read_text())
    assert written["trainer"]["max_epochs"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--n_trials=1000000000000"], "--n_trials 1e+12: at most 100,000"),
     (["--seeds=10000000"], "--seeds 1e+07: at most 10,000"),
     (["--data.num_samples=1000000000"], "data.num_samples 1e+09: at most 10,000,000"),
     (["--seed_everything=4294967295", "--seeds=2"], "the last final run's seed 4294967296"),
     (["--data.final_seq_length=1000000000"], "--data.final_seq_length 1e+09: at most 100,000")],
)  # fmt: skip
def test_a_count_past_its_bound_is_refused_before_anything_is_queued(
    flags, message, tmp_path, data_cache, capsys
):
    """Issue cases 6 and 8: counts that hung (trials queued while nothing trained, a billion
    samples) or failed after tuning (the seeds past the largest) are one line first."""
    path = _experiment(tmp_path, data_cache)
    line = _refused(["compare", f"--config={path}", *flags], capsys)
    assert message in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("optuna.db"))


def test_a_target_no_run_can_miss_is_refused(tmp_path, data_cache, capsys):
    """Issue case 5: ``target: .inf`` made every submission reach it at its first evaluation."""
    path = _suite(tmp_path, data_cache, [{"name": "mlp", "epochs": 1, "target": float("inf")}])
    line = _refused(["benchmark", f"--config={path}", "--optimizer=adam"], capsys)
    assert "target is a finite validation loss, got inf" in line


@pytest.mark.parametrize("output", ["a_file", "/dev/null"])
def test_a_benchmark_output_folder_that_is_a_file_is_refused(output, tmp_path, capsys):
    """Issue case 8: ``benchmark --output_dir`` a file (or ``/dev/null``) was a traceback."""
    target = tmp_path / output if output == "a_file" else Path(output)
    if output == "a_file":
        target.write_text("not a folder")
    line = _refused(["benchmark", "--optimizer=adam", f"--output_dir={target}"], capsys)
    assert "is a file, not a directory" in line or "cannot be named" in line


@pytest.mark.slow
def test_an_arm_whose_every_trial_diverges_is_one_line(tmp_path, data_cache, capsys):
    """Issue case 8: every tuning trial of an arm diverging was a traceback ("no tuning trial
    completed"); it is the run's failure (exit 1) in one line, the finished trials kept."""
    space = [{"name": "lr", "low": 1e12, "high": 1e13, "log": True}]
    arms = [{"name": "sgd", "optimizer": "sgd", "search_space": space},
            {"name": "adam", "optimizer": "adam"}]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", f"--config={_experiment(tmp_path, data_cache, arms=arms)}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arm 'sgd': no tuning trial completed" in err[0], err


@pytest.mark.slow
def test_a_benchmark_of_one_seed_writes_its_leaderboard(tmp_path, data_cache):
    """A test of one seed per side has no p-value: the leaderboard shows '-' (it crashed in
    its markdown after all training)."""
    path = _suite(
        tmp_path,
        data_cache,
        [{"name": "mlp", "epochs": 1, "target": 2.2}],
        seeds=1,
        n_trials=1,
        study_size=1,
        pruner="none",
        data={"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 100},
    )
    cli_main(["benchmark", f"--config={path}", "--optimizer=adam"])
    text = (tmp_path / "out" / "tiny" / "leaderboard.md").read_text()
    assert "| mlp | adam | sgd |" in text
    assert (tmp_path / "out" / "tiny" / "leaderboard.html").is_file()


def test_a_net_the_workloads_replace_is_refused(tmp_path, data_cache, capsys):
    """Issue case 5: ``--model.net.*`` given to a benchmark whose workloads set their own net
    was silently ignored."""
    path = _suite(
        tmp_path,
        data_cache,
        [{"name": "mlp", "model": {"net": {"class_path": "mlp"}}, "epochs": 1, "target": 2.2}],
    )
    line = _refused(["benchmark", f"--config={path}", "--optimizer=adam",
                     "--model.net.hidden_sizes=[7]"], capsys)  # fmt: skip
    assert "--model.net: the workloads mlp set their own net" in line


def test_markdown_outputs_carry_no_html(tmp_path):
    """Issue case 7: results.md carried raw <script> and onerror HTML taken from a config's
    strings; the Markdown files hold them as entities."""
    from lightning_opt.reports.text import inert

    text = inert("| net | mlp(act=<img src=x onerror=alert(1)>) |\n<script>alert(1)</script>")
    assert "<" not in text and ">" not in text
    assert "&lt;script&gt;" in text


@pytest.mark.slow
def test_a_deleted_checkpoint_of_a_reused_run_is_said(tmp_path, data_cache, capsys):
    """Issue case 5: a re-run reuses recorded final runs from the storage; a checkpoint deleted
    since went unnoticed while the report linked to it."""
    path = _experiment(tmp_path, data_cache)
    cli_main(["compare", f"--config={path}"])
    checkpoints = _checkpoints(tmp_path / "out" / "a" / "results.json")
    checkpoints[0].unlink()
    capsys.readouterr()
    cli_main(["compare", f"--config={path}"])
    out = capsys.readouterr().out
    assert "the checkpoints of seeds [0] are gone since they were recorded" in out


def test_a_deleted_result_of_a_reused_run_is_written_again(tmp_path, data_cache, capsys):
    """Issue case 5: a final run's result.json deleted since it was recorded went unnoticed; the
    storage holds the same record, so it is written again (and said)."""
    path = _experiment(tmp_path, data_cache)
    cli_main(["compare", f"--config={path}"])
    checkpoint = _checkpoints(tmp_path / "out" / "a" / "results.json")[0]
    result = checkpoint.parent.parent / "result.json"
    text = result.read_text()
    result.unlink()
    capsys.readouterr()
    cli_main(["compare", f"--config={path}"])
    out = capsys.readouterr().out
    assert "was gone; written again from the study storage" in out
    assert result.read_text() == text


def test_a_partial_study_is_seen_before_its_best_trial_is_taken():
    """Issue case 10a: a process interrupted in shared tuning left its trials failed; another
    took the best of the rest and went on to final runs. ``unfinished_trials`` names them (a
    re-run or a retry that finished stands for its trial), and compare stops on them."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from lightning_opt.tuning.trials import unfinished_trials

    study = optuna.create_study()
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def add(state, value=None, **attrs):
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.01},
                                     distributions=space, user_attrs=attrs))  # fmt: skip

    add(TrialState.COMPLETE, 1.0)
    add(TrialState.FAIL, fail_reason="interrupted")
    add(TrialState.PRUNED)
    add(TrialState.FAIL, fail_reason="interrupted")
    assert unfinished_trials(study, 4) == [1, 3]
    add(TrialState.COMPLETE, 0.9, retry_of=1)  # trial 1, re-run
    assert unfinished_trials(study, 4) == [3]
    assert unfinished_trials(study, 3) == []


@pytest.mark.parametrize("space", ['"lr"', '["lr"]', "{name: lr}"])
def test_a_search_space_of_the_wrong_shape_is_one_line_that_says_the_shape(
    space, tmp_path, data_cache, capsys
):
    """Issue case 9: ``search_space: "lr"`` read "dictionary update sequence element #0 has
    length 1", on the command line a dump of every Union subtype jsonargparse tried."""
    line = _refused(["tune", "--optimizer=adam", f"--search_space={space}",
                     f"--output_dir={tmp_path / 'out'}", f"--data.cache_dir={data_cache}"],
                    capsys)  # fmt: skip
    assert line.startswith("lightning_opt: error: search_space: expected list[dict[str, Any]]")
    arms = [{"name": "adam", "optimizer": "adam", "search_space": yaml.safe_load(space)},
            {"name": "sgd", "optimizer": "sgd"}]  # fmt: skip
    line = _refused(["compare", f"--config={_experiment(tmp_path, data_cache, arms=arms)}"],
                    capsys)  # fmt: skip
    assert "search_space is a list of entries {name, low, high[, log]} or {name, choices}" in line


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LAUGHS, "its aliases (*name) expand to more than 1,000,000 values"),
        ("x: " + "a" * (2**20 + 10) + "\n", "a config is YAML text of at most 1 MiB"),
        # issue 31, case 9: "Unexpected config:" said nothing
        ("# nothing but a comment\n", "holds no settings (it is empty, or comments only)"),
        ("- trainer\n", "holds a list, not settings"),
    ],
    ids=["billion-laughs", "too-big", "empty", "a-list"],
)
def test_a_config_that_would_hang_the_parser_is_one_line(text, message, tmp_path, capsys):
    """A YAML whose aliases expand exponentially, or a data file given as a config, is refused
    before the parser reads it (it used to run out of memory after a minute, or print nothing
    for minutes)."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for command in (["fit"], ["tune"], ["compare"], ["benchmark"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*command, f"--config={path}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # the same aliases a few times over are an ordinary config
    path.write_text("a: &a [1, 2]\nb: [*a, *a]\n")
    from lightning_opt.config.parsing import _expanded_size

    # the root, key a and [1, 2] (3 nodes), key b and [*a, *a] (1 + 2 x 3 nodes)
    assert _expanded_size(path.read_text()) == 1 + (1 + 3) + (1 + 1 + 2 * 3)


def test_overwrite_works_as_a_flag(tmp_path):
    """``--overwrite`` alone is ``--overwrite true`` (it used to need the value)."""
    from lightning_opt.tuning.tune import parse

    out = f"--output_dir={tmp_path}"
    assert parse(["--overwrite", out]).config.overwrite is True
    assert parse(["--overwrite", "false", out]).config.overwrite is False
    assert parse([out]).config.overwrite is False


def test_a_refusal_shows_a_few_short_differences():
    from lightning_opt.config.fingerprints import mismatch_message

    diffs = [f"arms: {'x' * 5000} -> {'y' * 5000}", "seeds: 2 -> 3", "a: 1 -> 2", "b: 1 -> 2"]
    line = mismatch_message("benchmark 'b'", diffs, "--benchmark")
    assert len(line) < 700 and "(and 1 more)" in line and "seeds: 2 -> 3" in line


@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (["--optimzer", "adam"], "unrecognized arguments: --optimzer adam; did you mean --optimizer?"),
        (["--optimizer=torch.optim.Adamw"], "did you mean torch.optim.AdamW?"),
        (["--optimizer=adam", "--optimizer.lrr=0.1"], "did you mean --optimizer.lr?"),
        (["--optimizer=pytorch_optimizer.SAM", "--optimizer.lr=0.1"],
         "SAM passes its **kwargs on: give it as --optimizer.dict_kwargs.lr"),
    ],
    ids=["flag", "class-name", "argument", "kwargs"],
)  # fmt: skip
def test_a_misspelt_name_gets_a_did_you_mean(flags, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hint in err[0], err


def test_studies_name_their_value_and_a_seed_queue_says_it_is_no_search(tmp_path):
    """optuna-dashboard shows the metric's name, not "Objective 0"; a study without a search
    space (an arm's finals) says in its user attributes that its best value is no tuning."""
    import optuna

    from lightning_opt.core.search_space import SearchParam
    from lightning_opt.tuning.claims import SEED_QUEUE, open_study

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    study = open_study(storage, "s", [], "final")
    assert study.metric_names == ["val/loss (final)"]
    assert open_study(storage, "s", [], "final").metric_names == ["val/loss (final)"]
    assert SEED_QUEUE in study.user_attrs.values()
    search = open_study(storage, "t", [SearchParam("lr", 1e-4, 1e-1, log=True)], "tuning")
    assert SEED_QUEUE not in search.user_attrs.values()


# Third round: the rest of the cases 7-9, each as a user meets it.


def _failed(args: list[str], capsys) -> str:
    """The one line of a command that fails for a reason of the machine (exit 1)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="a Linux /proc")
@pytest.mark.parametrize("command", ["fit", "tune"])
def test_a_folder_under_proc_is_one_line(command, tiny_fit_args, capsys):
    """Issue case 8: ``--data.cache_dir`` or ``tune --output_dir`` under /proc was a
    traceback (mkdir: No such file or directory)."""
    folder = "--data.cache_dir" if command == "fit" else "--output_dir"
    extra = ["--n_trials=1"] if command == "tune" else []
    line = _failed([command, *tiny_fit_args, *extra, f"{folder}=/proc/lightning_opt_x"], capsys)
    assert "(/proc/lightning_opt_x); choose another directory" in line


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, data_cache) -> Path:
    """A checkpoint of a one-epoch fit of the default MLP."""
    root = tmp_path_factory.mktemp("trained")
    cli_main(["fit", f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
              "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}",
              "--trainer.enable_progress_bar=false"])  # fmt: skip
    (path,) = root.glob("lightning_logs/*/version_0/checkpoints/*.ckpt")
    return path


def _bad_checkpoint(kind: str, good: Path, path: Path) -> None:
    import torch

    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:3000])
    elif kind == "pickle":
        torch.save({"state_dict": {}, "call": print}, path)
    else:  # a weight of another shape
        checkpoint = torch.load(good, weights_only=True)
        key = next(iter(checkpoint["state_dict"]))
        checkpoint["state_dict"][key] = torch.zeros(3, 3)
        torch.save(checkpoint, path)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "is not a readable checkpoint: the file is empty (0 bytes)"),
        ("text", "is not a readable checkpoint: not a file torch.save writes"),
        ("truncated", "is not a readable checkpoint: RuntimeError: PytorchStreamReader"),
        ("pickle", "a Python object beyond weights (GLOBAL print); only weights-only"),
        ("shapes", "its weights do not fit the model: net.0.weight is [3, 3] in the checkpoint "
                   "and [100, 40] here"),
    ],
)  # fmt: skip
def test_a_checkpoint_the_model_cannot_load_says_why(
    kind, message, trained_checkpoint, tiny_fit_args, tmp_path, capsys
):
    """Issue cases 8 and 9: a checkpoint of the wrong shapes was a traceback; an empty file gave
    no reason; the refusal of a pickled object was cut mid-word. One whole line each."""
    path = tmp_path / f"{kind}.ckpt"
    _bad_checkpoint(kind, trained_checkpoint, path)
    line = _refused(["test", *tiny_fit_args, f"--ckpt_path={path}"], capsys)
    assert message in line, line
    assert len(line) < 400, line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("garbage\n", "line 1: Expecting value"),
        ('{"op_code": 99}\n', "line 1 is no journal operation"),
        ('{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\n{"op', "line 2 "
         "is cut short"),
    ],
)  # fmt: skip
def test_a_garbage_journal_file_is_named(content, problem, tmp_path, tiny_fit_args, capsys):
    """Issue case 9: a garbage journal storage file was reported without its name (or, for an
    unknown operation, an AssertionError)."""
    journal = tmp_path / "journal.log"
    journal.write_text(content)
    line = _refused(["tune", *tiny_fit_args, "--n_trials=1", f"--storage={journal}",
                     f"--output_dir={tmp_path / 'out'}"], capsys)  # fmt: skip
    assert f"the journal storage {journal} is not an Optuna journal file ({problem}" in line


def test_a_refused_benchmark_leaves_no_folder(tmp_path, data_cache, capsys):
    """Issue case 9: a benchmark refused while planning its workloads left an empty
    ``<output_dir>/<benchmark>/`` behind; a folder that existed before stays."""
    path = _suite(tmp_path, data_cache, [{"name": "mlp", "epochs": 1, "target": 2.0}])
    args = ["benchmark", f"--config={path}", "--optimizer=adam", "--seed_everything=4294967295"]
    assert "above the largest seed" in _refused(args, capsys)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    _refused(args, capsys)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_size_limit_is_one_line(tmp_path, data_cache):
    """Issue case 9: a file-size limit (``ulimit -f``) was "disk I/O error" with exit 2; it is
    the machine's failure, exit 1, in one line naming the storage."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    done = subprocess.run(
        [sys.executable, "-m", "lightning_opt", "tune", f"--data.num_samples={TINY_SAMPLES}",
         f"--data.cache_dir={data_cache}", "--trainer.max_epochs=1", "--n_trials=1",
         f"--output_dir={tmp_path / 'out'}"],
        preexec_fn=limit, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    err = [line for line in done.stderr.splitlines() if "lightning_opt: error" in line]
    assert done.returncode == 1 and len(err) == 1, done.stderr[-2000:]
    assert "optuna.db" in err[0] and "free space" in err[0]
    assert "Traceback" not in done.stderr


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """Issue case 8: Ctrl-C during the start-up imports (torch, Lightning: seconds) was a
    KeyboardInterrupt traceback. The signal is sent once torch is imported, while Lightning
    still loads."""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "lightning_opt", "fit", "--help"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.rstrip().split("|")[-1].strip() == "torch":
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, rest[-2000:]
    assert rest.strip().splitlines()[-1] == "lightning_opt: interrupted while starting: nothing ran"
    assert "Traceback" not in rest


def test_when_a_named_class_is_imported(trained_checkpoint, tiny_fit_args, tmp_path, monkeypatch,
                                        capsys):  # fmt: skip
    """Issue case 7 (README, "What runs when a class is named"): a class path's module is
    imported when the command reads it, as Python's ``import`` does, once, and the missing
    class is then one line; a checkpoint's class paths the same; a module that does not exist
    imports nothing. The checkpoint itself never unpickles code (the ``pickle`` case above)."""
    import torch

    marker = tmp_path / "imported"
    (tmp_path / "marker_module_lo.py").write_text(
        f"import pathlib\np = pathlib.Path({str(marker)!r})\n"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "marker_module_lo", raising=False)
    line = _refused(["fit", *tiny_fit_args, "--optimizer=marker_module_lo.Foo"], capsys)
    assert "marker_module_lo.Foo: module 'marker_module_lo' has no attribute 'Foo'" in line
    assert marker.read_text() == "x"  # imported once, before the refusal
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    for module in ("marker_module_lo", "no_such_module_lo"):
        checkpoint["hyper_parameters"]["optimizer"] = {"class_path": f"{module}.Foo"}
        path = tmp_path / f"{module}.ckpt"
        torch.save(checkpoint, path)
        line = _refused(["test", *tiny_fit_args, f"--ckpt_path={path}"], capsys)
        assert f"{module}.Foo" in line
    assert marker.read_text() == "x"  # already imported: Python does not run it again


# Case 10: several processes on one storage.


def test_a_retry_runs_before_surplus_trials_and_the_surplus_is_dropped(tmp_path):
    """Issue case 10b: launchers that topped a study up at once (a server database) left
    surplus WAITING trials; a killed trial's re-run then waited behind them and a fresh surplus
    trial ran in its place. The re-run takes its original's slot; the surplus is failed
    (``surplus``) once nothing is left to claim, and no later top-up plans a fresh trial."""
    import optuna

    from lightning_opt.tuning import claims
    from lightning_opt.tuning.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    for _ in range(2 * 4):  # two launchers of --n_trials 4 topped up at once: 4 surplus
        study.enqueue_trial({})

    def claim() -> int | None:
        claimed = claims.claim_waiting_trial(study, storage, 4)
        return None if claimed is None else claimed[0].number

    first = [claim() for _ in range(4)]
    assert first == [0, 1, 2, 3] and claim() is None  # the surplus 4-7 is never claimed
    for number in (0, 2, 3):
        study.tell(number, 1.0 + number)
    study.trials[1]  # trial 1 is interrupted in another process
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, 1)
    storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    assert claims.top_up(study, 4, storage) == 0  # its slot waits for its re-run
    assert claims.retry_interrupted(study, storage, errors=False) == 1
    assert claims.retry_interrupted(study, storage, errors=False) == 0  # once
    retry = claim()
    assert retry == 8 and claims.original_number(study.trials[retry]) == 1
    study.tell(retry, 5.0)
    assert claim() is None
    assert claims.drop_surplus(study, storage, 4) == 4
    states = [t.state.name for t in study.trials]
    assert states.count("WAITING") == 0 and states.count("COMPLETE") == 4
    assert claims.top_up(study, 4, storage) == 0
    assert claims.retry_interrupted(study, storage) == 0  # a launch re-runs no surplus trial


def test_a_failed_trial_of_another_process_is_not_rerun_by_a_claimer(tmp_path):
    """A trial that failed with an error (the process that ran it said so) waits for the next
    launch (``retry_interrupted`` with errors); a process still claiming re-runs only trials
    stopped from outside, so an error is not retried in a loop."""
    import optuna

    from lightning_opt.tuning import claims
    from lightning_opt.tuning.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    claims.top_up(study, 2, storage)
    _, trial_id = claims.claim_waiting_trial(study, storage, 2)
    storage.set_trial_user_attr(trial_id, "fail_reason", "ValueError: boom")
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    assert claims.retry_interrupted(study, storage, errors=False) == 0
    assert claims.top_up(study, 2, storage) == 0  # its slot is kept for the re-run
    assert claims.retry_interrupted(study, storage) == 1


#: A callback that holds a process's trial at its first epoch's end until a file exists.
_HOLD = """
import os, pathlib, time
from lightning.pytorch.callbacks import Callback

class Hold(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        release = os.environ.get("HOLD_UNTIL")
        while release and not pathlib.Path(release).exists():
            time.sleep(0.05)
"""


def _command(args: list[str]) -> Any:
    """``python -m lightning_opt ARGS`` in a process of its own, run to its end."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "lightning_opt", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _tune_process(tmp_path: Path, data_cache: Path, storage: str, hold: Path | None = None) -> Any:
    import os
    import subprocess
    import sys

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "hold_lo.py").write_text(_HOLD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HOLD_UNTIL": str(hold or "")}
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_opt", "tune", f"--data.num_samples={TINY_SAMPLES}",
         f"--data.cache_dir={data_cache}", "--data.batch_size=50", "--trainer.max_epochs=3",
         "--n_trials=4", "--sampler=sobol", "--study_size=4", "--trial_seeds=distinct",
         "--pruner=none", f"--storage={storage}", f"--output_dir={tmp_path / 'out'}",
         "--heartbeat_interval=60", "--trainer.callbacks+=hold_lo.Hold"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _values(storage: str) -> dict[int, float]:
    import optuna

    from lightning_opt.tuning.claims import original_number
    from lightning_opt.tuning.storage import open_storage

    study = optuna.load_study(study_name="adam", storage=open_storage(storage))
    assert not [t for t in study.trials if t.state.name in ("WAITING", "RUNNING")]
    return {original_number(t): t.value for t in study.trials if t.state.name == "COMPLETE"}


def _states(url: str) -> dict[str, int]:
    """How many trials of the database at ``url`` are in each state ({} before its tables)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sqlalchemy.text("SELECT state, COUNT(*) FROM trials GROUP BY state")
            return {str(state).split(".")[-1]: n for state, n in connection.execute(query)}
    except sqlalchemy.exc.SQLAlchemyError:  # not created yet
        return {}
    finally:
        engine.dispose()


def interrupted_shared_tuning(tmp_path: Path, data_cache: Path, url: str) -> None:
    """Two processes tune one study at ``url``; the first is stopped with Ctrl-C in the middle
    of its trial while the second trains the rest. The second re-runs the interrupted trial
    with its own values and seed, and the study ends complete, with exactly the values of one
    process alone (on SQLite). The first holds its trial until released, so the split does not
    depend on the machine's speed."""
    import signal
    import time

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 240
        while not condition(_states(url)):
            assert time.monotonic() < deadline, _states(url)
            time.sleep(0.05)

    release = tmp_path / "release"
    first = _tune_process(tmp_path / "a", data_cache, url, hold=release)
    wait_for(lambda states: states.get("RUNNING"))  # the first holds trial 0
    second = _tune_process(tmp_path / "b", data_cache, url)
    wait_for(lambda states: states.get("COMPLETE") == 3 and states.get("RUNNING") == 1)
    first.send_signal(signal.SIGINT)  # Ctrl-C in the middle of its trial
    time.sleep(0.5)
    release.touch()
    out_first, _ = first.communicate(timeout=120)
    out_second, _ = second.communicate(timeout=300)
    assert first.returncode == 130, out_first[-2000:]
    assert second.returncode == 0, out_second[-2000:]
    shared = _values(url)
    assert shared == reference_values(tmp_path, data_cache) and sorted(shared) == [0, 1, 2, 3]


def reference_values(tmp_path: Path, data_cache: Path) -> dict[int, float]:
    """The values of ``_tune_process``'s study run by one process alone, on SQLite."""
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    alone = _tune_process(tmp_path / "alone", data_cache, reference)
    assert alone.wait(timeout=300) == 0
    return _values(reference)


@pytest.mark.slow
def test_ctrl_c_of_one_process_of_a_shared_study_is_rerun_by_the_other(tmp_path, data_cache):
    """Issue case 10a, end to end with two processes on one SQLite storage (PostgreSQL:
    tests/test_tune_postgres.py)."""
    interrupted_shared_tuning(tmp_path, data_cache, f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.slow
def test_a_journal_file_shared_by_two_processes_waits_for_the_others_trial(tmp_path, data_cache):
    """Issue case 10d: two commands sharing a journal-file storage (no heartbeat): the one
    that ran out of trials to claim went on while the other still held a shared trial, and
    ended with the study partial. A trial held by a live process of this machine is waited for
    on any storage."""
    import time

    journal = tmp_path / "journal.log"
    release = tmp_path / "release"

    def states() -> dict[str, int]:
        import collections

        import optuna
        from optuna.storages.journal import JournalFileBackend

        if not journal.exists():
            return {}
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        trials = storage.get_all_trials(0, deepcopy=False) if storage.get_all_studies() else []
        return collections.Counter(t.state.name for t in trials)

    first = _tune_process(tmp_path / "a", data_cache, str(journal), hold=release)
    deadline = time.monotonic() + 240
    while not states().get("RUNNING"):  # the first holds trial 0
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = _tune_process(tmp_path / "b", data_cache, str(journal))
    while states().get("COMPLETE", 0) < 3:
        assert time.monotonic() < deadline and second.poll() is None, second.poll()
        time.sleep(0.1)
    time.sleep(2.0)
    assert second.poll() is None, "it waits for the first's trial"
    release.touch()
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    assert sorted(_values(str(journal))) == [0, 1, 2, 3]


def test_a_database_that_lost_its_trials_is_noticed(tmp_path, data_cache, capsys):
    """Issue case 4: an ``optuna.db`` without its write-ahead log (a copy of a killed run's, a
    database deleted by hand) held no study, and the re-run retrained everything silently. A
    study that is new while its folder holds an earlier tuning is one line; ``--overwrite``
    starts afresh."""
    args = ["tune", f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
            "--trainer.max_epochs=1", "--n_trials=2", "--pruner=none",
            f"--output_dir={tmp_path / 'out'}"]  # fmt: skip
    cli_main(args)
    for path in (tmp_path / "out").glob("optuna.db*"):
        path.unlink()
    line = _refused(args, capsys)
    assert "study 'adam' is not in sqlite:///" in line
    assert re.search(
        r"holds an earlier tuning of it \(best.yaml, trial_0-lr=[0-9.e-]+, trial_1-", line
    )
    assert "restore it, or pass --overwrite" in line
    cli_main([*args, "--overwrite"])
    assert (tmp_path / "out" / "adam" / "best.yaml").exists()


@pytest.mark.slow
def test_a_finished_benchmark_is_read_again_from_a_read_only_database(tmp_path, data_cache,
                                                                     capsys):  # fmt: skip
    """Issue case 9: a read-only database was refused even for re-reading a finished
    benchmark. Re-reading it writes nothing to the database; a new candidate, which must,
    is one line. (Read-only even for root: the file is made immutable, ``chattr +i``.)"""
    import os
    import subprocess

    suite = _suite(tmp_path, data_cache, [{"name": "mlp", "epochs": 1, "target": 2.2}],
                   n_trials=2, study_size=2, population=2, seeds=2)  # fmt: skip
    cli_main(["benchmark", f"--config={suite}", "--optimizer=adamw"])
    board = (tmp_path / "out" / "tiny" / "leaderboard.md").read_text()
    database = tmp_path / "out" / "optuna.db"
    root = os.geteuid() == 0
    database.chmod(0o444)
    if root and subprocess.run(["chattr", "+i", str(database)], check=False).returncode:
        pytest.skip("chattr +i is not supported here")
    try:  # another process: this one holds the database open from the first command
        again = _command(["benchmark", f"--config={suite}", "--optimizer=adamw"])
        assert again.returncode == 0, again.stderr[-2000:]
        assert (tmp_path / "out" / "tiny" / "leaderboard.md").read_text() == board
        new = _command(["benchmark", f"--config={suite}", "--optimizer=torch.optim.Adagrad"])
        err = [line for line in new.stderr.splitlines() if line.startswith("lightning_opt:")]
        assert new.returncode == 2 and len(err) == 1 and "readonly database" in err[0], new.stderr
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(database)], check=True)
        database.chmod(0o644)


def test_a_disk_full_at_one_megabyte_is_one_line(tmp_path, data_cache):
    """Issue case 8: a disk full at 1 MB (a real one: a tmpfs of 1 MiB, mounted as root; the
    simulated full disks are in test_reliability) ended in a traceback
    (``StorageInternalError``); it is one line, exit 1, and what was written stays."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (test_reliability simulates one)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]
    if subprocess.run(mount, check=False, capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        done = _command(["tune", f"--data.num_samples={TINY_SAMPLES}",
                         f"--data.cache_dir={data_cache}", "--trainer.max_epochs=2",
                         "--n_trials=3", "--pruner=none", f"--output_dir={disk / 'out'}"])  # fmt: skip
        err = [line for line in done.stderr.splitlines() if line.startswith("lightning_opt:")]
        assert done.returncode == 1 and len(err) == 1, done.stderr[-3000:]
        assert "free space" in err[0] and "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=True)
