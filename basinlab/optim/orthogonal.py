"""Muon's orthogonalisation: the quintic Newton–Schulz iteration on stacks of matrices [B, h, w].

For X = U S V^T, each step X <- a X + (b A + c A^2) X with A = X X^T maps every singular
value s to p(s) = a s + b s^3 + c s^5 and keeps U and V. Started from X / ||X||_F (all
s <= 1), Jordan et al.'s coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) push every
singular value that is not tiny into a band around 1 within 5 steps: the result is
U S' V^T with S' roughly in [0.7, 1.2] — not U V^T exactly, which Muon does not need, but
fast (three batched GEMMs a step) and stable in bfloat16. Measured (tests/test_muon.py):
singular values >= 3e-3 ||X||_F end in [0.68, 1.21] in float32 and bfloat16; smaller ones
stay below the band after 5 steps.

Wide orientation (h <= w) is used, transposing tall blocks, so A is the smaller Gram matrix.
"""

from __future__ import annotations

import torch

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5
NORM_EPSILON = 1e-7  # a zero block stays zero


def newton_schulz(matrices: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalise every [h, w] matrix of ``matrices`` ([B, h, w]), computing in ``dtype``."""
    tall = matrices.shape[-2] > matrices.shape[-1]
    x = matrices.mT if tall else matrices
    peaks = x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min_(torch.finfo(x.dtype).tiny)
    x = x / peaks  # first to max |x| = 1: the squares in the norm of a huge (finite) block cannot overflow
    norms = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    x = (x / (norms + NORM_EPSILON)).to(dtype)
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, polynomial, x, beta=a)  # a X + (b A + c A^2) X
    return x.mT if tall else x
