"""An optimizer class's own required arguments (issue "optimizer long tail", item 1): no other
class's default reaches them. ``fit --optimizer CLASS`` whose lr has no default (optimi's
classes) or torch's ``required`` marker (timm's SGDP) used to train at the default optimizer's
tuned lr 0.00624, carried over by jsonargparse when the class changed."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import TINY_SAMPLES
from torch.optim.optimizer import required

from lightning_opt.cli import cli_main


class LrRequired(torch.optim.SGD):
    """SGD whose learning rate has no default (as optimi.SGD's)."""

    def __init__(self, params, lr: float, momentum: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum)


class LrMarkedRequired(torch.optim.SGD):
    """SGD whose learning rate defaults to torch's ``required`` marker (as timm's SGDP)."""

    def __init__(self, params, lr: float = required, momentum: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum)


CLASSES = [f"{__name__}.LrRequired", f"{__name__}.LrMarkedRequired"]


def _hparams(tmp_path):
    (found,) = (tmp_path / "logs").rglob("hparams.yaml")
    return yaml.safe_load(found.read_text())


@pytest.mark.parametrize("path", CLASSES)
def test_a_required_lr_left_unset_is_refused(path, tiny_fit_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--optimizer={path}", *tiny_fit_args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # jsonargparse names an argument without a default itself; torch's marker is refused here
    assert len(err) == 1, err
    assert "the following arguments are required: lr" in err[0] or (
        "has no default for lr: give --optimizer.lr VALUE" in err[0]
    ), err


@pytest.mark.parametrize("path", CLASSES)
def test_a_config_file_that_changes_the_class_carries_nothing_over(
    path, tmp_path, tiny_fit_args, capsys
):
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"optimizer": {"class_path": path}}))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--config={config}", *tiny_fit_args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "required: lr" in err or "has no default for lr" in err, err


@pytest.mark.parametrize("path", CLASSES)
def test_a_given_lr_is_the_one_that_trains(path, tmp_path, tiny_fit_args):
    cli_main(["fit", f"--optimizer={path}", "--optimizer.lr=0.03", *tiny_fit_args,
              "--trainer.max_epochs=1"])  # fmt: skip
    assert _hparams(tmp_path)["optimizer/lr"] == 0.03


def test_tune_searches_a_required_lr(tmp_path, data_cache, capsys):
    """tune checks the settings a trial has (its values set), so a required lr that the search
    space sets is not refused."""
    cli_main(["tune", f"--optimizer={CLASSES[0]}", "--n_trials=2", "--trainer.max_epochs=1",
              f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
              f"--output_dir={tmp_path / 'out'}", "--pruner=none"])  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial")]
    assert len(lines) == 2 and all("lr=" in line for line in lines)


def test_the_default_optimizer_keeps_its_tuned_lr_and_another_class_its_own(
    tmp_path, tiny_fit_args
):
    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1"])
    assert _hparams(tmp_path)["optimizer/lr"] == pytest.approx(0.00624)
    for found in (tmp_path / "logs").rglob("hparams.yaml"):
        found.unlink()
    cli_main(["fit", "--optimizer=torch.optim.SGD", *tiny_fit_args, "--trainer.max_epochs=1"])
    assert [p.read_text() for p in (tmp_path / "logs").rglob("hparams.yaml")]
    lrs = [
        yaml.safe_load(p.read_text())["optimizer/lr"]
        for p in (tmp_path / "logs").rglob("hparams.yaml")
    ]
    assert lrs == [0.001]  # torch.optim.SGD's own default


def test_tune_refuses_a_required_lr_its_search_space_leaves_out(tmp_path, data_cache, capsys):
    """The placeholder a tuning command parses a required lr at would train as the value where
    the search space does not search it: refused."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["tune", f"--optimizer={CLASSES[0]}", "--n_trials=2",
                  "--search_space=[{name: momentum, low: 0.1, high: 0.9}]",
                  f"--data.cache_dir={data_cache}", f"--output_dir={tmp_path / 'out'}"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no default for lr and the search space does not search it" in err[0]
    assert not (tmp_path / "out").exists()


class DictDefaultNoneLr(torch.optim.SGD):
    """A dict default (grokfast's GrokFastAdamW) and an lr that defaults to None (came-pytorch's
    CAME): tune's checks compared unhashable defaults and built the class at lr None."""

    def __init__(
        self,
        params,
        lr: float | None = None,
        grokfast_kwargs: dict | None = None,
        momentum: float = 0.0,
        extra: dict = {"alpha": 0.98},  # noqa: B006 (the dict default is the case)
    ) -> None:
        super().__init__(params, lr=lr if lr is not None else 1e-3, momentum=momentum)


def test_tune_takes_dict_defaults_and_an_lr_that_defaults_to_none(tmp_path, data_cache, capsys):
    cli_main(["tune", f"--optimizer={__name__}.DictDefaultNoneLr", "--n_trials=2",
              "--trainer.max_epochs=1",
              f"--data.num_samples={TINY_SAMPLES}", f"--data.cache_dir={data_cache}",
              f"--output_dir={tmp_path / 'out'}", "--pruner=none"])  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial")]
    assert len(lines) == 2


@pytest.mark.slow
def test_a_compare_arm_of_a_class_by_path_searches_its_unset_lr(tmp_path, data_cache, capsys):
    """An arm `optimizer: examples.lion.Lion` leaves lr out; it was refused as if set to None
    ("--optimizer.lr None is set, and the default search space searches lr")."""
    config = {
        "experiment": "a", "output_dir": str(tmp_path / "out"), "seeds": 2, "n_trials": 1,
        "tune_max_epochs": 1, "pruner": "none", "trainer": {"max_epochs": 1},
        "data": {"num_samples": TINY_SAMPLES, "cache_dir": str(data_cache), "batch_size": 100},
        "arms": [{"name": "adam", "optimizer": "adam"},
                 {"name": "lion", "optimizer": "examples.lion.Lion"}],
    }  # fmt: skip
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_main(["compare", f"--config={path}"])
    assert "== arm lion: tuning" in capsys.readouterr().out
    assert (tmp_path / "out" / "a" / "results.json").is_file()
