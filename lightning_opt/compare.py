"""``compare``: a seed note's experiment as one command, made sound.

For each arm: tune on the validation split (the ``tune`` machinery, same budget and sampler seed
for every arm), retrain the best hyperparameters over several seeds (each seed changes
initialisation and data order, never the split), evaluate the untouched test set once per run,
then report means with confidence intervals and the differences between arms.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt import report, report_page, stats
from lightning_opt.callbacks import GradientClippingCallback
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.models import resolve_net
from lightning_opt.optim.registry import optimizer_class, optimizer_config
from lightning_opt.optim.schedulers import resolve_scheduler
from lightning_opt.parsing import UsageError, optimizer_dict, run_name
from lightning_opt.runs import (
    QUIET_TRAINER,
    build_model,
    build_population,
    build_trainer,
    callback_class,
    check_run_loggers,
    check_writable,
    chunk_where_invisible,
    clipping_callbacks,
    model_arguments,
    population_blocker,
    quiet_lightning,
    run_loggers,
    save_final_checkpoint,
    save_member_checkpoint,
    scheduler_dict,
    trainer_arguments,
    with_values,
)
from lightning_opt.study import original_number
from lightning_opt.training import NonFiniteLossError
from lightning_opt.trials import options_from_config, resolve_search_space
from lightning_opt.tune import (
    EXPERIMENT_KEYS,
    TuneCLI,
    check_study,
    differences,
    mismatch_message,
    open_study_storage,
    parse,
    run_fingerprint,
    run_study,
    write_fit_config,
)

ARM_KEYS = {"name", "optimizer", "lr_scheduler", "model", "callbacks", "search_space"}


class CompareCLI(TuneCLI):
    """``tune``'s options plus the experiment's: arms, seeds, tuning epochs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(output_dir="lightning_logs/compare")  # <output_dir>/<experiment>/
        group = parser.add_argument_group("Experiment")
        group.add_argument("--experiment", type=str, default="experiment",
                           help="Name; outputs go to <output_dir>/<experiment>/.")  # fmt: skip
        group.add_argument(
            "--arms", type=list[dict[str, Any]], default=[],
            help="Each arm: {name, optimizer (a short name, a class path or {class_path, "
            "init_args}), lr_scheduler (the same; null: none), model: {...}, callbacks: [...], "
            "search_space: [...]}.",
        )  # fmt: skip
        group.add_argument("--seeds", type=int, default=5,
                           help="Final runs per arm, seeded seed_everything, +1, ...")  # fmt: skip
        group.add_argument("--tune_max_epochs", type=int, default=25,
                           help="Epochs per tuning trial (trainer.max_epochs: final runs).")  # fmt: skip
        group.add_argument(
            "--robustness", type=bool, default=True,
            help="When tune_max_epochs differs from trainer.max_epochs, also re-tune each arm at "
            "the finals' budget and re-run its finals (a robustness check of the verdict).",
        )  # fmt: skip
        group.add_argument(
            "--population_finals", type=bool, default=True,
            help="Train an arm's final seeds at once as one population (the same numbers as "
            "separate runs, to float rounding); false: one run per seed.",
        )  # fmt: skip


def validate_arms(config: Any) -> list[dict[str, Any]]:
    """The arms as plain dicts, checked: one clear error before any training."""
    arms = [dict(a) for a in (config.arms or [])]
    if not arms:
        raise ValueError("the experiment has no arms: list them under `arms:` in its config")
    for key in ("seeds", "tune_max_epochs"):
        if config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config[key]}")
    if not config.trainer.max_epochs or config.trainer.max_epochs < 1:
        raise ValueError(
            f"trainer.max_epochs must be a positive integer, got {config.trainer.max_epochs}"
        )
    names = []
    for arm in arms:
        unknown = set(arm) - ARM_KEYS
        if unknown:
            raise ValueError(
                f"arm {arm.get('name')!r} has unknown keys {sorted(unknown)}; allowed: {sorted(ARM_KEYS)}"
            )
        name = arm.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"arm names are letters, digits, '_', '-' or '.', got {name!r}")
        names.append(name)
        try:
            if "optimizer" in arm:
                optimizer_class(optimizer_config(arm["optimizer"]))
            resolve_scheduler(arm.get("lr_scheduler"))
        except ValueError as err:
            raise ValueError(f"arm {name!r}: {err}") from None
        for callback in arm.get("callbacks") or []:
            try:
                cls = callback_class(dict(callback))
            except ValueError as err:
                raise ValueError(f"arm {name!r}: {err}") from None
            if not (isinstance(cls, type) and issubclass(cls, Callback)):
                raise ValueError(
                    f"arm {name!r}: callbacks are {{class_path, init_args}} of Lightning "
                    f"Callback classes, got {dict(callback).get('class_path', callback)}"
                )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicated)}")
    return arms


def arm_config(base: Any, arm: dict[str, Any], max_epochs: int) -> Any:
    """The fit/tune config of one arm: the shared config with the arm's settings on top."""
    cfg = copy.deepcopy(base)
    if "optimizer" in arm:
        resolved = optimizer_config(arm["optimizer"])
        cfg.optimizer = Namespace(
            class_path=resolved["class_path"], init_args=Namespace(**resolved["init_args"])
        )
    for key, value in (arm.get("model") or {}).items():
        if key == "optimizer":
            raise ValueError(f"arm {arm['name']!r}: set the optimizer with the arm's `optimizer:`")
        if key in ("input_size", "num_classes"):
            raise ValueError(f"arm {arm['name']!r}: model.{key} follows the data; set data.*")
        if key not in cfg.model:
            raise ValueError(f"arm {arm['name']!r}: the model has no setting {key!r}")
        if key == "net":  # the arm's own net, every argument spelled out
            try:
                resolved = resolve_net(value)[1]
            except ValueError as err:
                raise ValueError(f"arm {arm['name']!r}: {err}") from None
            value = Namespace(
                class_path=resolved["class_path"], init_args=Namespace(**resolved["init_args"])
            )
        cfg.model[key] = value
    # The experiment's own callbacks run in every arm; each arm adds its own.
    cfg.trainer.callbacks = [
        *(cfg.trainer.get("callbacks") or []),
        *(
            Namespace(class_path=c["class_path"], init_args=Namespace(**(c.get("init_args") or {})))
            for c in (arm.get("callbacks") or [])
        ),
    ]
    if "lr_scheduler" in arm:  # the arm's own schedule (null: none) replaces the experiment's
        scheduler = resolve_scheduler(arm["lr_scheduler"])
        cfg.lr_scheduler = None if scheduler is None else Namespace(
            class_path=scheduler[1]["class_path"], init_args=Namespace(**scheduler[1]["init_args"])
        )  # fmt: skip
    cfg.search_space = arm.get("search_space")
    cfg.trainer.max_epochs = max_epochs
    return cfg


class EpochHistory(Callback):
    """Validation loss and accuracy after every epoch, for the curves of the report, and the
    weights of the epoch with the lowest validation loss (the early-stopping checkpoint)."""

    def __init__(self) -> None:
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []
        self.best_state: dict[str, Any] | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = float(trainer.callback_metrics["val/loss"])
        if self.best_state is None or loss < min(self.val_loss):
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.best_epoch = len(self.val_loss)
        self.val_loss.append(loss)
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


def _clip_report(clipper: Any, member: int | None = None) -> dict[str, Any]:
    """A clipping callback's per-epoch clip rate and the quantiles of what it compared."""
    position = 0 if member is None else member
    quantiles = clipper.compared_quantiles()
    return {
        "fraction_history": [epoch[position] for epoch in clipper.fraction_history],
        "quantity": None
        if quantiles is None
        else {"name": clipper.compared_quantity, "quantiles": quantiles[position]},
    }


def run_final(
    cfg: Any, arm: str, seed: int, exp_dir: Path, data: MNIST1DDataModule
) -> dict[str, Any]:
    """One final run of an arm (resumable: a finished run's result.json is reused)."""
    out = exp_dir / arm / "final" / f"seed_{seed}"
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    cfg = copy.deepcopy(cfg)
    cfg.seed_everything = seed
    seed_everything(seed, verbose=False)
    model = build_model(cfg)
    history = EpochHistory()
    start = time.perf_counter()
    loggers = run_loggers(cfg, exp_dir / arm, "final", f"seed_{seed}")
    trainer = build_trainer(cfg, loggers or False, [history])
    trainer.fit(model, datamodule=data)
    tested = trainer.test(model, datamodule=data, verbose=False)[0]  # the final weights, once
    checkpoint = save_final_checkpoint(trainer, out)
    # The early-stopping view: the weights of the lowest val/loss epoch, tested once too (by a
    # Trainer without loggers: the run's logs keep the last epoch's test metrics).
    model.load_state_dict(history.best_state)
    quiet = Trainer(logger=False, **QUIET_TRAINER)
    best = quiet.test(model, datamodule=data, verbose=False)[0]
    clippers = [c for c in trainer.callbacks if isinstance(c, GradientClippingCallback)]
    internals = dict(model.internals_history)
    clip = _clip_report(clippers[0]) if clippers else None
    if clip:
        internals["clip/fraction_clipped"] = clip["fraction_history"]
    result = final_record(
        cfg, seed, history.val_loss, history.val_acc, tested, best,
        clip_rate=clippers[0].clip_rate() if clippers else None, clip=clip,
        internals=internals, seconds=time.perf_counter() - start, log_dir=out,
        checkpoint=checkpoint,
    )  # fmt: skip
    _write_result(result, out)
    _print_result(arm, result)
    return result


def final_record(
    cfg: Any,
    seed: int,
    val_loss: list[float],
    val_acc: list[float],
    last: dict[str, float],
    best: dict[str, float],
    *,
    clip_rate: float | None,
    clip: dict[str, Any] | None,
    internals: dict[str, list[float]],
    seconds: float,
    log_dir: Path,
    checkpoint: str,
    population: int | None = None,
) -> dict[str, Any]:
    """The one record of a final run (``result.json``), whether it trained alone or as a
    population member: its validation curves, test metrics at the last and at the lowest
    val/loss epoch, clipping activity, internals, and the net it trained."""
    record = {
        "seed": seed,
        "net": net_record(cfg),
        "final_val_loss": val_loss[-1],
        "best_val_loss": min(val_loss),
        "final_val_acc": val_acc[-1],
        "test_loss": float(last["test/loss"]),
        "test_acc": float(last["test/acc"]),
        "test_loss_best_epoch": float(best["test/loss"]),
        "test_acc_best_epoch": float(best["test/acc"]),
        "best_epoch": val_loss.index(min(val_loss)),
        "clip_rate": clip_rate,
        "clip_quantity": clip["quantity"] if clip else None,
        "val_loss_curve": val_loss,
        "val_acc_curve": val_acc,
        "internals": internals,
        "seconds": seconds,
        "log_dir": str(log_dir),
        "checkpoint": checkpoint,
    }
    if population is not None:
        record["population"] = population
    return record


def net_record(cfg: Any) -> dict[str, Any]:
    """The net a config trains: ``{class_path, init_args}`` with every argument spelled out."""
    return resolve_net(model_arguments(cfg)["net"])[1]


@contextlib.contextmanager
def _ctrl_c_resumable() -> Iterator[None]:
    """Ctrl-C inside a Trainer's ``fit``/``test``: Lightning shuts down and exits with 1 from
    its ``except KeyboardInterrupt``; raise KeyboardInterrupt instead, so compare says how to
    resume and exits with 130."""
    try:
        yield
    except SystemExit as exit_:
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it now
        raise KeyboardInterrupt from None


def _clear_unfinished(out: Path) -> None:
    """A final run that was killed or interrupted left logs but no result.json: it runs again
    from the start, so its partial logs go (TensorBoard would show both runs' curves)."""
    if out.exists() and not (out / "result.json").exists():
        shutil.rmtree(out)


def _write_result(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)  # atomic: an interrupted write never leaves half a result


def _print_result(arm: str, result: dict[str, Any]) -> None:
    timing = f"{result['seconds']:.1f} s"
    if result.get("population"):
        timing = f"population of {result['population']}: {timing}"
    print(
        f"final {arm} seed {result['seed']}: val/loss {result['final_val_loss']:.4f}  "
        f"test/loss {result['test_loss']:.4f}  test/acc {result['test_acc']:.4f}  "
        f"({timing})",
        flush=True,
    )


def run_finals(
    cfg: Any, arm: str, seeds: list[int], exp_dir: Path, data: MNIST1DDataModule,
    population: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """An arm's final runs, one per seed; resumable: finished seeds' result.json are reused.

    With ``population`` the seeds still to run train at once as one population; each member
    logs to the directory its own run would (``<arm>/final/seed_<s>``).
    """
    done = {}
    for seed in seeds:
        path = exp_dir / arm / "final" / f"seed_{seed}" / "result.json"
        if path.exists():
            done[seed] = json.loads(path.read_text())
    todo = [s for s in seeds if s not in done]
    for seed in todo:
        _clear_unfinished(exp_dir / arm / "final" / f"seed_{seed}")
    with _ctrl_c_resumable():
        if todo and population:
            for result in run_final_population(cfg, arm, todo, exp_dir, data):
                done[result["seed"]] = result
        for seed in todo if not population else []:
            done[seed] = run_final(cfg, arm, seed, exp_dir, data)
    return [done[s] for s in seeds]


def run_final_population(
    cfg: Any, arm: str, seeds: list[int], exp_dir: Path, data: MNIST1DDataModule
) -> list[dict[str, Any]]:
    """Final runs of ``seeds`` trained as one population; the result of each seed."""
    model = build_population(cfg, seeds)
    model.track_best = True
    model.member_loggers = [
        run_loggers(cfg, exp_dir / arm, "final", f"seed_{seed}") for seed in seeds
    ]
    start = time.perf_counter()
    trainer = build_trainer(cfg, False)
    with contextlib.suppress(NonFiniteLossError):  # every member failed: reported below
        trainer.fit(model, datamodule=data)
    checkpoints, last, best = {}, {}, {}
    if model.num_members:
        trainer.test(model, datamodule=data, verbose=False)  # the final weights, once
        last = dict(model.test_results)
        for member in model.member_ids:
            out = exp_dir / arm / "final" / f"seed_{seeds[member]}"
            checkpoints[member] = save_member_checkpoint(model, member, out)
        # The early-stopping view: each member's lowest val/loss epoch, tested without loggers.
        model.use_best_weights()
        loggers, model.member_loggers = model.member_loggers, None
        trainer.test(model, datamodule=data, verbose=False)
        model.member_loggers = loggers
        best = dict(model.test_results)
    seconds = time.perf_counter() - start
    clippers = [c for c in trainer.callbacks if isinstance(c, GradientClippingCallback)]
    rates = dict(zip(model.member_ids, clippers[0].clip_rates(), strict=True)) if clippers else {}
    results, failed = [], []
    for member, seed in enumerate(seeds):
        if member in model.dropped:
            failed.append(f"seed {seed}: {model.dropped[member]}")
            continue
        history = model.history[member]
        internals = {n: v for n, v in history.items() if n.startswith("optim/")}
        clip = _clip_report(clippers[0], model.member_ids.index(member)) if clippers else None
        if clip:
            internals["clip/fraction_clipped"] = clip["fraction_history"]
        result = final_record(
            cfg, seed, history["val/loss"], history["val/acc"], last[member], best[member],
            clip_rate=rates.get(member), clip=clip, internals=internals, seconds=seconds,
            log_dir=exp_dir / arm / "final" / f"seed_{seed}", checkpoint=checkpoints[member],
            population=len(seeds),
        )  # fmt: skip
        _write_result(result, Path(result["log_dir"]))
        _print_result(arm, result)
        results.append(result)
    if failed:
        raise NonFiniteLossError(
            f"arm {arm!r} final runs failed ({'; '.join(failed)}); the other seeds' results "
            "are kept"
        )
    return results


def run_compare(args: list[str]) -> Path:
    """``python -m lightning_opt compare --config EXPERIMENT.yaml``; the experiment directory."""
    quiet_lightning()
    cli = parse(args, CompareCLI)
    config = cli.config
    try:
        plans = plan_arms(config, cli.parser)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    exp_dir = Path(config.output_dir) / config.experiment
    try:
        check_writable(exp_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_experiment_record(exp_dir, run_fingerprint(cli.parser, config), config.overwrite)
    data = MNIST1DDataModule(**config.data.as_dict())
    data.prepare_data()

    summary: dict[str, Any] = {}
    try:
        for plan in plans:
            summary[plan.name] = run_arm(cli.parser, config, plan, plan.name, exp_dir, data)
            if plan.retune is not None:  # the robustness check: tuned at the finals' budget
                summary[plan.name]["retuned"] = run_arm(
                    cli.parser, config, plan.retune, f"{plan.name}/retuned", exp_dir, data
                )
    except KeyboardInterrupt:  # in the finals (tuning says so itself and exits)
        print(
            "interrupted: finished tuning trials and final runs are kept; run the same command "
            "again to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    results = report.summarize(config.experiment, summary, _settings(config))
    report_page.write_all(exp_dir, results)
    print(report.markdown_table(results))
    for line in results["verdicts"]:
        print(line)
    for line in results.get("warnings", []):
        print(f"warning: {line}")
    print(
        f"report: {exp_dir / 'results.md'}, {exp_dir / 'comparison.html'}, {exp_dir / 'comparison.png'}"
    )
    return exp_dir


def run_arm(
    parser: LightningArgumentParser, config: Any, plan: ArmPlan, label: str, exp_dir: Path,
    data: MNIST1DDataModule,
) -> dict[str, Any]:  # fmt: skip
    """Tune one arm, run its finals over the seeds, and summarise both (``label``: where its
    finals go under the experiment, ``<arm>`` or ``<arm>/retuned``)."""
    epochs = plan.tune_cfg.trainer.max_epochs
    print(f"== arm {label}: tuning ({plan.options.n_trials} trials x {epochs} epochs)")
    study = run_study(plan.tune_cfg, plan.options)
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        raise ValueError(f"arm {label!r}: no tuning trial completed; widen the search space")
    best = study.best_trial
    print(f"== arm {label}: {config.seeds} final runs x {config.trainer.max_epochs} epochs "
          f"with {best.params}")  # fmt: skip
    tuned_cfg = with_values(plan.final_cfg, best.params)
    seeds = [config.seed_everything + s for s in range(config.seeds)]
    chunk_where_invisible(tuned_cfg, data)  # the arm's own callbacks decide
    runs = run_finals(tuned_cfg, label, seeds, exp_dir, data, plan.population_finals)
    for run in runs:  # each final run's fit config, next to its checkpoint
        seed_cfg = copy.deepcopy(tuned_cfg)
        seed_cfg.seed_everything = run["seed"]
        header = (
            f"# Final run of arm {label!r} of experiment {config.experiment!r}, seed "
            f"{run['seed']}.\n# Its weights: python -m lightning_opt test --config "
            f"{run['log_dir']}/config.yaml --ckpt_path {run['checkpoint']}\n"
        )
        write_fit_config(parser, seed_cfg, Path(run["log_dir"]) / "config.yaml", header)
    # In the order, and under the numbers, of an uninterrupted study: a re-run stands for the
    # trial it replaces.
    values = [t.value for t in sorted(completed, key=original_number)]
    return {
        "optimizer": run_name(tuned_cfg),
        "optimizer_class": optimizer_dict(tuned_cfg)["class_path"],
        "net": net_record(tuned_cfg),
        "lr_scheduler": (scheduler_dict(tuned_cfg) or {}).get("class_path"),
        "clipping": [
            c.class_path.rsplit(".", 1)[-1]
            for c in tuned_cfg.trainer.callbacks
            if c in clipping_callbacks(tuned_cfg)
        ],
        "tuned": best.params,
        "tune_max_epochs": epochs,
        "tuning": {
            "study": plan.options.study_name,
            "best_trial": original_number(best),
            "best_val_loss": best.value,
            "complete": len(completed),
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "values": values,
            "search_space": [p.as_dict() for p in resolve_search_space(plan.tune_cfg)],
        },
        "runs": runs,
    }


@dataclass(frozen=True)
class ArmPlan:
    """One arm, checked and ready: its tuning and final configs and study options; ``retune``
    is the same arm tuned at the finals' budget (the robustness check), when it runs."""

    name: str
    tune_cfg: Any
    final_cfg: Any
    options: Any
    population_finals: bool
    retune: ArmPlan | None = None


def check_experiment_record(exp_dir: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Refuse to reuse an experiment's results (tuning studies, final runs) made with other
    settings, or start it afresh with ``overwrite``; record the settings of a new one."""
    path = exp_dir / "experiment.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != json.loads(json.dumps(fingerprint)):
            if not overwrite:
                diffs = differences(recorded, json.loads(json.dumps(fingerprint)))
                raise UsageError(
                    mismatch_message(f"experiment {exp_dir.name!r}", diffs, "--experiment")
                )
            shutil.rmtree(exp_dir)
    elif exp_dir.exists() and any((exp_dir).iterdir()) and not overwrite:
        raise UsageError(
            f"{exp_dir} holds results of an experiment with no record of its settings (made by "
            "an older version); choose another --experiment, or pass --overwrite"
        )
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=1))
    tmp.replace(path)


def plan_arms(config: Any, parser: LightningArgumentParser | None = None) -> list[ArmPlan]:
    """Every arm's plan; everything that can fail is checked here, before the first trial of
    the first arm (``ValueError``, one line)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.experiment) or set(config.experiment) == {"."}:
        raise ValueError(
            f"experiment names are letters, digits, '_', '-' or '.', got {config.experiment!r}"
        )
    arms = validate_arms(config)
    base_options = options_from_config(config)
    exp_dir = Path(config.output_dir) / config.experiment
    storage = config.storage or f"sqlite:///{exp_dir / 'optuna.db'}"
    if config.storage:  # a database of its own: reachable before anything trains
        open_study_storage(replace(base_options, storage=storage))
    retune = config.robustness and config.tune_max_epochs != config.trainer.max_epochs
    plans = []
    for arm in arms:
        name = arm["name"]
        final_cfg = arm_config(config, arm, config.trainer.max_epochs)
        try:
            population = _check_finals(config, name, final_cfg)
            plan = None
            budgets = [(config.tune_max_epochs, "")]
            if retune:
                budgets.append((config.trainer.max_epochs, ".retuned"))
            for epochs, suffix in reversed(budgets):
                tune_cfg = arm_config(config, arm, epochs)
                # Named after the experiment too: a shared storage holds many experiments.
                study = f"{config.experiment}.{name}{suffix}"
                options = replace(
                    base_options, study_name=study, output_dir=str(exp_dir), storage=storage,
                    log_dir_name=f"{name}/retuned" if suffix else name,
                )  # fmt: skip
                options = check_study(tune_cfg, options)
                if parser is not None:
                    fingerprint = run_fingerprint(parser, tune_cfg, drop=EXPERIMENT_KEYS)
                    options = replace(options, fingerprint=fingerprint)
                plan = ArmPlan(name, tune_cfg, final_cfg, options, population, plan)
        except ValueError as err:
            raise ValueError(f"arm {name!r}: {err}") from None
        plans.append(plan)
    return plans


def _check_finals(config: Any, name: str, final_cfg: Any) -> bool:
    """Check an arm's final runs; whether they train as one population."""
    build_model(final_cfg)
    check_run_loggers(final_cfg)
    population = config.population_finals
    blocker = population_blocker(final_cfg) if population else None
    if blocker is not None:
        print(f"arm {name}: {blocker}: its final runs train one seed at a time", flush=True)
        population = False
    if population:
        model = build_population(final_cfg, [0, 1])
        model.check_clipping(trainer_arguments(final_cfg)["callbacks"])
    return population


def _settings(config: Any) -> dict[str, Any]:
    from importlib.metadata import version

    import lightning_opt

    return {
        "tune_max_epochs": config.tune_max_epochs,
        "max_epochs": config.trainer.max_epochs,
        "robustness": config.robustness,
        "split_seed": config.data.split_seed,
        "versions": {
            "lightning_opt": lightning_opt.__version__,
            **{name: version(name) for name in ("torch", "lightning", "optuna", "mnist1d")},
        },
        "seeds": [config.seed_everything + s for s in range(config.seeds)],
        "tuning_trials": config.n_trials,
        "tuning_epochs": config.tune_max_epochs,
        "final_epochs": config.trainer.max_epochs,
        "objective": config.objective,
        "tuning_population": config.population,
        "population_finals": config.population_finals,
        "pruner": config.pruner,
        "sampler_seed": config.seed,
        "data": config.data.as_dict(),
        "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA,
    }
