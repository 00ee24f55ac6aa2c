"""Aggregate the units of a text-domain (masked-LM) run into its summary.

Same shape as the MNIST summary (``aggregate`` per arm with mean / std / n over
seeds, ``units`` kept whole), in loss terms: lower is better, and BWT / forgetting are
positive when the model forgets (signs of :func:`basinlab.eval.continual.loss_continual_metrics`).
Representation metrics are read at the last layer for the headline and kept per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from basinlab.eval.results import SCHEMA_VERSION, TextUnitResult
from basinlab.eval.summary import headline_stats, mean_std_curves, nan_mean, paired_difference_table, run_fields, units_by_arm

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
    "mean_tokens_per_second": "training tokens per second of wall time between the first and last optimizer step of a "
    "domain (all ranks together), mean over domains; domain-boundary evaluation excluded",
}


def build_text_summary(config: dict[str, Any], units: list[TextUnitResult]) -> dict[str, Any]:
    """The summary of a text run from its resolved config and its finished unit results."""
    by_arm = units_by_arm(config, units)
    aggregate = {}
    for label, group in by_arm.items():
        layers = [u.layer_metrics() for u in group]
        aggregate[label] = {
            **headline_stats(group),
            "mean_loss_matrix": nan_mean([u.loss_matrix for u in group]),
            "mean_initial_losses": nan_mean([u.initial_losses for u in group]),
            "first_domain_loss_curve": mean_std_curves([[row[0] for row in u.loss_matrix] for u in group]),
            "seen_domains_loss_curve": mean_std_curves(
                [[float(np.mean(row[: i + 1])) for i, row in enumerate(u.loss_matrix)] for u in group]
            ),
            "per_layer": {
                key: nan_mean([[layer[key] for layer in ls] for ls in layers])
                for key in ("effective_rank", "cross_domain_cosine", "retained_cka")
            },
            "mean_final_domain_cosine": nan_mean([u.final_representation[-1]["domain_mean_cosine"] for u in group]),
            "train_loss_curve": {
                "step": [step for step, _ in group[0].train_loss],
                **mean_std_curves([[loss for _, loss in u.train_loss] for u in group]),
            },
        }
    first = units[0] if units else None
    data = config["data"]
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": "text",
        "name": config["name"],
        "domains": first.domains if first else [d["name"] if isinstance(d, dict) else d for d in data["domains"]],
        "domain_sizes": first.domain_sizes if first else None,
        "model": config["model"],
        "max_length": data["max_length"],
        "steps_per_domain": config["train"]["steps_per_domain"],
        "world_size": first.world_size if first else None,
        **run_fields(config, units, aggregate, CONVENTIONS),
        "paired_differences": paired_difference_table(by_arm),
    }
