"""A benchmark's numbers and pages: from each workload experiment's results.json, time to the
target per seed (optimizer steps, and prorated wall time), AlgoPerf's performance profile and
score (``scoring``), each candidate-baseline test-loss comparison with Holm's correction over
every test of the benchmark, a per-workload rank table and a verdict; written as
``leaderboard.json`` (every number), ``leaderboard.md`` and ``leaderboard.html`` (self-contained,
the profile as inline SVG)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lightning_opt.benchmark import scoring, timing
from lightning_opt.core.atomic import write_text
from lightning_opt.core.search_space import values_text
from lightning_opt.reports import stats
from lightning_opt.reports.summary import tuning_crossing
from lightning_opt.reports.text import inert

#: Taus the leaderboard shows the profile at.
SHOWN_TAUS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: The tested metric and its direction.
METRIC = "test_loss"
#: The submissions' colours in the plots, in order.
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def leaderboard(
    config: Any, candidates: list[str], workloads: list[dict], experiments: dict[str, Path],
    per_step: dict[str, dict[str, float]] | None = None,
) -> dict:  # fmt: skip
    """Every number of the benchmark (``leaderboard.json``); ``per_step``: each workload's
    submissions' own seconds per step, measured alone (``timing``)."""
    per_workload, times, tests = {}, {}, []
    external = config.protocol == EXTERNAL
    for workload in workloads:
        name = workload["name"]
        results = json.loads((experiments[name] / "results.json").read_text())
        arms = results["arms"]
        rows = {}
        every = workload.get("eval_steps") or workload["steps_per_epoch"]  # steps a validation
        for arm, summary in arms.items():
            if external:  # each study's fastest trial; the studies are the samples
                steps = scoring.study_times(
                    summary["tuning"]["trials"], studies(config), workload["target"], every
                )  # fmt: skip
            else:
                steps = [
                    scoring.steps_to_target(run["val_loss_curve"], workload["target"], every)
                    for run in summary["runs"]
                ]  # fmt: skip
            own = (per_step or {}).get(name, {}).get(arm)  # seconds a step, alone
            if own is not None:  # its steps at its own pace
                seconds = [s * own if math.isfinite(s) else math.inf for s in steps]
            elif external:  # trials train in populations: no time of their own
                seconds = [None] * len(steps)
            else:
                # Wall time only for a run trained alone: a population's time is its members'
                # together, never one optimizer's own (None: not measured).
                seconds = [
                    None if (run.get("population") or 1) > 1
                    else run["seconds"] * s / (len(run["val_loss_curve"]) * every)
                    if math.isfinite(s) else math.inf
                    for run, s in zip(summary["runs"], steps, strict=True)
                ]  # fmt: skip
            rows[arm] = {
                "seconds_per_step": own,
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
                "spread": [diff.get("sd_a"), diff.get("n_a"), diff.get("sd_b"), diff.get("n_b")],
            })  # fmt: skip
        log_dirs = [run["log_dir"] for summary in arms.values() for run in summary["runs"]
                    if run.get("log_dir")]  # fmt: skip
        per_workload[name] = {
            "logs": _common_folder(log_dirs, experiments[name].parent),
            "target": workload["target"], "epochs": workload["epochs"],
            "steps_per_epoch": workload["steps_per_epoch"], "eval_steps": every,
            "submissions": rows,
            "experiment": str(experiments[name]), "model": workload.get("model"),
            "data": workload.get("data"), "ranks": _ranks(rows),
        }  # fmt: skip
    alpha = 0.05
    p_values = [t["p_value"] for t in tests]
    levels = stats.holm_levels(p_values, alpha)
    for test, adjusted, level in zip(tests, stats.holm(p_values), levels, strict=True):
        test["p_holm"] = adjusted
        test["significant"] = bool(adjusted < alpha)
        # What these seeds detect (80% power) at the level the benchmark's Holm held this test to.
        sd_a, n_a, sd_b, n_b = test.pop("spread")
        test["holm_level"] = level
        test["detectable_at_holm"] = (
            stats.detectable_difference(sd_a, n_a, sd_b, n_b, alpha=level)
            if None not in (sd_a, n_a, sd_b, n_b) and math.isfinite(level) else math.nan
        )  # fmt: skip
    ratio = scoring.ratios(times)
    per_run = {s: {w: per_workload[w]["submissions"][s]["steps_to_target"] for w in per}
               for s, per in times.items()}  # fmt: skip
    intervals = scoring.bootstrap_interval(per_run)
    profiles = {
        s: {
            "ratios": ratio[s],
            "profile": {str(t): scoring.profile(ratio[s], t) for t in SHOWN_TAUS},
            "score": scoring.score(ratio[s]),
            "interval": list(intervals[s]),  # 95%, resampling each workload's seeds
        }
        for s in ratio
    }
    board = {
        "benchmark": config.benchmark, "candidates": candidates, "workloads": per_workload,
        "scores": profiles, "tests": tests, "alpha": alpha, "tau_max": scoring.TAU_MAX,
        "settings": {"protocol": config.protocol, "seeds": config.seeds,
                     "n_trials": config.n_trials, "studies": studies(config),
                     "study_size": config.study_size or config.n_trials,
                     "sampler": config.sampler, "seed": config.seed,
                     "seed_everything": config.seed_everything,
                     "budget_cap": config.trainer.get("max_epochs")},
        "machine": _machine(),
    }  # fmt: skip
    board["verdict"] = verdict(board)
    return board


#: The protocols: AlgoPerf's external-tuning ruleset (time from tuning trials), or compare's
#: (time from final runs over fresh seeds).
EXTERNAL, COMPARE = "external_tuning", "compare"


def studies(config: Any) -> int:
    """The number of AlgoPerf studies each submission's trials make on a workload."""
    return config.n_trials // (config.study_size or config.n_trials)


def protocol_text(board: dict) -> str:
    """The protocol behind every number of the board, in one paragraph (named on each page)."""
    s = board["settings"]
    finals = (f"{s['seeds']} final runs of each submission's best trial by validation loss, "
              f"seeds {s['seed_everything']} to {s['seed_everything'] + s['seeds'] - 1}, which "
              "no tuning trial trained with")  # fmt: skip
    draws = {"sobol": "quasi-random search (a scrambled Sobol sequence)",
             "points": "the submission's fixed list of points, sampled without replacement",
             "tpe": "TPE"}.get(s["sampler"], s["sampler"])  # fmt: skip
    if s["protocol"] == EXTERNAL:
        return (
            f"Protocol: AlgoPerf's external-tuning ruleset. Each submission gets, on each "
            f"workload, {s['studies']} studies of {s['study_size']} trials drawn by {draws} "
            "over its search space (seeded per study and per submission), each trial with a "
            "seed of its own and its whole budget (no pruning). A study's time is its fastest "
            "trial to reach the target; a submission's time is the median over its studies "
            "(a study with no trial reaching the target counts as infinite). Test losses come "
            f"from {finals}."
        )
    return (
        f"Protocol: compare. Each submission is tuned on each workload ({s['n_trials']} trials "
        f"by {draws}, chosen by validation loss), then trained in {finals}; times to target "
        "are the final runs' median over seeds."
    )


def _ranks(rows: dict[str, dict]) -> dict[str, int]:
    """Each submission's rank on a workload by median steps to the target, as the score ranks
    them: equal times (not reached included) share a rank (1, 1, 3); test loss does not enter."""
    steps = {sub: row["median_steps"] for sub, row in rows.items()}
    return {sub: 1 + sum(other < mine for other in steps.values()) for sub, mine in steps.items()}


def _common_folder(paths: list[str], start: Path) -> str | None:
    """The folder holding every one of ``paths``, relative to ``start``."""
    if not paths:
        return None
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    return os.path.relpath(common, start.resolve())


def _nobody_reached(board: dict) -> bool:
    """Whether no submission reached any workload's target (every score is 0 and says nothing)."""
    return all(math.isinf(r) for e in board["scores"].values() for r in e["ratios"].values())


def _machine() -> dict[str, Any]:
    """Where the wall times were measured (steps to the target do not depend on it)."""
    import os
    import platform

    import torch

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip


def _outcome(board: dict, candidate: str, workload: str) -> str:
    tests = [t for t in board["tests"] if t["candidate"] == candidate and t["workload"] == workload]
    if any(t["significant"] and t["difference"] < 0 for t in tests):
        return "lower"
    if any(t["significant"] and t["difference"] > 0 for t in tests):
        return "higher"
    return "no difference"


def _robustness(board: dict, candidate: str) -> list[str]:
    """Whether the candidate's outcome holds across dataset variants (workloads of one net on
    other data) and across tuning budgets (tuning curves crossing a baseline's)."""

    parts = []
    workloads = board["workloads"]
    by_net: dict[str, list[str]] = {}
    for name, workload in workloads.items():
        by_net.setdefault(json.dumps(workload.get("model"), sort_keys=True), []).append(name)
    for names in by_net.values():
        if len(names) < 2:
            continue
        # Each variant's label comes from its own tests; whether the outcome depends on the data
        # is a test of the difference between variants (an interaction), which is not made here,
        # so neither "holds" nor "changes" is claimed.
        outcomes = {n: _outcome(board, candidate, n) for n in names}
        shown = ", ".join(f"{n}: {o}" for n, o in outcomes.items())
        same = len(set(outcomes.values())) == 1
        parts.append(
            f"Data variants of one net ({shown}): {'the same label on each' if same else 'different labels'}; "
            "no test of the difference between variants was made, so this neither shows that "
            f"{candidate}'s outcome holds across the data nor that it changes with it."
        )
    crossings = []
    for name, workload in workloads.items():
        rows = workload["submissions"]
        for other in rows:
            if other in board["candidates"]:
                continue
            cross = tuning_crossing(candidate, rows[candidate].get("tuning_curve"), other,
                              rows[other].get("tuning_curve"))  # fmt: skip
            if cross:
                crossings.append(f"{name} vs {other} at n = {cross[0]}")
    if crossings:
        parts.append(
            f"Tuning budget: {candidate}'s ranking by expected best validation loss changes "
            f"with the number of trials ({'; '.join(crossings)})."
        )
    else:
        parts.append(
            f"Tuning budget: {candidate}'s ranking against each baseline by expected best "
            f"validation loss is the same after any number of the {board['settings']['n_trials']} "
            "trials."
        )
    return parts


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
            f"{_labelled(board, candidate, wins, lower=True) or 'no workload'}, significantly "
            f"higher on {_labelled(board, candidate, losses, lower=False) or 'no workload'}, and "
            f"not significantly different on {', '.join(ties) or 'no workload'}."
        )
        parts += _robustness(board, candidate)
    undetected = [t for t in board["tests"] if not t["significant"]]
    found = [t["detectable_at_holm"] for t in undetected
             if t["detectable_at_holm"] is not None and math.isfinite(t["detectable_at_holm"])]  # fmt: skip
    if found:
        parts.append(
            f"Where no difference was found, a true difference in test loss would have to be "
            f"{min(found):.3g} to {max(found):.3g} for these seeds to detect it with 80% power "
            "at the level Holm's correction over the benchmark held each test to."
        )
    if _nobody_reached(board):
        parts.append(
            "No submission reached any workload's target, so the scores say nothing about time "
            "to target (the budget may be too short for the targets: see each workload's "
            "'reached' column)."
        )
        return " ".join(parts)
    baselines = [s for s in scores if s not in board["candidates"]]
    top = max(scores[s]["score"] for s in baselines)
    best = [s for s in baselines if scores[s]["score"] == top]
    shown = ", ".join(f"{c} {scores[c]['score']:.3f}{_interval(scores[c])}"
                      for c in board["candidates"])  # fmt: skip
    which = (f"the best baseline ({best[0]})" if len(best) == 1
             else f"the best baselines, tied ({', '.join(best)})")  # fmt: skip
    parts.append(
        f"Time to target (AlgoPerf's score, tau_max {board['tau_max']:g}): {shown}; {which} "
        f"{top:.3f}."
    )
    tied = [f"{c} with {', '.join(b for b in baselines if scores[b]['score'] == scores[c]['score'])}"
            for c in board["candidates"]
            if any(scores[b]["score"] == scores[c]["score"] for b in baselines)]  # fmt: skip
    if tied:
        parts.append(f"Tied scores: {'; '.join(tied)}.")
    return " ".join(parts)


def _interval(entry: dict) -> str:
    interval = entry.get("interval")
    return f" (95% interval {interval[0]:.3f} to {interval[1]:.3f})" if interval else ""


def _labelled(board: dict, candidate: str, workloads: list[str], lower: bool) -> str:
    """``workloads`` of a significant test, each marked where every baseline it beat (or lost
    to) never reached the workload's target: a test-loss win over a run that did not train
    to the target says little."""
    out = []
    for name in workloads:
        against = [t["baseline"] for t in board["tests"]
                   if t["candidate"] == candidate and t["workload"] == name and t["significant"]
                   and (t["difference"] < 0) == lower]  # fmt: skip
        rows = board["workloads"][name]["submissions"]
        unreached = [b for b in against if rows[b]["reached"] == 0]
        if against and len(unreached) == len(against):
            out.append(f"{name} (only against {', '.join(against)}, which never reached the "
                       "target there)")  # fmt: skip
        else:
            out.append(name)
    return ", ".join(out)


def _unit(board: dict) -> str:
    """What one time to target is measured on: an AlgoPerf study, or a final run's seed."""
    return "study" if board["settings"].get("protocol") == EXTERNAL else "seed"


def _plural(board: dict) -> str:
    return "studies" if _unit(board) == "study" else "seeds"


def _steps(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "not reached"


def _seconds(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "shared"  # trained in a population: no time of its own
    median = scoring.median_time(values)
    return f"{median:.2f}" if math.isfinite(median) else "not reached"


def _num(value: Any, spec: str) -> str:
    """A number of a test, or ``-`` where it has none (one seed: no interval, no p-value)."""
    return "-" if value is None else format(value, spec)


def markdown(board: dict) -> str:
    """``leaderboard.md``."""
    names = ", ".join(board["candidates"])
    lines = [f"# Benchmark {board['benchmark']}: {names} against the baselines", ""]
    cap = (board.get("settings") or {}).get("budget_cap")
    if cap is not None:
        lines += [f"Budgets capped at {cap} epochs (--trainer.max_epochs); each workload's target "
                  "was set for its full budget, so a target not reached here may be reached "
                  "with the budget the suite gives it.", ""]  # fmt: skip
    lines += [board["verdict"], "", protocol_text(board), "",
              "## Score (time to target across workloads)", ""]  # fmt: skip
    if _nobody_reached(board):  # a row of zeros would read as a result
        lines += ["No submission reached any workload's target: there is no score to show.", ""]
    else:
        taus = " | ".join(f"rho({t:g})" for t in SHOWN_TAUS)
        lines += [f"| submission | score | 95% interval | {taus} |",
                  "|---" * (3 + len(SHOWN_TAUS)) + "|"]  # fmt: skip
        for sub, entry in sorted(board["scores"].items(), key=lambda kv: -kv[1]["score"]):
            row = " | ".join(f"{entry['profile'][str(t)]:.2f}" for t in SHOWN_TAUS)
            low, high = entry.get("interval") or (None, None)
            interval = "-" if low is None else f"[{low:.3f}, {high:.3f}]"
            lines.append(f"| {sub} | {entry['score']:.3f} | {interval} | {row} |")
        samples = _plural(board)
        lines += ["", f"The interval resamples each workload's {samples} (behind each median "
                  f"time to target) {scoring.BOOTSTRAP_REPLICATES:,} times and scores every "
                  "submission together.", ""]  # fmt: skip
    workloads = board["workloads"]
    lines += ["", "## Ranks (median steps to target, as the score counts them; equal times, "
              "not reached included, share a rank)", "",
              f"| submission | {' | '.join(workloads)} | mean rank |",
              "|---" * (len(workloads) + 2) + "|"]  # fmt: skip
    subs = list(board["scores"])
    mean = {s: sum(w["ranks"][s] for w in workloads.values()) / len(workloads) for s in subs}
    for sub in sorted(subs, key=mean.get):
        cells = " | ".join(str(w["ranks"][sub]) for w in workloads.values())
        lines.append(f"| {sub} | {cells} | {mean[sub]:.2f} |")
    machine = board.get("machine") or {}
    lines += ["", f"Wall times measured on {machine.get('platform')} ({machine.get('processor')}, "
              f"{machine.get('cpus')} CPUs, torch {machine.get('torch')}, "
              f"{machine.get('threads')} threads); steps to target do not depend on it. "
              "Steps are the clock. Seconds to target are each time in steps times the "
              "submission's own seconds per step, measured alone (its final configuration, "
              f"{timing.EPOCHS} epochs of training only, the fastest after the first): its "
              "runs trained in populations, whose time ('shared', where no timing was made) is "
              "every member's together, never its optimizer's."]  # fmt: skip
    for name, workload in workloads.items():
        every = workload.get("eval_steps") or workload["steps_per_epoch"]
        lines += ["", f"## {name} (target val loss {workload['target']:g}, "
                  f"{workload['epochs']} epochs x {workload['steps_per_epoch']} steps, "
                  f"validated every {every} steps)", ""]  # fmt: skip
        logs = workload.get("logs") or name
        lines += [f"Report: {name}/comparison.html ({name}/results.md); every run's "
                  f"TensorBoard logs under {logs}/.", ""]  # fmt: skip
        lines += ["| submission | tuned (finals) | test loss | median steps to target | median s "
                  f"to target | {_plural(board)} reaching it |", "|---|---|---|---|---|---|"]  # fmt: skip
        ranked = sorted(workload["submissions"].items(), key=lambda kv: kv[1]["median_steps"])
        for sub, row in ranked:
            tuned = values_text(row["tuned"], sep=" ")
            loss = row["test_loss"]
            lines.append(
                f"| {sub} | {tuned} | {loss['mean']:.4f} [{loss['low']:.4f}, {loss['high']:.4f}] "
                f"| {_steps(row['median_steps'])} | {_seconds(row['seconds_to_target'])} "
                f"| {row['reached']}/{len(row['steps_to_target'])} |"
            )
    lines += ["", "## Tests (candidate minus baseline, test loss)", "",
              "| workload | candidate | baseline | difference [95% CI] | p | p (Holm) | A12 | "
              "detectable at Holm's level |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in board["tests"]:
        lines.append(
            f"| {t['workload']} | {t['candidate']} | {t['baseline']} | {_num(t['difference'], '+.4f')} "
            f"[{_num(t['low'], '+.4f')}, "
            f"{_num(t['high'], '+.4f')}] | {_num(t['p_value'], '.3g')} | {_num(t['p_holm'], '.3g')}"
            f"{' *' if t['significant'] else ''} | {_num(t['a12'], '.2f')} | "
            f"{_num(t['detectable_at_holm'], '.3g')} (alpha {_num(t['holm_level'], '.3g')}) |"
        )
    return "\n".join(lines) + "\n"


def _profile_svg(board: dict, width: int = 680, height: int = 260) -> str:
    """The performance profiles as an inline SVG (step functions over tau in [1, tau_max]);
    none where nobody reached a target (flat zeros would read as a result)."""
    if _nobody_reached(board):
        return ""
    pad, legend, tau_max = 40, 160, board["tau_max"]

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
    for rho in (0.0, 0.25, 0.5, 0.75, 1.0):  # the fraction of workloads
        parts.append(f'<line x1="{pad - 4}" y1="{y(rho)}" x2="{pad}" y2="{y(rho)}" stroke="#444"/>')
        parts.append(f'<text x="{pad - 6}" y="{y(rho) + 4}" text-anchor="end" '
                     f'font-size="11">{rho:g}</text>')  # fmt: skip
    # Baselines first, the candidates last (on top), thicker and named as candidates; each
    # submission keeps its colour and legend line.
    candidates = set(board["candidates"])
    order = sorted(enumerate(board["scores"].items()), key=lambda e: e[1][0] in candidates)
    for i, (sub, entry) in order:
        steps = sorted(r for r in entry["ratios"].values() if r <= tau_max)
        n = len(entry["ratios"])
        points, rho = [(x(1), y(0))], 0.0
        for r in steps:
            points += [(x(max(1.0, r)), y(rho))]
            rho += 1 / n
            points += [(x(max(1.0, r)), y(rho))]
        points.append((x(tau_max), y(rho)))
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        own = sub in candidates
        width_ = 4 if own else 2
        dash = "" if own else ' stroke-dasharray="6 3"'
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width_}"{dash} '
                     f'points="{path}"/>')  # fmt: skip
        label = f"{sub} ({entry['score']:.3f}){' candidate' if own else ''}"
        parts.append(
            f'<text x="{x(tau_max) + 12}" y="{pad + 16 * i}" fill="{colour}">{label}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _tuning_svg(workload: dict, width: int = 680, height: int = 220) -> str:
    """A workload's tuning curves as an inline SVG: each submission's expected best validation
    loss after n of its trials (compare's estimator), n = 1..N."""
    curves = {s: r["tuning_curve"] for s, r in workload["submissions"].items() if r["tuning_curve"]}
    if not curves:
        return ""
    pad, legend = 48, 160
    trials = max(len(c["n"]) for c in curves.values())
    values = [v for c in curves.values() for v in c["expected_best"]]
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0

    def x(n: float) -> float:
        return pad + (n - 1) / max(trials - 1, 1) * (width - 2 * pad - legend)

    def y(v: float) -> float:
        return height - pad - (v - low) / (high - low) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<line x1="{pad}" y1="{y(low)}" x2="{x(trials)}" y2="{y(low)}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{y(low)}" x2="{pad}" y2="{y(high)}" stroke="#444"/>',
             f'<text x="{x((1 + trials) / 2)}" y="{height - 8}" text-anchor="middle">trials n'
             "</text>",
             f'<text x="6" y="{pad - 14}">expected best val loss after n trials</text>',
             f'<text x="{pad - 4}" y="{y(high) + 4}" text-anchor="end">{high:.3g}</text>',
             f'<text x="{pad - 4}" y="{y(low) + 4}" text-anchor="end">{low:.3g}</text>']  # fmt: skip
    for n in range(1, trials + 1):
        parts.append(f'<text x="{x(n)}" y="{y(low) + 16}" text-anchor="middle">{n}</text>')
    for i, (sub, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(
            f"{x(n):.1f},{y(v):.1f}"
            for n, v in zip(curve["n"], curve["expected_best"], strict=True)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{x(trials) + 12}" y="{pad + 16 * i}" fill="{colour}">{sub}</text>')
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
            for name, workload in board["workloads"].items():
                if line.startswith(f"## {name} (target val loss"):
                    body.append(_tuning_svg(workload))
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [escape.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if body and not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("Report: "):  # the workload's compare report, linked
            name = line.split()[1]
            rest = escape.escape(line.split(" ", 2)[2])
            body.append(f"<p>Report: <a href='{escape.escape(name)}'>{escape.escape(name)}</a> "
                        f"{rest}</p>")  # fmt: skip
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


#: What a ``null`` in leaderboard.json stands for (strict JSON has no infinity or NaN).
NULLS = (
    "null: a number that does not exist. A time to the target (steps or seconds), its median, "
    "a ratio to the fastest submission: the target was not reached (infinity in the scoring). "
    "A test's interval, p-value or detectable difference: too few seeds to compute it."
)


def strict(value: Any) -> Any:
    """``value`` with every infinite or NaN float as ``None``: JSON any parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def write_leaderboard(bench_dir: Path, board: dict) -> None:
    document = {"nulls": NULLS, **strict(board)}
    for name, text in (
        ("leaderboard.json", json.dumps(document, indent=1, default=str, allow_nan=False)),
        ("leaderboard.md", inert(markdown(board))),
        ("leaderboard.html", html(board)),
    ):
        write_text(bench_dir / name, text)
