"""The command line end to end: TensorBoard output, determinism, resume, test, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SAMPLES, read_scalars, version_dirs

from lightning_opt.cli.main import cli_main
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import MLP

ROOT = Path(__file__).parents[1]


def _run(args, tmp_path):
    cli_main(["fit", *args])
    return version_dirs(tmp_path / "logs")[-1]


def _final(scalars, tag):
    return scalars[tag][-1][1]


def test_fit_without_a_logger_names_no_tensorboard_run(tiny_fit_args, tmp_path, capsys):
    cli_main(
        ["fit", *tiny_fit_args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    )
    out = capsys.readouterr().out
    assert "TensorBoard logs" not in out
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    assert f"checkpoint: {checkpoint}" in out


def test_module_entry_point_writes_tensorboard_tags(tiny_fit_args, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_opt", "fit", "--optimizer", "gnw", *tiny_fit_args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = version_dirs(tmp_path / "logs")
    assert run.parent.name == "gnw"  # logs are grouped by optimizer
    assert f"TensorBoard logs: {run}  (tensorboard --logdir {tmp_path / 'logs'})" in proc.stdout
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    assert f"checkpoint: {checkpoint}" in proc.stdout
    scalars = read_scalars(run)
    for tag in (
        "train/loss",
        "val/loss",
        "val/acc",
        "optim/grad_norm_before_clip",
        "optim/grad_norm_after_clip",
        "optim/effective_lr",
        "optim/lr",
        "weight_norm/0.weight",
        "weight_norm/2.bias",
        "hp/val_loss",
        "hp/best_val_loss",
    ):
        assert tag in scalars, sorted(scalars)
    assert len(scalars["val/loss"]) == 2  # one point per epoch
    lr = scalars["optim/lr"][-1][1]
    assert 0 < _final(scalars, "optim/effective_lr") < lr  # lr / (1 + ||g||) < lr
    assert _final(scalars, "optim/grad_norm_after_clip") == pytest.approx(
        _final(scalars, "optim/grad_norm_before_clip")
    )  # no clipping callback


def test_same_command_twice_gives_identical_metrics(tiny_fit_args, tmp_path):
    first = read_scalars(_run(["--optimizer=gnw", *tiny_fit_args], tmp_path))
    second = read_scalars(_run(["--optimizer=gnw", *tiny_fit_args], tmp_path))
    for tag in ("train/loss", "val/loss", "val/acc", "optim/effective_lr"):
        assert first[tag] == second[tag]
    third = read_scalars(_run(["--optimizer=gnw", "--seed_everything=1", *tiny_fit_args], tmp_path))
    assert third["val/loss"] != first["val/loss"]


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_fit_args, tmp_path):
    args = [a for a in tiny_fit_args if not a.startswith("--trainer.max_epochs")]
    straight = read_scalars(_run(["--optimizer=gnw", "--trainer.max_epochs=4", *args], tmp_path))
    stopped = _run(["--optimizer=gnw", "--trainer.max_epochs=2", *args], tmp_path)
    (ckpt,) = (stopped / "checkpoints").glob("*.ckpt")
    resumed = read_scalars(
        _run(["--optimizer=gnw", "--trainer.max_epochs=4", f"--ckpt_path={ckpt}", *args], tmp_path)
    )
    assert resumed["val/loss"][-1] == straight["val/loss"][-1]
    assert resumed["train/loss"][-1] == straight["train/loss"][-1]


def test_clipping_config_and_test_subcommand(tiny_fit_args, tmp_path):
    config = ROOT / "configs" / "fit" / "adam_wnclip.yaml"
    run = _run(
        [f"--config={config}", "--trainer.callbacks.init_args.clip_factor=0.01", *tiny_fit_args],
        tmp_path,
    )
    scalars = read_scalars(run)
    assert 0 < _final(scalars, "clip/fraction_clipped") <= 1
    assert _final(scalars, "optim/grad_norm_after_clip") < _final(
        scalars, "optim/grad_norm_before_clip"
    )
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    cli_main(["test", f"--config={config}", f"--ckpt_path={ckpt}", *tiny_fit_args])
    tested = read_scalars(version_dirs(tmp_path / "logs")[-1])
    assert {"test/loss", "test/acc"} <= set(tested)


def test_presets_stack(tiny_fit_args, tmp_path, capsys):
    config = ROOT / "configs" / "fit" / "gnw.yaml"
    quick = ROOT / "configs" / "presets" / "quick.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--config={config}", f"--config={quick}", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning_opt.optim.gnw_adam.GNWAdam" in printed
    assert "gamma: 1.0" in printed and "max_epochs: 2" in printed
    assert "num_samples: 1000" in printed and "lr: 0.00585" in printed


BAD_INPUTS = [
    (
        ["--optimizer=adamm"],
        "unknown optimizer 'adamm'; give a class path (my_module.MyOptimizer) "
        "or one of: adam, adamw, gnw, sgd",
    ),
    (["--optimizer=torch.optim.Nope"], "torch.optim.Nope"),
    (["--optimizer.lr=-1"], "Invalid learning rate: -1.0"),
    (["--optimizer=gnw", "--optimizer.gamma=0"], "Invalid gamma value: 0.0"),
    (["--optimizer.eps=-1"], "Invalid epsilon value: -1.0"),
    (["--optimizer.betas=[0.9, 1.5]"], "Invalid beta parameter at index 1: 1.5"),
    (["--optimizer.momentum=0.9"], "momentum"),
    (["--data.val_fraction=1.2"], "val_fraction must be in (0, 1), got 1.2"),
    (["--model.net.hidden_sizes=[]"], "hidden_sizes must be a non-empty list of positive integers"),
    (
        ["--model.net.hidden_sizes=[-3]"],
        "hidden_sizes must be a non-empty list of positive integers",
    ),
    (["--model.no_such_key=1"], "no_such_key"),
    (
        [
            "--trainer.callbacks=lightning_opt.callbacks.WeightNormClipping",
            "--trainer.callbacks.clip_factor=0",
        ],
        "clip_factor must be a positive finite number",
    ),
    (
        [
            "--trainer.callbacks=lightning_opt.callbacks.FixedNormClipping",
            "--trainer.callbacks.clip_value=-1",
        ],
        "clip_value must be a positive finite number",
    ),
    (
        [
            "--trainer.callbacks=lightning_opt.callbacks.FixedNormClipping",
            "--trainer.callbacks.clip_value=1",
            "--trainer.gradient_clip_val=0.5",
        ],
        "gradient_clip_val",
    ),
    (
        ["--trainer.gradient_clip_val=0.5"],
        "use the callback lightning_opt.callbacks.FixedNormClipping with mode: global",
    ),
    (["--trainer.accumulate_grad_batches=2"], "raise data.batch_size instead"),
    (["--seeds=[]"], "--seeds must be a non-empty list of distinct integers from 0 to"),
    (["--seeds=[1, 1]"], "from 0 to 4294967295, got [1, 1]"),
    (["--seeds=[0, -1]"], "from 0 to 4294967295, got [0, -1]"),
    (["--seeds=[4294967296]"], "from 0 to 4294967295, got [4294967296]"),
    (["--seeds=[0, 1]", "--optimizer.lr=-1"], "Invalid learning rate: -1.0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m[:40] for _, m in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_nonzero_exit(args, message, tiny_fit_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, *tiny_fit_args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_bad_input_from_the_shell_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_opt", "fit", "--optimizer", "adamm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lightning_opt: error: --optimizer: unknown optimizer 'adamm'; give a class path "
        "(my_module.MyOptimizer) or one of: adam, adamw, gnw, sgd"
    ]
    assert not (tmp_path / "lightning_logs").exists()  # failed before anything ran


def test_non_finite_loss_exits_nonzero_and_keeps_the_logs(tiny_fit_args, tmp_path, capsys):
    args = ["--optimizer=sgd", "--optimizer.lr=1e6", "--optimizer.momentum=0", *tiny_fit_args]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "training loss became non-finite at global step" in err and "(epoch 0)" in err
    (run,) = version_dirs(tmp_path / "logs")
    assert list(run.glob("events.out.tfevents.*")) and (run / "hparams.yaml").exists()


def test_debug_env_shows_the_traceback(tiny_fit_args, monkeypatch):
    monkeypatch.setitem(os.environ, "LIGHTNING_OPT_DEBUG", "1")
    with pytest.raises(Exception, match="unknown optimizer"):
        cli_main(["fit", "--optimizer=adamm", *tiny_fit_args])


def test_fit_gives_the_same_losses_as_a_plain_pytorch_loop(tiny_fit_args, tmp_path, data_cache):
    """The fast path (chunked batches, manual optimization, on-device logging) changes no number."""
    run = _run(
        ["--optimizer=adam", "--optimizer.lr=0.01", "--seed_everything=3", *tiny_fit_args], tmp_path
    )
    logged = read_scalars(run)

    torch.manual_seed(3)  # what --seed_everything=3 does before the model is built
    net = MLP(40, 10, [100])
    data = MNIST1DDataModule(num_samples=TINY_SAMPLES, cache_dir=str(data_cache))
    data.setup()
    (x, y), (xv, yv) = data.splits["train"], data.splits["val"]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    train, val = [], []
    for epoch in range(2):
        # the documented order: a permutation seeded by (seed, epoch)
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        )
        total = 0.0
        for idx in order.split(50):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        train.append(total / len(x))
        with torch.no_grad():
            val.append(float(torch.nn.functional.cross_entropy(net(xv), yv)))
    assert [v for _, v in logged["train/loss"]] == pytest.approx(train, rel=1e-5)
    assert [v for _, v in logged["val/loss"]] == pytest.approx(val, rel=1e-5)


def test_fit_seeds_logs_each_member_as_its_own_fit(tiny_fit_args, tmp_path):
    """``fit --seeds`` writes, for each seed, the tags, steps and values of a separate fit."""
    clip = ["--trainer.callbacks=lightning_opt.callbacks.WeightNormClipping",
            "--trainer.callbacks.clip_factor=0.05"]  # fmt: skip
    args = ["--optimizer=gnw", *clip, *tiny_fit_args]
    population = _run([*args, "--seeds=[0, 3]"], tmp_path)
    assert sorted(p.name for p in population.glob("seed_*")) == ["seed_0", "seed_3"]
    assert list((population / "checkpoints").glob("*.ckpt"))
    assert (population / "config.yaml").exists()
    for seed in (0, 3):
        single = read_scalars(_run([*args, f"--seed_everything={seed}"], tmp_path))
        member = read_scalars(population / f"seed_{seed}")
        assert member.keys() == single.keys() and "clip/fraction_clipped" in member
        for tag, points in single.items():
            assert [s for s, _ in member[tag]] == [s for s, _ in points], tag
            values = [v for _, v in member[tag]]
            assert values == pytest.approx([v for _, v in points], rel=1e-4, abs=1e-6), tag


def test_fit_seeds_all_members_non_finite_exits_1_and_keeps_the_logs(
    tiny_fit_args, tmp_path, capsys
):
    """(One member failing while the others finish is tested in test_population.py.)"""
    args = ["--optimizer=sgd", "--optimizer.momentum=0", "--seeds=[0, 1]", *tiny_fit_args]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--optimizer.lr=1e6"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "every member's training loss became non-finite" in err and "Traceback" not in err
    (run,) = version_dirs(tmp_path / "logs")
    assert all(list((run / f"seed_{s}").glob("events.out.tfevents.*")) for s in (0, 1))


def test_evaluation_needs_a_checkpoint(tiny_fit_args, capsys):
    for subcommand in ("validate", "test", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([subcommand, *tiny_fit_args])
        assert exit_info.value.code == 2
        assert f"{subcommand} needs --ckpt_path" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    cli_main(["--help"])
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "tune", "compare"):
        assert f"\n  {name} " in out


def test_fit_seeds_resumes_from_its_checkpoint(tiny_fit_args, tmp_path, capsys):
    args = [a for a in tiny_fit_args if not a.startswith("--trainer.max_epochs")]
    args = ["--optimizer=gnw", "--seeds=[0, 1]", *args]
    straight = _run(["--trainer.max_epochs=4", *args], tmp_path)
    stopped = _run(["--trainer.max_epochs=2", *args], tmp_path)
    (ckpt,) = (stopped / "checkpoints").glob("*.ckpt")
    resumed = _run(["--trainer.max_epochs=4", f"--ckpt_path={ckpt}", *args], tmp_path)
    for seed in (0, 1):
        a, b = read_scalars(straight / f"seed_{seed}"), read_scalars(resumed / f"seed_{seed}")
        assert b["val/loss"][-1] == a["val/loss"][-1] and b["train/loss"][-1] == a["train/loss"][-1]
    with pytest.raises(SystemExit) as exit_info:  # another population's checkpoint
        cli_main(["fit", *[a for a in args if "seeds" not in a], "--seeds=[0, 2]",
                  f"--ckpt_path={ckpt}", "--trainer.max_epochs=4"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "the checkpoint is of a population with seeds [0, 1]" in capsys.readouterr().err

    # test and validate evaluate each member of the checkpoint; a single model refuses it
    base = [a for a in args if "seeds" not in a]
    cli_main(["test", *args, f"--ckpt_path={ckpt}"])
    out = capsys.readouterr().out
    assert "seed 0: test/loss" in out and "seed 1: test/loss" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", *base, f"--ckpt_path={ckpt}"])
    assert exit_info.value.code == 2
    assert "holds a population of seeds [0, 1]: load it with --seeds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "own"),
    [("fit", "--seeds"), ("validate", "--ckpt_path"), ("tune", "Study:"),
     ("compare", "Experiment:"), ("benchmark", "Benchmark:")],
)  # fmt: skip
def test_help_starts_with_the_command_and_its_own_options(command, own, capsys):
    """Issue 32, item 5: each command's --help was 1,100 lines headed "usage: __main__.py" and
    "Lightning Trainer command line tool", the tool's own options last. It starts with a
    one-line usage and a paragraph, then the command's own options, LightningCLI's after."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: python -m lightning_opt {command} [options]")
    assert lines[1] == "" and lines[2] and not lines[2].startswith(" ")
    assert "__main__.py" not in text and "Lightning Trainer command line tool" not in text
    lightning = text.index("Trainer, model and data options")
    assert text.index(own) < text.index("The optimizer (--optimizer NAME") < lightning
    assert text.index("Customize every aspect of training") > lightning


def test_a_class_help_is_left_as_it_is(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--optimizer.help", "torch.optim.SGD"])
    text = capsys.readouterr().out
    assert "--optimizer.momentum" in text and "Trainer, model and data" not in text


def test_fit_seeds_as_a_count_means_what_compares_does(tiny_fit_args, tmp_path, capsys):
    """Issue 32, item 5: ``--seeds`` was a list in fit and a count in compare and benchmark;
    fit takes a count too, the seeds from --seed_everything on (compare's final runs')."""
    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1", "--seeds=2",
              "--seed_everything=5"])  # fmt: skip
    (config,) = (tmp_path / "logs").rglob("config.yaml")
    assert yaml.safe_load(config.read_text())["seeds"] == [5, 6]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_fit_args, "--seeds=0"])
    assert exit_info.value.code == 2
    assert "--seeds 0: a count of seeds is a positive integer" in capsys.readouterr().err
