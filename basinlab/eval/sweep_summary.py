"""A sweep's summary: per cell and arm the paired difference from the reference arm on the same
seeds, and across all units of a stream how well each representation metric predicts forgetting.

- paired differences: :func:`basinlab.eval.stats.paired_differences` (t interval over seeds);
- what predicts forgetting: Spearman's rank correlation between a metric and the target (BWT)
  over the (cell, arm, seed) units of a group whose arm learned the cell's tasks (and, beside it,
  over every unit), with a percentile bootstrap interval from resampling units (seeded, so the
  summary is reproducible).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from basinlab.eval.stats import mean_ci, paired_differences

BOOTSTRAP_DRAWS = 2000
TARGET = "bwt"


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the mean of their ranks (what Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; NaN when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / scale) if scale > 0 else math.nan


def spearman_with_ci(x: list[float], y: list[float], level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """rho over the pairs where both are finite, and the percentile interval of rho over bootstrap
    resamples of those pairs (draws where a side is constant are dropped)."""
    pairs = np.array([(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)], dtype=float).reshape(-1, 2)
    stat = {"rho": None, "n": len(pairs), "ci_low": None, "ci_high": None, "ci_level": level}
    if len(pairs) < 3:
        return stat
    stat["rho"] = _none_if_nan(spearman(pairs[:, 0], pairs[:, 1]))
    rng = np.random.default_rng(seed)
    draws = [spearman(*pairs[rng.integers(0, len(pairs), len(pairs))].T) for _ in range(BOOTSTRAP_DRAWS)]
    draws = [d for d in draws if math.isfinite(d)]
    if draws:
        stat["ci_low"], stat["ci_high"] = (float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))
    return stat


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _none_if_nan(value: float) -> float | None:
    return value if math.isfinite(value) else None


LEARNED = 0.9  # an arm "learned" a cell's tasks when its learning accuracy is at least this share of the reference's


def learning_accuracy(unit: Any) -> float | None:
    """Mean accuracy on each task right after training it (the accuracy matrix's diagonal): an arm that never
    learns a task cannot forget it, so a BWT near 0 means little without this. None for units without one."""
    matrix = getattr(unit, "accuracy_matrix", None)
    return float(np.mean([matrix[j][j] for j in range(len(matrix))])) if matrix else None


def _cell_table(cell: dict[str, Any], reference: str, metrics: list[str]) -> dict[str, Any]:
    by_arm = {label: {u.seed: u.headline() for u in cell["units"] if u.arm == label} for label in cell["arms"]}
    learned = {label: mean_ci([learning_accuracy(u) for u in cell["units"] if u.arm == label]) for label in cell["arms"]}
    arms = {}
    for label, seeds in by_arm.items():
        if not seeds:
            continue
        entry = {"seeds": sorted(seeds), **{m: mean_ci([h[m] for h in seeds.values()]) for m in metrics},
                 "learning_accuracy": learned[label]}
        if label != reference and by_arm.get(reference):
            ref = by_arm[reference]
            entry["vs_reference"] = {
                m: paired_differences({s: h[m] for s, h in seeds.items()}, {s: h[m] for s, h in ref.items()}) for m in metrics
            }
            own, theirs = learned[label]["mean"], learned[reference]["mean"]
            entry["learned_the_tasks"] = None if own is None or theirs is None else own >= LEARNED * theirs
        arms[label] = entry
    return {
        "name": cell["name"],
        "values": cell["values"],
        "arms": arms,
        "units": len(cell["units"]),
        "wall_time_s": float(sum(u.wall_time_s for u in cell["units"])),
    }


def _group_key(axes: dict[str, list[Any]]) -> str | None:
    """Correlations are computed per stream when the stream is an axis (the streams forget differently)."""
    return "data.stream" if "data.stream" in axes else None


def _correlations(groups: dict[str, list], predictors: list[str], learners_only: bool) -> dict[str, Any]:
    """Per group, rho of each predictor with the target over its (unit, learned) pairs."""
    table = {}
    for group, pairs in groups.items():
        units = [u for u, learned in pairs if learned or not learners_only]
        target = [u.headline()[TARGET] for u in units]
        table[group] = {m: spearman_with_ci([u.headline()[m] for u in units], target) for m in predictors}
    return table


def build_sweep_summary(
    name: str, reference: str, metrics: list[str], axes: dict[str, list[Any]], cells: list[dict[str, Any]]
) -> dict[str, Any]:
    """``cells``: per cell its name, axis values, arm labels (config order) and finished unit results."""
    tables = [_cell_table(cell, reference, metrics) for cell in cells]
    group_key = _group_key(axes)
    groups: dict[str, list] = {}  # per group: (unit, whether its arm learned the cell's tasks)
    for cell, table in zip(cells, tables):
        group = str(cell["values"][group_key]) if group_key else "all"
        groups.setdefault(group, []).extend(
            (u, table["arms"].get(u.arm, {}).get("learned_the_tasks") is not False) for u in cell["units"])
    predictors = [m for m in metrics if m != TARGET]
    with_target = TARGET in metrics
    return {
        "schema_version": 1,
        "name": name,
        "reference": reference,
        "metrics": metrics,
        "axes": axes,
        "cells": tables,
        "correlation_group": group_key or "all units",
        "correlations_with_bwt": _correlations(groups, predictors, learners_only=True) if with_target else {},
        "correlations_with_bwt_all_units": _correlations(groups, predictors, learners_only=False) if with_target else {},
        "points": {group: [{"arm": u.arm, "seed": u.seed, "learned_the_tasks": learned, **u.headline()}
                           for u, learned in pairs] for group, pairs in groups.items()},
        "conventions": {
            "vs_reference": "per metric, mean over the seeds both arms finished of (arm - reference) on the same seed, "
            "with its Student-t interval (ci_level); BWT > 0 means less forgetting than the reference",
            "learning_accuracy": "mean over tasks of the accuracy on each task right after training it (the accuracy "
            f"matrix's diagonal); learned_the_tasks: the arm's is at least {LEARNED} x the reference's (a higher BWT "
            "without it is not retention)",
            "correlations_with_bwt": "Spearman's rho between the metric and BWT over the units (cell, arm, seed) of "
            "the group whose arm learned the cell's tasks (an arm that learns nothing forgets nothing), with a "
            f"percentile bootstrap interval ({BOOTSTRAP_DRAWS} resamples of units, seed 0); "
            "correlations_with_bwt_all_units: the same over every unit",
        },
    }


def _interval(stat: dict[str, Any], digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "n/a"
    if stat.get("ci_low") is None:
        return f"{stat['mean']:+.{digits}f}"
    half = (stat["ci_high"] - stat["ci_low"]) / 2
    return f"{stat['mean']:+.{digits}f} ± {half:.{digits}f}"


def _sign(stat: dict[str, Any]) -> int:
    """+1 / -1 when the interval excludes 0 on that side, else 0."""
    if stat.get("ci_low") is None:
        return 0
    return 1 if stat["ci_low"] > 0 else -1 if stat["ci_high"] < 0 else 0


def verdicts(summary: dict[str, Any]) -> list[str]:
    """Per arm, in how many cells the forgetting claim (BWT above the reference's) and the representational
    claim (lower rank and lower class overlap) hold with intervals that exclude 0."""
    lines = []
    arms = [a for cell in summary["cells"] for a in cell["arms"] if a != summary["reference"]]
    for arm in dict.fromkeys(arms):
        entries = [c["arms"][arm] for c in summary["cells"] if "vs_reference" in c["arms"].get(arm, {})]
        rows = [e["vs_reference"] for e in entries]
        if not rows or TARGET not in rows[0]:
            continue
        unlearned = sum(e["learned_the_tasks"] is False and _sign(e["vs_reference"][TARGET]) > 0 for e in entries)
        less_forgetting = sum(_sign(r[TARGET]) > 0 for r in rows) - unlearned
        more_forgetting = sum(_sign(r[TARGET]) < 0 for r in rows)
        line = f"- **{arm}** vs {summary['reference']}: less forgetting in {less_forgetting} of {len(rows)} cells, more in {more_forgetting}"
        if unlearned:
            line += f" (and a higher BWT in {unlearned} where it did not learn the tasks: learning accuracy below {LEARNED:.0%} of the reference's)"
        if "final_effective_rank" in rows[0] and "final_cross_class_cosine_mean" in rows[0]:
            lower = sum(_sign(r["final_effective_rank"]) < 0 and _sign(r["final_cross_class_cosine_mean"]) < 0 for r in rows)
            rank_only = sum(_sign(r["final_effective_rank"]) < 0 for r in rows)
            both = sum(_sign(r[TARGET]) > 0 and _sign(r["final_effective_rank"]) < 0 for r in rows)
            line += (f"; lower effective rank in {rank_only}, lower rank and lower class overlap together in {lower}; "
                     f"less forgetting together with lower rank in {both}")
        lines.append(line + ".")
    return lines


def _rho(stat: dict[str, Any]) -> str:
    rho = "n/a" if stat["rho"] is None else f"{stat['rho']:+.2f}"
    return rho if stat["ci_low"] is None else f"{rho} [{stat['ci_low']:+.2f}, {stat['ci_high']:+.2f}]"


def render_sweep_report(summary: dict[str, Any], plots: list[Path], output: Path) -> str:
    metrics = summary["metrics"]
    lines = [f"# Sweep {summary['name']}", "", f"Paired differences from **{summary['reference']}** on the same seeds "
             "(mean ± half-width of the 95 % t interval; BWT > 0 = less forgetting).", ""]
    lines += ["| cell | arm | seeds | learning accuracy | " + " | ".join(f"Δ{m}" for m in metrics) + " |",
              "|---|---|---|---|" + "---|" * len(metrics)]
    for cell in summary["cells"]:
        for arm, entry in cell["arms"].items():
            if "vs_reference" in entry:
                diffs = " | ".join(_interval(entry["vs_reference"][m]) for m in metrics)
                learned = entry["learning_accuracy"]["mean"]
                mark = "" if entry["learned_the_tasks"] is not False else " (not learned)"
                la = "n/a" if learned is None else f"{learned:.3f}{mark}"
                lines.append(f"| {cell['name']} | {arm} | {len(entry['seeds'])} | {la} | {diffs} |")
    lines += ["", "## Where the claims hold", "", *verdicts(summary), ""]
    if summary["correlations_with_bwt"]:
        everyone = summary["correlations_with_bwt_all_units"]
        lines += ["## What predicts forgetting", "", f"Spearman's rho with BWT per {summary['correlation_group']} "
                  "(95 % bootstrap interval), over the units of arms that learned the tasks, and over every unit:", "",
                  "| group | metric | n | rho (arms that learned) | n | rho (every unit) |", "|---|---|---|---|---|---|"]
        for group, table in summary["correlations_with_bwt"].items():
            for metric, stat in table.items():
                lines.append(f"| {group} | {metric} | {stat['n']} | {_rho(stat)} | "
                             f"{everyone[group][metric]['n']} | {_rho(everyone[group][metric])} |")
        lines.append("")
    lines += ["## Wall time", "", "| cell | units | training s |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['units']} | {c['wall_time_s']:.0f} |" for c in summary["cells"]]
    lines += ["", *[f"![{p.stem}]({p.relative_to(output)})" for p in plots], ""]
    return "\n".join(lines)
