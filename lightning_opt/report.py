"""The report of an experiment: results.json, results.md, comparison.html and comparison.png."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_opt import stats

# metric key in a run's result -> (label, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "test_loss": ("test loss", True),
    "test_acc": ("test accuracy", False),
    "final_val_loss": ("final validation loss", True),
    "best_val_loss": ("best validation loss", True),
}
PRIMARY = "test_loss"


def summarize(experiment: str, arms: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Every number of the report: per-arm means with CIs, pairwise differences, verdicts."""
    for arm in arms.values():
        runs = arm["runs"]
        arm["metrics"] = {key: stats.mean_ci([r[key] for r in runs]).as_dict() for key in METRICS}
        rates = [r["clip_rate"] for r in runs if r["clip_rate"] is not None]
        arm["clip_rate"] = stats.mean_ci(rates).as_dict() if rates else None
    comparisons, verdicts = [], []
    for name_a, name_b in itertools.combinations(arms, 2):
        diffs = {
            key: stats.compare(
                label,
                [r[key] for r in arms[name_a]["runs"]],
                [r[key] for r in arms[name_b]["runs"]],
            )
            for key, (label, _) in METRICS.items()
        }
        sentences = {
            key: stats.verdict(diffs[key], name_a, name_b, lower_is_better=lower)
            for key, (_, lower) in METRICS.items()
        }
        comparisons.append(
            {
                "a": name_a,
                "b": name_b,
                "differences": {key: d.as_dict() for key, d in diffs.items()},
                "verdict": sentences[PRIMARY],
                "details": [v for key, v in sentences.items() if key != PRIMARY],
            }
        )
        verdicts.append(sentences[PRIMARY])
    return {
        "experiment": experiment,
        "settings": settings,
        "arms": arms,
        "comparisons": comparisons,
        "verdicts": verdicts,
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined numbers (e.g. a p-value without spread) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _ci(m: dict[str, float], digits: int = 4) -> str:
    half = (m["high"] - m["low"]) / 2
    return f"{m['mean']:.{digits}f} ± {half:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    head = "| arm | tuned | " + " | ".join(label for label, _ in METRICS.values()) + " | clipped |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 3)]
    for name, arm in results["arms"].items():
        tuned = ", ".join(f"{k}={v:.3g}" for k, v in arm["tuned"].items())
        cells = [_ci(arm["metrics"][key]) for key in METRICS]
        clip = f"{arm['clip_rate']['mean']:.1%}" if arm["clip_rate"] else "-"
        lines.append(f"| {name} | {tuned} | " + " | ".join(cells) + f" | {clip} |")
    return "\n".join(lines)


def _markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    n = len(s["seeds"])
    parts = [
        f"# {results['experiment']}",
        "",
        f"Each arm was tuned on the validation split ({s['tuning_trials']} trials x "
        f"{s['tuning_epochs']} epochs, TPE seed {s['sampler_seed']}, {s['pruner']} pruner), then "
        f"retrained with its best hyperparameters for {s['final_epochs']} epochs over {n} seeds "
        f"({', '.join(map(str, s['seeds']))}); the test set was evaluated once per run, at the end.",
        f"Cells are mean ± half-width of the {s['confidence']:.0%} confidence interval over seeds; "
        "'clipped' is the share of tensor-steps the clipping rule rescaled.",
        "",
        markdown_table(results),
        "",
        "## Verdict",
        "",
    ]
    for comparison in results["comparisons"]:
        parts.append(f"- **{comparison['verdict']}**")
        parts.extend(f"  - {line}" for line in comparison["details"])
    parts += [
        "",
        f"Differences: Welch's t-test (two-sided, alpha {s['alpha']}) with its confidence interval; "
        "A12 is the probability that a run of the first arm scores higher than one of the second "
        "(Vargha & Delaney; 0.5 = no effect). With "
        f"{n} seeds only large effects are detectable: 'no significant difference' is not proof "
        "of equality.",
    ]
    return "\n".join(parts) + "\n"


PANELS = (("val_loss_curve", "validation loss"), ("val_acc_curve", "validation accuracy"))


@dataclass(frozen=True)
class Band:
    """One arm's curves of one metric (seeds x epochs) with the per-epoch mean and 95% CI."""

    curves: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def epochs(self) -> np.ndarray:
        return np.arange(1, self.curves.shape[1] + 1)


def bands(results: dict[str, Any]) -> dict[tuple[str, str], Band]:
    """Every (arm, curve) band, computed once for both figures."""
    out = {}
    for name, arm in results["arms"].items():
        for key, _ in PANELS:
            curves = np.array([r[key] for r in arm["runs"]])
            cis = [stats.mean_ci(curves[:, e]) for e in range(curves.shape[1])]
            mean, low, high = (
                np.array([getattr(c, f) for c in cis]) for f in ("mean", "low", "high")
            )
            out[name, key] = Band(curves, mean, low, high)
    return out


def write_html(results: dict[str, Any], bands: dict[tuple[str, str], Band], path: Path) -> None:
    """A self-contained interactive page: plotly.js is inlined, nothing is fetched."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[t for _, t in PANELS])
    for (name, _), color in zip(results["arms"].items(), itertools.cycle(qualitative.Plotly)):
        for col, (key, _) in enumerate(PANELS, start=1):
            band = bands[name, key]
            curves, epochs, mean, low, high = (band.curves, band.epochs, band.mean, band.low,
                                               band.high)  # fmt: skip
            first = col == 1
            for seed, curve in zip(results["settings"]["seeds"], curves, strict=True):
                fig.add_trace(go.Scatter(
                    x=epochs, y=curve, mode="lines", line={"color": color, "width": 0.7},
                    opacity=0.35, name=f"{name} seed {seed}", legendgroup=name, showlegend=False,
                ), row=1, col=col)  # fmt: skip
            fig.add_trace(go.Scatter(
                x=np.concatenate([epochs, epochs[::-1]]), y=np.concatenate([high, low[::-1]]),
                fill="toself", fillcolor=color, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                name=f"{name} 95% CI", legendgroup=name, showlegend=False,
            ), row=1, col=col)  # fmt: skip
            fig.add_trace(go.Scatter(
                x=epochs, y=mean, mode="lines", line={"color": color, "width": 2.5},
                name=f"{name} (mean of {len(curves)})", legendgroup=name, showlegend=first,
            ), row=1, col=col)  # fmt: skip
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=results["experiment"], template="plotly_white", height=480)
    fig.write_html(path, include_plotlyjs=True, full_html=True, config={"displaylogo": False})


def write_png(results: dict[str, Any], bands: dict[tuple[str, str], Band], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for index, name in enumerate(results["arms"]):
        color = f"C{index}"
        for ax, (key, title) in zip(axes, PANELS, strict=True):
            band = bands[name, key]
            curves, epochs, mean, low, high = (band.curves, band.epochs, band.mean, band.low,
                                               band.high)  # fmt: skip
            for curve in curves:
                ax.plot(epochs, curve, color=color, alpha=0.25, linewidth=0.7)
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
            ax.plot(epochs, mean, color=color, linewidth=2, label=f"{name} (mean of {len(curves)})")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results['experiment']}: mean, 95% CI band and each seed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_all(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_finite(results), indent=1))
    (out / "results.md").write_text(_markdown(results))
    curves = bands(results)
    write_html(results, curves, out / "comparison.html")
    write_png(results, curves, out / "comparison.png")
