"""Every class of docs/optimizers.md trained for real (the packages are the ``test`` extra):
the loss falls, the checkpoint replays to the logged loss, a population of it is exact where the
table says so (or falls back in one line, or differs as it says), and the command line
configures it where the table says so."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_opt.cli import compatibility
from lightning_opt.cli.compatibility import CATALOG, check, installed

WORKING = [e for e in CATALOG if e.works]
REFUSED = [e for e in CATALOG if not e.works]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.mark.parametrize("entry", WORKING, ids=[e.class_path for e in WORKING])
def test_a_listed_optimizer_trains_replays_and_keeps_its_population_promise(entry, data_cache):
    if not installed(entry):
        pytest.skip(f"{entry.package} is not installed (pip install -e '.[test]')")
    result = check(entry, data_cache)
    assert result.error is None, result.error
    assert result.falls, (result.loss_before, result.loss_after)
    assert result.replays, result.replay_gap
    assert result.population.startswith(entry.population), result.population
    if entry.population == "differs":
        assert float(result.population.split()[-1]) > compatibility.EXACT
    if entry.cli:
        assert result.cli == "yes", result.cli
    else:
        assert result.cli.startswith("exit 2: lightning_opt: error: "), result.cli
        assert "\n" not in result.cli


@pytest.mark.parametrize("entry", REFUSED, ids=[e.class_path for e in REFUSED])
def test_a_class_that_cannot_work_is_refused_in_one_line_before_training(entry, data_cache):
    if not installed(entry):
        pytest.skip(f"{entry.package} is not installed")
    result = check(entry, data_cache, population=False)
    assert result.error is not None and "\n" not in result.error
    assert result.loss_after is None  # nothing trained


def test_the_pre_flight_step_finds_each_step_contract():
    """What the table's "step needs" column shows, for one class of each kind."""
    from torch import nn

    from lightning_opt.optim.registry import check_optimizer, resolve_optimizer

    pytest.importorskip("pytorch_optimizer")
    pytest.importorskip("schedulefree")
    net = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    before = net.state_dict()
    state = torch.get_rng_state()
    cases = {
        "torch.optim.Adam": {},
        "torch.optim.LBFGS": {"max_iter": 4},
        "pytorch_optimizer.SAM": {"base_optimizer": "torch.optim.SGD", "lr": 0.05},
        "pytorch_optimizer.AdaHessian": {},
        "schedulefree.AdamWScheduleFree": {},
        "pytorch_optimizer.Kron": {},
    }
    found = {}
    for path, args in cases.items():
        cls, resolved = resolve_optimizer({"class_path": path, "init_args": args})
        found[path] = check_optimizer(cls, net, resolved["init_args"], 40, 10)
    assert found["torch.optim.Adam"] == compatibility_contract()
    assert found["torch.optim.LBFGS"].closure_calls == 4
    assert found["pytorch_optimizer.SAM"].evaluate_first
    assert found["pytorch_optimizer.SAM"].closure_calls == 2
    assert found["pytorch_optimizer.AdaHessian"].create_graph
    assert found["schedulefree.AdamWScheduleFree"].modes
    assert found["pytorch_optimizer.Kron"].random
    # the net and the global random state are as they were
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert torch.equal(state, torch.get_rng_state())


def compatibility_contract():
    from lightning_opt.optim.contract import StepContract

    return StepContract()


def test_a_schedule_free_optimizer_trains_on_after_a_validation_within_an_epoch(
    tiny_fit_args, tmp_path, capsys
):
    """``val_check_interval`` within an epoch (a benchmark workload's ``eval_every``): the
    optimizer went back to train mode only at the next epoch's start, so its next step raised
    "Optimizer was not in train mode"; alone and as a population, the same numbers."""
    pytest.importorskip("schedulefree")
    from lightning_opt.cli.main import cli_main

    args = ["--optimizer=schedulefree.AdamWScheduleFree", "--optimizer.lr=0.01",
            "--trainer.val_check_interval=2", "--trainer.logger=false", *tiny_fit_args[:4],
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    cli_main(["fit", *args, "--seeds=[0]"])
    alone = capsys.readouterr().out
    cli_main(["fit", *args, "--seeds=[0,1]"])
    together = capsys.readouterr().out
    loss = [line for line in alone.splitlines() if line.startswith("seed 0: val/loss")]
    assert loss and loss[0] in together, (alone, together)


def test_rows_checked_apart_replace_only_their_own_classes():
    """``--only timm`` (run where timm imports) rewrites timm's rows and leaves the rest."""
    table = "# t\n\n| class | fit |\n|---|---|\n| `a.X` | old |\n| `b.Y` | kept |\ntext `a.X`\n"
    rows = "| class | fit |\n|---|---|\n| `a.X` | new |\n"
    assert compatibility.replace_rows(table, rows) == table.replace("| old |", "| new |")
