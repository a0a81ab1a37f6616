"""The report's figures, each a pure function of plain numbers returning PNG bytes.

matplotlib is imported inside the functions, and figures are drawn on `matplotlib.figure.Figure`
with its Agg canvas, never through pyplot: no window opens, no global backend is switched under
a notebook that imports `rlhf`, and nothing is left open between calls.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

# matplotlib's tab10, written out so the HTML can draw matching swatches without importing matplotlib.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
REFERENCE_COLOUR = "#000000"
DPI = 110


@dataclass
class FrontierPoint:
    """One evaluated policy: KL(pi || ref) and each scorer's mean score, with standard errors."""

    name: str
    method: str
    kl: float
    kl_se: float | None  # None: no x error bar (an analytic KL, such as best-of-N's)
    scores: dict[str, tuple[float, float | None]]  # scorer -> (mean, se)
    flagged: bool = False  # over-optimisation: proxy rising while gold falls
    group: str = ""  # points of one group (one run's checkpoints, then its final) are joined by a line, in list order
    label: str = ""  # the point's own annotation beside its marker ("step-100", "final", "N=4"); "" for none


@dataclass
class RunCurves:
    """One training run's logged metrics: metric name -> [(step, value)]."""

    name: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


Z95 = 1.96  # error bars: 95% normal intervals, mean ± 1.96 SE
BON_GROUP = "best-of-N"  # the group whose points are drawn as the best-of-N baseline
BON_COLOUR = "#555555"


def frontier_png(points: list[FrontierPoint], reference: dict[str, tuple[float, float | None]],
                 scorers: list[str], colours: dict[str, str], labels: dict[str, str] | None = None) -> bytes:
    """Score against KL(pi || pi_ref), one panel per scorer in `scorers` (gold first, then e.g. the proxy).

    The DPO paper's frontier (Rafailov et al. 2023, arXiv 2305.18290, fig. 2 left): a better method
    reaches a higher score at the same KL. One line and colour per group (`colours`, keyed by group;
    `labels` names each group in the legend, default the group itself), its points joined in the
    order given (a run's checkpoints by step, then its final); the group `BON_GROUP` is the best-of-N
    baseline, grey diamonds without x error bars (its KL is analytic); the reference is a star at
    KL 0. Error bars are 95% intervals (± 1.96 SE). A proxy panel beside gold, on the same KL axis,
    shows over-optimisation (Gao et al. 2022, arXiv 2210.10760): proxy still rising where gold
    turns down; flagged points are ringed in red.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = labels or {}
    fig = Figure(figsize=(5.4 * len(scorers), 4.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(scorers), squeeze=False, sharex=True)[0]
    groups = list(dict.fromkeys(p.group for p in points))
    handles: dict[str, Line2D] = {}
    for ax, scorer in zip(axes, scorers):
        if scorer in reference:
            mean, se = reference[scorer]
            ax.axhline(mean, color=REFERENCE_COLOUR, linewidth=0.8, linestyle=":", zorder=1)
            ax.errorbar([0.0], [mean], yerr=[Z95 * (se or 0.0)], fmt="*", markersize=14, color=REFERENCE_COLOUR,
                        capsize=3, zorder=2.5)  # under a policy that sits at KL 0
            handles["reference"] = Line2D([], [], marker="*", markersize=11, color=REFERENCE_COLOUR, linestyle="")
        for group in groups:
            mine = [p for p in points if p.group == group and scorer in p.scores]
            if not mine:
                continue
            bon = group == BON_GROUP
            colour = BON_COLOUR if bon else colours.get(group, PALETTE[groups.index(group) % len(PALETTE)])
            marker, style = ("D", "--") if bon else ("o", "-")
            xs, ys = [p.kl for p in mine], [p.scores[scorer][0] for p in mine]
            xerr = [Z95 * (p.kl_se or 0.0) for p in mine]
            ax.errorbar(xs, ys, xerr=None if bon or not any(xerr) else xerr,
                        yerr=[Z95 * (p.scores[scorer][1] or 0.0) for p in mine], fmt=marker + style, color=colour,
                        capsize=3, markersize=6, linewidth=1.3, elinewidth=0.9, zorder=3)
            handles[labels.get(group, group)] = Line2D([], [], marker=marker, linestyle=style, color=colour)
            for p, x, y in zip(mine, xs, ys):
                if p.flagged:
                    ax.plot([x], [y], "o", markersize=15, markerfacecolor="none", markeredgecolor="#d62728",
                            markeredgewidth=1.8, zorder=5)
                    handles["over-optimised (proxy up, gold down)"] = Line2D(
                        [], [], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="#d62728",
                        markeredgewidth=1.8, linestyle="")
                if p.label:
                    ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7,
                                color="#444444")
        ax.set_xlabel("KL(π ‖ π_ref), nats per completion")
        ax.set_ylabel(f"{scorer} score (mean, 95% interval)")
        ax.set_title(f"{scorer} score vs KL", fontsize=11)
        ax.set_xlim(left=min([0.0] + [p.kl - Z95 * (p.kl_se or 0) for p in points]) - 0.05 * _span(points))
        ax.grid(alpha=0.3)
    if handles:  # the reference, the runs in order, best-of-N, then the over-optimisation ring
        order = sorted(handles, key=lambda k: (k != "reference", k.startswith("over-optimised"),
                                               k == labels.get(BON_GROUP, BON_GROUP)))
        fig.legend([handles[k] for k in order], order, loc="outside lower center", fontsize=8, frameon=False,
                   ncols=min(5, len(order)))
    return _png(fig)


def _span(points: list[FrontierPoint]) -> float:
    kls = [0.0] + [p.kl for p in points]
    return (max(kls) - min(kls)) or 1.0


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average s_t = w s_{t-1} + (1 - w) x_t, debiased by 1 - w^t (TensorBoard's smoothing)."""
    out, s = [], 0.0
    for t, x in enumerate(values, start=1):
        s = weight * s + (1 - weight) * x
        out.append(s / (1 - weight**t))
    return out


def training_curves_png(runs: list[RunCurves], metrics: list[str], colours: dict[str, str]) -> bytes:
    """One panel per metric, one line per run, x = optimiser step. Long noisy runs get an EMA line over
    the raw values drawn faint, so the trend shows without hiding the noise."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(5.8 * ncols, 3.3 * nrows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for run in runs:
            points = run.series.get(metric)
            if not points:
                continue
            steps, values = zip(*points)
            colour = colours[run.name]
            if len(values) >= 30:
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps, ema(list(values), 0.9), color=colour, linewidth=1.6, label=run.name)
            else:
                ax.plot(steps, values, "o-" if len(values) < 8 else "-", color=colour, markersize=3,
                        linewidth=1.4, label=run.name)
        ax.set_title(metric, fontsize=11)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    shown = [r for r in runs if any(r.series.get(m) for m in metrics)]
    handles = [Line2D([], [], color=colours[r.name], linewidth=2) for r in shown]
    fig.legend(handles, [r.name for r in shown], loc="outside lower center", ncols=min(4, len(shown)) or 1,
               fontsize=9, frameon=False)
    return _png(fig)


# (key, label, colour when one report is drawn): the judge's agreement, the two baselines in grey
LABEL_BARS = [("agreement", "agreement with gold", "#1f77b4"), ("baseline_longer", "baseline: always longer", "#a0a4aa"),
              ("baseline_first", "baseline: always first", "#c4c7cc"),
              ("position_consistency", "position consistency", "#9467bd")]


def label_quality_png(reports: list[tuple[str, dict[str, float]]]) -> bytes:
    """Agreement with gold next to the baselines a judge must beat ("always the longer answer",
    "always the first answer"), and position consistency. One report: one bar per number; several:
    one bar per report in each group, coloured by report."""
    from matplotlib.figure import Figure

    bars = [bar for bar in LABEL_BARS if any(bar[0] in values for _, values in reports)]
    n = len(reports)
    fig = Figure(figsize=(7.5, 0.9 + 0.38 * len(bars) * n + 0.15 * len(bars)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    height = 0.8 / n
    for j, (name, values) in enumerate(reports):
        xs = [values.get(key, float("nan")) for key, _, _ in bars]
        rects = ax.barh([i + j * height for i in range(len(bars))], xs, height=height * 0.9, label=name,
                        color=[c for _, _, c in bars] if n == 1 else PALETTE[j % len(PALETTE)])
        ax.bar_label(rects, labels=["" if math.isnan(x) else f"{x:.2f}" for x in xs], padding=3, fontsize=8)
    ax.axvline(0.5, color="#444444", linestyle="--", linewidth=0.9)
    ax.text(0.5, 1.01, "chance", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
            color="#444444")
    ax.set_yticks([i + (n - 1) * height / 2 for i in range(len(bars))], [label for _, label, _ in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("share of pairs")
    ax.grid(axis="x", alpha=0.3)
    if n > 1:
        fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside right upper", frameon=False)
    return _png(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # the same bytes for the same numbers
    return buf.getvalue()
