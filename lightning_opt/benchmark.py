"""``benchmark``: an optimizer against tuned baselines across a suite of workloads, scored as
AlgoPerf scores (``lightning_opt.scoring``).

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
(compare's ``share_arms``): an identical baseline in another benchmark is trained once.
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
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt import scoring, stats
from lightning_opt.atomic import temporary_path
from lightning_opt.compare import CompareCLI, run_compare
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.names import check_name
from lightning_opt.parsing import UsageError, run_name
from lightning_opt.plans import plan_arms
from lightning_opt.runs import quiet_lightning
from lightning_opt.tune import parse

#: Keys of a workload entry.
WORKLOAD_KEYS = {"name", "model", "data", "epochs", "target"}
#: Taus the leaderboard shows the profile at.
SHOWN_TAUS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: The tested metric and its direction.
METRIC = "test_loss"
#: The suite a command line without ``--config`` runs.
DEFAULT_SUITE = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "mnist1d.yaml"


class BenchmarkCLI(CompareCLI):
    """compare's options plus the suite's: workloads and baselines."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(output_dir="lightning_logs/benchmark")
        group = parser.add_argument_group("Benchmark")
        group.add_argument("--benchmark", type=str, default="benchmark",
                           help="Name; outputs go to <output_dir>/<benchmark>/.")  # fmt: skip
        group.add_argument(
            "--workloads", type=list[dict[str, Any]], default=[],
            help="Each: {name, model: {...}, data: {...}, epochs, target (validation loss)}.",
        )  # fmt: skip
        group.add_argument(
            "--baselines", type=list[dict[str, Any]], default=[],
            help="Each a compare arm: {name, optimizer, lr_scheduler, model, callbacks, "
            "search_space}; a scheduler taking total_steps gets each workload's.",
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
    try:
        bench_dir, candidates, workloads = _plan(cli.parser, config)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    experiments = {}
    for workload, path in workloads:
        print(f"=== workload {workload['name']} ({path})", flush=True)
        experiments[workload["name"]] = run_compare(["--config", str(path)])
    board = leaderboard(config, candidates, [w for w, _ in workloads], experiments)
    write_leaderboard(bench_dir, board)
    print(markdown(board))
    print(f"leaderboard: {bench_dir / 'leaderboard.md'}, {bench_dir / 'leaderboard.html'}")
    return bench_dir


def _plan(
    parser: LightningArgumentParser, config: Any
) -> tuple[Path, list[str], list[tuple[dict, Path]]]:
    """Every workload's compare config, written under the benchmark's directory and checked
    (compare's ``plan_arms``) before anything trains; the candidates' names."""
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
    cap = config.trainer.max_epochs
    cap = None if cap == defaults.trainer.max_epochs or not cap or cap < 0 else cap
    if cap is not None:
        print(f"trainer.max_epochs {cap} caps every workload's budget", flush=True)
    base = yaml.safe_load(parser.dump(config, skip_none=False, skip_check=True))
    baselines, workloads = base.get("baselines") or [], base.get("workloads") or []
    named = base.get("candidates") or []
    for key in ("benchmark", "workloads", "baselines", "candidate", "candidates", "config", "arms",
                "experiment"):  # fmt: skip
        base.pop(key, None)
    command_line = _candidate_arm(base, config)
    if named and (config.candidate or _changed(config, defaults, "optimizer", "lr_scheduler")):
        raise ValueError(
            "give the candidates either as --candidates (arms) or as the command line's "
            "optimizer (--optimizer, --lr_scheduler, --candidate), not both"
        )
    candidates = [dict(c) for c in named] or [command_line]
    # One storage for every benchmark under output_dir, arms named by their settings: a
    # baseline (or candidate) identical in another benchmark is trained once.
    base["storage"] = base.get("storage") or f"sqlite:///{Path(config.output_dir) / 'optuna.db'}"
    base["share_arms"] = True
    bench_dir = Path(config.output_dir) / name
    bench_dir.mkdir(parents=True, exist_ok=True)
    planned = []
    seen = set()
    for entry in workloads:
        workload = _check_workload(entry)
        if cap is not None:
            workload["epochs"] = min(workload["epochs"], cap)
        if workload["name"] in seen:
            raise ValueError(f"workload names must be unique; repeated: {workload['name']}")
        seen.add(workload["name"])
        experiment, steps = _experiment(base, workload, candidates, baselines, bench_dir)
        path = bench_dir / f"{workload['name']}.yaml"
        _write(path, yaml.safe_dump(experiment, sort_keys=False))
        compare_cli = parse(["--config", str(path)], CompareCLI)
        try:
            plan_arms(compare_cli.config, compare_cli.parser)
        except (ValueError, TypeError) as err:
            raise ValueError(f"workload {workload['name']!r}: {err}") from None
        workload["steps_per_epoch"] = steps
        planned.append((workload, path))
    return bench_dir, [c["name"] for c in candidates], planned


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
    if base.get("search_space") is not None:
        arm["search_space"] = base.pop("search_space")
    base.pop("search_space", None)
    return arm


def _check_workload(entry: Any) -> dict[str, Any]:
    workload = dict(entry)
    unknown = set(workload) - WORKLOAD_KEYS
    if unknown:
        raise ValueError(f"workload keys are {sorted(WORKLOAD_KEYS)}, got {sorted(unknown)}")
    check_name("workload", workload.get("name"), "workloads[].name")
    epochs, target = workload.get("epochs"), workload.get("target")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"workload {workload['name']!r}: epochs is a positive integer, got {epochs}"
        )
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise ValueError(
            f"workload {workload['name']!r}: target is a validation loss > 0, got {target}"
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
    base: dict[str, Any], workload: dict[str, Any], candidates: list[dict[str, Any]],
    baselines: list[dict[str, Any]], bench_dir: Path,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The compare config of one workload (the suite's settings, the workload's net, data and
    budget, the candidates and every baseline as arms) and its optimizer steps per epoch."""
    experiment = _merge(base, {"model": workload.get("model"), "data": workload.get("data")})
    epochs = workload["epochs"]
    experiment["trainer"] = {**(experiment.get("trainer") or {}), "max_epochs": epochs}
    experiment["trainer"].pop("max_steps", None)
    data = MNIST1DDataModule(**experiment.get("data") or {})
    data.prepare_data()
    data.setup()
    steps_per_epoch = math.ceil(len(data.splits["train"][0]) / data.hparams.batch_size)
    total = epochs * steps_per_epoch
    arms = []
    for submission in [*candidates, *baselines]:
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
    )  # fmt: skip
    return experiment, steps_per_epoch


def _takes_total_steps(scheduler: dict[str, Any]) -> bool:
    from lightning_opt.optim.schedulers import resolve_scheduler, scheduler_arguments

    resolved = resolve_scheduler(scheduler)
    return resolved is not None and "total_steps" in scheduler_arguments(resolved[0])


def leaderboard(
    config: Any, candidates: list[str], workloads: list[dict], experiments: dict[str, Path]
) -> dict:
    """Every number of the benchmark (``leaderboard.json``)."""
    per_workload, times, tests = {}, {}, []
    for workload in workloads:
        name = workload["name"]
        results = json.loads((experiments[name] / "results.json").read_text())
        arms = results["arms"]
        rows = {}
        for arm, summary in arms.items():
            steps = [
                scoring.steps_to_target(run["val_loss_curve"], workload["target"],
                                        workload["steps_per_epoch"])
                for run in summary["runs"]
            ]  # fmt: skip
            seconds = [
                run["seconds"] * s / (len(run["val_loss_curve"]) * workload["steps_per_epoch"])
                if math.isfinite(s) else math.inf
                for run, s in zip(summary["runs"], steps, strict=True)
            ]  # fmt: skip
            rows[arm] = {
                "tuned": summary["tuned"],
                "test_loss": summary["metrics"]["test_loss"],
                "test_acc": summary["metrics"]["test_acc"],
                "steps_to_target": steps,
                "seconds_to_target": seconds,
                "median_steps": scoring.median_time(steps),
                "reached": sum(math.isfinite(s) for s in steps),
                "tuning_curve": summary.get("tuning_curve"),
            }
            times.setdefault(arm, {})[name] = rows[arm]["median_steps"]
        for comparison in results["comparisons"]:
            pair = (comparison["a"], comparison["b"])
            if (pair[0] in candidates) == (pair[1] in candidates):
                continue  # candidate against baseline only
            diff = comparison["differences"][METRIC]
            candidate, other = pair if pair[0] in candidates else pair[::-1]
            sign = 1.0 if comparison["a"] == candidate else -1.0  # candidate minus baseline
            tests.append({
                "workload": name, "candidate": candidate, "baseline": other,
                "difference": sign * diff["difference"],
                "low": min(sign * diff["low"], sign * diff["high"]),
                "high": max(sign * diff["low"], sign * diff["high"]),
                "p_value": diff["p_value"], "a12": diff["a12"], "detectable": diff["detectable"],
            })  # fmt: skip
        per_workload[name] = {
            "target": workload["target"], "epochs": workload["epochs"],
            "steps_per_epoch": workload["steps_per_epoch"], "submissions": rows,
            "experiment": str(experiments[name]),
        }  # fmt: skip
    alpha = 0.05
    for test, adjusted in zip(tests, stats.holm([t["p_value"] for t in tests]), strict=True):
        test["p_holm"] = adjusted
        test["significant"] = bool(adjusted < alpha)
    ratio = scoring.ratios(times)
    profiles = {
        s: {
            "ratios": ratio[s],
            "profile": {str(t): scoring.profile(ratio[s], t) for t in SHOWN_TAUS},
            "score": scoring.score(ratio[s]),
        }
        for s in ratio
    }
    board = {
        "benchmark": config.benchmark, "candidates": candidates, "workloads": per_workload,
        "scores": profiles, "tests": tests, "alpha": alpha, "tau_max": scoring.TAU_MAX,
        "settings": {"seeds": config.seeds, "n_trials": config.n_trials, "seed": config.seed},
    }  # fmt: skip
    board["verdict"] = verdict(board)
    return board


def verdict(board: dict) -> str:
    """One paragraph: where each candidate wins, loses and ties, and its score."""
    scores, alpha = board["scores"], board["alpha"]
    parts = [
        f"Test loss, {len(board['tests'])} candidate-baseline tests with Holm's correction at "
        f"{alpha}:"
    ]
    for candidate in board["candidates"]:
        tests = [t for t in board["tests"] if t["candidate"] == candidate]
        wins = sorted({t["workload"] for t in tests if t["significant"] and t["difference"] < 0})
        losses = sorted({t["workload"] for t in tests if t["significant"] and t["difference"] > 0})
        ties = sorted({t["workload"] for t in tests} - set(wins) - set(losses))
        parts.append(
            f"{candidate} is significantly lower than a baseline on "
            f"{', '.join(wins) or 'no workload'}, significantly higher on "
            f"{', '.join(losses) or 'no workload'}, and not significantly different on "
            f"{', '.join(ties) or 'no workload'}."
        )
    undetected = [t for t in board["tests"] if not t["significant"]]
    if undetected:
        largest = max(t["detectable"] for t in undetected)
        parts.append(
            f"Where no difference was found, these seeds detect one of at most {largest:.3g} "
            "(test loss, at each workload experiment's own Holm level; the benchmark's "
            "correction over every test is stricter still)."
        )
    baselines = [s for s in scores if s not in board["candidates"]]
    best = max(baselines, key=lambda s: scores[s]["score"])
    shown = ", ".join(f"{c} {scores[c]['score']:.3f}" for c in board["candidates"])
    parts.append(
        f"Time to target (AlgoPerf's score, tau_max {board['tau_max']:g}): {shown}; the best "
        f"baseline ({best}) {scores[best]['score']:.3f}."
    )
    return " ".join(parts)


def _steps(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "not reached"


def markdown(board: dict) -> str:
    """``leaderboard.md``."""
    names = ", ".join(board["candidates"])
    lines = [f"# Benchmark {board['benchmark']}: {names} against the baselines", ""]
    lines += [board["verdict"], "", "## Score (time to target across workloads)", ""]
    taus = " | ".join(f"rho({t:g})" for t in SHOWN_TAUS)
    lines += [f"| submission | score | {taus} |", "|---" * (2 + len(SHOWN_TAUS)) + "|"]
    for sub, entry in sorted(board["scores"].items(), key=lambda kv: -kv[1]["score"]):
        row = " | ".join(f"{entry['profile'][str(t)]:.2f}" for t in SHOWN_TAUS)
        lines.append(f"| {sub} | {entry['score']:.3f} | {row} |")
    for name, workload in board["workloads"].items():
        lines += ["", f"## {name} (target val loss {workload['target']:g}, "
                  f"{workload['epochs']} epochs x {workload['steps_per_epoch']} steps)", ""]  # fmt: skip
        lines += [f"Report: {name}/comparison.html ({name}/results.md); every run's "
                  f"TensorBoard logs under {name}/.", ""]  # fmt: skip
        lines += ["| submission | tuned | test loss | median steps to target | reached |",
                  "|---|---|---|---|---|"]  # fmt: skip
        ranked = sorted(workload["submissions"].items(), key=lambda kv: kv[1]["median_steps"])
        for sub, row in ranked:
            tuned = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in row["tuned"].items())  # fmt: skip
            loss = row["test_loss"]
            lines.append(
                f"| {sub} | {tuned} | {loss['mean']:.4f} [{loss['low']:.4f}, {loss['high']:.4f}] "
                f"| {_steps(row['median_steps'])} | {row['reached']}/{len(row['steps_to_target'])} |"
            )
    lines += ["", "## Tests (candidate minus baseline, test loss)", "",
              "| workload | candidate | baseline | difference [95% CI] | p | p (Holm) | A12 |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in board["tests"]:
        lines.append(
            f"| {t['workload']} | {t['candidate']} | {t['baseline']} | {t['difference']:+.4f} "
            f"[{t['low']:+.4f}, "
            f"{t['high']:+.4f}] | {t['p_value']:.3g} | {t['p_holm']:.3g}"
            f"{' *' if t['significant'] else ''} | {t['a12']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _profile_svg(board: dict, width: int = 680, height: int = 260) -> str:
    """The performance profiles as an inline SVG (step functions over tau in [1, tau_max])."""
    pad, legend, tau_max = 40, 160, board["tau_max"]
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]

    def x(tau: float) -> float:
        return pad + (tau - 1) / (tau_max - 1) * (width - 2 * pad - legend)

    def y(rho: float) -> float:
        return height - pad - rho * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{x(tau_max)}" y2="{y(0)}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{y(0)}" x2="{pad}" y2="{y(1)}" stroke="#444"/>',
             f'<text x="{x((1 + tau_max) / 2)}" y="{height - 8}" text-anchor="middle">tau</text>',
             f'<text x="10" y="{pad - 10}">rho(tau)</text>']  # fmt: skip
    for tau in (1, 2, 3, 4):
        parts.append(f'<text x="{x(tau)}" y="{y(0) + 16}" text-anchor="middle">{tau}</text>')
    for i, (sub, entry) in enumerate(board["scores"].items()):
        steps = sorted(r for r in entry["ratios"].values() if r <= tau_max)
        n = len(entry["ratios"])
        points, rho = [(x(1), y(0))], 0.0
        for r in steps:
            points += [(x(max(1.0, r)), y(rho))]
            rho += 1 / n
            points += [(x(max(1.0, r)), y(rho))]
        points.append((x(tau_max), y(rho)))
        colour = colours[i % len(colours)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        label = f"{sub} ({entry['score']:.3f})"
        parts.append(
            f'<text x="{x(tau_max) + 12}" y="{pad + 16 * i}" fill="{colour}">{label}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def html(board: dict) -> str:
    """``leaderboard.html``: self-contained (the tables of leaderboard.md and the profile)."""
    import html as escape

    body = []
    for line in markdown(board).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{escape.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{escape.escape(line[3:])}</h2>")
            if line.startswith("## Score"):
                body.append(_profile_svg(board))
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [escape.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if body and not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{escape.escape(line)}</p>")
    rows, out = [], []
    for item in [*body, ""]:
        if item.startswith("<tr"):
            rows.append(item)
            continue
        if rows:
            out.append("<table>" + "".join(rows) + "</table>")
            rows = []
        out.append(item)
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px}th{background:#f3f3f3}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmark "
            f"{escape.escape(str(board['benchmark']))}</title><style>{style}</style></head>"
            f"<body>{''.join(out)}</body></html>")  # fmt: skip


def write_leaderboard(bench_dir: Path, board: dict) -> None:
    for name, text in (
        ("leaderboard.json", json.dumps(board, indent=1, default=str, allow_nan=True)),
        ("leaderboard.md", markdown(board)),
        ("leaderboard.html", html(board)),
    ):
        _write(bench_dir / name, text)


def _write(path: Path, text: str) -> None:
    tmp = temporary_path(path)
    tmp.write_text(text)
    tmp.replace(path)  # whole or not at all
