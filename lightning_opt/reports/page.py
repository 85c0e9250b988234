"""The report as files: ``results.json``, ``results.md``, ``comparison.png`` and
``comparison.html``, the page a person opens (self-contained, works offline; plotly inlined).

``reports.summary.summarize`` computes every number and sentence; this module only lays them out.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_opt.core.atomic import replacing, write_text
from lightning_opt.core.search_space import values_text
from lightning_opt.models.registry import describe_net
from lightning_opt.reports import stats
from lightning_opt.reports.summary import INTERNALS, RETUNED
from lightning_opt.reports.table import RUNS_CSV, csv_text, run_rows
from lightning_opt.reports.text import (
    DIFFERENCE_HEAD,
    benchmark_family,
    ci_text,
    differences_table,
    inert,
    json_safe,
    markdown,
    methods,
    results_table,
    settings_rows,
)

PANELS = (("val_loss_curve", "validation loss"), ("val_acc_curve", "validation accuracy"))


@dataclass(frozen=True)
class Band:
    """One arm's curves of one metric (seeds x epochs) with the per-epoch mean and 95% CI."""

    curves: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    #: Validations an epoch (``trainer.val_check_interval`` within epochs: several).
    per_epoch: int = 1

    @property
    def epochs(self) -> np.ndarray:
        """Each point's epoch: fractional where runs validate within epochs."""
        return np.arange(1, self.curves.shape[1] + 1) / self.per_epoch


def band(curves: list[list[float]], per_epoch: int = 1) -> Band:
    """Per-epoch mean and CI over runs, cut to the shortest run."""
    length = min(map(len, curves))
    data = np.array([c[:length] for c in curves], dtype=float)
    cis = [stats.mean_ci(data[:, e]) for e in range(length)]
    mean, low, high = (np.array([getattr(c, f) for c in cis]) for f in ("mean", "low", "high"))
    return Band(data, mean, low, high, per_epoch)


def validations_per_epoch(runs: list[dict[str, Any]], epochs: Any) -> int:
    """How many validation points an epoch a run's curves hold: its longest curve over the
    finals' epochs, where that divides evenly (validation every N steps, N dividing an
    epoch's steps, as a benchmark's ``eval_every``); else 1."""
    longest = max((len(r.get("val_loss_curve") or []) for r in runs), default=0)
    if not isinstance(epochs, int) or epochs < 1 or longest <= epochs or longest % epochs:
        return 1
    return longest // epochs


def bands(results: dict[str, Any]) -> dict[tuple[str, str], Band]:
    """Every (arm, curve) band, computed once for both figures."""
    epochs = results["settings"].get("final_epochs")
    return {
        (name, key): band([r[key] for r in arm["runs"]],
                          validations_per_epoch(arm["runs"], epochs))
        for name, arm in results["arms"].items()
        for key, _ in PANELS
    }  # fmt: skip


def internal_bands(results: dict[str, Any]) -> dict[tuple[str, str], Band]:
    """(arm, internal) bands over the runs that logged that internal."""
    out = {}
    for name, arm in results["arms"].items():
        for key in INTERNALS:
            curves = [c for r in arm["runs"] if (c := (r.get("internals") or {}).get(key))]
            if curves:
                out[name, key] = band(curves)
    return out


def write_png(results: dict[str, Any], bands: dict[tuple[str, str], Band], path: Path) -> None:
    """The quick summary: validation loss and accuracy, mean, 95% band and each seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for index, name in enumerate(results["arms"]):
        color = f"C{index}"
        for ax, (key, title) in zip(axes, PANELS, strict=True):
            b = bands[name, key]
            for curve in b.curves:
                ax.plot(b.epochs, curve, color=color, alpha=0.25, linewidth=0.7)
            ax.fill_between(b.epochs, b.low, b.high, color=color, alpha=0.2, linewidth=0)
            ax.plot(b.epochs, b.mean, color=color, linewidth=2,
                    label=f"{name} (mean of {len(b.curves)})")  # fmt: skip
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results['experiment']}: mean, 95% CI band and each seed")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
STRIPS = (
    ("test_loss", "after the last epoch"),
    ("test_loss_best_epoch", "at the best-validation epoch"),
    ("test_loss_retuned", "re-tuned at the final budget"),
)


def _colors(results: dict[str, Any]) -> dict[str, str]:
    from plotly.colors import qualitative

    return dict(zip(results["arms"], itertools.cycle(qualitative.D3), strict=False))


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _band_traces(go: Any, b: Band, name: str, color: str, legend: bool, seeds: list | None):
    """Thin per-seed lines (when seeds are given), the 95% band and the mean line."""
    x = b.epochs
    for seed, curve in zip(seeds or [], b.curves, strict=False):
        yield go.Scatter(x=x, y=curve, mode="lines", line={"color": color, "width": 0.8},
                         opacity=0.35, name=f"{name} seed {seed}", legendgroup=name,
                         showlegend=False)  # fmt: skip
    yield go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([b.high, b.low[::-1]]),
                     mode="lines", fill="toself", fillcolor=_rgba(color, 0.18),
                     line={"width": 0}, hoverinfo="skip", name=f"{name} 95% CI", legendgroup=name,
                     showlegend=False)  # fmt: skip
    yield go.Scatter(x=x, y=b.mean, mode="lines", line={"color": color, "width": 2.5},
                     name=f"{name} (mean of {len(b.curves)})", legendgroup=name,
                     showlegend=legend)  # fmt: skip


def _layout(fig: Any, height: int, **kwargs: Any) -> Any:
    fig.update_layout(template="plotly_white", height=height, font={"size": 14},
                      margin={"l": 70, "r": 30, "t": 60, "b": 60},
                      legend={"orientation": "h", "y": -0.18, "x": 0}, **kwargs)  # fmt: skip
    return fig


def curves_figure(results: dict[str, Any], bands: dict[tuple[str, str], Band]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[t for _, t in PANELS])
    for name, color in _colors(results).items():
        for col, (key, _) in enumerate(PANELS, start=1):
            seeds = [r["seed"] for r in results["arms"][name]["runs"]]
            for trace in _band_traces(go, bands[name, key], name, color, col == 1, seeds):
                fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, 480)


def strip_figure(results: dict[str, Any]) -> Any | None:
    """Each seed's test loss and accuracy, per arm: after the last epoch, at the
    best-validation epoch and re-tuned, where recorded; the box marks quartiles and median."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    arms = results["arms"]
    columns = [(k, t) for k, t in STRIPS if any(k in a["metrics"] for a in arms.values())]
    if not columns:
        return None
    titles = [f"test {what} {when}" for what in ("loss", "accuracy") for _, when in columns]
    fig = make_subplots(rows=2, cols=len(columns), subplot_titles=titles, vertical_spacing=0.16)
    colors = _colors(results)
    for row, suffix in enumerate(("loss", "acc"), start=1):
        for col, (key, _) in enumerate(columns, start=1):
            key = key.replace("loss", suffix)
            for name, arm in arms.items():
                runs = arm["runs"] if key not in RETUNED else (arm.get("retuned") or {}).get(
                    "runs", [])  # fmt: skip
                run_key = key.removesuffix("_retuned")
                points = [(r["seed"], r[run_key]) for r in runs if r.get(run_key) is not None]
                if not points:
                    continue
                fig.add_trace(go.Box(
                    y=[v for _, v in points], name=name, text=[f"seed {s}" for s, _ in points],
                    boxpoints="all", jitter=0.35, pointpos=0, marker={"color": colors[name],
                    "size": 9, "opacity": 0.8}, line={"color": colors[name], "width": 1},
                    fillcolor="rgba(0,0,0,0)", showlegend=False, hoverinfo="y+text",
                ), row=row, col=col)  # fmt: skip
    return _layout(fig, 720)


def tuning_figure(results: dict[str, Any]) -> Any | None:
    """Expected best validation objective after n trials, with its bootstrap band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    arms = results["arms"]
    panels = [("tuning_curve", "tuned for the tuning budget")]
    if any((a.get("retuned") or {}).get("tuning_curve") for a in arms.values()):
        panels.append(("retuned", "re-tuned at the final budget"))
    if not any(a.get("tuning_curve") for a in arms.values()):
        return None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels])
    for name, color in _colors(results).items():
        for col, (key, _) in enumerate(panels, start=1):
            arm = arms[name]
            curve = arm.get("tuning_curve") if key == "tuning_curve" else (
                (arm.get("retuned") or {}).get("tuning_curve"))  # fmt: skip
            if not curve:
                continue
            n = np.array(curve["n"])
            fig.add_trace(go.Scatter(
                x=np.concatenate([n, n[::-1]]), y=curve["high"] + curve["low"][::-1],
                mode="lines", fill="toself", fillcolor=_rgba(color, 0.18), line={"width": 0},
                hoverinfo="skip", name=f"{name} 5-95% bootstrap", legendgroup=name,
                showlegend=False,
            ), row=1, col=col)  # fmt: skip
            fig.add_trace(go.Scatter(
                x=n, y=curve["expected_best"], mode="lines+markers", name=name,
                line={"color": color, "width": 2.5}, legendgroup=name, showlegend=col == 1,
            ), row=1, col=col)  # fmt: skip
    fig.update_xaxes(title_text="trials n")
    fig.update_yaxes(title_text="expected best val objective", col=1)
    return _layout(fig, 440)


def internals_figure(results: dict[str, Any]) -> Any | None:
    """Each arm's optimizer internals over training (per-epoch means over seeds, 95% band)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    found = internal_bands(results)
    keys = [k for k in INTERNALS if any(key == k for _, key in found)]
    if not keys:
        return None
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[INTERNALS[k][0] for k in keys],
                        vertical_spacing=0.14 if rows > 1 else 0.1)  # fmt: skip
    shown = set()
    for index, key in enumerate(keys):
        row, col = divmod(index, cols)
        for name, color in _colors(results).items():
            if (name, key) not in found:
                continue
            for trace in _band_traces(go, found[name, key], name, color, name not in shown, None):
                fig.add_trace(trace, row=row + 1, col=col + 1)
            shown.add(name)
        if INTERNALS[key][1]:
            fig.update_yaxes(type="log", row=row + 1, col=col + 1)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, 380 * rows + 80)


def _table(head: list[str] | tuple[str, ...], rows: list[list[str]], cls: str = "") -> str:
    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>'


def _pair_table(results: dict[str, Any], comparison: dict[str, Any]) -> str:
    """The differences table with each arm's mean ± CI next to the metric."""
    a, b = comparison["a"], comparison["b"]
    means = [
        [ci_text(results["arms"][n]["metrics"].get(key)) for n in (a, b)]
        for key in comparison["differences"]
    ]
    rows = [[r[0], *m, *r[1:]] for r, m in zip(differences_table(comparison), means, strict=True)]
    head = [DIFFERENCE_HEAD[0], f"{a} (A)", f"{b} (B)", *DIFFERENCE_HEAD[1:]]
    return _table(head, rows, "numbers")


def _arms_table(results: dict[str, Any]) -> str:
    rows = []
    for name, arm in results["arms"].items():
        tuning = arm.get("tuning") or {}
        quantity = arm.get("clip_quantity")
        q = (f"{quantity['name']}: " + ", ".join(f"{float(k):.0%} {v:.3g}" for k, v in
             quantity["quantiles"].items())) if quantity else "-"  # fmt: skip
        net = describe_net(arm["net"]) if arm.get("net") else "-"
        rows.append([
            name, net, arm.get("optimizer", "-"), values_text(arm["tuned"]),
            ", ".join(arm.get("clipping") or []) or "none",
            f"{arm['clip_rate']['mean']:.1%}" if arm.get("clip_rate") else "-", q,
            f"{tuning.get('complete', '-')} / {tuning.get('pruned', '-')}",
            f"{tuning['best_val_loss']:.4g}" if tuning.get("best_val_loss") is not None else "-",
        ])  # fmt: skip
    head = ["arm", "net", "optimizer", "tuned", "callbacks", "clipped", "clipped quantity quantiles",
            "trials complete / pruned", "best tuning objective"]  # fmt: skip
    return _table(head, rows)


CSS = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  max-width: 1280px; margin: 0 auto; padding: 28px 40px 60px; background: #fff; }
h1 { font-size: 30px; margin: 0 0 4px; } h2 { font-size: 22px; margin: 40px 0 12px;
  border-bottom: 1px solid #d0d7de; padding-bottom: 6px; } h3 { font-size: 18px; margin: 24px 0 8px; }
.sub { color: #59636e; margin: 0 0 24px; }
details.verdict > summary.main { cursor: pointer; }
.verdict { background: #f6f8fa; border-left: 5px solid #0969da; padding: 14px 18px; margin: 14px 0;
  border-radius: 4px; } .verdict .main { font-size: 18px; font-weight: 600; }
.provenance { margin: 8px 0 0; }
.warning { background: #fff8e5; border-left: 5px solid #d4a72c; padding: 10px 16px; margin: 10px 0;
  border-radius: 4px; }
ul.checks { list-style: none; padding-left: 0; margin: 10px 0 0; } ul.checks li { margin: 3px 0; }
.mark { display: inline-block; width: 1.4em; font-weight: 700; }
.holds { color: #1a7f37; } .fails { color: #cf222e; } .unknown { color: #6e7781; }
details { margin-top: 8px; color: #3d444d; } details li { margin: 4px 0; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 15px; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } table.numbers td:not(:first-child) { text-align: right;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
table.settings td:first-child { width: 260px; font-weight: 600; }
.figure { margin: 8px 0 28px; } .note { color: #59636e; font-size: 14px; }
"""


def _verdict_html(comparison: dict[str, Any], folded: bool = False) -> str:
    """One comparison's verdict box; ``folded``: closed under its headline (a long report)."""
    esc = html.escape
    marks = {True: ("✓", "holds"), False: ("✗", "fails"), None: ("-", "unknown")}
    headline = comparison.get("headline", comparison["primary"])
    if folded:
        parts = [f'<details class="verdict"><summary class="main">{esc(headline)}</summary>']
    else:
        parts = [f'<div class="verdict"><div class="main">{esc(headline)}</div>']
    if comparison.get("provenance"):
        parts.append(f'<p class="provenance">{esc(comparison["provenance"])}</p>')
    parts.extend(f'<div class="warning">Warning: {esc(w)}.</div>' for w in comparison["warnings"])
    parts.append('<ul class="checks">')
    for check in comparison["robustness"]:
        mark, cls = marks[check["holds"]]
        parts.append(f'<li><span class="mark {cls}">{mark}</span><b>{esc(check["check"])}</b>: '
                     f"{esc(check['detail'])}</li>")  # fmt: skip
    parts.append("</ul>")
    if comparison["details"]:
        items = "".join(f"<li>{esc(line)}</li>" for line in comparison["details"])
        more = "every other test" + (", the tuning curves" if comparison["tuning_curves_cross_at"]
                                     else "")  # fmt: skip
        opened = "" if folded else " open"
        parts.append(f"<details{opened}><summary>{more}</summary><ul>{items}</ul></details>")
    return "".join(parts) + ("</details>" if folded else "</div>")


#: More comparisons than this make a long report: it opens with the arms' table, and each
#: verdict is folded under its headline.
LONG_REPORT = 2


def page(results: dict[str, Any], figures: list[tuple[str, str, Any]]) -> str:
    """The whole report page; ``figures`` are (title, caption, plotly figure or None)."""
    from plotly.offline import get_plotlyjs

    esc = html.escape
    s = results["settings"]
    arms = ", ".join(results["arms"])
    body = [
        f"<h1>{esc(results['experiment'])}</h1>",
        f'<p class="sub">arms {esc(arms)}; {len(s.get("seeds", []))} seeds per arm, '
        f"{s.get('final_epochs')} epochs; tuned with {s.get('tuning_trials')} trials x "
        f"{s.get('tuning_epochs')} epochs</p>",
    ]
    long = len(results["comparisons"]) > LONG_REPORT
    if long:
        body += ["<h2>Arms</h2>", _table(*results_table(results), "results")]
    body += [
        "<h2>Verdict</h2>",
        *(f'<p class="note">{esc(f)}</p>' for f in [benchmark_family(results)] if f),
        *(
            [
                f'<p class="note">{len(results["comparisons"])} comparisons, each folded under its '
                "headline: open one for its robustness checks and other tests.</p>"
            ]
            if long
            else []
        ),
        *(_verdict_html(c, folded=long) for c in results["comparisons"]),
        *(f'<div class="warning">{esc(w)}.</div>' for w in results["warnings"]),
        "<h2>Results</h2>",
        '<p class="note">Mean ± half-width of the 95% confidence interval over seeds; A - B '
        "with Welch's interval; p raw and Holm-adjusted over all "
        f"{results.get('tests', 0)} tests of the experiment.</p>",
    ]
    for comparison in results["comparisons"]:
        body.append(f"<h3>{esc(comparison['a'])} (A) vs {esc(comparison['b'])} (B)</h3>")
        body.append(_pair_table(results, comparison))
    body += ["<h3>Arms</h3>", _arms_table(results), "<h2>Settings</h2>",
             _table(["setting", "value"], [list(r) for r in settings_rows(results)],
                    "settings")]  # fmt: skip
    for title, caption, fig in figures:
        if fig is None:
            continue
        div = fig.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG,
                          default_width="100%")  # fmt: skip
        body += [f"<h2>{esc(title)}</h2>", f'<p class="note">{esc(caption)}</p>',
                 f'<div class="figure">{div}</div>']  # fmt: skip
    body.append(f'<h2>Methods</h2><p class="note">{esc(methods(results))}</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(results['experiment'])}: comparison</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_html(results: dict[str, Any], bands: dict[tuple[str, str], Band], path: Path) -> None:
    """The report as one self-contained page: plotly.js is inlined, nothing is fetched."""
    figures = [
        ("Validation curves", "Per arm: the mean over seeds (thick), its 95% band and each "
         "seed (thin).", curves_figure(results, bands)),
        ("Test metrics per seed", "One point per seed; the box marks the quartiles and the "
         "median.", strip_figure(results)),
        ("Tuning curves", "Expected best validation objective after n tuning trials (Tang et "
         "al. 2020) with a 5-95% bootstrap band: where curves cross, the ranking depends on the "
         "tuning budget.", tuning_figure(results)),
        ("Optimizer internals", "Per-epoch means over seeds with a 95% band.",
         internals_figure(results)),
    ]  # fmt: skip
    write_text(path, page(results, figures))


def write_all(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(json_safe(results), indent=1))
    write_text(out / RUNS_CSV, csv_text(run_rows(json_safe(results))))  # one row per final run
    write_text(out / "results.md", inert(markdown(results)))
    curves = bands(results)
    write_html(results, curves, out / "comparison.html")
    write_png(results, curves, out / "comparison.png")
