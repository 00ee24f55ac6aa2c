"""How much of a network survives magnitude pruning: the evidence for sparsity-inducing optimizers.

A solution whose information sits in a few large weights keeps its accuracy when the
small ones are zeroed. ``pruning_curve`` zeroes all but the largest ``keep`` fraction of
weight-matrix entries (ranked globally or per layer), evaluates, restores the model, and
repeats for each fraction; no retraining unless a ``finetune`` callback is given.
Ranking by |v| for a Powerprop layer equals ranking by its effective |w| = |v|^alpha,
so pruning the raw parameters is pruning the effective weights.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

KEEP_FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
SCOPES = ("global", "layer")


def magnitude_masks(weights: Sequence[torch.Tensor], keep: float, scope: str = "global") -> list[torch.Tensor]:
    """Boolean masks keeping the ``keep`` fraction of entries with the largest |w| (ties: lower index)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope == "layer":
        return [_top_mask(w.detach().abs().reshape(-1), keep).reshape(w.shape) for w in weights]
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    mask = _top_mask(flat, keep)
    return [m.reshape(w.shape) for m, w in zip(mask.split([w.numel() for w in weights]), weights)]


def _top_mask(magnitudes: torch.Tensor, keep: float) -> torch.Tensor:
    count = max(1, math.ceil(keep * magnitudes.numel()))
    mask = torch.zeros_like(magnitudes, dtype=torch.bool)
    mask[torch.topk(magnitudes, count, sorted=False).indices] = True
    return mask


def fraction_below(weights: Sequence[torch.Tensor], thresholds: Sequence[float]) -> dict[str, float]:
    """Fraction of all weight entries with |w| below each threshold (keys as strings, for JSON)."""
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
    return {f"{t:g}": (flat < t).float().mean().item() for t in thresholds}


@torch.no_grad()
def pruning_curve(
    model: torch.nn.Module,
    weights: Sequence[torch.nn.Parameter],
    evaluate: Callable[[], float],
    keep_fractions: Sequence[float] = KEEP_FRACTIONS,
    scope: str = "global",
    finetune: Callable[[list[torch.Tensor]], None] | None = None,
) -> list[dict[str, float]]:
    """``evaluate()`` with all but the largest ``keep`` fraction of ``weights`` (parameters of
    ``model``) zeroed, per fraction; ``model`` is restored after each.

    ``finetune(masks)``, if given, runs after masking and must keep pruned entries at zero
    (e.g. re-apply the masks after each step); whatever else it changes is restored too.
    """
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    ranking = [w.detach().clone() for w in weights]
    curve = []
    try:
        for keep in keep_fractions:
            masks = magnitude_masks(ranking, keep, scope)
            for weight, mask in zip(weights, masks):
                weight.mul_(mask)
            if finetune is not None:
                with torch.enable_grad():
                    finetune(masks)
            curve.append({"keep": keep, "accuracy": evaluate()})
            model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    return curve
