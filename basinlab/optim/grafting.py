"""The diagonal optimizers a matrix preconditioner grafts onto, and momentum, over many tensors at once.

Every function takes lists (one entry per bucket: [B, h, w] blocks or a flat diagonal
vector) and updates them with ``torch._foreach_*`` ops, so the cost in dispatched ops does
not grow with the number of parameters. Per-block coefficients are tensors that broadcast
against their entry ([B, 1, 1] or [N]); a block whose gradient is masked (non-finite, or
absent) gets coefficient 1 for decays and 0 for weights, so its state stays bitwise as
it was.

    adagrad:  a += g^2                      d = m / (sqrt(a) + eps)
    rmsprop:  a = gamma a + (1 - gamma) g^2 d = m / (sqrt(a) + eps)
    adam:     as rmsprop, with a / (1 - gamma^t) (bias correction)
    sgd, none: d = m
"""

from __future__ import annotations

import torch

GRAFTINGS = ("none", "sgd", "adagrad", "rmsprop", "adam")


def has_accumulator(grafting: str) -> bool:
    return grafting in ("adagrad", "rmsprop", "adam")


def accumulate(accumulators, grads, decays, grafting: str, beta2: float) -> None:
    """Advance the second-moment accumulators (``decays``: beta2 per block, 1 where masked)."""
    if grafting == "adagrad":
        torch._foreach_addcmul_(accumulators, grads, grads)
    elif grafting in ("rmsprop", "adam"):
        torch._foreach_mul_(accumulators, decays)
        torch._foreach_addcmul_(accumulators, grads, grads, value=1 - beta2)


def update_average(averages, grads, weights) -> None:
    """Exponential moving average of the gradient (``weights``: 1 - beta1 per block, 0 where masked)."""
    torch._foreach_lerp_(averages, grads, weights)


def directions(first_moments, accumulators, corrections, grafting: str, epsilon: float):
    """The grafting optimizer's direction per entry (``corrections``: 1 - beta2^t, adam only)."""
    if not has_accumulator(grafting):
        return list(first_moments)
    if grafting == "adam":
        denominators = torch._foreach_div(accumulators, corrections)
        torch._foreach_sqrt_(denominators)
    else:
        denominators = torch._foreach_sqrt(accumulators)
    torch._foreach_add_(denominators, epsilon)
    return torch._foreach_div(first_moments, denominators)


def apply_momentum(buffers, directions_, decays, momentum: float, nesterov: bool):
    """Heavy-ball momentum as torch.optim.SGD: buf = momentum buf + d; d = buf or d + momentum buf.

    ``decays`` is momentum per block (1 where masked; the masked directions are zero).
    Without Nesterov the returned tensors are the buffers themselves: do not modify them.
    """
    torch._foreach_mul_(buffers, decays)
    torch._foreach_add_(buffers, directions_)
    if nesterov:
        return torch._foreach_add(directions_, buffers, alpha=momentum)
    return list(buffers)
