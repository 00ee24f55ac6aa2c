"""Inverse p-th roots of symmetric PSD matrices: the one expensive kernel of Shampoo.

Two methods, both accepting stacks [..., n, n] (Shampoo calls them one factor at a time):

- ``eigh_inverse_root``: exact, from a full symmetric eigendecomposition.
- ``eigenbasis_inverse_root``: warm-started subspace iteration. Given the eigenvectors
  from the previous root computation (largest eigenvalue first), one step
  ``Q <- qr(A Q)`` refines the basis and the diagonal of the QR's triangle estimates
  the eigenvalues. Factors change slowly between root computations, so a single step
  tracks the basis at the cost of a matmul and a QR, which on GPUs is far cheaper than
  a symmetric eigensolver (on a 2-core CPU the two cost about the same).

Both compute ``Q diag(f(lambda)) Q^T`` with ``f(lambda) = (lambda + epsilon)^(-1/p)``,
eigenvalues clamped at 0 first (round-off makes PSD matrices slightly indefinite). With
``pseudo_inverse`` the eigenvalues below ``dim * eps(dtype) * lambda_max`` are treated as
exact zeros and get weight 0, projecting their directions out instead of amplifying them.
"""

from __future__ import annotations

import torch


def _apply_root(
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    root: float,
    epsilon: float,
    pseudo_inverse: bool,
) -> torch.Tensor:
    eigenvalues = eigenvalues.clamp_min(0.0)
    weights = (eigenvalues + epsilon).pow(-1.0 / root)
    if pseudo_inverse:
        dim = eigenvalues.shape[-1]
        cutoff = dim * torch.finfo(eigenvalues.dtype).eps * eigenvalues.amax(dim=-1, keepdim=True)
        weights = torch.where(eigenvalues > cutoff, weights, torch.zeros_like(weights))
    return (eigenvectors * weights.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)


def eigh_inverse_root(
    matrix: torch.Tensor,
    root: float,
    epsilon: float,
    *,
    pseudo_inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(matrix + epsilon I)^(-1/root)`` and the eigenvectors, for [..., n, n] symmetric PSD input."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    # Largest first: the order subspace iteration converges to, so a warm start is a fixed point.
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    return _apply_root(eigenvalues, eigenvectors, root, epsilon, pseudo_inverse), eigenvectors


def eigenbasis_inverse_root(
    matrix: torch.Tensor,
    eigenvectors: torch.Tensor,
    root: float,
    epsilon: float,
    *,
    pseudo_inverse: bool = False,
    iterations: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate inverse root by ``iterations`` warm-started subspace-iteration steps.

    Returns the root and the refined eigenvectors (the warm start for next time).
    """
    basis = eigenvectors
    for _ in range(iterations):
        basis, triangle = torch.linalg.qr(matrix @ basis)
    # A Q_old = Q_new R with Q_old close to the eigenbasis makes R nearly diagonal with
    # |R_ii| ~ lambda_i: the eigenvalue estimate costs no second product with A.
    eigenvalues = triangle.diagonal(dim1=-2, dim2=-1).abs()
    eigenvalues, order = eigenvalues.sort(dim=-1, descending=True)
    basis = basis.gather(-1, order.unsqueeze(-2).expand_as(basis))
    return _apply_root(eigenvalues, basis, root, epsilon, pseudo_inverse), basis
