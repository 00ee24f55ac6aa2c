"""One group's Shampoo statistics and directions as pure tensor functions: what ``torch_compile`` compiles.

Everything here takes tensors and static settings only; what changes from step to step
on the host (step counts, the schedule, masks built from them) is decided outside and
enters as tensors or as flags that change once (preconditioning started). So a compiled
version is traced once per group layout and reused on every step (plus once more when
preconditioning starts), and the eager and compiled paths run the same code.

Lists hold one entry per owned unit of the group: buckets ([B, h, w]) first, in layout
order, then the diagonal bucket (flat) if the group has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from basinlab.optim import grafting as graft_math
from basinlab.optim.kronecker import graft_scales, precondition, update_factors

# Columns of the per-block coefficient table (coefficients.py), in Shampoo's order.
FACTOR_DECAY, GRAFT_DECAY, MOMENTUM_DECAY, EMA_WEIGHT, USABLE, EMA_CORRECTION, GRAFT_CORRECTION, FACTOR_CORRECTION = range(8)


@dataclass(frozen=True)
class GroupSettings:
    """A group's hyperparameters that the math depends on (hashable: compiled code specialises on them)."""

    sides: tuple[tuple[bool, bool] | None, ...]  # per unit: factored dims of a bucket, None for the diagonal
    betas: tuple[float, float]
    grafting: str
    grafting_beta2: float
    grafting_epsilon: float
    momentum: float
    nesterov: bool


def statistics(settings: GroupSettings, grads, usable, columns, factor_decays, zero, lefts, rights, averages, accumulators):
    """Mask the gradients and advance L, R, the gradient EMA and the grafting accumulator.

    Returns the masked gradients (the directions use them when betas[0] == 0).
    """
    beta1, beta2 = settings.betas
    grads = [torch.where(ok, g, zero.to(g.dtype)) for g, ok in zip(grads, usable)]
    weight = 1.0 if beta2 == 1 else 1.0 - beta2
    factors, decays = [], []
    for i, sides in enumerate(settings.sides):
        if sides is not None:
            factors += [lefts[i]] + ([rights[i]] if sides[1] else [])
            decays += [factor_decays[i]] * (2 if sides[1] else 1)
    if factors and beta2 < 1:
        torch._foreach_mul_(factors, decays)
    for i, sides in enumerate(settings.sides):
        if sides is not None:
            update_factors(lefts[i], rights[i] if sides[1] else None, grads[i], weight)
    if beta1 > 0:
        graft_math.update_average(averages, grads, [c[EMA_WEIGHT] for c in columns])
    if graft_math.has_accumulator(settings.grafting):
        decays = [c[GRAFT_DECAY] for c in columns]
        graft_math.accumulate(accumulators, grads, decays, settings.grafting, settings.grafting_beta2)
    return grads


def directions(settings: GroupSettings, started, grads, columns, left_roots, right_roots, averages, accumulators, buffers):
    """Per unit: the grafted direction, preconditioned where ``started`` says (per unit True, False, or a
    [B] bool mask when only some blocks have started), momentum applied, zero where the gradient was
    not usable; in the parameters' dtype."""
    if settings.betas[0] > 0:
        moments = torch._foreach_div(averages, [c[EMA_CORRECTION] for c in columns])
    else:
        moments = grads
    corrections = [c[GRAFT_CORRECTION] for c in columns]
    out = list(graft_math.directions(moments, accumulators, corrections, settings.grafting, settings.grafting_epsilon))
    chosen = [i for i, on in enumerate(started) if on is not False]
    preconditioned = []
    for i in chosen:
        preconditioned.append(precondition(left_roots[i], right_roots[i] if settings.sides[i][1] else None, moments[i]))
    if preconditioned and settings.grafting != "none":
        torch._foreach_mul_(preconditioned, graft_scales(preconditioned, [out[i] for i in chosen]))
    for i, d in zip(chosen, preconditioned):
        d = d.to(out[i].dtype)
        out[i] = d if started[i] is True else torch.where(started[i].view(-1, 1, 1), d, out[i])
    usable = [c[USABLE] for c in columns]
    out = torch._foreach_mul(out, usable)
    if settings.momentum > 0:
        decays = [c[MOMENTUM_DECAY] for c in columns]
        out = graft_math.apply_momentum(buffers, out, decays, settings.momentum, settings.nesterov)
        out = torch._foreach_mul(out, usable)
    return out
