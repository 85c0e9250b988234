"""Progress on long work: a population's fit says how far it is (issue 32, item 1, in part)."""

from __future__ import annotations


def test_a_long_population_fit_says_how_far_it_is(capsys):
    """A line now and then during a population's fit (none for a fit shorter than ``every``):
    the epoch, the time so far and an estimate of the rest."""
    from types import SimpleNamespace

    from lightning_opt.runs.runner import Progress

    trainer = SimpleNamespace(current_epoch=0, max_epochs=4)
    quiet = Progress("population of 40")  # every 30 s: nothing in a fit of a moment
    quiet.on_train_start(trainer, None)
    quiet.on_train_epoch_end(trainer, None)
    assert capsys.readouterr().out == ""
    chatty = Progress("population of 40", every=0.0)
    chatty.on_train_start(trainer, None)
    for epoch in range(4):
        trainer.current_epoch = epoch
        chatty.on_train_epoch_end(trainer, None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].startswith("  population of 40: epoch 2 of 4, ")
    assert lines[-1].endswith("~0 s left")
    population = SimpleNamespace(member_ids=[0, 3, 7])  # the members still training
    chatty.on_train_epoch_end(trainer, population)
    assert ": epoch 4 of 4, 3 members training, " in capsys.readouterr().out


def _experiment_args(tmp_path, data_cache) -> list[str]:
    from conftest import TINY_SAMPLES

    return ["compare", "--experiment=a", f"--output_dir={tmp_path / 'out'}", "--seeds=2",
            "--n_trials=2", "--tune_max_epochs=1", "--pruner=none", "--trainer.max_epochs=1",
            f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
            "--arms=[{name: adam, optimizer: adam}, {name: sgd, optimizer: sgd}]"]  # fmt: skip


def test_a_command_counts_its_units_in_plain_lines(tmp_path, data_cache, monkeypatch, capsys):
    """Issue 32, item 1: a command says how many of its units (trials and final runs) are done
    of the planned ones, with an estimate of the time left: in a log (no terminal) as plain
    lines, at most every LIGHTNING_OPT_PROGRESS_EVERY seconds (here: each unit)."""
    from lightning_opt.cli.main import cli_main

    monkeypatch.setenv("LIGHTNING_OPT_PROGRESS_EVERY", "0")
    cli_main(_experiment_args(tmp_path, data_cache))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress")]
    counts = [int(line.split()[1]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 8, lines  # 2 x 2 trials + 2 x 2 finals
    assert lines[-1].startswith("progress: 8 of 8 units (trials and final runs), 100%, ")
    assert "s left" in lines[0]
    cli_main(_experiment_args(tmp_path, data_cache))  # all reused: counted as done at once
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress")]
    assert lines[-1].startswith("progress: 8 of 8 units")


def test_quiet_prints_results_only(tmp_path, data_cache, capsys):
    from lightning_opt.cli.main import cli_main
    from lightning_opt.core import progress

    try:
        cli_main([*_experiment_args(tmp_path, data_cache), "--quiet"])
    finally:
        progress.QUIET = False
    out = capsys.readouterr().out
    assert out.startswith("| arm | tuned |"), out[:500]  # the table first: no trial lines
    assert "trial " not in out and "progress" not in out and "report: " in out


def test_on_a_terminal_the_status_line_stays_below_the_lines(monkeypatch, capsys):
    """On a terminal the count is one live line, redrawn in place (stderr) below the lines
    the command prints (stdout), which clear it first."""
    from lightning_opt.core import progress

    monkeypatch.setattr(progress, "_terminal_columns", lambda: 100)
    with progress.command(2, "trials"):
        progress.say("trial 0 ...")
        progress.seen([("s", 0)])
        progress.seen([("s", 0)])  # counted once
        progress.seen([("s", 1)])
    captured = capsys.readouterr()
    assert captured.out == "trial 0 ...\n"
    drawn = captured.err.split("\r\x1b[K")
    assert "[............................] progress: 0 of 2 trials, 0%" not in drawn
    assert any(d.startswith("[############............] progress: 1 of 2 trials, 50%")
               for d in drawn)  # fmt: skip
    assert any(d.startswith("[########################] progress: 2 of 2 trials, 100%")
               for d in drawn)  # fmt: skip
    assert captured.err.endswith("\r\x1b[K")  # cleared when the command ends
