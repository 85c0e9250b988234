"""The report as text: numbers with their intervals, the markdown tables, the settings rows and
the methods paragraph (``results.md``; ``reports.page`` puts the same rows on the page)."""

from __future__ import annotations

import math
from typing import Any

from lightning_opt.core.search_space import space_text, values_text
from lightning_opt.models.registry import describe_net
from lightning_opt.reports import stats
from lightning_opt.reports.summary import (
    COMPARED,
    SHORT,
)


def json_safe(value: Any) -> Any:
    """JSON has no NaN: undefined numbers (e.g. a p-value without spread) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def ci_text(m: dict[str, float] | None, digits: int = 4) -> str:
    if not m:
        return "-"
    half = (m["high"] - m["low"]) / 2
    return f"{m['mean']:.{digits}f} ± {half:.{digits}f}"


def _p(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2g}"


def _present(results: dict[str, Any]) -> list[str]:
    """The compared metrics some arm has, in COMPARED's order."""
    return [k for k in COMPARED if any(k in arm["metrics"] for arm in results["arms"].values())]


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Each arm's tuned values and metrics (mean ± half-width of the interval): head, rows."""
    keys = _present(results)
    head = ["arm", "tuned", *(SHORT[k] for k in keys), "clipped"]
    rows = []
    for name, arm in results["arms"].items():
        cells = [ci_text(arm["metrics"].get(key)) for key in keys]
        clip = f"{arm['clip_rate']['mean']:.1%}" if arm["clip_rate"] else "-"
        rows.append([name, values_text(arm["tuned"]), *cells, clip])
    return head, rows


def markdown_table(results: dict[str, Any]) -> str:
    head, rows = results_table(results)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def differences_table(comparison: dict[str, Any]) -> list[list[str]]:
    """Rows of one pair's differences: metric, A - B [CI], p, Holm p, A12, significant."""
    rows = []
    for d in comparison["differences"].values():
        rows.append([
            d["metric"], f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]",
            _p(d["p_value"]), _p(d["p_adjusted"]), f"{d['a12']:.2f}",
            "yes" if d["significant"] else "no",
        ])  # fmt: skip
    return rows


DIFFERENCE_HEAD = ("metric", "A - B [95% CI]", "p", "Holm p", "A12", "significant")


def _search_space(arm: dict[str, Any]) -> str:
    space = (arm.get("tuning") or {}).get("search_space") or []
    return ", ".join(space_text(s) for s in space)


def settings_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) lines: budgets, seeds, search spaces, split, versions, statistics."""
    s = results["settings"]
    seeds = s.get("seeds", [])
    rows = [
        ("tuning", f"{s.get('tuning_trials')} trials x {s.get('tuning_epochs')} epochs per arm, "
                   f"objective {s.get('objective')}, {s.get('pruner')} pruner, "
                   f"{sampler_text(s)}, population {s.get('tuning_population')}"),
        ("final runs", f"{s.get('final_epochs')} epochs x {len(seeds)} seeds "
                       f"({', '.join(map(str, seeds))}), as one population: "
                       f"{s.get('population_finals')}"),
        ("re-tuned at the final budget", {True: "yes", False: "no"}.get(s.get("robustness"),
                                                                         "not recorded")),
        ("data split seed", str(s.get("split_seed", "not recorded"))),
        ("data", ", ".join(f"{k}={v}" for k, v in (s.get("data") or {}).items())),
        ("statistics", f"Welch's t-test, {s.get('confidence', stats.CONFIDENCE):.0%} CIs, "
                       f"Holm over {results.get('tests', 0)} tests at alpha "
                       f"{s.get('alpha', stats.ALPHA)}; detectable differences at "
                       f"{stats.POWER:.0%} power"),
    ]  # fmt: skip
    for name, arm in results["arms"].items():
        rows.append(
            (f"{name}: net", describe_net(arm["net"]) if arm.get("net") else "not recorded")
        )
        rows.append((f"{name}: search space", _search_space(arm) or "not recorded"))
        quantity = arm.get("clip_quantity")
        if quantity:
            q = ", ".join(f"{float(k):.0%}: {v:.3g}" for k, v in quantity["quantiles"].items())
            rows.append((f"{name}: {quantity['name']}", q))
    versions = s.get("versions") or {}
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded"))
    return rows


def methods(results: dict[str, Any]) -> str:
    """How the numbers were made, in one paragraph (the foot of results.md and the page)."""
    s = results["settings"]
    return (
        f"Differences: Welch's t-test (two-sided, alpha {s.get('alpha', stats.ALPHA)}) with its "
        f"confidence interval; the p-values of all {results.get('tests', 0)} tests are "
        "Holm-adjusted as one family and 'significant' reads the adjusted one. A12 is the "
        "probability that a run of the first arm scores higher than one of the second (Vargha & "
        f"Delaney; 0.5 = no effect). With {len(s.get('seeds', []))} seeds only large effects are "
        "detectable: 'no significant difference' is not proof of equality, and each such "
        f"verdict says how large a difference Welch's test finds with {stats.POWER:.0%} power "
        "at the level Holm held that test to (alpha / (m - rank + 1)). A verdict whose "
        "robustness checks disagree says so first. Tuning curves: the expected best validation objective "
        "after n trials (Tang et al. 2020), with a 5-95% bootstrap band."
    )


def inert(markdown_text: str) -> str:
    """Markdown for a file: ``<`` and ``>`` as entities, so no string of a config (a net's
    argument, a cache folder) can be HTML that a Markdown viewer renders (``<script>``,
    ``onerror``); viewers show the same characters."""
    return markdown_text.replace("<", "&lt;").replace(">", "&gt;")


def sampler_text(s: dict[str, Any]) -> str:
    """How the tuning trials drew their values, and their seeds (``settings`` of a report)."""
    sampler, seed = s.get("sampler", "tpe"), s.get("sampler_seed")
    if sampler == "tpe":
        drawn = f"TPE seed {seed}"
    else:
        what = "quasi-random (Sobol)" if sampler == "sobol" else "fixed points"
        drawn = f"{what} in studies of {s.get('study_size')}, seed {seed}"
    if s.get("trial_seeds") == "distinct":
        drawn += ", each trial its own training seed"
    return drawn


def benchmark_family(results: dict[str, Any]) -> str | None:
    """For a workload of a benchmark: its candidate-baseline tests as the benchmark's one Holm
    family adjusts them (the leaderboard's numbers, quoted the same here), and what this report's
    own adjustment is over; ``None`` for an experiment of its own."""
    bench = results.get("benchmark")
    if not bench:
        return None
    tests = "; ".join(
        f"{t['candidate']} vs {t['baseline']}: p = {_p(t['p_value'])}, Holm-adjusted "
        f"{_p(t['p_holm'])}{' (significant)' if t['significant'] else ''}"
        for t in bench["tests"]
    )
    return (
        f"Part of benchmark {bench['name']!r}, whose verdict tests each candidate against each "
        f"baseline on every workload as one Holm family of {bench['family']} tests; on this "
        f"workload: {tests or 'none'}. The Holm-adjusted p-values of this report correct over "
        "its own comparisons only, another family: the benchmark's verdict uses the "
        "leaderboard's."
    )


def _p(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    n = len(s["seeds"])
    parts = [
        f"# {results['experiment']}",
        "",
        f"Each arm was tuned on the validation split ({s['tuning_trials']} trials x "
        f"{s['tuning_epochs']} epochs, {sampler_text(s)}, {s['pruner']} pruner), then "
        f"retrained with its best hyperparameters for {s['final_epochs']} epochs over {n} seeds "
        f"({', '.join(map(str, s['seeds']))}); the test set was evaluated after the last epoch "
        "and, where recorded, with the weights of the best-validation epoch, never to choose.",
        f"Cells are mean ± half-width of the {s['confidence']:.0%} confidence interval over seeds; "
        "'clipped' is the share of tensor-steps the clipping rule rescaled.",
        "",
        markdown_table(results),
        "",
        "## Verdict",
        "",
        *([family, ""] if (family := benchmark_family(results)) else []),
    ]
    marks = {True: "holds", False: "does not hold", None: "not checked"}
    for comparison in results["comparisons"]:
        parts.append(f"- **{comparison['verdict']}**")
        parts.extend(
            f"  - robustness, {c['check']}: {marks[c['holds']]} ({c['detail']})"
            for c in comparison["robustness"]
        )
        parts.extend(f"  - {line}" for line in comparison["details"])
    if results["warnings"]:
        parts += ["", "## Warnings", "", *(f"- {w}" for w in results["warnings"])]
    for comparison in results["comparisons"]:
        parts += ["", f"## {comparison['a']} (A) vs {comparison['b']} (B)", ""]
        parts.append("| " + " | ".join(DIFFERENCE_HEAD) + " |")
        parts.append("|" + " --- |" * len(DIFFERENCE_HEAD))
        parts.extend("| " + " | ".join(row) + " |" for row in differences_table(comparison))
    parts += ["", "## Settings", "", *(f"- {k}: {v}" for k, v in settings_rows(results))]
    parts += ["", methods(results)]
    return "\n".join(parts) + "\n"
