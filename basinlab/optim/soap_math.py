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
   exactly into the new one, M' <- (Q_L,new^T Q_L,old) M' (Q_R,old^T Q_R,new): this is
   the same as keeping M in the parameter's basis and projecting it every step, as the
   paper's code does, for two small products per refresh instead of two block products per
   step. The second moment V' is elementwise in the basis and cannot be rotated; as in the
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
    """The first moment rotated exactly into the new bases, the second moment re-sorted."""
    first = state["exp_avg"]
    second = state["exp_avg_sq"]
    rotated = first.to(next(iter(new.values())).dtype)
    if "left" in new:
        rotated = torch.bmm(torch.bmm(new["left"].mT, state["left_basis"]), rotated)
        index = orders["left"].unsqueeze(-1).expand_as(second)
        second = second.gather(-2, index)
    if "right" in new:
        rotated = torch.bmm(rotated, torch.bmm(state["right_basis"].mT, new["right"]))
        index = orders["right"].unsqueeze(-2).expand_as(second)
        second = second.gather(-1, index)
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
