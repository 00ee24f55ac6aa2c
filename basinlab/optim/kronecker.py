"""Shampoo's Kronecker-factor math on one bucket of stacked blocks [B, h, w].

For the blocks G of a bucket (one-sided for vectors, viewed as [n, 1] columns):

    L = decay L + (1 - beta2) G G^T          [B, h, h]   (plain sums when beta2 = 1)
    R = decay R + (1 - beta2) G^T G          [B, w, w]
    D = L^(-1/p) M R^(-1/p)                  two batched GEMMs
    D *= ||graft|| / ||D||  per block        (grafting: the step size of a diagonal optimizer)

``decay`` is a per-block tensor applied before (shampoo_math: one foreach op for all factors;
1 for masked blocks, whose gradient is zero, so their
factors stay bitwise as they were). The inverse roots are refreshed by ``refresh_roots``
on the steps the schedule says; a root that fails (non-finite, or a Newton iteration that
did not converge) keeps the previous one for that block, decided on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def update_factors(left: torch.Tensor | None, right: torch.Tensor | None, grad: torch.Tensor, weight: float) -> None:
    """L += weight G G^T and R += weight G^T G for stacked (masked) blocks (None: a side without a
    factor); decays are applied before."""
    g = grad.to((left if left is not None else right).dtype)
    g_t = g.mT
    if left is not None:
        left.baddbmm_(g, g_t, alpha=weight)
    if right is not None:
        right.baddbmm_(g_t, g, alpha=weight)


def precondition(left_root: torch.Tensor, right_root: torch.Tensor | None, moment: torch.Tensor) -> torch.Tensor:
    """L^(-1/p) M R^(-1/p) in the factor dtype."""
    d = torch.bmm(left_root, moment.to(left_root.dtype))
    return d if right_root is None else torch.bmm(d, right_root)


def graft_scales(directions, grafts) -> list[torch.Tensor]:
    """Per block ||graft|| / ||D|| ([B, 1, 1]); a zero direction stays zero (0 * finite scale)."""
    norms = [torch.linalg.vector_norm(d, dim=(-2, -1), keepdim=True) for d in directions]
    torch._foreach_clamp_min_(norms, torch.finfo(directions[0].dtype).tiny)
    scales = [torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True, dtype=d.dtype) for g, d in zip(grafts, directions)]
    torch._foreach_div_(scales, norms)
    return scales


def _candidate_roots(bucket, factors, warm, method, root, epsilon, pseudo_inverse, correction, precision):
    """New roots (and eigenbases) of every factored side, and per block whether they are usable."""
    roots, bases, check, converged = {}, {}, None, None
    vector_correction = correction.squeeze(-1) if isinstance(correction, torch.Tensor) else correction
    options = dict(pseudo_inverse=pseudo_inverse, correction=vector_correction)
    for side, factor in factors.items():
        if method == "newton":
            with matmul_precision(precision, factor.device):
                roots[side], residual = newton_inverse_root(factor, int(root), epsilon, correction=correction)
            ok = residual <= NEWTON_TOLERANCE
            converged = ok if converged is None else converged & ok
        elif method == "eigenbasis" and side in warm:
            roots[side], bases[side] = eigenbasis_inverse_root(factor, warm[side], root, epsilon, **options)
        else:
            ordered = method == "eigenbasis"
            roots[side], vectors = eigh_inverse_root(factor, root, epsilon, ordered=ordered, **options)
            if ordered:
                bases[side] = vectors
        total = roots[side].sum(dim=(-2, -1))
        check = total if check is None else check + total
    good = (check - check) == 0  # NaN and Inf do not survive x - x == 0
    return roots, bases, good if converged is None else good & converged


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

    ``correction`` ([B, 1, 1] or 1.0) is the factors' bias correction, folded into the
    roots' eigenvalue weights (no divided copy of the factors). ``dtype`` (float64, for the
    retry of failed blocks) computes in that dtype from sanitised factors, so one bad block
    cannot fail its neighbours; results are stored in the factor dtype. A block fails if a
    root is non-finite or a Newton iteration did not converge: it keeps its previous roots
    (and eigenbasis).
    """
    factors, warm, sane = {}, {}, None
    for side, dim in factored_sides(bucket):
        factor = state[side]
        if dtype is not None:
            factor = factor.to(dtype)
            total = factor.sum(dim=(-2, -1))
            finite = (total - total) == 0
            sane = finite if sane is None else sane & finite
            identity = torch.eye(dim, dtype=dtype, device=factor.device)
            factor = torch.where(finite.view(-1, 1, 1), factor, identity)
        factors[side] = factor
        if f"{side}_basis" in state and dtype is None:
            warm[side] = state[f"{side}_basis"]
    try:
        roots, bases, good = _candidate_roots(bucket, factors, warm, method, root, epsilon, pseudo_inverse, correction, precision)
    except RuntimeError:  # torch.linalg errors (e.g. eigh did not converge): the bucket's due blocks failed
        return due.clone() if due is not None else torch.ones(bucket.size, dtype=torch.bool, device=state["left"].device)
    if sane is not None:
        good = good & sane
    take = (good if due is None else good & due).view(-1, 1, 1)
    for side, new in roots.items():
        key = f"{side}_root"
        state[key] = torch.where(take, new.to(state[key].dtype), state[key])
    for side, new in bases.items():
        key = f"{side}_basis"
        previous = state.get(key)
        if previous is None:
            previous = torch.eye(new.shape[-1], dtype=new.dtype, device=new.device).expand_as(new)
        state[key] = torch.where(take, new.to(previous.dtype), previous)
    return ~good if due is None else due & ~good


@dataclass
class RootJob:
    """One bucket's refresh in this step, waiting for the step's failure check."""

    bucket: Bucket
    state: dict
    correction: Any
    due: torch.Tensor | None
    failed: torch.Tensor
    options: dict
    max_failures: int


def settle_refreshes(jobs: list[RootJob]) -> None:
    """After all of a step's refreshes: one host read of which buckets had failures, a float64
    eigh retry of those blocks, the failure counters, and, only after a retry, a second read
    that raises once a block failed ``max_failures`` times in a row."""
    if not jobs:
        return
    any_failed = torch.stack([job.failed.any() for job in jobs]).tolist()
    retried = []
    for job, flag in zip(jobs, any_failed):
        failed = job.failed
        if flag:
            failed = refresh_roots(job.bucket, job.state, job.correction, failed, method="eigh", dtype=torch.float64, **job.options)
            job.state["root_failures"].add_(failed)
            retried.append(job)
        counters = job.state["consecutive_failures"]
        kept = torch.zeros_like(counters) if job.due is None else torch.where(job.due, 0.0, counters)
        counters.copy_(torch.where(failed, counters + 1, kept))
    if not retried:
        return
    worst = torch.stack([job.state["consecutive_failures"].max() for job in retried]).tolist()
    for value, job in zip(worst, retried):
        if value >= job.max_failures:
            n = job.bucket.block[0]
            raise RuntimeError(
                f"Shampoo: the inverse root of a {n}x{n} factor failed {job.max_failures} times in a row "
                "(non-finite or ill-conditioned statistics); try a larger epsilon, factor_dtype='float64' "
                "or pseudo_inverse=True"
            )
