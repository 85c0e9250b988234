"""The report of an experiment: results.json, results.md, comparison.html and comparison.png.

``summarize`` computes every number once (per-arm means with CIs, tuning curves, clip activity,
pairwise differences Holm-corrected as one family, robustness checks, verdicts); the writers
(``reports.text``, ``reports.page``) only format them. Run keys beyond the basic ones (best-epoch test metrics, internals, clip quantities,
re-tuned runs) are optional: what is missing is left out of the report, never guessed.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from lightning_opt.core.search_space import values_text
from lightning_opt.reports import stats

# metric key in a run's result -> (label, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "test_loss": ("test loss", True),
    "test_acc": ("test accuracy", False),
    "test_loss_best_epoch": ("test loss at the best-validation epoch", True),
    "test_acc_best_epoch": ("test accuracy at the best-validation epoch", False),
    "final_val_loss": ("final validation loss", True),
    "best_val_loss": ("best validation loss", True),
}
# the same metrics of an arm's runs re-tuned at the final budget (arm["retuned"]["runs"])
RETUNED: dict[str, tuple[str, bool]] = {
    "test_loss_retuned": ("test loss, re-tuned at the final budget", True),
    "test_acc_retuned": ("test accuracy, re-tuned at the final budget", False),
}
COMPARED = {**METRICS, **RETUNED}
SHORT = {  # column heads of the per-arm table
    "test_loss": "test loss", "test_acc": "test acc", "test_loss_best_epoch": "test loss @best",
    "test_acc_best_epoch": "test acc @best", "final_val_loss": "final val loss",
    "best_val_loss": "best val loss", "test_loss_retuned": "test loss re-tuned",
    "test_acc_retuned": "test acc re-tuned",
}  # fmt: skip
PRIMARY = "test_loss"
# (check, the difference it reads): each must reach the primary verdict's conclusion to hold
CHECKS = (
    ("last epoch", PRIMARY),
    ("best-validation epoch", "test_loss_best_epoch"),
    ("re-tuned at the final budget", "test_loss_retuned"),
)
CLIP_IDLE, CLIP_ALWAYS = 0.01, 0.99  # clip rates outside these make the clipping rule moot
# optimizer internals a run may log per epoch -> (label, log-scale axis)
INTERNALS: dict[str, tuple[str, bool]] = {
    "optim/effective_lr": ("effective step size", True),
    "optim/grad_norm_before_clip": ("gradient norm before clipping", True),
    "optim/grad_norm_after_clip": ("gradient norm after clipping", True),
    "clip/fraction_clipped": ("share of tensors clipped", False),
}


def _values(arm: dict[str, Any], key: str) -> list[float]:
    """An arm's per-seed values of a compared metric; empty where its runs do not have it."""
    runs = arm["runs"]
    if key in RETUNED:
        runs, key = (arm.get("retuned") or {}).get("runs") or [], key.removesuffix("_retuned")
    return [r[key] for r in runs if r.get(key) is not None]


def _clip_quantity(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The clipped quantity's quantiles, averaged over the runs that recorded them."""
    found = [r["clip_quantity"] for r in runs if r.get("clip_quantity")]
    if not found:
        return None
    keys = sorted(found[0]["quantiles"], key=float)
    quantiles = {k: float(np.mean([q["quantiles"][k] for q in found])) for k in keys}
    return {"name": found[0]["name"], "quantiles": quantiles, "runs": len(found)}


def _tuning_curve(tuning: dict[str, Any] | None) -> dict[str, list[float]] | None:
    values = [v for v in (tuning or {}).get("values") or [] if v is not None and math.isfinite(v)]
    return stats.tuning_curve(values) if values else None


def _summarize_arm(arm: dict[str, Any]) -> None:
    runs = arm["runs"]
    arm["metrics"] = {
        key: stats.mean_ci(values).as_dict() for key in COMPARED if (values := _values(arm, key))
    }
    rates = [r["clip_rate"] for r in runs if r.get("clip_rate") is not None]
    arm["clip_rate"] = stats.mean_ci(rates).as_dict() if rates else None
    arm["clip_quantity"] = _clip_quantity(runs)
    arm["tuning_curve"] = _tuning_curve(arm.get("tuning"))
    if arm.get("retuned"):
        arm["retuned"]["tuning_curve"] = _tuning_curve(arm["retuned"].get("tuning"))


def summarize(experiment: str, arms: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Every number of the report: per-arm means with CIs and tuning curves, pairwise
    differences (Holm-adjusted over all of them), robustness checks, warnings and verdicts."""
    for arm in arms.values():
        _summarize_arm(arm)
    pairs = list(itertools.combinations(arms, 2))
    raw = {
        pair: {
            key: stats.compare(label, _values(arms[pair[0]], key), _values(arms[pair[1]], key))
            for key, (label, _) in COMPARED.items()
            if _values(arms[pair[0]], key) and _values(arms[pair[1]], key)
        }
        for pair in pairs
    }
    family = [(pair, key) for pair in pairs for key in raw[pair]]
    adjusted = stats.adjust([raw[pair][key] for pair, key in family])
    for (pair, key), diff in zip(family, adjusted, strict=True):
        raw[pair][key] = diff
    warnings = [w for name, arm in arms.items() if (w := _clip_warning(name, arm))]
    comparisons = [_comparison(a, b, raw[a, b], arms, settings) for a, b in pairs]
    return {
        "experiment": experiment,
        "settings": settings,
        "arms": arms,
        "comparisons": comparisons,
        "verdicts": [c["verdict"] for c in comparisons],
        "warnings": warnings,
        "tests": len(family),
    }


def _comparison(
    a: str, b: str, diffs: dict[str, stats.Difference], arms: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    sentences = {
        key: stats.verdict(d, a, b, lower_is_better=COMPARED[key][1]) for key, d in diffs.items()
    }
    cross = tuning_crossing(a, arms[a].get("tuning_curve"), b, arms[b].get("tuning_curve"))
    details = [v for key, v in sentences.items() if key != PRIMARY]
    if cross:
        details.append(cross[1])
    pair_warning = _pair_warning(a, b, arms)
    robustness = _robustness(a, b, diffs, arms, settings)
    headline = _headline(sentences[PRIMARY], robustness)
    verdict = headline
    provenance = _provenance(a, b, diffs, arms, settings)
    for extra in (provenance, pair_warning and f"Warning: {pair_warning}."):
        verdict += f" {extra}" if extra else ""
    return {
        "a": a,
        "b": b,
        "differences": {key: d.as_dict() for key, d in diffs.items()},
        "verdict": verdict,
        "headline": headline,
        "primary": sentences[PRIMARY],
        "robustness": robustness,
        "provenance": provenance,
        "warnings": [pair_warning] if pair_warning else [],
        "tuning_curves_cross_at": cross[0] if cross else None,
        "details": details,
    }


def _headline(primary: str, robustness: list[dict[str, Any]]) -> str:
    """The verdict's first words: a robustness check that does not hold is said before the
    primary finding, never after it."""
    checked = [c for c in robustness if c["holds"] is not None]
    failed = [c["check"] for c in checked if c["holds"] is False]
    if not failed:
        return primary
    return (
        f"Not robust ({len(failed)} of {len(checked)} robustness checks disagree: "
        f"{', '.join(failed)}): {primary}"
    )


def _lower(d: stats.Difference, a: str, b: str) -> str:
    return a if d.difference < 0 else b


def _finding(d: stats.Difference, a: str, b: str) -> str:
    """The conclusion of a test-loss difference with its numbers, in a few words."""
    p = stats.p_text(d)
    if d.significant:
        return f"{_lower(d, a, b)} lower by {abs(d.difference):.3g} ({p})"
    return f"no significant difference ({a} - {b} = {d.difference:+.3g}, {p})"


def _robustness(
    a: str, b: str, diffs: dict[str, stats.Difference], arms: dict[str, Any],
    settings: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """Does each way of reading the test loss reach the primary verdict's conclusion?"""
    primary = diffs[PRIMARY]
    checks = []
    for check, key in CHECKS:
        d = diffs.get(key)
        if d is None:
            missing = "not run" if key in RETUNED else "not recorded by these runs"
            checks.append({"check": check, "holds": None, "detail": missing})
            continue
        detail = _finding(d, a, b)
        if key in RETUNED:
            epochs = settings.get("max_epochs") or settings.get("final_epochs")
            tuned = "; ".join(
                f"{n}: " + values_text(arms[n]["retuned"].get("tuned", {})) for n in (a, b)
            )
            detail += f"; tuned for {epochs} epochs: {tuned}"
        checks.append({"check": check, "holds": d.sign == primary.sign, "detail": detail})
    return checks


def _mean_curve(arm: dict[str, Any]) -> np.ndarray | None:
    curves = [r["val_loss_curve"] for r in arm["runs"] if r.get("val_loss_curve")]
    if not curves:
        return None
    length = min(map(len, curves))
    return np.array([c[:length] for c in curves], dtype=float)


def _tuned_words(*arms: dict[str, Any]) -> str:
    """What the tuning chose, in words: "learning rates" where only lr was tuned."""
    keys = {k for arm in arms for k in arm.get("tuned") or {}}
    return "learning rates" if keys == {"lr"} else "hyperparameters"


def _overfitting(worse: str, better: str, arms: dict[str, Any]) -> str:
    """Where the worse arm's validation loss turns: the clause that names the overfitting, or
    says plainly that the difference comes from the stopping point where there is none."""
    curves = _mean_curve(arms[worse])
    if curves is not None:
        mean = curves.mean(axis=0)
        turn = int(np.argmin(mean))
        rise = float(mean[-1] - mean[turn])
        spread = float(curves[:, -1].std(ddof=1)) if len(curves) > 1 else 0.0
        if rise > spread:  # more than the seeds differ at the end: a real rise
            return (
                f"{worse}'s mean validation loss bottoms out at epoch {turn + 1} of {len(mean)} "
                f"and then rises by {rise:.2g}, so {better} overfits less after epoch "
                f"~{turn + 1} at these {_tuned_words(arms[worse], arms[better])}"
            )
    return (
        "the last-epoch difference comes from where training stopped, not from the best "
        "weights either arm reached"
    )


def _provenance(
    a: str, b: str, diffs: dict[str, stats.Difference], arms: dict[str, Any],
    settings: dict[str, Any],
) -> str | None:  # fmt: skip
    """One sentence on where the primary difference comes from, when the checks disagree."""
    primary = diffs[PRIMARY]
    clauses = []
    best = diffs.get("test_loss_best_epoch")
    if best is not None and best.sign != primary.sign:
        if primary.sign and not best.sign:
            better, worse = _lower(primary, a, b), b if _lower(primary, a, b) == a else a
            same = []  # non-significant: the raw p says it, the correction only raises it
            val = diffs.get("best_val_loss")
            if val is not None and not val.significant:
                means = (arms[n]["metrics"]["best_val_loss"]["mean"] for n in (a, b))
                same.append("best validation loss ({:.4g} vs {:.4g}, ".format(*means)
                            + f"p = {val.p_value:.2g})")  # fmt: skip
            same.append(f"best-epoch test loss (p = {best.p_value:.2g})")
            clauses.append(f"the same {' and '.join(same)}; {_overfitting(worse, better, arms)}")
        elif best.sign and not primary.sign:
            clauses.append(
                f"at their best-validation epochs {_lower(best, a, b)} has a significantly lower "
                f"test loss ({stats.p_text(best)}), a difference gone by the last epoch"
            )
        else:
            clauses.append(
                f"{_lower(best, a, b)} has the lower test loss at the best-validation epoch but "
                f"{_lower(primary, a, b)} after the last epoch: the ranking depends on when "
                "training stops"
            )
    retuned = diffs.get("test_loss_retuned")
    if retuned is not None and retuned.sign != primary.sign:
        final = settings.get("max_epochs") or settings.get("final_epochs")
        tuning = settings.get("tune_max_epochs") or settings.get("tuning_epochs")
        head, chosen = f"re-tuned for the final {final} epochs", _tuned_words(arms[a], arms[b])
        p = stats.p_text(retuned)
        if primary.sign and not retuned.sign:
            clauses.append(
                f"{head}, the test losses do not differ (p = {retuned.p_value:.2g}): the gap "
                f"depends on {chosen} tuned for {tuning} epochs"
            )
        elif retuned.sign and not primary.sign:
            clauses.append(
                f"{head}, {_lower(retuned, a, b)} has a significantly lower test loss ({p}): the "
                f"tie holds only at {chosen} tuned for {tuning} epochs"
            )
        else:
            clauses.append(f"{head}, the ranking reverses ({_lower(retuned, a, b)} lower, {p})")
    if not clauses:
        return None
    head = "Where the difference comes from" if primary.sign else "The checks disagree"
    return f"{head}: {'; '.join(clauses)}."


def tuning_crossing(
    a: str, curve_a: dict[str, Any] | None, b: str, curve_b: dict[str, Any] | None
) -> tuple[int, str] | None:
    """(n, sentence) where the expected-best tuning curves last change order, if they do."""
    if not curve_a or not curve_b:
        return None
    m = min(len(curve_a["n"]), len(curve_b["n"]))
    gap = np.sign(np.subtract(curve_a["expected_best"][:m], curve_b["expected_best"][:m]))
    reversed_at = np.flatnonzero(gap == -gap[-1]) if gap[-1] else []
    if not len(reversed_at):
        return None
    n = int(reversed_at[-1]) + 2  # from this many trials on, the order of the full budget holds
    early, late = (a, b) if gap[-1] > 0 else (b, a)
    return n, (
        f"The tuning curves cross at n = {n}: with fewer trials {early} looks better, from {n} "
        f"on {late} (expected best validation objective after n of {m} trials; the ranking "
        "depends on the tuning budget)."
    )


def _clip_state(arm: dict[str, Any]) -> str | None:
    """'inactive', 'always active', 'active', or None for an arm without a clipping rule."""
    if not arm.get("clipping") or not arm.get("clip_rate"):
        return None
    rate = arm["clip_rate"]["mean"]
    return "inactive" if rate < CLIP_IDLE else "always active" if rate > CLIP_ALWAYS else "active"


def _range_hint(arm: dict[str, Any]) -> str:
    quantity = arm.get("clip_quantity")
    if not quantity:
        return ""
    q = quantity["quantiles"]
    low, high = q[min(q, key=float)], q[max(q, key=float)]
    span = f"{float(min(q, key=float)):.0%}-{float(max(q, key=float)):.0%}"
    return (
        f"; its clipped quantity ({quantity['name']}) ran from {low:.3g} to {high:.3g} "
        f"({span} quantiles): a threshold search range there lets the rule act"
    )


def _clip_warning(name: str, arm: dict[str, Any]) -> str | None:
    state = _clip_state(arm)
    if state not in ("inactive", "always active"):
        return None
    rate = arm["clip_rate"]["mean"]
    effect = (
        f"{name} trained as plain {arm['optimizer']}"
        if state == "inactive"
        else f"{name} rescaled every gradient, which normalizes rather than clips"
    )
    return (
        f"{name}: clipping was {state} ({rate:.1%} of tensor-steps rescaled): {effect}"
        f"{_range_hint(arm)}"
    )


def _effective(arm: dict[str, Any]) -> str:
    state = _clip_state(arm)
    if state == "always active":
        return f"{arm['optimizer']} on rescaled gradients"
    return arm["optimizer"] + (" with clipping" if state == "active" else "")


def _pair_warning(a: str, b: str, arms: dict[str, Any]) -> str | None:
    """What a pair really compares where a clipping rule never or always acted; else None."""
    moot: dict[str, list[str]] = {}
    for name in (a, b):
        state = _clip_state(arms[name])
        if state in ("inactive", "always active"):
            moot.setdefault(state, []).append(name)
    if not moot:
        return None
    clauses = [
        f"clipping was {state} in {' and '.join(names)} ("
        + " and ".join(f"{arms[n]['clip_rate']['mean']:.1%}" for n in names)
        + " of tensor-steps rescaled)"
        for state, names in moot.items()
    ]
    return f"{'; '.join(clauses)}: this compares {_effective(arms[a])} with {_effective(arms[b])}"
