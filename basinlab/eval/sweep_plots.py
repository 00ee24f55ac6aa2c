"""A sweep's figures: the paired differences of every cell and arm from the reference (one panel per
metric, intervals as bars), and per stream the scatter of each representation metric against BWT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from basinlab.eval.plots import _save  # noqa: E402
from basinlab.eval.sweep_summary import TARGET  # noqa: E402


def paired_differences_plot(summary: dict[str, Any], path: Path) -> Path:
    rows = [(f"{c['name']} | {arm}", e["vs_reference"]) for c in summary["cells"] for arm, e in c["arms"].items()
            if "vs_reference" in e]
    metrics = summary["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics) + 2.5, 0.26 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for y, (_, diffs) in enumerate(rows):
            stat = diffs[metric]
            if stat["mean"] is None:
                continue
            low, high = stat["ci_low"], stat["ci_high"]
            colour = "tab:gray" if low is None or low <= 0 <= high else "tab:blue" if low > 0 else "tab:red"
            ax.plot([low if low is not None else stat["mean"], high if high is not None else stat["mean"]], [y, y],
                    color=colour, lw=2)
            ax.plot(stat["mean"], y, "o", color=colour, ms=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"Δ {metric}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=6)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"paired difference from {summary['reference']} (95 % t interval; blue > 0, red < 0)", fontsize=9)
    return _save(fig, path)


def predictors_plot(summary: dict[str, Any], path: Path) -> Path:
    groups = summary["points"]
    predictors = [m for m in summary["metrics"] if m != TARGET]
    fig, axes = plt.subplots(len(groups), len(predictors), figsize=(3.3 * len(predictors), 3.0 * len(groups)),
                             squeeze=False)
    arms = sorted({p["arm"] for points in groups.values() for p in points})
    colours = {arm: plt.get_cmap("tab20")(i % 20) for i, arm in enumerate(arms)}
    for row, (group, points) in zip(axes, groups.items()):
        for ax, metric in zip(row, predictors):
            for arm in arms:
                for learned in (True, False):  # arms that did not learn the tasks: hollow, outside rho
                    mine = [p for p in points if p["arm"] == arm and p.get("learned_the_tasks", True) is learned]
                    ax.scatter([p[metric] for p in mine], [p[TARGET] for p in mine], s=9, label=arm if learned else None,
                               facecolors=colours[arm] if learned else "none", edgecolors=colours[arm])
            rho = summary["correlations_with_bwt"][group][metric]["rho"]
            ax.set_title(f"{group}: rho {'n/a' if rho is None else f'{rho:+.2f}'}", fontsize=8)
            ax.set_xlabel(metric, fontsize=8)
            ax.set_ylabel("BWT", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=5, loc="center left", bbox_to_anchor=(1.02, 0.5),
                       title="hollow: did not learn\nthe tasks (not in rho)", title_fontsize=5)
    fig.tight_layout()
    return _save(fig, path)


def write_sweep_plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    plots = [paired_differences_plot(summary, folder / "paired_differences.png")]
    if summary["correlations_with_bwt"]:
        plots.append(predictors_plot(summary, folder / "bwt_predictors.png"))
    return plots
