"""Aggregate the units of a text-domain (masked-LM) run into its summary.

Same shape as the MNIST summary (``aggregate`` per optimizer with mean / std / n over
seeds, ``units`` kept whole), in loss terms: lower is better, and BWT / forgetting are
positive when the model forgets (signs of :func:`basinlab.eval.continual.loss_continual_metrics`).
Representation metrics are read at the last layer for the headline and kept per layer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from basinlab.eval.stats import mean_ci
from basinlab.eval.summary import SCHEMA_VERSION, mean_std_curves, nan_mean, paired_difference_table, run_fields


def _finite_mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def layer_metrics(layer: dict[str, Any], retained: list[str]) -> dict[str, float]:
    """One layer's record reduced to three numbers: effective rank (mean over domains), mean
    cross-domain cosine, and CKA to right-after-training (mean over the ``retained`` domains)."""
    return {
        "effective_rank": _finite_mean(list(layer["effective_rank"].values())),
        "cross_domain_cosine": layer["mean_cross_domain_cosine"],
        "retained_cka": _finite_mean([layer["cka_to_after_domain"][name] for name in retained]),
    }


def unit_layer_metrics(unit: dict[str, Any]) -> list[dict[str, float]]:
    """Per-layer metrics after the last domain; CKA over the domains trained before it."""
    retained = unit["rows"][:-1]
    return [layer_metrics(layer, retained) for layer in unit["final_representation"]]


def _last_layer(key: str):
    return lambda u: unit_layer_metrics(u)[-1][key]


HEADLINE = {
    "final_loss": lambda u: u["continual"]["final_loss"],
    "bwt_loss": lambda u: u["continual"]["bwt_loss"],
    "fwt_loss": lambda u: u["continual"]["fwt_loss"],
    "forgetting_loss": lambda u: u["continual"]["forgetting_loss"],
    "final_effective_rank": _last_layer("effective_rank"),
    "final_cross_domain_cosine": _last_layer("cross_domain_cosine"),
    "final_retained_cka": _last_layer("retained_cka"),
    "tokens_per_second": lambda u: _finite_mean(u["tokens_per_second"]),
}

CONVENTIONS = {
    "loss": "validation masked-LM cross-entropy (nats per masked token) with masks fixed per example; lower is better",
    "loss_matrix": "L[i][j] = loss on domain j after training domain i (0-indexed, domains in training order)",
    "final_loss": "mean_j L[T-1][j]",
    "bwt_loss": "mean_{j<T-1} L[T-1][j] - L[j][j]; POSITIVE = forgetting (the opposite sign of accuracy BWT)",
    "fwt_loss": "mean_{j>=1} L[j-1][j] - L0[j], L0 = loss at initialization; NEGATIVE = positive forward transfer",
    "forgetting_loss": "mean_{j<T-1} L[T-1][j] - min_{l<T-1} L[l][j]; POSITIVE = forgetting",
    "effective_rank": "exp(entropy) of the normalized covariance spectrum of mean-pooled hidden states of one domain's "
    "probe sequences, averaged over domains (Roy & Vetterli 2007)",
    "cross_domain_cosine": "mean off-diagonal cosine similarity between the domains' mean representations",
    "retained_cka": "linear CKA between a domain's probe representations right after training it and after the last "
    "domain, averaged over the domains before the last; 1 = unchanged",
    "layer": "0 = embeddings, k = output of transformer layer k; headline numbers use the last layer",
    "tokens_per_second": "training tokens per second of wall time between the first and last optimizer step of a "
    "domain (all ranks together), mean over domains; domain-boundary evaluation excluded",
}


def build_text_summary(config: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a text run from its resolved config and its finished unit results."""
    labels = [o["label"] for o in config["arms"]]
    aggregate = {}
    for label in labels:
        group = sorted((u for u in units if u["optimizer"] == label), key=lambda u: u["seed"])
        if not group:
            continue
        layers = [unit_layer_metrics(u) for u in group]
        aggregate[label] = {
            "seeds": [u["seed"] for u in group],
            **{name: mean_ci([read(u) for u in group]) for name, read in HEADLINE.items()},
            "mean_loss_matrix": nan_mean([u["loss_matrix"] for u in group]),
            "mean_initial_losses": nan_mean([u["initial_losses"] for u in group]),
            "first_domain_loss_curve": mean_std_curves([[row[0] for row in u["loss_matrix"]] for u in group]),
            "seen_domains_loss_curve": mean_std_curves(
                [[float(np.mean(row[: i + 1])) for i, row in enumerate(u["loss_matrix"])] for u in group]
            ),
            "per_layer": {
                key: nan_mean([[layer[key] for layer in ls] for ls in layers])
                for key in ("effective_rank", "cross_domain_cosine", "retained_cka")
            },
            "mean_final_domain_cosine": nan_mean([u["final_representation"][-1]["domain_mean_cosine"] for u in group]),
            "train_loss_curve": {
                "step": [step for step, _ in group[0]["train_loss"]],
                **mean_std_curves([[loss for _, loss in u["train_loss"]] for u in group]),
            },
        }
    first = units[0] if units else {}
    data = config["data"]
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": "text",
        "name": config["name"],
        "domains": first.get("domains", [d["name"] if isinstance(d, dict) else d for d in data["domains"]]),
        "domain_sizes": first.get("domain_sizes"),
        "model": config["model"],
        "max_length": data["max_length"],
        "steps_per_domain": config["train"]["steps_per_domain"],
        "world_size": first.get("world_size"),
        **run_fields(config, units, aggregate, CONVENTIONS),
        "paired_differences": paired_difference_table(
            {label: [u for u in units if u["optimizer"] == label] for label in aggregate}, HEADLINE
        ),
    }
