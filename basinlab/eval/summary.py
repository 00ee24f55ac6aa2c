"""Aggregate per-unit results into the run summary (the schema in docs/recipes.md).

A unit is one (arm, seed) run; the summary keeps every unit and adds, per arm, mean,
standard deviation, count and 95 % confidence interval over seeds of the headline metrics
(the result class's ``HEADLINE``), the same-seed differences between arms, and a property card.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from basinlab.eval.results import SCHEMA_VERSION, MnistUnitResult, UnitResult
from basinlab.eval.stats import mean_ci, paired_differences

CONVENTIONS = {
    "accuracy": "fraction of test images classified correctly, in [0, 1]; higher is better",
    "accuracy_matrix": "R[i][j] = accuracy on task j after training task i (0-indexed)",
    "acc": "mean_j R[T-1][j]",
    "bwt": "mean_{j<T-1} R[T-1][j] - R[j][j]; negative = forgetting",
    "fwt": "mean_{j>=1} R[j-1][j] - b[j], b = accuracy at initialization",
    "forgetting": "mean_{j<T-1} max_{l<T-1} R[l][j] - R[T-1][j] (Chaudhry et al. 2018); higher = more forgetting",
    "effective_rank": "exp(entropy) of the normalized covariance spectrum of last-hidden-layer activations "
    "on the probe sets of the tasks seen so far (Roy & Vetterli 2007); where (`representation`): after or before "
    "the ReLU, probes pooled or one measurement per task averaged",
    "cross_class_cosine": "mean off-diagonal cosine similarity between class-mean activations on the same probes "
    "(`representation.class_means`: raw means, or means of features centred on their grand mean)",
    "first_task_cka": "linear CKA between task-1 probe activations right after task 1 and after each later task",
    "weights_below": "fraction of weight-matrix entries (effective weights for Powerprop) with |w| below each "
    "threshold, after each task",
    "pruning": "mean test accuracy over all tasks after the last task, with all but the largest `keep` fraction of "
    "weight-matrix entries zeroed (ranked globally or per layer; biases kept), without retraining or after "
    "`finetune_steps` masked steps on the last task",
    "paired_differences": "for arms a listed before b in the config: per headline metric, mean over the seeds "
    "both finished of (a - b) on the same seed, with its t interval; the same seed gives both the same initial "
    "weights and tasks, so the pairing removes the seed-to-seed variation the two share",
    "convergence_steps": "optimizer steps until the validation accuracy on task 1, measured after every epoch, "
    "first reaches train.convergence_target (so to one epoch's steps); seeds that never reach it are left out "
    "and n counts the seeds that did",
    "sparsity": "share of weight-matrix entries with |w| below the first of pruning.thresholds after the last task",
}

# Every recipe's headline statistics come from mean_ci, so every summary carries this definition.
CI_CONVENTION = {
    "confidence_interval": "ci_low/ci_high: Student-t interval for the mean over seeds at ci_level (0.95), "
    "mean ± t_{(1+level)/2, n-1} std / sqrt(n) with std over seeds (ddof 1); n counts the seeds with a finite "
    "value (a diverged seed is left out); no std or interval when n < 2",
}


def average_accuracy_curve(matrix: list[list[float]]) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    return [float(np.mean(row[: i + 1])) for i, row in enumerate(matrix)]


def units_by_arm(config: dict[str, Any], units: list[UnitResult]) -> dict[str, list[UnitResult]]:
    """Each arm's finished units in seed order, arms in config order, arms without a unit left out."""
    grouped = {o["label"]: sorted((u for u in units if u.arm == o["label"]), key=lambda u: u.seed) for o in config["arms"]}
    return {label: group for label, group in grouped.items() if group}


def headline_stats(group: list[UnitResult]) -> dict[str, Any]:
    """The seeds of ``group`` and mean_ci over them of every headline metric."""
    headlines = [u.headline() for u in group]
    return {"seeds": [u.seed for u in group], **{name: mean_ci([h[name] for h in headlines]) for name in group[0].HEADLINE}}


def build_mnist_summary(config: dict[str, Any], units: list[MnistUnitResult]) -> dict[str, Any]:
    """The summary of a run from its resolved config and its finished unit results."""
    by_arm = units_by_arm(config, units)
    aggregate = {}
    for label, group in by_arm.items():
        aggregate[label] = {
            **headline_stats(group),
            "mean_accuracy_matrix": np.mean([u.accuracy_matrix for u in group], axis=0).tolist(),
            "average_accuracy_curve": mean_std_curves([average_accuracy_curve(u.accuracy_matrix) for u in group]),
            "first_task_accuracy_curve": mean_std_curves([[row[0] for row in u.accuracy_matrix] for u in group]),
            "mean_final_covariance_spectrum": nan_mean([u.final_covariance_spectrum for u in group]),
            "mean_final_cross_class_cosine": nan_mean([u.final_cross_class_cosine for u in group]),
            **sparsity_aggregate(group),
        }
    first = units[0] if units else None
    return {
        "schema_version": SCHEMA_VERSION,
        "name": config["name"],
        "stream": config["data"]["stream"],
        "num_tasks": config["data"]["num_tasks"],
        "task_names": first.task_names if first else [],
        "world_size": first.world_size if first else None,
        "representation": config.get("representation"),  # None: a run from before the option existed
        **run_fields(config, units, aggregate, CONVENTIONS),
        "paired_differences": paired_difference_table(by_arm),
        "property_card": property_card(config, by_arm, aggregate),
    }


def paired_difference_table(by_arm: dict[str, list[UnitResult]]) -> list[dict[str, Any]]:
    """Per pair of arms (a before b) the same-seed differences a - b of every headline metric."""
    table = []
    for a, b in itertools.combinations(by_arm, 2):
        units_a, units_b = ({u.seed: u.headline() for u in by_arm[label]} for label in (a, b))
        names = by_arm[a][0].HEADLINE
        differences = {
            name: paired_differences({s: h[name] for s, h in units_a.items()}, {s: h[name] for s, h in units_b.items()})
            for name in names
        }
        table.append({"a": a, "b": b, "seeds": sorted(units_a.keys() & units_b.keys()), **differences})
    return table


def steps_to_target(curve: list[list[float]], target: float) -> int | None:
    """The optimizer step of the first (step, val_accuracy) point at or above ``target``; None if none is."""
    return next((step for step, accuracy in curve if accuracy >= target), None)


def property_card(config: dict[str, Any], by_arm: dict[str, list[MnistUnitResult]], aggregate: dict) -> dict[str, Any]:
    """One row per arm: convergence speed, ACC, forgetting, final representation and sparsity."""
    target = config["train"].get("convergence_target")
    measured = [agg["final_weights_below"] for agg in aggregate.values() if "final_weights_below" in agg]
    threshold = next(iter(measured[0])) if measured else None  # the first configured threshold
    rows = {}
    for label, agg in aggregate.items():
        group = by_arm[label]
        row = {key: agg[key] for key in ("acc", "forgetting", "final_effective_rank", "final_cross_class_cosine_mean")}
        if target is not None:
            row["convergence_steps"] = mean_ci([steps_to_target(u.val_accuracy_curve[0], target) for u in group])
        if "final_weights_below" in agg:
            row["sparsity"] = agg["final_weights_below"][threshold]
        rows[label] = row
    return {"convergence_target": target, "sparsity_threshold": threshold, "arms": rows}


def run_fields(config: dict[str, Any], units: list[UnitResult], aggregate: dict, conventions: dict) -> dict[str, Any]:
    """The summary keys every recipe shares: arms, seeds, conventions, aggregate, units, completeness."""
    labels = [o["label"] for o in config["arms"]]
    return {
        "arms": {o["label"]: {k: v for k, v in o.items() if k != "label"} for o in config["arms"]},
        "seeds": config["seeds"],
        "conventions": {**conventions, **CI_CONVENTION},
        "aggregate": aggregate,
        "units": [u.to_json() for u in sorted(units, key=lambda u: (labels.index(u.arm), u.seed))],
        "complete": len(units) == len(labels) * len(config["seeds"]),
    }


def nan_mean(values: list) -> list:
    """Elementwise mean over seeds ignoring NaN (stored as null: a diverged unit); NaN where all are."""
    array = np.array(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected, and NaN is the answer
        return np.nanmean(array, axis=0).tolist()


def sparsity_aggregate(group: list[MnistUnitResult]) -> dict[str, Any]:
    """Small-weight fractions after the last task and, when measured, the pruning curves."""
    thresholds = group[0].weights_below[-1]
    result = {"final_weights_below": {t: mean_ci([u.weights_below[-1][t] for u in group]) for t in thresholds}}
    if all(u.pruning is not None for u in group):
        first = group[0].pruning
        pruning = {"scope": first["scope"], "keep": first["keep"]}
        for key in ("accuracy", "finetuned_accuracy"):
            if key in first:
                pruning[key] = mean_std_curves([u.pruning[key] for u in group])
        if "finetune_steps" in first:
            pruning["finetune_steps"] = first["finetune_steps"]
        result["pruning"] = pruning
    return result


def mean_std_curves(curves: list[list[float]]) -> dict[str, list[float]]:
    array = np.asarray(curves, dtype=float)
    std = array.std(axis=0, ddof=1) if len(array) > 1 else np.zeros(array.shape[1])
    return {"mean": array.mean(axis=0).tolist(), "std": std.tolist()}
