"""Shampoo's options: their checks (one clear ValueError naming the option) and normalisation."""

from __future__ import annotations

from typing import Any

import torch

from basinlab.optim.grafting import GRAFTINGS
from basinlab.optim.kronecker import ROOT_METHODS

FACTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
NONFINITE_POLICIES = ("skip", "raise")  # raise: one host read per step, by choice
ROOT_PRECISIONS = ("float32", "tf32")


def factor_dtype_of(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in FACTOR_DTYPES.values():
        return value
    if value in FACTOR_DTYPES:
        return FACTOR_DTYPES[value]
    raise ValueError(f"factor_dtype must be one of {', '.join(FACTOR_DTYPES)}, got {value!r}")


def check_options(o: dict[str, Any]) -> dict[str, Any]:
    """Validate Shampoo's per-group options; return them with factor_dtype as its name."""
    beta1, beta2 = o["betas"]
    root_override, method = o["root_override"], o["root_method"]
    integral_root = root_override is None or float(root_override).is_integer()
    checks = [
        (o["lr"] >= 0, f"lr must be >= 0, got {o['lr']}"),
        (0 <= beta1 < 1, f"betas[0] must be in [0, 1), got {beta1}"),
        (0 < beta2 <= 1, f"betas[1] must be in (0, 1], got {beta2}"),
        (o["momentum"] >= 0, f"momentum must be >= 0, got {o['momentum']}"),
        (not o["nesterov"] or o["momentum"] > 0, "nesterov requires momentum > 0"),
        (o["epsilon"] >= 0, f"epsilon must be >= 0, got {o['epsilon']}"),
        (o["weight_decay"] >= 0, f"weight_decay must be >= 0, got {o['weight_decay']}"),
        (o["max_preconditioner_dim"] >= 1, f"max_preconditioner_dim must be >= 1, got {o['max_preconditioner_dim']}"),
        (
            o["max_vector_preconditioner_dim"] >= 0,
            f"max_vector_preconditioner_dim must be >= 0, got {o['max_vector_preconditioner_dim']}",
        ),
        (o["precondition_frequency"] >= 1, f"precondition_frequency must be >= 1, got {o['precondition_frequency']}"),
        (
            o["start_preconditioning_step"] is None or o["start_preconditioning_step"] >= 1,
            f"start_preconditioning_step must be >= 1 or None, got {o['start_preconditioning_step']}",
        ),
        (o["stagger_roots"] in (True, False), f"stagger_roots must be True or False, got {o['stagger_roots']!r}"),
        (o["grafting"] in GRAFTINGS, f"grafting must be one of {', '.join(GRAFTINGS)}, got {o['grafting']!r}"),
        (o["grafting_epsilon"] > 0, f"grafting_epsilon must be > 0, got {o['grafting_epsilon']}"),
        (
            0 <= o["grafting_beta2"] < 1 or (o["grafting_beta2"] == 1 and o["grafting"] != "adam"),
            f"grafting_beta2 must be in [0, 1) (1 only without adam grafting), got {o['grafting_beta2']}",
        ),
        (root_override is None or root_override > 0, f"root_override must be > 0, got {root_override}"),
        (
            method in ("auto",) + ROOT_METHODS,
            f"root_method must be one of auto, {', '.join(ROOT_METHODS)}, got {method!r}",
        ),
        (
            o["root_precision"] in ROOT_PRECISIONS,
            f"root_precision must be one of {', '.join(ROOT_PRECISIONS)}, got {o['root_precision']!r}",
        ),
        (
            method != "newton" or not o["pseudo_inverse"],
            "pseudo_inverse needs root_method 'eigh' or 'eigenbasis' (newton has no eigenvalues to zero)",
        ),
        (method != "newton" or integral_root, f"root_method 'newton' needs an integer root_override, got {root_override}"),
        (
            o["nonfinite_grads"] in NONFINITE_POLICIES,
            f"nonfinite_grads must be one of {', '.join(NONFINITE_POLICIES)}, got {o['nonfinite_grads']!r}",
        ),
        (o["max_root_failures"] >= 1, f"max_root_failures must be >= 1, got {o['max_root_failures']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    dtype = factor_dtype_of(o["factor_dtype"])
    return {**o, "factor_dtype": next(name for name, d in FACTOR_DTYPES.items() if d == dtype)}
