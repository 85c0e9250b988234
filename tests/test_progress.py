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
