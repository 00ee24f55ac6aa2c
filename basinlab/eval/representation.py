"""Representation metrics: how many dimensions a network uses and how much classes overlap.

The claim under test is that some optimizers find solutions with lower-dimensional,
less overlapping hidden representations, which then interfere less with later tasks.
These functions measure that on hidden activations h [N, D] of a fixed probe set:

- effective rank (Roy & Vetterli 2007) of the covariance spectrum s:
  p = s / sum(s), erank = exp(-sum_k p_k log p_k), with 0 log 0 = 0;
- cosine similarity between class-mean activations (C x C) and its mean off-diagonal;
- linear CKA (Kornblith et al. 2019) to compare two representations of the same inputs.

Inputs may be any float dtype; everything is computed in float64 on the input's device.
Scalars come back as Python floats, matrices as float64 tensors.
"""

from __future__ import annotations

import math

import torch


def _rows(h: torch.Tensor, name: str = "h") -> torch.Tensor:
    h = torch.as_tensor(h).to(torch.float64)
    if h.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, D], got shape {tuple(h.shape)}")
    return h


def _centred(h: torch.Tensor, name: str) -> torch.Tensor:
    h = _rows(h, name)
    if h.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples) to centre, got {h.shape[0]}")
    return h - h.mean(dim=0, keepdim=True)


def covariance_spectrum(h: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the sample covariance of h [N, D] (divisor N-1), descending, length D.

    Round-off negatives of a positive semi-definite matrix are clamped to 0. Non-finite
    activations (a diverged model) give an all-NaN spectrum instead of a LAPACK error.
    """
    x = _centred(h, "h")
    cov = x.T @ x / (x.shape[0] - 1)
    if not bool(torch.isfinite(cov).all()):
        return torch.full((cov.shape[0],), math.nan, dtype=cov.dtype, device=cov.device)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)


def effective_rank_from_spectrum(s: torch.Tensor) -> float:
    """Roy & Vetterli effective rank of a non-negative 1-D spectrum; NaN if it sums to 0 or is not finite."""
    s = torch.as_tensor(s).to(torch.float64)
    if s.ndim != 1:
        raise ValueError(f"spectrum must be 1-D, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        return math.nan
    if bool((s < 0).any()):
        raise ValueError("spectrum must be non-negative (eigenvalues of a covariance)")
    total = s.sum()
    if total <= 0:
        return math.nan
    p = s / total
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    return float(torch.exp(-plogp.sum()))


def effective_rank(h: torch.Tensor) -> float:
    """Effective rank of the covariance of hidden representations h [N, D].

    Lies in [1, min(N-1, D)]; NaN when every representation is the same (zero covariance).
    """
    return effective_rank_from_spectrum(covariance_spectrum(h))


def class_mean_cosine(h: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C x C cosine similarity between the class means of h [N, D] (labels in [0, C)).

    Rows and columns of classes absent from ``labels`` (or with a non-finite mean) are NaN. A class whose mean is
    the zero vector has no direction: its row and column are 0, its diagonal included,
    so the diagonal reads 1 (normal), 0 (zero mean) or NaN (absent).
    """
    h = _rows(h)
    labels = torch.as_tensor(labels, device=h.device)
    if labels.ndim != 1 or labels.shape[0] != h.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per row of h ({h.shape[0]}), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    sums = torch.zeros(num_classes, h.shape[1], dtype=torch.float64, device=h.device)
    sums.index_add_(0, labels, h)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    present = counts > 0
    means = sums / counts.clamp_min(1.0).unsqueeze(1)
    norms = means.norm(dim=1)
    nonzero = norms > 0
    unit = torch.where(nonzero.unsqueeze(1), means / norms.clamp_min(1e-300).unsqueeze(1), 0.0)
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    cos.diagonal().copy_(nonzero.to(torch.float64))
    absent = ~present | ~torch.isfinite(means).all(dim=1)
    cos[absent, :] = math.nan
    cos[:, absent] = math.nan
    return cos


def mean_off_diagonal(M: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix, ignoring NaN; NaN if none remain."""
    M = torch.as_tensor(M).to(torch.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square matrix, got shape {tuple(M.shape)}")
    off = ~torch.eye(M.shape[0], dtype=torch.bool, device=M.device)
    values = M[off]
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else math.nan


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations x [N, D1], y [N, D2] of the same N inputs.

    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y. In [0, 1];
    invariant to orthogonal transforms and isotropic scaling of either side. NaN when
    either side is constant (all rows equal).
    """
    X = _centred(x, "x")
    Y = _centred(y, "y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (inputs), got {X.shape[0]} and {Y.shape[0]}"
        )
    norm_x = torch.linalg.matrix_norm(X.T @ X)
    norm_y = torch.linalg.matrix_norm(Y.T @ Y)
    if norm_x == 0 or norm_y == 0:
        return math.nan
    return float(torch.linalg.matrix_norm(Y.T @ X) ** 2 / (norm_x * norm_y))
