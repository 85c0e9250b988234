"""What an optimizer's step asks of the loop, given exactly: closures (LBFGS, SAM) equal to a
bare PyTorch loop of the same optimizer, schedule-free weights evaluated and checkpointed in
eval mode, parameter groups (singles and populations), wrappers, ``**kwargs`` and defaults that
survive the round trip through config files."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import MNIST1D, TINY_SAMPLES, RecordBatches, quiet_trainer, tiny_data
from lightning.pytorch import Callback, seed_everything

from lightning_opt.cli.main import cli_main
from lightning_opt.core.search_space import SearchParam, parse_search_space
from lightning_opt.optim.registry import default_search_space, resolve_optimizer
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier


@pytest.mark.parametrize(
    ("optimizer", "evaluate_first"),
    [
        ({"class_path": "torch.optim.LBFGS", "init_args": {"lr": 0.1, "max_iter": 4}}, False),
        (
            {
                "class_path": "pytorch_optimizer.SAM",
                "init_args": {"base_optimizer": "torch.optim.SGD", "lr": 0.05},
            },
            True,
        ),
    ],
    ids=["lbfgs", "sam"],
)
def test_a_closure_optimizer_takes_the_steps_of_a_bare_loop(optimizer, evaluate_first, data_cache):
    pytest.importorskip("pytorch_optimizer")
    seed_everything(0, verbose=False)
    model = MNIST1DClassifier(optimizer=optimizer, log_internals=False, **MNIST1D)
    assert model.step_contract.evaluate_first is evaluate_first
    start = copy.deepcopy(model.net).double()
    batches = RecordBatches()
    quiet_trainer(2, callbacks=[batches]).fit(model, datamodule=tiny_data(data_cache))

    cls, resolved = resolve_optimizer(optimizer)
    from lightning_opt.optim.registry import construct

    net = start
    opt = construct(cls, list(net.parameters()), resolved["init_args"])
    for x, y in batches.seen:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss

        if evaluate_first:  # SAM's usage: gradients first, then step(closure)
            closure()
        opt.step(closure)
    for mine, bare in zip(model.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(mine, bare, rtol=0, atol=1e-12)


def _schedule_free():
    pytest.importorskip("schedulefree")
    return {"class_path": "schedulefree.AdamWScheduleFree", "init_args": {"lr": 0.01}}


def test_a_schedule_free_checkpoint_between_validations_holds_its_eval_weights(
    data_cache, tmp_path
):
    """Saved at the end of an epoch without validation, the checkpoint holds what a
    validation there would have evaluated; training then goes on unchanged."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(every_epoch: bool):
        seed_everything(0, verbose=False)
        model = MNIST1DClassifier(optimizer=_schedule_free(), log_internals=False, **MNIST1D)
        losses = []

        class Record(Callback):
            def on_validation_epoch_end(self, trainer, pl_module):
                losses.append(float(trainer.callback_metrics["val/loss"]))

        saver = ModelCheckpoint(dirpath=tmp_path / str(every_epoch), save_top_k=-1,
                                every_n_epochs=1, save_on_train_epoch_end=True)  # fmt: skip
        trainer = Trainer(
            max_epochs=3, precision="64-true", accelerator="cpu", logger=False,
            callbacks=[saver, Record()], enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, check_val_every_n_epoch=1 if every_epoch else 3,
        )  # fmt: skip
        trainer.fit(model, datamodule=tiny_data(data_cache))
        return model, losses, sorted((tmp_path / str(every_epoch)).glob("*.ckpt"))

    validated, losses, _ = run(True)
    unvalidated, _, checkpoints = run(False)
    for a, b in zip(validated.net.parameters(), unvalidated.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # saving did not change training
    first = MNIST1DClassifier.load_from_checkpoint(checkpoints[0], weights_only=True)
    replayed = quiet_trainer(1).validate(first, datamodule=tiny_data(data_cache), verbose=False)
    assert replayed[0]["val/loss"] == pytest.approx(losses[0], abs=1e-6)


def test_schedule_free_is_in_eval_mode_whenever_it_is_evaluated(data_cache):
    seed_everything(0, verbose=False)
    model = MNIST1DClassifier(optimizer=_schedule_free(), log_internals=False, **MNIST1D)
    modes = []

    class Watch(Callback):
        def _mode(self, trainer):
            return trainer.optimizers[0].param_groups[0]["train_mode"]

        def on_train_batch_start(self, trainer, *args):
            modes.append(("train", self._mode(trainer)))

        def on_validation_batch_start(self, trainer, *args):
            modes.append(("val", self._mode(trainer)))

    trainer = quiet_trainer(2, callbacks=[Watch()])
    trainer.fit(model, datamodule=tiny_data(data_cache))
    assert {m for stage, m in modes if stage == "train"} == {True}
    assert {m for stage, m in modes if stage == "val"} == {False}
    assert trainer.optimizers[0].param_groups[0]["train_mode"] is False  # after fit: eval


def test_param_groups_keep_biases_out_of_weight_decay():
    model = MNIST1DClassifier(
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"weight_decay": 0.5}},
        param_groups=[{"ndim": 1, "weight_decay": 0.0}],
        **MNIST1D,
    )
    optimizer = model.configure_optimizers()
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.net.named_parameters():
        assert decay[id(p)] == (0.0 if p.ndim == 1 else 0.5), name


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"ndim": 1, "weight_decy": 0.0}], "weight_decy is not an argument of AdamW"),
        ([{"names": "*.bais", "weight_decay": 0.0}], "matches no parameter; the net has: "),
        ([{"weight_decay": 0.0}], "selects nothing: give names (patterns) and/or ndim"),
    ],
)
def test_a_param_groups_rule_that_would_do_nothing_is_refused(rules, message):
    with pytest.raises(ValueError, match="param_groups rule") as info:
        MNIST1DClassifier(optimizer="adamw", param_groups=rules, **MNIST1D)
    assert message in str(info.value)


def test_a_population_with_param_groups_equals_separate_runs_after_a_drop(data_cache):
    """Each member's own optimizer over its groups; narrowing after a dropped member keeps
    every view in its group."""
    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.3}}
    rules = [{"ndim": 1, "weight_decay": 0.0}, {"names": ["*0.weight"], "lr": 0.002}]

    class DropFirst(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                pl_module.drop_members({0: "dropped by the test"})

    seed_everything(0, verbose=False)
    population = PopulationClassifier(
        [3, 5], optimizer=optimizer, param_groups=rules, log_internals=False, **MNIST1D
    )
    quiet_trainer(3, callbacks=[DropFirst()]).fit(population, datamodule=tiny_data(data_cache))
    seed_everything(5, verbose=False)
    single = MNIST1DClassifier(optimizer=optimizer, param_groups=rules, log_internals=False,
                               **MNIST1D)  # fmt: skip
    losses = []

    class Record(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["val/loss"]))

    quiet_trainer(3, callbacks=[Record()]).fit(single, datamodule=tiny_data(data_cache))
    assert population.history[1]["val/loss"] == pytest.approx(losses, abs=1e-6)


def test_param_groups_and_kwargs_round_trip_through_the_saved_config(tiny_fit_args, tmp_path):
    pytest.importorskip("pytorch_optimizer")
    pytest.importorskip("prodigyopt")
    cli_main(["fit", *tiny_fit_args, "--optimizer=pytorch_optimizer.SAM",
              "--optimizer.base_optimizer=torch.optim.SGD", "--optimizer.dict_kwargs.lr=0.05",
              "--model.param_groups=[{ndim: 1, rho: 0.01}]"])  # fmt: skip
    config = next((tmp_path / "logs").rglob("config.yaml"))
    saved = yaml.safe_load(config.read_text())
    assert saved["optimizer"]["dict_kwargs"] == {"lr": 0.05}
    assert saved["model"]["param_groups"] == [{"ndim": 1, "rho": 0.01}]
    cli_main(["fit", f"--config={config}", "--trainer.max_epochs=1"])  # replays
    # a default that JSON or YAML cannot hold as itself (inf) is left to the class
    cli_main(["fit", *tiny_fit_args, "--optimizer=prodigyopt.Prodigy", "--trainer.max_epochs=1",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'prodigy'}"])  # fmt: skip
    replay = next((tmp_path / "prodigy").rglob("config.yaml"))
    cli_main(["fit", f"--config={replay}", "--trainer.max_epochs=1"])


def test_search_spaces_of_lr_free_methods_and_categorical_choices():
    pytest.importorskip("prodigyopt")
    import prodigyopt

    assert default_search_space(prodigyopt.Prodigy) == (SearchParam("lr", 0.1, 10.0, log=True),)
    assert default_search_space(torch.optim.Adam) == (SearchParam("lr", 1e-4, 1e-1, log=True),)
    (nesterov,) = parse_search_space([{"name": "nesterov", "choices": [True, False]}])
    assert nesterov.ends() == (True, False)
    assert nesterov.as_dict() == {"name": "nesterov", "choices": [True, False]}
    assert "choices" not in SearchParam("lr", 1e-4, 1e-1, log=True).as_dict()  # old records
    with pytest.raises(ValueError, match="either choices or low/high"):
        SearchParam("x", low=0.0, choices=(1, 2))


def test_tune_searches_a_categorical_choice(tmp_path, data_cache):
    cli_main([
        "tune", "--optimizer=sgd", f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}", "--data.batch_size=50", "--trainer.max_epochs=1",
        "--pruner=none", "--n_trials=3", f"--output_dir={tmp_path / 'out'}",
        "--search_space=[{name: nesterov, choices: [true, false]}, "
        "{name: lr, low: 0.01, high: 0.1, log: true}]",
    ])  # fmt: skip
    best = yaml.safe_load((tmp_path / "out" / "sgd" / "best.yaml").read_text())
    assert best["optimizer"]["init_args"]["nesterov"] in (True, False)


@pytest.mark.parametrize("population", [1, 2])
def test_tune_searches_an_element_of_a_tuple_argument(tmp_path, data_cache, population):
    cli_main([
        "tune", "--optimizer=adam", f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}", "--data.batch_size=50", "--trainer.max_epochs=1",
        "--pruner=none", "--n_trials=2", f"--population={population}",
        f"--output_dir={tmp_path / 'out'}",
        "--search_space=[{name: betas.1, low: 0.9, high: 0.9999}]",
    ])  # fmt: skip
    best = yaml.safe_load((tmp_path / "out" / "adam" / "best.yaml").read_text())
    first, second = best["optimizer"]["init_args"]["betas"]
    assert first == 0.9 and 0.9 <= second <= 0.9999


def test_a_madgrad_population_drops_a_member_and_resumes_from_its_checkpoint(data_cache, tmp_path):
    """MADGRAD keeps a step counter ``state['k']`` that belongs to no parameter: dropping a
    member, saving and resuming keep each member's own, and the survivor equals its run."""
    pytest.importorskip("pytorch_optimizer")
    optimizer = {"class_path": "pytorch_optimizer.MADGRAD", "init_args": {"lr": 0.01}}

    class DropFirst(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                pl_module.drop_members({0: "dropped by the test"})

    def population():
        return PopulationClassifier([3, 5], optimizer=optimizer, log_internals=False, **MNIST1D)

    seed_everything(0, verbose=False)
    first = population()
    trainer = quiet_trainer(2, callbacks=[DropFirst()])
    trainer.fit(first, datamodule=tiny_data(data_cache))
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    resumed = population()
    quiet_trainer(3).fit(resumed, datamodule=tiny_data(data_cache), ckpt_path=tmp_path / "two.ckpt")

    seed_everything(5, verbose=False)
    single = MNIST1DClassifier(optimizer=optimizer, log_internals=False, **MNIST1D)
    losses = []

    class Record(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["val/loss"]))

    quiet_trainer(3, callbacks=[Record()]).fit(single, datamodule=tiny_data(data_cache))
    assert resumed.member_ids == [1]
    assert resumed.history[1]["val/loss"] == pytest.approx(losses, abs=1e-6)


def test_sams_gradients_are_clipped_on_lightnings_path_as_on_the_direct_one(data_cache):
    """A callback with a backward hook sends the step through Lightning's plugin: SAM's first
    evaluation, before the step, is clipped there too (the same weights either way)."""
    pytest.importorskip("pytorch_optimizer")
    from lightning_opt.clipping.callbacks import FixedNormClipping

    class AfterBackward(Callback):
        def on_after_backward(self, trainer, pl_module):
            pass

    optimizer = {
        "class_path": "pytorch_optimizer.SAM",
        "init_args": {"base_optimizer": "torch.optim.SGD", "lr": 0.05},
    }
    nets = []
    for extra in ([], [AfterBackward()]):
        seed_everything(0, verbose=False)
        model = MNIST1DClassifier(optimizer=optimizer, log_internals=False, **MNIST1D)
        clip = FixedNormClipping(clip_value=0.05, mode="global")
        quiet_trainer(2, callbacks=[clip, *extra]).fit(model, datamodule=tiny_data(data_cache))
        assert model._direct == (not extra)
        nets.append(model.net)
    for a, b in zip(*(n.parameters() for n in nets), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
