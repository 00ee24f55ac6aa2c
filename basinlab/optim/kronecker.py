"""Shampoo's Kronecker-factor math on one bucket of stacked blocks [B, h, w].

For the blocks G of a bucket (one-sided for vectors, viewed as [n, 1] columns):

    L = decay L + (1 - beta2) G G^T          [B, h, h]   (plain sums when beta2 = 1)
    R = decay R + (1 - beta2) G^T G          [B, w, w]
    D = L^(-1/p) M R^(-1/p)                  two batched GEMMs
    D *= ||graft|| / ||D||  per block        (grafting: the step size of a diagonal optimizer)

``decay`` is a per-block tensor (1 for masked blocks, whose gradient is zero, so their
factors stay bitwise as they were). The inverse roots are refreshed by ``refresh_roots``
on the steps the schedule says; a root that fails (non-finite, or a Newton iteration that
did not converge) keeps the previous one for that block, decided on the device.
"""

from __future__ import annotations

import torch

from basinlab.optim.layout import Bucket
from basinlab.optim.roots import (
    NEWTON_TOLERANCE,
    eigenbasis_inverse_root,
    eigh_inverse_root,
    matmul_precision,
    newton_inverse_root,
)

SIDES = ("left", "right")
ROOT_METHODS = ("eigh", "eigenbasis", "newton")


def factored_sides(bucket: Bucket) -> list[tuple[str, int]]:
    """(name, dim) of each factored side of the bucket's blocks."""
    return [(side, dim) for side, dim, factored in zip(SIDES, bucket.block, bucket.sides) if factored]


def init_factors(bucket: Bucket, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    state = {}
    for side, dim in factored_sides(bucket):
        state[side] = torch.zeros(bucket.size, dim, dim, dtype=dtype, device=device)
        state[f"{side}_root"] = torch.eye(dim, dtype=dtype, device=device).expand(bucket.size, dim, dim).clone()
    return state


def update_factors(bucket: Bucket, state, grad: torch.Tensor, decay, beta2: float) -> None:
    """Advance L and R with the bucket's (masked) gradient blocks; ``decay`` [B, 1, 1] or None (sums)."""
    weight = 1.0 if beta2 == 1 else 1.0 - beta2
    g = grad.to(state["left"].dtype)
    for side, _ in factored_sides(bucket):
        factor = state[side]
        if decay is not None:
            factor.mul_(decay)
        if side == "left":
            factor.baddbmm_(g, g.mT, alpha=weight)
        else:
            factor.baddbmm_(g.mT, g, alpha=weight)


def precondition(bucket: Bucket, state, moment: torch.Tensor) -> torch.Tensor:
    """L^(-1/p) M R^(-1/p) in the factor dtype."""
    m = moment.to(state["left_root"].dtype)
    d = torch.bmm(state["left_root"], m)
    if bucket.sides[1]:
        d = torch.bmm(d, state["right_root"])
    return d


def graft_scales(directions, grafts) -> list[torch.Tensor]:
    """Per block ||graft|| / ||D|| ([B, 1, 1]); a zero direction stays zero (0 * finite scale)."""
    scales = []
    for d, graft in zip(directions, grafts):
        norm = torch.linalg.vector_norm(d, dim=(-2, -1), keepdim=True).clamp_min_(torch.finfo(d.dtype).tiny)
        scales.append(torch.linalg.vector_norm(graft, dim=(-2, -1), keepdim=True, dtype=d.dtype).div_(norm))
    return scales


def refresh_roots(
    bucket: Bucket,
    state,
    correction,
    due,
    *,
    method: str,
    root: float,
    epsilon: float,
    pseudo_inverse: bool,
    precision: str = "float32",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Recompute the inverse roots of the ``due`` blocks ([B] bool, None = all); return the failed ones.

    ``correction`` [B, 1, 1] is the factors' bias correction. ``dtype`` (e.g. float64 for a
    retry) overrides the factor dtype for the computation; results are stored in the
    factor dtype. A block fails if its factor or root is non-finite or a Newton iteration
    did not converge; its previous root (and eigenbasis) is kept.
    """
    failed = torch.zeros(bucket.size, dtype=torch.bool, device=state["left"].device)
    for side, dim in factored_sides(bucket):
        factor = state[side]
        work = factor.to(dtype or factor.dtype) / correction
        finite = work.isfinite().all(dim=-1).all(dim=-1)
        identity = torch.eye(dim, dtype=work.dtype, device=work.device)
        work = torch.where(finite.view(-1, 1, 1), work, identity)  # keeps the solvers away from NaN
        basis_key = f"{side}_basis"
        basis = None
        try:
            if method == "newton":
                with matmul_precision(precision, work.device):
                    inv_root, residual = newton_inverse_root(work, int(root), epsilon)
                good = residual <= NEWTON_TOLERANCE
            elif method == "eigenbasis" and basis_key in state and dtype is None:
                inv_root, basis = eigenbasis_inverse_root(work, state[basis_key], root, epsilon, pseudo_inverse=pseudo_inverse)
                good = torch.ones_like(finite)
            else:
                inv_root, basis = eigh_inverse_root(work, root, epsilon, pseudo_inverse=pseudo_inverse)
                good = torch.ones_like(finite)
        except RuntimeError:  # torch.linalg errors (e.g. eigh did not converge): the whole bucket failed
            failed |= due if due is not None else torch.ones_like(failed)
            continue
        good = good & finite & inv_root.isfinite().all(dim=-1).all(dim=-1)
        take = good if due is None else good & due
        state[f"{side}_root"].copy_(torch.where(take.view(-1, 1, 1), inv_root.to(factor.dtype), state[f"{side}_root"]))
        if method == "eigenbasis" and basis is not None:
            previous = state.get(basis_key, torch.eye(dim, dtype=factor.dtype, device=factor.device).expand_as(factor))
            state[basis_key] = torch.where(take.view(-1, 1, 1), basis.to(factor.dtype), previous)
        failed |= ~good if due is None else due & ~good
    return failed
