"""Inverse p-th roots of stacks of symmetric PSD matrices [B, n, n]: Shampoo's expensive kernel.

Three methods, all batched over the leading dim:

- ``eigh_inverse_root``: exact, from a symmetric eigendecomposition (LAPACK on CPU,
  cuSOLVER on CUDA: ~10 ms per 1024^2 matrix on an H200, batched or not).
- ``eigenbasis_inverse_root``: warm-started subspace iteration. Given the eigenvectors of
  the previous computation (largest eigenvalue first), one step ``Q <- qr(A Q)`` refines
  the basis and the diagonal of the QR's triangle estimates the eigenvalues.
- ``newton_inverse_root``: the coupled Newton iteration (Guo & Higham 2006) in matrix
  products only, so it runs at GEMM speed on accelerators:
  ``X0 = z^(1/p) I, M0 = z A;  T = ((p+1) I - M) / p;  X <- X T;  M <- T^p M``
  keeps ``M = X^p A`` and drives M to I, hence X to A^(-1/p), for z = (p+1) / (2 ||A||_F).
  It needs A's eigenvalues inside a float32-resolvable range: below about 1e-7 ||A|| the
  round-off of the factor itself makes A indefinite and the iteration diverges. So the
  ridge is ``max(epsilon, ridge_floor * ||A||_F)`` (the relative ridge of Anil et al.'s
  scalable Shampoo); eigenvalues far above it get the exact root, those near or below it
  (a rank-deficient factor's null space) the bounded weight ``ridge^(-1/p)``. A fixed number
  of iterations (no data-dependent loop: no host sync, one graph) and the returned residual
  ``max |M - I|`` tells the caller whether it converged.

The eigen-methods compute ``Q diag(f(lambda)) Q^T`` with ``f(lambda) = (lambda + epsilon)^(-1/p)``,
eigenvalues clamped at 0 first (round-off makes PSD matrices slightly indefinite). With
``pseudo_inverse`` the eigenvalues below ``dim * eps(dtype) * lambda_max`` are treated as
exact zeros and get weight 0, projecting their directions out instead of amplifying them.
"""

from __future__ import annotations

import contextlib

import torch

NEWTON_ITERATIONS = 20  # enough for eigenvalues down to ridge_floor * ||A||_F (measured: residual <= 3e-6)
NEWTON_RIDGE_FLOOR = 1e-6
NEWTON_TOLERANCE = 1e-3  # residual max|X^p A - I| above this counts as not converged


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bmm for stacks (one dispatched op; matmul adds expand/view ops around it), matmul otherwise."""
    return torch.bmm(a, b) if a.dim() == 3 and b.dim() == 3 else torch.matmul(a, b)


def _apply_root(eigenvalues, eigenvectors, root: float, epsilon: float, pseudo_inverse: bool, correction) -> torch.Tensor:
    """V diag(w) V^T with w = c^(1/p) (lambda+ + c epsilon)^(-1/p): the root of A / c + epsilon I."""
    eigenvalues = eigenvalues.clamp_min(0.0)
    weights = (eigenvalues + epsilon * correction).pow_(-1.0 / root)
    if not isinstance(correction, float) or correction != 1.0:
        weights.mul_(correction ** (1.0 / root))
    if pseudo_inverse:
        dim = eigenvalues.shape[-1]
        cutoff = dim * torch.finfo(eigenvalues.dtype).eps * eigenvalues.amax(dim=-1, keepdim=True)
        weights = torch.where(eigenvalues > cutoff, weights, torch.zeros_like(weights))
    return _mm(eigenvectors * weights.unsqueeze(-2), eigenvectors.mT)


def eigh_inverse_root(matrix, root: float, epsilon: float, *, pseudo_inverse: bool = False, correction=1.0, ordered=True):
    """``(matrix / correction + epsilon I)^(-1/root)`` and the eigenvectors.

    ``correction`` is a float or a [B, 1] tensor (a bias correction per matrix). With
    ``ordered`` the eigenvectors come largest eigenvalue first, the order subspace
    iteration converges to, so a warm start from them is a fixed point.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    if ordered:
        eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    return _apply_root(eigenvalues, eigenvectors, root, epsilon, pseudo_inverse, correction), eigenvectors


def eigenbasis_inverse_root(
    matrix, eigenvectors, root: float, epsilon: float, *, pseudo_inverse=False, correction=1.0, iterations=1
):
    """Approximate inverse root by ``iterations`` warm-started subspace-iteration steps.

    Returns the root (as eigh_inverse_root) and the refined eigenvectors (the next warm start).
    """
    basis = eigenvectors
    for _ in range(iterations):
        basis, triangle = torch.linalg.qr(_mm(matrix, basis))
    # A Q_old = Q_new R with Q_old close to the eigenbasis makes R nearly diagonal with
    # |R_ii| ~ lambda_i: the eigenvalue estimate costs no second product with A.
    eigenvalues = triangle.diagonal(dim1=-2, dim2=-1).abs()
    eigenvalues, order = eigenvalues.sort(dim=-1, descending=True)
    basis = basis.gather(-1, order.unsqueeze(-2).expand_as(basis))
    return _apply_root(eigenvalues, basis, root, epsilon, pseudo_inverse, correction), basis


def newton_inverse_root(
    matrix,
    root: int,
    epsilon: float,
    *,
    correction=1.0,
    iterations: int = NEWTON_ITERATIONS,
    ridge_floor: float = NEWTON_RIDGE_FLOOR,
):
    """``(matrix / correction + ridge I)^(-1/root)`` by coupled Newton, and the residual ``max|M - I|``.

    ``root`` must be a positive integer; ridge = max(epsilon, ridge_floor * ||matrix / correction||_F);
    ``correction`` is a float or a [B, 1, 1] tensor.
    """
    n = matrix.shape[-1]
    identity = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    norm = torch.linalg.matrix_norm(matrix, keepdim=True)
    ridge = (norm * ridge_floor).clamp_min_(epsilon * correction)
    ridged = matrix + identity * ridge
    scale = ((root + 1) / 2) / torch.linalg.matrix_norm(ridged, keepdim=True).clamp_min_(torch.finfo(matrix.dtype).tiny)
    x = identity * scale.pow(1.0 / root)
    m = ridged * scale
    shifted = identity * ((root + 1) / root)
    for _ in range(iterations):
        t = torch.add(shifted, m, alpha=-1.0 / root)  # ((p + 1) I - M) / p
        x = _mm(x, t)
        m = _mm(torch.linalg.matrix_power(t, root), m)
    residual = (m - identity).abs().amax(dim=(-2, -1))
    if not isinstance(correction, float) or correction != 1.0:
        x = x * correction ** (1.0 / root)
    return x, residual


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """Run float32 matrix products on ``device`` in "float32" (IEEE) or "tf32" (CUDA only)."""
    if precision == "float32":
        yield
        return
    if device.type != "cuda":
        raise ValueError(f"root_precision={precision!r} needs CUDA tensors, got {device.type}; use 'float32'")
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)  # torch < 2.9
    saved = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, saved)
