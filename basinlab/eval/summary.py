"""Aggregate per-unit results into the run summary (the schema documented in the README).

A unit is one (optimizer, seed) run; the summary keeps every unit and adds, per
optimizer, mean, standard deviation, count and 95 % confidence interval over seeds of the
headline metrics, the same-seed differences between optimizers, and a property card.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from basinlab.eval.stats import mean_ci, paired_differences

SCHEMA_VERSION = 1

# Headline metrics: name in the summary -> how to read it off a unit result.
HEADLINE = {
    "acc": lambda u: u["acc"],
    "bwt": lambda u: u["bwt"],
    "fwt": lambda u: u["fwt"],
    "forgetting": lambda u: u["forgetting"],
    "final_effective_rank": lambda u: u["effective_rank"][-1],
    "final_cross_class_cosine": lambda u: u["cross_class_cosine_mean"][-1],
    "final_first_task_cka": lambda u: u["first_task_cka"][-1],
    "epochs": lambda u: sum(u["epochs"]),
}

CONVENTIONS = {
    "accuracy": "fraction of test images classified correctly, in [0, 1]; higher is better",
    "accuracy_matrix": "R[i][j] = accuracy on task j after training task i (0-indexed)",
    "acc": "mean_j R[T-1][j]",
    "bwt": "mean_{j<T-1} R[T-1][j] - R[j][j]; negative = forgetting",
    "fwt": "mean_{j>=1} R[j-1][j] - b[j], b = accuracy at initialization",
    "forgetting": "mean_{j<T-1} max_{l<T-1} R[l][j] - R[T-1][j] (Chaudhry et al. 2018); higher = more forgetting",
    "effective_rank": "exp(entropy) of the normalized covariance spectrum of last-hidden-layer activations "
    "on the pooled probe sets of the tasks seen so far (Roy & Vetterli 2007)",
    "cross_class_cosine": "mean off-diagonal cosine similarity between class-mean activations on the same probes",
    "first_task_cka": "linear CKA between task-1 probe activations right after task 1 and after each later task",
    "weights_below": "fraction of weight-matrix entries (effective weights for Powerprop) with |w| below each "
    "threshold, after each task",
    "pruning": "mean test accuracy over all tasks after the last task, with all but the largest `keep` fraction of "
    "weight-matrix entries zeroed (ranked globally or per layer; biases kept), without retraining or after "
    "`finetune_steps` masked steps on the last task",
    "paired_differences": "for optimizers a listed before b in the config: per headline metric, mean over the seeds "
    "both finished of (a - b) on the same seed, with its t interval; the same seed gives both the same initial "
    "weights and tasks, so the pairing removes the seed-to-seed variation the two share",
    "convergence_steps": "optimizer steps until the validation accuracy on task 1, measured after every epoch, "
    "first reaches train.convergence_target (so to one epoch's steps); seeds that never reach it are left out "
    "and n counts the seeds that did",
    "sparsity": "share of weight-matrix entries with |w| below the first sparsity threshold after the last task",
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


def build_summary(config: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a run from its resolved config and its finished unit results."""
    labels = [o["label"] for o in config["arms"]]
    by_label = {label: [u for u in units if u["optimizer"] == label] for label in labels}
    aggregate = {}
    for label, group in by_label.items():
        if not group:
            continue
        group = sorted(group, key=lambda u: u["seed"])
        aggregate[label] = {
            "seeds": [u["seed"] for u in group],
            **{name: mean_ci([read(u) for u in group]) for name, read in HEADLINE.items()},
            "mean_accuracy_matrix": np.mean([u["accuracy_matrix"] for u in group], axis=0).tolist(),
            "average_accuracy_curve": mean_std_curves([average_accuracy_curve(u["accuracy_matrix"]) for u in group]),
            "first_task_accuracy_curve": mean_std_curves([[row[0] for row in u["accuracy_matrix"]] for u in group]),
            "mean_final_covariance_spectrum": nan_mean([u["final_covariance_spectrum"] for u in group]),
            "mean_final_cross_class_cosine": nan_mean([u["final_cross_class_cosine"] for u in group]),
            **sparsity_aggregate(group),
        }
    first = units[0] if units else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": config["name"],
        "stream": config["data"]["stream"],
        "num_tasks": config["data"]["num_tasks"],
        "task_names": first.get("task_names", []),
        "world_size": first.get("world_size"),
        **run_fields(config, units, aggregate, CONVENTIONS),
        "paired_differences": paired_difference_table({label: by_label[label] for label in aggregate}),
        "property_card": property_card(config, by_label, aggregate),
    }


def paired_difference_table(by_label: dict[str, list[dict[str, Any]]], headline: dict = HEADLINE) -> list[dict[str, Any]]:
    """Per pair of optimizers (a before b) the same-seed differences a - b of every ``headline`` metric."""
    table = []
    for a, b in itertools.combinations(by_label, 2):
        units_a, units_b = ({u["seed"]: u for u in by_label[label]} for label in (a, b))
        differences = {
            name: paired_differences({s: read(u) for s, u in units_a.items()}, {s: read(u) for s, u in units_b.items()})
            for name, read in headline.items()
        }
        table.append({"a": a, "b": b, "seeds": sorted(units_a.keys() & units_b.keys()), **differences})
    return table


def steps_to_target(curve: list[list[float]], target: float) -> int | None:
    """The optimizer step of the first (step, val_accuracy) point at or above ``target``; None if none is."""
    return next((step for step, accuracy in curve if accuracy >= target), None)


def property_card(config: dict[str, Any], by_label: dict[str, list[dict[str, Any]]], aggregate: dict) -> dict[str, Any]:
    """One row per optimizer: convergence speed, ACC, forgetting, final representation and sparsity.

    Convergence needs the units' validation curves and sparsity their small-weight
    shares; units written before these existed leave the cell out.
    """
    target = config["train"].get("convergence_target")
    measured = [agg["final_weights_below"] for agg in aggregate.values() if "final_weights_below" in agg]
    threshold = next(iter(measured[0])) if measured else None  # the first configured threshold
    rows = {}
    for label, agg in aggregate.items():
        group = by_label[label]
        row = {key: agg[key] for key in ("acc", "forgetting", "final_effective_rank", "final_cross_class_cosine")}
        if target is not None and all("val_accuracy_curve" in u for u in group):
            row["convergence_steps"] = mean_ci([steps_to_target(u["val_accuracy_curve"][0], target) for u in group])
        if "final_weights_below" in agg:
            row["sparsity"] = agg["final_weights_below"][threshold]
        rows[label] = row
    return {"convergence_target": target, "sparsity_threshold": threshold, "arms": rows}


def run_fields(config: dict[str, Any], units: list[dict[str, Any]], aggregate: dict, conventions: dict) -> dict[str, Any]:
    """The summary keys every recipe shares: arms, seeds, conventions, aggregate, units, completeness."""
    labels = [o["label"] for o in config["arms"]]
    return {
        "arms": {o["label"]: {k: v for k, v in o.items() if k != "label"} for o in config["arms"]},
        "seeds": config["seeds"],
        "conventions": {**conventions, **CI_CONVENTION},
        "aggregate": aggregate,
        "units": sorted(units, key=lambda u: (labels.index(u["optimizer"]), u["seed"])),
        "complete": len(units) == len(labels) * len(config["seeds"]),
    }


def nan_mean(values: list) -> list:
    """Elementwise mean over seeds ignoring NaN (stored as null: a diverged unit); NaN where all are."""
    array = np.array(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected, and NaN is the answer
        return np.nanmean(array, axis=0).tolist()


def sparsity_aggregate(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Small-weight fractions after the last task and, when measured, the pruning curves."""
    result = {}
    if all("weights_below" in u for u in group):
        thresholds = group[0]["weights_below"][-1]
        result["final_weights_below"] = {t: mean_ci([u["weights_below"][-1][t] for u in group]) for t in thresholds}
    if all("pruning" in u for u in group):
        first = group[0]["pruning"]
        pruning = {"scope": first["scope"], "keep": first["keep"]}
        for key in ("accuracy", "finetuned_accuracy"):
            if key in first:
                pruning[key] = mean_std_curves([u["pruning"][key] for u in group])
        if "finetune_steps" in first:
            pruning["finetune_steps"] = first["finetune_steps"]
        result["pruning"] = pruning
    return result


def mean_std_curves(curves: list[list[float]]) -> dict[str, list[float]]:
    array = np.asarray(curves, dtype=float)
    std = array.std(axis=0, ddof=1) if len(array) > 1 else np.zeros(array.shape[1])
    return {"mean": array.mean(axis=0).tolist(), "std": std.tolist()}
