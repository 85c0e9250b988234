"""The optimizer compatibility table, from real runs of real packages.

``CATALOG`` lists third-party optimizer classes (torch.optim, pytorch-optimizer, schedulefree,
prodigyopt, lion-pytorch, dadaptation, heavyball, torch-optimizer, torch-optimi, came-pytorch,
adam-atan2-pytorch, grokfast-pytorch, galore-torch, apollo-torch, timm) with what a user must
set for each. ``check``
trains one for a few steps on a tiny mnist1d (float64) and reports what holds: the validation
loss falls, the checkpoint replays to the loss the run logged (``validate`` of the saved
weights, read as ``test --ckpt_path`` reads them: ``weights_only``), and a population of two
seeds gives each member its separate run's numbers (or
trains one run at a time, and why). ``python -m lightning_opt.cli.compatibility docs/optimizers.md``
writes the table; ``tests/test_optimizer_packages.py`` runs the same checks (the packages are
the ``test`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lightning_opt.core.atomic import write_text

#: The tiny problem every class is tried on: 400 training examples, 2 epochs of 7 steps.
SAMPLES, BATCH, EPOCHS, SEEDS = 500, 50, 2, (0, 1)
#: Population members equal their separate runs to this (float64).
EXACT = 1e-6
#: A checkpoint's validation equals the logged one to this (the weights come back through the
#: model's float32 parameters; evaluating in the wrong mode is off by ~1e-2).
REPLAY = 1e-6


@dataclass(frozen=True)
class Entry:
    """One class of the table.

    Attributes:
        class_path: the class (``--optimizer CLASS``).
        settings: what a user sets for it (``--optimizer.ARG VALUE``; ``dict_kwargs`` for what
            only its ``**kwargs`` take).
        note: what a user should know (the step contract, what it cannot do here).
        works: False for a class this tool refuses in one line (``note`` says why).
        population: what a population of it gives: ``exact``, ``one run at a time`` (a
            fall-back said in one line) or ``differs`` (measured, and said).
        cli: whether the command line and config files can configure it (else only Python).
        param_groups: ``--model.param_groups`` rules it needs (Muon's 2-D weights).
    """

    class_path: str
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    works: bool = True
    population: str = "exact"
    cli: bool = True
    param_groups: tuple[dict[str, Any], ...] = ()

    @property
    def package(self) -> str:
        return self.class_path.split(".")[0]

    def model_arguments(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer(), "param_groups": [dict(r) for r in self.param_groups],
            "input_size": 40, "num_classes": 10, "log_internals": False,
        }  # fmt: skip

    def optimizer(self) -> dict[str, Any]:
        settings = dict(self.settings)
        extra = settings.pop("dict_kwargs", {})
        return {"class_path": self.class_path, "init_args": settings, "dict_kwargs": extra}


NO_LR = "keeps no learning rate (lr None; its step never reads it: tune warns that every trial reached one value)"
BITSANDBYTES = "bitsandbytes' 8-bit step needs CUDA (the pre-flight step's error)"
#: galore-torch's settings for the 2-D weights (keys its step reads from their group).
GALORE = {"ndim": 2, "rank": 4, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}

CATALOG: tuple[Entry, ...] = (
    Entry("torch.optim.Adam"),
    Entry("torch.optim.AdamW"),
    Entry("torch.optim.SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    Entry("torch.optim.NAdam"),
    Entry("torch.optim.RAdam"),
    Entry("torch.optim.Adamax"),
    Entry("torch.optim.Adagrad", {"lr": 0.05}),
    Entry("torch.optim.Adadelta", {"lr": 1.0}),
    Entry("torch.optim.RMSprop"),
    Entry("torch.optim.Rprop"),
    Entry("torch.optim.ASGD", {"lr": 0.05}),
    Entry(
        "torch.optim.LBFGS",
        {"lr": 0.1, "max_iter": 4},
        "closure: several evaluations a step",
        population="one run at a time",
    ),
    Entry("torch.optim.SparseAdam", note="sparse gradients only", works=False),
    Entry(
        "torch.optim.Muon",
        note="2-D parameters only, and param groups share one class: use pytorch_optimizer.Muon",
        works=False,
    ),
    Entry(
        "pytorch_optimizer.Muon",
        note="2-D weights with Muon, the rest with its AdamW, by param_groups rules",
        param_groups=({"ndim": 2, "use_muon": True}, {"ndim": 1, "use_muon": False}),
    ),
    Entry(
        "pytorch_optimizer.LOMO",
        note="takes the model and updates inside its own fused_backward: no step to drive",
        works=False,
    ),
    Entry("pytorch_optimizer.AdaBelief"),
    Entry(
        "pytorch_optimizer.AdaHessian",
        {"lr": 0.05},
        "backward(create_graph=True), found by the pre-flight step",
        population="one run at a time",
    ),
    Entry(
        "pytorch_optimizer.SophiaH",
        {"lr": 0.01},
        "backward(create_graph=True), found by the pre-flight step",
        population="one run at a time",
    ),
    Entry("pytorch_optimizer.MADGRAD", {"lr": 0.01}, "keeps a step counter state['k']"),
    Entry("pytorch_optimizer.Lamb", {"lr": 0.01}),
    Entry("pytorch_optimizer.Ranger", {"lr": 0.01}),
    Entry("pytorch_optimizer.Tiger", {"lr": 0.001}),
    Entry(
        "pytorch_optimizer.Kron",
        note="a torch.dtype default (left out of configs); numpy draws in its step",
        population="one run at a time",
    ),
    Entry(
        "pytorch_optimizer.SOAP",
        note="members differ from separate runs beyond float rounding (eigendecompositions of "
        "nearly equal eigenvalues amplify a batched product's rounding, we believe)",
        population="differs",
    ),
    Entry("pytorch_optimizer.Prodigy", note="lr-free: lr searched 0.1..10"),
    Entry("pytorch_optimizer.DAdaptAdam", note="lr-free: lr searched 0.1..10"),
    Entry(
        "pytorch_optimizer.ScheduleFreeAdamW",
        {"lr": 0.01},
        "train/eval modes: evaluated and saved in eval mode",
    ),
    Entry(
        "pytorch_optimizer.SAM",
        {"base_optimizer": "torch.optim.SGD", "dict_kwargs": {"lr": 0.05}},
        "reads the gradients, then calls its closure: evaluated once before its step; the "
        "base optimizer's lr through dict_kwargs",
        population="one run at a time",
    ),
    Entry(
        "pytorch_optimizer.Lookahead",
        {"optimizer": "torch.optim.AdamW", "dict_kwargs": {"lr": 0.01}},
        "wraps an optimizer (--optimizer.optimizer CLASS)",
    ),
    Entry(
        "pytorch_optimizer.OrthoGrad",
        {"optimizer": "torch.optim.AdamW", "dict_kwargs": {"lr": 0.01}},
        "wraps an optimizer (--optimizer.optimizer CLASS)",
    ),
    Entry("schedulefree.AdamWScheduleFree", {"lr": 0.01}, "train/eval modes (starts in eval)"),
    Entry("schedulefree.RAdamScheduleFree", {"lr": 0.01}, "train/eval modes"),
    Entry("schedulefree.SGDScheduleFree", {"lr": 0.5}, "train/eval modes"),
    Entry("prodigyopt.Prodigy", note="lr-free; growth_rate=inf left to the class"),
    Entry("dadaptation.DAdaptAdam", note="lr-free; growth_rate=inf left to the class"),
    Entry("dadaptation.DAdaptSGD", note="lr-free"),
    Entry("lion_pytorch.Lion", {"lr": 1e-4}),
    Entry(
        "heavyball.AdamW",
        {"lr": 1e-3},
        "object() sentinel defaults (palm, promote, ...) hidden from the parser: the class's own "
        "apply; set them as dict_kwargs",
    ),
    Entry("heavyball.SFAdamW", {"lr": 1e-3}, "sentinel defaults, as AdamW; train/eval modes"),
    # torch-optimizer
    *(
        Entry(f"torch_optimizer.{name}", note=NO_LR)
        for name in ("A2GradExp", "A2GradInc", "A2GradUni")
    ),
    *(Entry(f"torch_optimizer.{name}") for name in ("AccSGD", "AdaBelief", "AdaBound", "AdaMod")),
    Entry("torch_optimizer.Adafactor", note="lr None: a relative step of its own, unless set"),
    Entry(
        "torch_optimizer.Adahessian",
        note="backward(create_graph=True), found by the pre-flight step (its error says 'does not "
        "have grad_fn')",
        population="one run at a time",
    ),
    *(
        Entry(f"torch_optimizer.{name}")
        for name in ("AdamP", "AggMo", "Apollo", "DiffGrad", "LARS", "Lamb")
    ),
    Entry(
        "torch_optimizer.Lookahead",
        {"optimizer": "torch.optim.AdamW", "dict_kwargs": {"lr": 0.01}},
        "never calls Optimizer.__init__, so torch's state_dict() fails on it (no checkpoint "
        "could be saved): pytorch_optimizer.Lookahead is the same algorithm",
        works=False,
    ),
    *(
        Entry(f"torch_optimizer.{name}")
        for name in (
            "MADGRAD",
            "NovoGrad",
            "PID",
            "QHAdam",
            "QHM",
            "RAdam",
            "Ranger",
            "RangerQH",
            "RangerVA",
            "SGDP",
            "SGDW",
            "SWATS",
        )
    ),
    Entry(
        "torch_optimizer.Shampoo",
        note="exact in float64; in float32 its matrix roots amplify a batched product's "
        "rounding (members ~1e-3 relative from separate runs by epoch 4)",
    ),
    Entry("torch_optimizer.Yogi"),
    # torch-optimi: every class has lr=None and refuses to build without one
    *(
        Entry(f"optimi.{name}", {"lr": lr}, "no default lr: refused in one line without one")
        for name, lr in (
            ("Adam", 1e-3),
            ("AdamW", 1e-3),
            ("Adan", 1e-3),
            ("Lion", 1e-4),
            ("RAdam", 1e-3),
            ("Ranger", 1e-3),
            ("SGD", 0.05),
            ("StableAdamW", 1e-3),
        )
    ),
    Entry("came_pytorch.CAME", {"lr": 1e-3}, "lr None by default, which the class refuses"),
    # adam-atan2-pytorch
    *(
        Entry(f"adam_atan2_pytorch.{name}")
        for name in ("Adam", "AdamAtan2", "AdamAtan2ClipGrok", "Adopt", "AdoptAtan2")
    ),
    *(
        Entry(
            f"adam_atan2_pytorch.{name}",
            note=f"parameters in two arguments ({arg}, params): a rule with into: {arg}",
            param_groups=({"ndim": 2, "into": arg},),
        )
        for name, arg in (("MuonAdamAtan2", "muon_params"), ("PolarAdamAtan2", "polar_params"))
    ),
    Entry("grokfast_pytorch.GrokFastAdamW", note="a dict default (grokfast_kwargs)"),
    # galore-torch and apollo-torch (the same GaLore classes in both)
    *(
        Entry(
            f"{package}.GaLoreAdamW",
            note="GaLore settings as group keys its step reads; its GaLoreProjector state is "
            "written to checkpoints as data",
            param_groups=(GALORE,),
        )
        for package in ("galore_torch", "apollo_torch")
    ),
    *(
        Entry(f"{package}.GaLoreAdafactor", note="lr None: a relative step of its own")
        for package in ("galore_torch", "apollo_torch")
    ),
    *(
        Entry(f"{package}.GaLoreAdamW8bit", note=BITSANDBYTES, works=False)
        for package in ("galore_torch", "apollo_torch")
    ),
    Entry(
        "apollo_torch.APOLLOAdamW",
        note="APOLLO settings as group keys its step reads (proj: random, scale_type: channel)",
        param_groups=(
            {**GALORE, "rank": 4, "proj": "random", "scale_type": "channel", "scale": 1},
        ),
    ),
    Entry(
        "apollo_torch.QAPOLLOAdamW",
        note="its step reads group['percentile_clipping'], which its constructor never puts "
        "there (bitsandbytes' 8-bit path)",
        works=False,
    ),
    # timm (not in the test extra: see NOT_INSTALLABLE)
    *(
        Entry(f"timm.optim.{name}")
        for name in (
            "AdaBelief",
            "Adafactor",
            "Adahessian",
            "AdamP",
            "AdamWLegacy",
            "Adan",
            "Adopt",
            "Lamb",
            "LaProp",
            "Lars",
            "Lion",
            "MADGRAD",
            "Mars",
            "Muon",
            "NAdamLegacy",
            "NAdamW",
            "NvNovoGrad",
            "RAdamLegacy",
            "RMSpropTF",
            "SGDW",
        )
    ),
    Entry(
        "timm.optim.AdafactorBigVision",
        {"lr": 1e-3},
        "its default lr 1.0 is a plain learning rate (the weights diverge at it; its first step "
        "says so, and tune searches 1e-4..1e-1)",
    ),
    Entry("timm.optim.SGDP", {"lr": 0.1}, "lr is torch's required marker: refused without one"),
    Entry(
        "timm.optim.kron.Kron",
        note="not exported by timm.optim; draws from a global random generator in its step",
        population="one run at a time",
    ),
    Entry(
        "timm.optim.Lookahead",
        {"base_optimizer": "torch.optim.AdamW", "dict_kwargs": {"lr": 0.01}},
        "wraps an optimizer (--optimizer.base_optimizer CLASS)",
    ),
)

#: Packages of the table that the ``test`` extra cannot hold on this machine, and why.
NOT_INSTALLABLE = {
    "timm": "timm imports torchvision, and PyPI's torchvision does not import beside the CPU "
    "build of torch 2.13.0 this project installs ('operator torchvision::nms does not exist'); "
    "it needs the CUDA build of torch (torch 2.14.1 with torchvision 0.29.1: 5.5 GB)",
}


@dataclass
class Result:
    """What ``check`` found for one entry (a string where something failed: the one line)."""

    entry: Entry
    installed: bool = True
    error: str | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    replay_gap: float | None = None
    population: str | None = None
    contract: str = ""
    cli: str | None = None
    tune: str | None = None

    @property
    def falls(self) -> bool:
        return self.loss_after is not None and self.loss_after < self.loss_before

    @property
    def replays(self) -> bool:
        return self.replay_gap is not None and self.replay_gap <= REPLAY


def installed(entry: Entry) -> bool:
    try:
        importlib.import_module(entry.package)
    except ImportError:
        return False
    return True


def check(
    entry: Entry, data_dir: str | Path, population: bool = True, tune: bool = False
) -> Result:
    """Train ``entry`` as the table says (see the module docstring); ``tune``: also a study of
    two trials of its default search space."""
    from lightning_opt.data import MNIST1DDataModule
    from lightning_opt.training.classifier import MNIST1DClassifier

    result = Result(entry)
    if not installed(entry):
        result.installed = False
        return result
    data = MNIST1DDataModule(num_samples=SAMPLES, batch_size=BATCH, cache_dir=str(data_dir))
    data.prepare_data()
    try:
        torch.manual_seed(SEEDS[0])
        model = MNIST1DClassifier(**entry.model_arguments())
    except (ValueError, TypeError) as err:
        result.error = " ".join(str(err).split())
        return result
    contract = model.step_contract
    result.contract = ", ".join(
        part
        for part, on in (
            (f"closure x{contract.closure_calls}", contract.closure_calls > 1),
            ("evaluated before its step", contract.evaluate_first),
            ("create_graph", contract.create_graph),
            ("train/eval modes", contract.modes),
            ("global RNG in its step", contract.random),
        )
        if on
    )
    trainer = _trainer()
    result.loss_before = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    histories = _fit(trainer, model, data)
    result.loss_after = histories[-1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.ckpt"
        trainer.save_checkpoint(path)
        replayed = MNIST1DClassifier.load_from_checkpoint(path, weights_only=True)
        replay = _trainer().validate(replayed, datamodule=data, verbose=False)[0]["val/loss"]
    result.replay_gap = abs(replay - result.loss_after)
    if population:
        result.population = _population(entry, data, histories)
    result.cli = _cli(entry, data_dir)
    if tune and result.cli == "yes":
        result.tune = _tune(entry, data_dir)
    return result


def _tune(entry: Entry, data_dir: str | Path) -> str:
    """What ``tune`` searches by default, and the best of a two-trial study of it."""
    import optuna

    from lightning_opt.optim.registry import default_search_space, optimizer_class

    space = default_search_space(optimizer_class(entry.optimizer()))
    shown = ", ".join(
        f"{p.name} {p.low:g}..{p.high:g}" if p.choices is None else f"{p.name} {p.choices}"
        for p in space
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "tune", *_flags(entry, [p.name for p in space]), f"--data.num_samples={SAMPLES}",
            f"--data.cache_dir={data_dir}", f"--data.batch_size={BATCH}",
            "--trainer.max_epochs=1", "--n_trials=2", "--pruner=none", f"--output_dir={tmp}",
            "--study_name=table",
        ]  # fmt: skip
        failed = _run_cli(args)
        if failed is not None:
            return f"{shown}: {failed}"
        study = optuna.load_study(study_name="table", storage=f"sqlite:///{tmp}/optuna.db")
        return f"{shown}: 2 trials, best val/loss {study.best_value:.3f}"


def _flags(entry: Entry, searched: Sequence[str] = ()) -> list[str]:
    """The command line's flags for ``entry``'s optimizer and param groups (but the
    ``searched`` ones: a set value the search would replace is refused)."""
    flags = [f"--optimizer={entry.class_path}"]
    for name, value in entry.settings.items():
        if name in searched:
            continue
        items = value.items() if name == "dict_kwargs" else [(None, value)]
        for key, item in items:
            flag = f"--optimizer.dict_kwargs.{key}" if key else f"--optimizer.{name}"
            flags.append(f"{flag}={item}")
    if entry.param_groups:
        rules = ", ".join(
            "{" + ", ".join(f"{k}: {v}" for k, v in rule.items()) + "}"
            for rule in entry.param_groups
        )
        flags.append(f"--model.param_groups=[{rules}]")
    return flags


def _cli(entry: Entry, data_dir: str | Path) -> str:
    """``yes`` where ``fit --optimizer CLASS --optimizer.ARG ...`` trains an epoch, else the
    one line the command line printed."""
    flags = _flags(entry)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "fit", *flags, f"--data.num_samples={SAMPLES}", f"--data.cache_dir={data_dir}",
            f"--data.batch_size={BATCH}", "--trainer.max_epochs=1", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp}",
        ]  # fmt: skip
        failed = _run_cli(args)
    return "yes" if failed is None else failed


def _run_cli(args: list[str]) -> str | None:
    """``cli_main(args)`` quietly: None, or ``exit CODE: <its one error line>``."""
    from lightning_opt.cli.main import cli_main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli_main(args)
    except SystemExit as exit_:
        lines = [line for line in err.getvalue().splitlines() if "error:" in line]
        return f"exit {exit_.code}: {lines[-1] if lines else ''}"
    return None


def _trainer() -> Any:
    from lightning.pytorch import Trainer

    return Trainer(
        max_epochs=EPOCHS, precision="64-true", accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip


def _fit(trainer: Any, model: Any, data: Any) -> list[float]:
    """Fit; each epoch's val/loss."""
    from lightning.pytorch import Callback

    losses: list[float] = []

    class Record(Callback):
        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            losses.append(float(trainer.callback_metrics["val/loss"]))

    trainer.callbacks.append(Record())
    trainer.fit(model, datamodule=data)
    return losses


def _population(entry: Entry, data: Any, first_history: list[float]) -> str:
    """``exact``, ``differs by X``, or ``one run at a time: why``."""
    from lightning.pytorch import seed_everything

    from lightning_opt.population import PopulationClassifier
    from lightning_opt.training.classifier import MNIST1DClassifier

    try:
        population = PopulationClassifier(list(SEEDS), **entry.model_arguments())
    except ValueError as err:
        return f"one run at a time: {' '.join(str(err).split())}"
    _trainer().fit(population, datamodule=data)
    gap = 0.0
    for member, seed in enumerate(SEEDS):
        if seed == SEEDS[0]:
            single = first_history
        else:
            seed_everything(seed, verbose=False)
            model = MNIST1DClassifier(**entry.model_arguments())
            single = _fit(_trainer(), model, data)
        together = population.history[member]["val/loss"]
        gap = max(gap, *(abs(a - b) for a, b in zip(together, single, strict=True)))
    return "exact" if gap <= EXACT else f"differs by {gap:.1e}"


def markdown(results: list[Result]) -> str:
    """The table of ``results`` (docs/optimizers.md)."""
    lines = [
        "# Optimizer compatibility",
        "",
        "Generated by `python -m lightning_opt.cli.compatibility docs/optimizers.md` from real runs "
        f"of the installed packages (the `test` extra): each class trains an MLP for {EPOCHS} "
        f"epochs on {SAMPLES} mnist1d examples in float64 (batch {BATCH}). *falls*: the "
        "validation loss after training is below the one before; *replays*: `validate` of the "
        "saved checkpoint gives the loss the run logged; *population*: members of seeds "
        f"{list(SEEDS)} trained at once equal their separate runs (to {EXACT:g}), or the "
        "reason they train one at a time. *step needs*: what the pre-flight step found. "
        "*command line*: `fit --optimizer CLASS --optimizer.ARG VALUE` trains an epoch. "
        "*tune*: what `tune` searches by default and a study of two one-epoch trials of it. "
        "`tests/test_optimizer_packages.py` checks every row. Set `settings` as "
        "`--optimizer.ARG VALUE`; `dict_kwargs` go to a class's `**kwargs`.",
        "",
        *(f"Not in the `test` extra: {why}." for why in NOT_INSTALLABLE.values()),
        "Rows noted *checked apart* come from `python -m lightning_opt.cli.compatibility "
        "docs/optimizers.md --only PACKAGE` in an environment that holds the package; the tests "
        "skip them where it is not installed.",
        "",
        "| class | settings | fit: val/loss before -> after | replays | population | step needs "
        "| command line | tune (default search space) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r.entry.settings.items())
        if r.entry.param_groups:
            settings += (", " if settings else "") + f"param_groups={list(r.entry.param_groups)}"
        if not r.installed:
            fit = "not installed" + (
                " here (see above)" if r.entry.package in NOT_INSTALLABLE else ""
            )
        elif r.error is not None:
            fit = f"refused: {r.error}"
        else:
            mark = "falls" if r.falls else "does not fall"
            fit = f"{r.loss_before:.3f} -> {r.loss_after:.3f} ({mark})"
        replays = (
            "" if r.replay_gap is None else ("yes" if r.replays else f"gap {r.replay_gap:.1e}")
        )
        row = [f"`{r.entry.class_path}`", settings, fit, replays, r.population or "",
               r.contract, r.cli or "", r.tune or "", r.entry.note]  # fmt: skip
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n" + GUIDE


GUIDE = """
## What the training loop gives an optimizer

Before anything trains, the model takes one step of the optimizer on a copy of the net and one
random minibatch, in float64 (the *pre-flight step*, `lightning_opt/optim/contract.py`), and
records what the step did; the training loop then gives exactly that:

- **A closure**, always: `step(closure)` with a closure that zeroes the gradients, runs the
  forward and the backward on the same minibatch; the clipping callbacks run after every
  evaluation, as in Lightning's automatic optimization. The loss logged for the step is the first
  evaluation's. A `step` without a `closure` parameter gets `closure(); step()`.
- **Gradients before the closure** where the step reads them first (SAM: it perturbs the weights
  along them, then calls the closure at the perturbed point). The pre-flight step finds it by
  handing the step stale NaN gradients: a step that used them before its closure leaves
  non-finite weights.
- **`backward(create_graph=True)`** where a plain backward fails inside the step
  (AdaHessian, SophiaH: Hutchinson's Hessian estimate); a class may declare `create_graph = True`.
- **Train/eval modes** where the optimizer has `train()` and `eval()` (schedule-free): train mode
  for training steps, eval mode for validation, test and predict, after `fit`, and for the weights
  and optimizer state of every checkpoint (one saved at an epoch's end without validation swaps
  to eval for the save and back).
- **One line, exit 2**, where the step fails anyway (SparseAdam on dense gradients, Muon on 1-D
  parameters, LOMO's missing step), and for a constructor's exception of any type.

A population trains each member with its own instance over its own parameters; where the members
cannot share a step (several evaluations of the closure, a second derivative, draws from a global
random generator in the step, a class that takes the model) `tune --population` and `compare`
train one run at a time and say why in one line; `fit --seeds` refuses.

## Parameter groups

`--model.param_groups` (or `model: param_groups:` in a config) is a list of rules; each parameter
goes to the first rule it matches, the rest to the default group (the optimizer's own arguments):

```yaml
model:
  param_groups:
    - {ndim: 1, weight_decay: 0.0}          # biases and norm weights: no weight decay (timm's split)
    - {names: ["0.*"], lr: 0.01}             # fnmatch patterns of named_parameters() names
optimizer: {class_path: torch.optim.AdamW, init_args: {weight_decay: 0.05}}
```

Selectors are `names` (patterns) and `ndim`; every other key is a setting of the group. A rule
that matches no parameter (the error lists the net's), a rule without a selector, and a setting
the class does not take (where its constructor has no `**kwargs`) are refused before anything
trains: torch's optimizers would keep a misspelt `weight_decy` without a word. Muon:
`--optimizer pytorch_optimizer.Muon --model.param_groups '[{ndim: 2, use_muon: true}, {ndim: 1,
use_muon: false}]'` (2-D weights with Muon, the rest with its AdamW); `torch.optim.Muon` takes
2-D parameters only, and one class serves every group, so it is refused on nets with biases.

## Wrappers, `**kwargs`, values

- A class whose first argument is an optimizer (Lookahead, OrthoGrad): `--optimizer.optimizer
  CLASS` names the inner one, built over the parameters (and groups) first; its arguments are
  the wrapper's `--optimizer.dict_kwargs.ARG`.
- What only a class's `**kwargs` take: `--optimizer.dict_kwargs.ARG VALUE` (jsonargparse's
  `dict_kwargs`), recorded in config.yaml and replayed.
- A default that a config cannot hold as itself (`inf`, a `torch.dtype`, an enum, an `object()`
  sentinel) is left out of what is written, so the class applies its own; a value you set is
  written as YAML writes it (`.inf`). An argument whose default is a bare `object()` sentinel
  (heavyball's `use_default`) or a function without an import path (adam-atan2-pytorch's
  `muon_bypass_update_fn=lambda step: False`) is hidden from the parser, which would refuse the
  sentinel against the argument's type or write the function as a string no run can read; the
  class applies its own default, and `--optimizer.dict_kwargs.NAME VALUE` still sets it.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where the markdown table goes (docs/optimizers.md)")
    parser.add_argument(
        "--only", nargs="+", metavar="PACKAGE",
        help="check only these packages' classes and replace their rows in OUTPUT, written "
        "before by a full run (a package that cannot be installed beside the others: timm)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    entries = [e for e in CATALOG if args.only is None or e.package in args.only]
    if not entries:
        parser.error(f"--only: no class of {args.only} in the table")
    if args.only is not None and not Path(args.output).is_file():
        parser.error(f"--only replaces rows of a table a full run wrote: no {args.output}")
    from lightning_opt.runs.build import quiet_lightning

    quiet_lightning()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the GPU/TPU lines of every Trainer
    warnings.filterwarnings("ignore")
    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        for entry in entries:
            with contextlib.redirect_stdout(io.StringIO()):
                results.append(check(entry, data_dir, tune=True))
            r = results[-1]
            print(f"{entry.class_path:40s} {r.error or r.population or ''}", flush=True)
    output = Path(args.output)
    if args.only is None:
        write_text(output, markdown(results))
        return
    apart = f"checked apart (--only), with torch {torch.__version__}"
    for r in results:
        r.entry = replace(r.entry, note="; ".join(n for n in (r.entry.note, apart) if n))
    write_text(output, replace_rows(output.read_text(), markdown(results)))


def replace_rows(table: str, rows_from: str) -> str:
    """``table`` with each class's row replaced by its row in ``rows_from``."""
    new = {line.split("`")[1]: line for line in rows_from.splitlines() if line.startswith("| `")}
    return "\n".join(
        new.get(line.split("`")[1], line) if line.startswith("| `") else line
        for line in table.split("\n")
    )


if __name__ == "__main__":
    main()
