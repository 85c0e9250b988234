"""``benchmark``: an optimizer against tuned baselines across a suite of workloads, scored as
AlgoPerf scores (``lightning_opt.benchmark.scoring``).

A suite is a config (``configs/benchmarks/mnist1d.yaml``): its workloads (a net, a dataset
variant, a budget in epochs and a validation-loss target), its baselines (compare arms), the
tuning protocol every submission gets (``n_trials`` of its search space per workload, the same
sampler seed) and the seeds of the final runs. The candidate is the command line's optimizer
(with its scheduler and clipping rules, as ``fit`` takes them), or several: ``--candidates``.

Each workload is one ``compare`` experiment under ``<output_dir>/<benchmark>/``, written out as
``<workload>.yaml`` and run by compare's own code, so every guarantee of compare holds for each:
everything checked before the first trial (every workload's plan is checked before any trains),
the same numbers after Ctrl-C or a kill, a changed setting refused with the first differences,
tuning trials and final runs claimable by every process sharing the storage. Every benchmark
under one output directory shares one storage, its arms' studies named by their settings
(compare's ``share_arms``): an identical baseline in another benchmark is trained once, its
logs and checkpoints in ``<output_dir>/shared_arms/<workload>/<arm>.<digest>/`` (never under one
benchmark, whose ``--overwrite`` would delete what the others' results point at).
The benchmark then reads each experiment's results.json and scores: time to the target in
optimizer steps per seed (``inf``: did not reach) and prorated wall time, the performance
profile and score across workloads, each candidate-baseline test-loss comparison with Holm's
correction over every test of the benchmark, and a verdict; ``leaderboard.md``,
``leaderboard.html`` and ``leaderboard.json``.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt.benchmark import leaderboard as leaderboards
from lightning_opt.benchmark import targets, timing
from lightning_opt.config.fingerprints import (
    NOT_IN_FINGERPRINT,
    changed,
    run_fingerprint,
    without,
)
from lightning_opt.config.parsing import UsageError, run_name
from lightning_opt.core import progress
from lightning_opt.core.atomic import no_trace_if_refused, write_text
from lightning_opt.core.names import check_name, overlap
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.experiments.compare import (
    CompareCLI,
    Experiment,
    plan_experiment,
    run_experiment,
    units_planned,
)
from lightning_opt.experiments.plans import default_shared_arms_dir, refused_record
from lightning_opt.optim.schedulers import resolve_scheduler, scheduler_arguments
from lightning_opt.reports import page as report_page
from lightning_opt.runs.build import check_writable, quiet_lightning
from lightning_opt.tuning.storage import sqlite_url
from lightning_opt.tuning.tune import parse

#: Keys of a workload entry.
WORKLOAD_KEYS = {"name", "model", "data", "epochs", "target", "eval_every", "target_setting"}
#: The suite a command line without ``--config`` runs.
DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "configs" / "benchmarks" / "mnist1d.yaml"


class BenchmarkCLI(CompareCLI):
    """compare's options plus the suite's: workloads and baselines."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        # No budget of its own: each workload's epochs; a --trainer.max_epochs given caps them.
        parser.set_defaults({"trainer.max_epochs": None})
        parser.set_defaults(output_dir="lightning_logs/benchmark")
        # AlgoPerf's external tuning: 3 studies x 5 quasi-random trials, each trial its own
        # seed and whole budget.
        parser.set_defaults({"sampler": "sobol", "n_trials": 15, "study_size": 5,
                             "trial_seeds": "distinct", "pruner": "none", "population": 15})  # fmt: skip
        group = parser.add_argument_group("Benchmark")
        group.add_argument("--benchmark", type=str, default="benchmark",
                           help="Name; outputs go to <output_dir>/<benchmark>/.")  # fmt: skip
        group.add_argument(
            "--protocol", type=Literal["external_tuning", "compare"], default="external_tuning",
            help="external_tuning: AlgoPerf's ruleset, times from n_trials/study_size studies "
            "of quasi-random trials (each study's fastest trial, the median over studies). "
            "compare: tuned on validation loss, times from the final runs over seeds.",
        )  # fmt: skip
        group.add_argument(
            "--workloads", type=list[dict[str, Any]], default=[],
            help="Each: {name, model: {...}, data: {...}, epochs, target (validation loss)}.",
        )  # fmt: skip
        group.add_argument(
            "--baselines", type=list[dict[str, Any]], default=[],
            help="Each a compare arm: {name, optimizer, lr_scheduler, model, callbacks, "
            "search_space}; a scheduler taking total_steps gets each workload's.",
        )  # fmt: skip
        group.add_argument(
            "--set_targets", type=bool, nargs="?", const=True, default=False,
            help="Set each workload's target and budget by AlgoPerf's target-setting procedure "
            "(target_setting), write <output_dir>/<benchmark>/targets/targets.yaml, and stop.",
        )  # fmt: skip
        group.add_argument(
            "--target_setting", type=dict[str, Any], default={},
            help="{setters: [baseline names] (default: every baseline), n_trials: 30, seeds: 5, "
            "budget_factor: 1.5}: see docs/benchmark.md.",
        )  # fmt: skip
        group.add_argument("--candidate", type=str, default=None,
                           help="The candidate's name (default: the optimizer's short name).")  # fmt: skip
        group.add_argument(
            "--candidates", type=list[dict[str, Any]], default=[],
            help="Several candidates at once, each an arm as the baselines are (instead of the "
            "command line's optimizer).",
        )  # fmt: skip


def run_benchmark(args: list[str]) -> Path:
    """``python -m lightning_opt benchmark --config SUITE.yaml --optimizer CLASS``; the
    benchmark's directory."""
    quiet_lightning()
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        if not DEFAULT_SUITE.exists():
            raise UsageError(f"give a suite with --config (the default {DEFAULT_SUITE} is gone)")
        args = ["--config", str(DEFAULT_SUITE), *args]  # the default suite
    cli = parse(args, BenchmarkCLI)
    config = cli.config
    if config.set_targets:
        return _set_targets(cli.parser, config, args)
    try:
        with no_trace_if_refused(Path(config.output_dir) / str(config.benchmark)):
            bench_dir, candidates, workloads = _plan(cli.parser, config, _names_candidate(args))
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    experiments, per_step, results_of = {}, {}, {}
    start = time.perf_counter()
    units = sum(units_planned(planned) for _, _, planned in workloads)
    with progress.command(units):
        for number, (workload, path, planned) in enumerate(workloads, 1):
            elapsed = time.perf_counter() - start
            pace = "" if number == 1 else (
                f"; {elapsed:.0f} s so far, ~{elapsed / (number - 1) * (len(workloads) - number + 1):.0f}"
                " s left at the pace of the workloads so far"
            )  # fmt: skip
            progress.say(f"=== workload {workload['name']} ({path}; {number} of "
                         f"{len(workloads)}{pace})")  # fmt: skip
            experiments[workload["name"]] = run_experiment(planned)
            results = json.loads((experiments[workload["name"]] / "results.json").read_text())
            results_of[workload["name"]] = results
            per_step[workload["name"]] = timing.time_submissions(workload, planned.plans, results)
    board = leaderboards.leaderboard(
        config, candidates, [w for w, _, _ in workloads], experiments, per_step
    )
    leaderboards.write_leaderboard(bench_dir, board)
    for name, exp_dir in experiments.items():  # each workload's report quotes the board's family
        results = results_of[name]
        results["benchmark"] = {
            "name": board["benchmark"], "family": len(board["tests"]),
            "tests": [{k: t[k] for k in ("candidate", "baseline", "p_value", "p_holm",
                                         "significant")}
                      for t in leaderboards.strict(board["tests"]) if t["workload"] == name],
        }  # fmt: skip
        report_page.write_all(exp_dir, results)
    print(leaderboards.markdown(board))
    print(f"leaderboard: {bench_dir / 'leaderboard.md'}, {bench_dir / 'leaderboard.html'}")
    return bench_dir


def _set_targets(parser: LightningArgumentParser, config: Any, args: list[str]) -> Path:
    """``benchmark --set_targets``: the target-setting experiments (``targets``); the path of
    the targets.yaml written."""
    try:
        if _names_candidate(args) or config.candidates:
            raise ValueError(
                "--set_targets runs the suite's target-setting baselines only: leave out the "
                "candidate (--optimizer, --candidates)"
            )
        suite = _suite(parser, config)
        check_writable(suite.bench_dir)
        checked = _checked_workloads(suite.workloads, suite.cap)
        targets.settings(config.target_setting, suite.baselines)  # before anything trains
        return targets.set_targets(config, suite, checked, _plan_workloads)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None


def _names_candidate(args: list[str]) -> bool:
    """Whether the command line sets the candidate itself (its optimizer, schedule or name)."""
    flags = ("--optimizer", "--lr_scheduler", "--candidate")
    return any(a.split("=")[0] in flags or a.startswith(("--optimizer.", "--lr_scheduler."))
               for a in args)  # fmt: skip


def _plan(
    parser: LightningArgumentParser, config: Any, names_candidate: bool = False
) -> tuple[Path, list[str], list[tuple[dict, Path, Experiment]]]:
    """Every workload's compare config, written under the benchmark's directory and checked
    (compare's ``plan_arms``) before anything trains; the candidates' names."""
    suite = _suite(parser, config)
    name, base, workloads, baselines = suite.name, suite.base, suite.workloads, suite.baselines
    named = suite.named
    command_line = _candidate_arm(base, config)
    changed = _changed(config, suite.defaults, "optimizer", "lr_scheduler")
    if named and (names_candidate or config.candidate or changed):
        raise ValueError(
            "give the candidates either as --candidates (arms) or as the command line's "
            "optimizer (--optimizer, --lr_scheduler, --candidate), not both"
        )
    candidates = [dict(c) for c in named] or [command_line]
    bench_dir = suite.bench_dir
    check_writable(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    candidates, added = _board_candidates(bench_dir, base, workloads, baselines, candidates,
                                          bool(config.overwrite), config.protocol)  # fmt: skip
    if added:  # every workload's experiment gains arms: its record and report start afresh
        base["overwrite"] = True
    checked = _checked_workloads(workloads, suite.cap)
    planned = _plan_workloads(name, base, checked, [*candidates, *baselines], bench_dir)
    write_text(bench_dir / BOARD_RECORD, json.dumps(
        {"suite": _suite_record(base, workloads, baselines, config.protocol),
         "candidates": candidates}, indent=1,
        default=str,
    ))  # fmt: skip
    return bench_dir, [c["name"] for c in candidates], planned


@dataclass
class _Suite:
    """A suite's settings as every workload's compare config starts from (``base``)."""

    name: str
    base: dict[str, Any]
    workloads: list[dict[str, Any]]
    baselines: list[dict[str, Any]]
    named: list[dict[str, Any]]
    defaults: Any
    cap: int | None
    bench_dir: Path


def _suite(parser: LightningArgumentParser, config: Any) -> _Suite:
    """The suite checked (one line each) and its common compare settings: one storage and one
    shared-arms folder for every benchmark under the output directory."""
    name = check_name("benchmark", config.benchmark, "--benchmark")
    if not config.workloads:
        raise ValueError(
            f"a benchmark needs workloads: give a suite (--config {DEFAULT_SUITE}) or "
            "workloads: [{name, model, data, epochs, target}]"
        )
    if not config.baselines:
        raise ValueError("a benchmark needs baselines: compare arms to score the candidate against")
    defaults = parser.get_defaults()
    if config.tune_max_epochs != defaults.tune_max_epochs:
        raise ValueError(
            f"--tune_max_epochs {config.tune_max_epochs}: a benchmark tunes and trains each "
            "workload for its own budget; set workloads[].epochs (or --trainer.max_epochs N "
            "to cap every budget at N)"
        )
    cap = config.trainer.max_epochs  # None: not given
    if cap is not None and (isinstance(cap, bool) or cap < 1):
        raise ValueError(
            f"--trainer.max_epochs {cap}: it caps every workload's budget, so it is a positive "
            "integer (leave it out to train each workload for its own epochs)"
        )
    if cap is not None:
        print(f"trainer.max_epochs {cap} caps every workload's budget", flush=True)
    own_nets = [w.get("name") for w in config.workloads if (dict(w).get("model") or {}).get("net")]
    if own_nets and config.model.get("net") != defaults.model.get("net"):
        raise ValueError(
            f"--model.net: the workloads {', '.join(map(str, own_nets))} set their own net "
            "(workloads[].model.net), which a --model.net would not change; set the net there"
        )
    _check_protocol(config)
    base = yaml.safe_load(parser.dump(config, skip_none=False, skip_validation=True))
    baselines, workloads = base.get("baselines") or [], base.get("workloads") or []
    named = base.get("candidates") or []
    for key in ("benchmark", "workloads", "baselines", "candidate", "candidates", "config", "arms",
                "experiment", "protocol", "set_targets", "target_setting"):  # fmt: skip
        base.pop(key, None)
    # One storage for every benchmark under output_dir, arms named by their settings: a
    # baseline (or candidate) identical in another benchmark is trained once.
    # Their logs and checkpoints too: in one folder per arm study, which a benchmark's
    # --overwrite never deletes (another benchmark's results may point at them).
    base["storage"] = base.get("storage") or sqlite_url(Path(config.output_dir) / "optuna.db")
    base["share_arms"] = True
    shared = default_shared_arms_dir(base.get("shared_arms_dir"), config.output_dir)
    base["shared_arms_dir"] = str(shared)
    bench_dir = Path(config.output_dir) / name
    if overlap(bench_dir, shared):  # --overwrite of either would delete the other's runs
        raise ValueError(
            f"--benchmark {name}: its folder {bench_dir} and the shared arms' folder {shared} "
            "(--shared_arms_dir) overlap, so --overwrite of this benchmark would delete runs "
            "other benchmarks' results point at; choose another --benchmark or --shared_arms_dir"
        )
    return _Suite(name, base, workloads, baselines, named, defaults, cap, bench_dir)


def _checked_workloads(workloads: list[Any], cap: int | None) -> list[dict[str, Any]]:
    """Each workload checked (``_check_workload``), names unique, budgets capped at ``cap``."""
    checked, seen = [], set()
    for entry in workloads:
        workload = _check_workload(entry)
        if cap is not None:
            workload["epochs"] = min(workload["epochs"], cap)
        if workload["name"] in seen:
            raise ValueError(f"workload names must be unique; repeated: {workload['name']}")
        seen.add(workload["name"])
        checked.append(workload)
    return checked


def _plan_workloads(
    name: str, base: dict[str, Any], workloads: list[dict[str, Any]], arms: list[dict[str, Any]],
    folder: Path,
) -> list[tuple[dict, Path, Experiment]]:  # fmt: skip
    """Each workload's compare experiment of ``arms``, planned and checked against its recorded
    results before any trains; the YAMLs written (``<folder>/<workload>.yaml``) only once every
    workload is planned."""
    planned = []
    for workload in workloads:
        experiment, steps = _experiment(base, workload, arms, folder)
        path = folder / f"{workload['name']}.yaml"
        text = yaml.safe_dump(experiment, sort_keys=False)
        # Planned from a file of its own beside the real one (relative paths resolve alike).
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".", suffix=".yaml") as tmp:
            tmp.write(text)
            tmp.flush()
            try:
                experiment_plan = plan_experiment(["--config", tmp.name])
                cfg = experiment_plan.config
                refused_record(Path(cfg.output_dir) / cfg.experiment,
                               run_fingerprint(experiment_plan.parser, cfg), cfg.overwrite,
                               f"benchmark {name!r}: workload", "--benchmark")  # fmt: skip
            except UsageError as err:
                message = str(err)
                if not message.startswith(f"benchmark {name!r}"):
                    message = f"workload {workload['name']!r}: {message}"
                raise ValueError(message) from None
        workload["steps_per_epoch"] = steps
        planned.append((workload, path, experiment_plan, text))
    for _, path, _, text in planned:
        write_text(path, text)
    return [(workload, path, plan) for workload, path, plan, _ in planned]


#: A benchmark folder's record: its suite's settings and every candidate benchmarked into it.
BOARD_RECORD = "benchmark.json"
#: What varies between candidates of one board, or says where and how a command runs.
_NOT_SUITE = ("optimizer", "lr_scheduler", "search_space", "overwrite", "storage",
              "shared_arms_dir", "output_dir", "share_arms")  # fmt: skip


def _suite_record(
    base: dict[str, Any], workloads: list, baselines: list, protocol: str
) -> dict[str, Any]:
    """The settings every candidate of one leaderboard is benchmarked under: what determines
    their numbers (where runs write and log, and how fast, as ``run_fingerprint`` leaves out)."""
    settings = without(json.loads(json.dumps(base, default=str)),
                       (*_NOT_SUITE, *NOT_IN_FINGERPRINT))  # fmt: skip
    return json.loads(json.dumps(
        {**settings, "protocol": protocol, "workloads": workloads, "baselines": baselines},
        default=str,
    ))  # fmt: skip


def _check_protocol(config: Any) -> None:
    """What the protocol needs of the study settings, before anything trains (one line)."""
    if config.trial_seeds != "distinct":
        raise ValueError(
            f"--trial_seeds {config.trial_seeds}: a benchmark gives each tuning trial a seed of "
            "its own (distinct), so no final run replays the trial it was chosen from"
        )
    if config.protocol != "external_tuning":
        return
    if config.sampler not in ("sobol", "points"):
        raise ValueError(
            f"--sampler {config.sampler}: --protocol external_tuning draws quasi-random points "
            "(sobol) or a submission's fixed list (points), as AlgoPerf's ruleset does; TPE "
            "belongs to --protocol compare"
        )
    if config.pruner != "none":
        raise ValueError(
            f"--pruner {config.pruner}: --protocol external_tuning times every trial to the "
            "target, so each trains its whole budget; give --pruner none (or --protocol compare)"
        )


def _board_candidates(
    bench_dir: Path, base: dict[str, Any], workloads: list, baselines: list,
    candidates: list[dict[str, Any]], overwrite: bool, protocol: str,
) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """One leaderboard per benchmark folder: the candidates benchmarked into it before (same
    suite) and this command's, scored together; the names this command adds. A suite changed
    since is refused (``--overwrite``: the board starts afresh with this command's candidates),
    as is a candidate name benchmarked here with other settings."""
    path = bench_dir / BOARD_RECORD
    now = [json.loads(json.dumps(c, default=str)) for c in candidates]
    if not path.exists() or overwrite:
        return now, []
    recorded = json.loads(path.read_text())
    # A record written before loggers and the like were left out of it still matches.
    changed(f"benchmark {bench_dir.name!r}", without(recorded["suite"], NOT_IN_FINGERPRINT),
            _suite_record(base, workloads, baselines, protocol), False, "--benchmark")  # fmt: skip
    board = list(recorded["candidates"])
    names = {c["name"]: c for c in board}
    added = []
    for candidate in now:
        before = names.get(candidate["name"])
        if before is None:
            board.append(candidate)
            added.append(candidate["name"])
        elif before != candidate:
            raise ValueError(
                f"candidate {candidate['name']!r} was benchmarked in {bench_dir} with other "
                "settings; name this one otherwise (--candidate NAME), or pass --overwrite to "
                "start the board afresh"
            )
    if added:
        shown = ", ".join(c["name"] for c in board if c["name"] not in added)
        print(f"benchmark {bench_dir.name}: {', '.join(added)} joins the board of {shown} "
              "(their runs are reused; each workload's report is rewritten)", flush=True)  # fmt: skip
    return board, added


def _changed(config: Any, defaults: Any, *keys: str) -> bool:
    return any(config.get(key) != defaults.get(key) for key in keys)


def _candidate_arm(base: dict[str, Any], config: Any) -> dict[str, Any]:
    """The command line's optimizer as an arm, with its own scheduler and clipping rules (the
    experiment-wide ones would reach every baseline too)."""
    callbacks = (base.get("trainer") or {}).pop("callbacks", None) or []
    arm = {
        "name": check_name("candidate", config.candidate or run_name(config), "--candidate"),
        "optimizer": base["optimizer"],
        "lr_scheduler": base.pop("lr_scheduler", None),
        "callbacks": callbacks,
    }
    for key in ("search_space", "points"):  # the candidate's own, never the baselines'
        if base.get(key) is not None:
            arm[key] = base.pop(key)
        base.pop(key, None)
    return arm


def _check_workload(entry: Any) -> dict[str, Any]:
    workload = dict(entry)
    unknown = set(workload) - WORKLOAD_KEYS
    if unknown:
        raise ValueError(f"workload keys are {sorted(WORKLOAD_KEYS)}, got {sorted(unknown)}")
    name = check_name("workload", workload.get("name"), "workloads[].name")
    if name.casefold().endswith(".yaml"):  # each workload's compare config is <name>.yaml
        raise ValueError(
            f"workloads[].name {name!r}: a workload's config is written as <name>.yaml beside "
            "its folder, so a name ending in .yaml could be another's; choose another name"
        )
    epochs, target = workload.get("epochs"), workload.get("target")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"workload {workload['name']!r}: epochs is a positive integer, got {epochs}"
        )
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise ValueError(
            f"workload {workload['name']!r}: target is a validation loss > 0, got {target}"
        )
    if not math.isfinite(target):  # every submission would "reach" it at its first evaluation
        raise ValueError(
            f"workload {workload['name']!r}: target is a finite validation loss, got {target}"
        )
    every = workload.get("eval_every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(
            f"workload {workload['name']!r}: eval_every is a positive number of optimizer "
            f"steps, got {every}"
        )
    return workload


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "net":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _experiment(
    base: dict[str, Any], workload: dict[str, Any], submissions: list[dict[str, Any]],
    bench_dir: Path,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The compare config of one workload (the suite's settings, the workload's net, data and
    budget, each submission an arm) and its optimizer steps per epoch."""
    experiment = _merge(base, {"model": workload.get("model"), "data": workload.get("data")})
    epochs = workload["epochs"]
    experiment["trainer"] = {**(experiment.get("trainer") or {}), "max_epochs": epochs}
    experiment["trainer"].pop("max_steps", None)
    data = MNIST1DDataModule(**experiment.get("data") or {})
    data.prepare_data()
    data.setup()
    steps_per_epoch = math.ceil(len(data.splits["train"][0]) / data.hparams.batch_size)
    total = epochs * steps_per_epoch
    every = workload.get("eval_every") or steps_per_epoch
    if steps_per_epoch % every:
        raise ValueError(
            f"workload {workload['name']!r}: eval_every {every} does not divide its "
            f"{steps_per_epoch} steps an epoch; choose a divisor (validation then falls on "
            "every epoch's end too)"
        )
    if every < steps_per_epoch:  # Lightning validates every `every` training batches
        experiment["trainer"]["val_check_interval"] = every
    workload["eval_steps"] = every
    arms = []
    for submission in submissions:
        arm = copy.deepcopy(dict(submission))
        scheduler = arm.get("lr_scheduler")
        if isinstance(scheduler, dict) and _takes_total_steps(scheduler):
            init_args = dict(scheduler.get("init_args") or {})
            init_args.setdefault("total_steps", total)
            arm["lr_scheduler"] = {**scheduler, "init_args": init_args}
        arm.setdefault("lr_scheduler", None)
        arms.append(arm)
    experiment.update(
        experiment=workload["name"], output_dir=str(bench_dir), tune_max_epochs=epochs,
        robustness=False, arms=arms,
        shared_arms_dir=str(Path(base["shared_arms_dir"]) / workload["name"]),
    )  # fmt: skip
    return experiment, steps_per_epoch


def _takes_total_steps(scheduler: dict[str, Any]) -> bool:

    resolved = resolve_scheduler(scheduler)
    return resolved is not None and "total_steps" in scheduler_arguments(resolved[0])
