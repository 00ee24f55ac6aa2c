"""The matmul-only inverse root (coupled Newton) against float64 eigh, from well-conditioned to
rank-deficient factors, and how Shampoo uses it: same training as eigh, a fallback when it fails."""

import math

import pytest
import torch

from basinlab.optim import Shampoo
from basinlab.optim.roots import NEWTON_RIDGE_FLOOR, NEWTON_TOLERANCE, eigh_inverse_root, newton_inverse_root

N = 64


def _spd(condition: float, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    """A float64 SPD matrix with log-spaced eigenvalues 1 ... 1/condition (zeros past ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    values = torch.logspace(0, -math.log10(condition), N, dtype=torch.float64)
    if rank is not None:
        values[rank:] = 0
    return (q * values) @ q.T


def _reference(matrix, root, epsilon):
    return eigh_inverse_root(matrix, root, epsilon)[0]


def _in_range_directions(matrix, seed=1):
    """Gradient-like directions: they lie in the factor's range, as a gradient lies in G G^T's."""
    return matrix @ torch.randn(N, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("root", [2, 4])
def test_well_conditioned_roots_match_float64_eigh(root):
    matrix = _spd(1e2)
    x, residual = newton_inverse_root(matrix.float().unsqueeze(0), root, 1e-12)
    assert residual.item() <= 1e-6
    # the ridge floor (1e-6 ||A||_F) is the only difference from eigh: measured 8e-5 (p=2), 3e-5 (p=4)
    assert _relative(x[0].double(), _reference(matrix, root, 1e-12)) < 2e-4


@pytest.mark.parametrize("root, tolerance", [(2, 2e-3), (4, 2e-4)])
@pytest.mark.parametrize("case", ["ill-conditioned 1e8", "rank 8 of 64"])
def test_ill_conditioned_and_rank_deficient_factors_precondition_like_eigh(case, root, tolerance):
    # float32 cannot resolve eigenvalues below ~1e-7 ||A||, so newton ridges with
    # max(epsilon, 1e-6 ||A||_F); on directions in the factor's range it then agrees with
    # float64 eigh of the same ridge (measured: 3.3e-4 / 3.1e-5 ill-conditioned, 7.4e-4 / 5.9e-5 rank 8)
    matrix = _spd(1e8) if case.startswith("ill") else _spd(1e2, rank=8)
    x, residual = newton_inverse_root(matrix.float().unsqueeze(0), root, 1e-12)
    ridge = NEWTON_RIDGE_FLOOR * torch.linalg.matrix_norm(matrix).item()
    assert residual.item() <= NEWTON_TOLERANCE
    directions = _in_range_directions(matrix)
    expected = _reference(matrix, root, ridge) @ directions
    assert _relative(x[0].double() @ directions, expected) < tolerance
    # the null space gets the bounded weight ridge^(-1/p), never epsilon^(-1/p) = 1e6 or more
    assert torch.linalg.matrix_norm(x[0].double(), 2) <= 1.05 * ridge ** (-1 / root)


def test_bias_correction_is_folded_into_the_root():
    matrix = _spd(1e2).float().expand(3, N, N)
    correction = torch.tensor([0.5, 0.1, 1.0]).view(3, 1, 1)
    x, _ = newton_inverse_root(matrix, 4, 1e-6, correction=correction)
    direct, _ = newton_inverse_root(matrix / correction, 4, 1e-6)
    assert all(_relative(a, b) < 1e-5 for a, b in zip(x, direct))  # measured 5e-7
    eigh_folded, _ = eigh_inverse_root(matrix.double(), 4, 1e-6, correction=correction.double().view(3, 1))
    unfolded = _reference(matrix.double() / correction.double(), 4, 1e-6)
    assert all(_relative(a, b) < 1e-12 for a, b in zip(eigh_folded, unfolded))


def test_too_few_iterations_are_reported_as_not_converged():
    _, residual = newton_inverse_root(_spd(1e6).float().unsqueeze(0), 4, 1e-12, iterations=3)
    assert residual.item() > NEWTON_TOLERANCE


def test_a_zero_factor_gives_a_finite_converged_root():
    x, residual = newton_inverse_root(torch.zeros(1, 5, 5), 4, 1e-12)
    assert x.isfinite().all() and residual.item() <= NEWTON_TOLERANCE


def _train(root_method, steps=30):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(12, 8), (8, 8), (5,)]]
    start = [p.detach().clone() for p in params]
    optimizer = Shampoo(params, lr=0.01, precondition_frequency=2, start_preconditioning_step=2, root_method=root_method,
                        epsilon=1e-6)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return params, start, optimizer


def test_newton_training_tracks_eigh_training():
    exact, start, _ = _train("eigh")
    newton, _, optimizer = _train("newton")
    assert optimizer.diagnostics()["root_failures"] == 0
    for x0, x, y in zip(start, exact, newton):
        assert (x - y).norm() <= 1e-3 * (x - x0).norm()


def test_auto_takes_eigh_on_cpu():
    exact, _, _ = _train("eigh", steps=6)
    auto, _, _ = _train("auto", steps=6)
    assert all(torch.equal(a, b) for a, b in zip(exact, auto))


def test_tf32_is_refused_off_cuda_with_the_fix():
    param = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = Shampoo([param], root_method="newton", root_precision="tf32", precondition_frequency=1,
                        start_preconditioning_step=1)
    param.grad = torch.randn(4, 4)
    with pytest.raises(ValueError, match="root_precision='tf32' needs CUDA tensors, got cpu; use 'float32'"):
        optimizer.step()
