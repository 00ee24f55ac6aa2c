"""Aggregate per-unit results into the run summary (the schema documented in the README).

A unit is one (optimizer, seed) run; the summary keeps every unit and adds, per
optimizer, mean, standard deviation and count over seeds of the headline metrics.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

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
}


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def average_accuracy_curve(matrix: list[list[float]]) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    return [float(np.mean(row[: i + 1])) for i, row in enumerate(matrix)]


def build_summary(config: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a run from its resolved config and its finished unit results."""
    labels = [o["label"] for o in config["optimizers"]]
    by_label = {label: [u for u in units if u["optimizer"] == label] for label in labels}
    aggregate = {}
    for label, group in by_label.items():
        if not group:
            continue
        group = sorted(group, key=lambda u: u["seed"])
        aggregate[label] = {
            "seeds": [u["seed"] for u in group],
            **{name: mean_std([read(u) for u in group]) for name, read in HEADLINE.items()},
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
    }


def run_fields(config: dict[str, Any], units: list[dict[str, Any]], aggregate: dict, conventions: dict) -> dict[str, Any]:
    """The summary keys every recipe shares: arms, seeds, conventions, aggregate, units, completeness."""
    labels = [o["label"] for o in config["optimizers"]]
    return {
        "optimizers": {o["label"]: {k: v for k, v in o.items() if k != "label"} for o in config["optimizers"]},
        "seeds": config["seeds"],
        "conventions": conventions,
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
        result["final_weights_below"] = {t: mean_std([u["weights_below"][-1][t] for u in group]) for t in thresholds}
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
