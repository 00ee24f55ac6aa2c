"""SOAP's per-bucket math: rotating blocks into the factors' eigenbasis and refreshing that basis.

A bucket's blocks G [B, h, w] have a left factor L [B, h, h] and/or a right factor
R [B, w, w] (kronecker.py keeps them) and an orthonormal basis per factored side, Q_L and
Q_R, columns ordered by decreasing eigenvalue. Adam runs on Q_L^T G Q_R; its direction is
rotated back with Q_L D Q_R^T. A side without a factor (a dim longer than ``one_sided_dim``)
is left as it is.

Refreshing the basis (``refresh_basis``), per factored side:

1. eigenvalue estimates lambda_i = q_i^T L q_i from the current basis; sort descending;
2. the new basis: one power-iteration step with re-orthonormalisation, Q <- qr(L Q_sorted)
   (``exact=False``, the SOAP paper's update, warm-started: one GEMM and one QR), or the
   exact eigenvectors by eigh (``exact=True``: the first basis, or ``basis_method="eigh"``);
3. the moments follow. Adam's first moment M' (kept in the rotated basis) is rotated
   exactly into the new one, M' <- Q_L,new^T (Q_L,old M' Q_R,old^T) Q_R,new: this is
   the same as keeping M in the parameter's basis and projecting it every step, as the
   paper's code does, for four block products per refresh instead of two per step. The second moment V' is elementwise in the basis and cannot be rotated; as in the
   paper it follows the sort of step 1 (its entries stay with their eigen-directions'
   ranks) and is otherwise kept.

Blocks not due, or whose new basis is not finite, keep basis and moments bitwise.
"""

from __future__ import annotations

import torch


def project(left: torch.Tensor | None, right: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """Q_L^T G Q_R (a missing side is the identity)."""
    if left is not None:
        blocks = torch.bmm(left.mT, blocks)
    return blocks if right is None else torch.bmm(blocks, right)


def project_back(left: torch.Tensor | None, right: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """Q_L D Q_R^T (a missing side is the identity)."""
    if left is not None:
        blocks = torch.bmm(left, blocks)
    return blocks if right is None else torch.bmm(blocks, right.mT)


def _new_basis(factor: torch.Tensor, basis: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(new basis, the descending order of the current basis's eigenvalue estimates)."""
    product = torch.bmm(factor, basis)
    estimates = (basis * product).sum(dim=-2)  # q_i^T L q_i
    order = estimates.argsort(dim=-1, descending=True)
    if exact:
        return torch.linalg.eigh(factor)[1].flip(-1), order
    ordered = product.gather(-1, order.unsqueeze(-2).expand_as(product))  # L Q_sorted: the columns of L Q, reordered
    return torch.linalg.qr(ordered)[0], order


def _follow(state: dict, new: dict, orders: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The first moment rotated exactly into the new bases, the second moment re-sorted.

    The rotation goes through the parameter basis, Q_new^T (Q_old M' Q_old^T) Q_new: four
    block products, (h^2 w + h w^2) x 2, where forming Q_new^T Q_old per side would cost
    h^3 + w^3 more (for a 256 x 1024 block, 0.54 instead of 1.43 G multiply-adds).
    """
    first, second = state["exp_avg"], state["exp_avg_sq"]
    sides = ("left", "right")
    old = [state.get(f"{side}_basis") for side in sides]
    fresh = [new.get(side, basis) for side, basis in zip(sides, old)]
    dtype = next(b for b in old if b is not None).dtype
    rotated = project(*fresh, project_back(*old, first.to(dtype)))
    if "left" in orders:
        second = second.gather(-2, orders["left"].unsqueeze(-1).expand_as(second))
    if "right" in orders:
        second = second.gather(-1, orders["right"].unsqueeze(-2).expand_as(second))
    return rotated.to(first.dtype), second


def refresh_basis(state: dict, sides: tuple[str, ...], due: torch.Tensor | None, exact: bool) -> bool:
    """Refresh the bases of the ``due`` blocks ([B] bool, None = all); False if linalg raised (nothing changed)."""
    try:
        new, orders = {}, {}
        for side in sides:
            new[side], orders[side] = _new_basis(state[side], state[f"{side}_basis"], exact)
    except RuntimeError:  # torch.linalg errors (e.g. eigh did not converge): keep the old basis
        return False
    total = sum(basis.sum(dim=(-2, -1)) for basis in new.values())
    take = (total - total) == 0  # NaN and Inf do not survive x - x == 0
    if due is not None:
        take = take & due
    take = take.view(-1, 1, 1)
    first, second = _follow(state, new, orders)
    state["exp_avg"] = torch.where(take, first, state["exp_avg"])
    state["exp_avg_sq"] = torch.where(take, second, state["exp_avg_sq"])
    for side, basis in new.items():
        key = f"{side}_basis"
        state[key] = torch.where(take, basis, state[key])
    return True
