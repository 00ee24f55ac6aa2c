"""SOAP written from the math: a dense float64 reference of "Adam in the factors' eigenbasis"."""

import pytest
import torch

from basinlab.optim import SOAP
from basinlab.optim.layout import group_layout


def _reference(weight0, grads, lr, betas, shampoo_beta, eps, weight_decay, frequency, exact):
    """SOAP on one whole matrix, one step at a time, as the algorithm reads (float64)."""
    w = weight0.clone()
    m, n = w.shape
    left, right = torch.zeros(m, m, dtype=w.dtype), torch.zeros(n, n, dtype=w.dtype)
    q_left, q_right = torch.eye(m, dtype=w.dtype), torch.eye(n, dtype=w.dtype)
    first, second = torch.zeros_like(w), torch.zeros_like(w)
    beta1, beta2 = betas
    for t, g in enumerate(grads, start=1):
        left = shampoo_beta * left + (1 - shampoo_beta) * g @ g.T
        right = shampoo_beta * right + (1 - shampoo_beta) * g.T @ g
        if t == 1 or (t - 1) % frequency == 0:
            bases = []
            for factor, q, dim in ((left, q_left, 0), (right, q_right, 1)):
                order = torch.diagonal(q.T @ factor @ q).argsort(descending=True)
                second = second.index_select(dim, order)
                if exact or t == 1:
                    bases.append(torch.linalg.eigh(factor)[1].flip(-1))
                else:
                    bases.append(torch.linalg.qr(factor @ q[:, order])[0])
            first = bases[0].T @ q_left @ first @ q_right.T @ bases[1]
            q_left, q_right = bases
        rotated = q_left.T @ g @ q_right
        first = beta1 * first + (1 - beta1) * rotated
        second = beta2 * second + (1 - beta2) * rotated**2
        adam = (first / (1 - beta1**t)) / ((second / (1 - beta2**t)).sqrt() + eps)
        w = w * (1 - lr * weight_decay) - lr * (q_left @ adam @ q_right.T)
    return w


def _stream(shape, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(steps)]


# power_qr keeps step 1's basis for a while: a square block, so that basis has no degenerate
# (null-space) eigenvalues whose eigenvectors are arbitrary; at f = 1 eigh resolves them at step 2.
@pytest.mark.parametrize("basis_method,frequency,shape", [("eigh", 1, (6, 4)), ("power_qr", 3, (5, 5))])
def test_soap_equals_adam_in_the_factors_eigenbasis(basis_method, frequency, shape):
    weight0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = _stream(shape, 12)
    # eps 1e-4: at step 1 the 6x6 left factor has rank 4, and Adam divides round-off (~1e-17) in its
    # null space by round-off; with a tiny eps that noise is amplified to O(1) in arbitrary directions.
    options = dict(lr=0.01, betas=(0.9, 0.95), shampoo_beta=0.8, eps=1e-4, weight_decay=0.1)
    weight = torch.nn.Parameter(weight0.clone())
    optimizer = SOAP([weight], **options, precondition_frequency=frequency, basis_method=basis_method, factor_dtype="float64")
    for g in grads:
        weight.grad = g.clone()
        optimizer.step()
    expected = _reference(weight0, grads, options["lr"], options["betas"], options["shampoo_beta"], options["eps"],
                          options["weight_decay"], frequency, exact=basis_method == "eigh")
    assert torch.allclose(weight.detach(), expected, rtol=0, atol=1e-10), (weight.detach() - expected).abs().max()


def test_rotating_the_first_moment_equals_projecting_it_every_step():
    """The paper's code keeps M in the parameter basis and projects it each step; we rotate at refreshes."""
    weight0 = torch.zeros(5, 3, dtype=torch.float64)
    grads = _stream((5, 3), 7, seed=3)
    weight = torch.nn.Parameter(weight0.clone())
    optimizer = SOAP([weight], lr=0.1, betas=(0.9, 0.0), eps=1e-30, weight_decay=0.0, precondition_frequency=2,
                     factor_dtype="float64")
    plain = torch.zeros_like(weight0)
    for t, g in enumerate(grads, start=1):
        weight.grad = g.clone()
        optimizer.step()
        plain = 0.9 * plain + 0.1 * g
    state = optimizer.state["bucket.0.0"]
    projected = state["left_basis"][0].T @ plain @ state["right_basis"][0]
    assert torch.allclose(state["exp_avg"][0], projected, atol=1e-12)


def test_one_sided_dims_are_left_unrotated_and_unblocked():
    layout = group_layout(0, [(50, 6), (50, 60), (3,)], max_dim=8, max_vector_dim=0, one_sided_dim=40)
    kinds = {(b.block, b.sides) for b in layout.buckets}
    assert kinds == {((50, 6), (False, True)), ((3000, 1), (False, False))}
    assert layout.diagonal.params == (2,)
    weight = torch.nn.Parameter(torch.randn(50, 6))
    optimizer = SOAP([weight], one_sided_dim=40)
    weight.grad = torch.randn(50, 6)
    optimizer.step()
    state = optimizer.state["bucket.0.0"]
    assert "left" not in state and state["right"].shape == (1, 6, 6)


def test_soap_without_rotation_is_adamw():
    """Vectors and both-sides-too-long matrices take plain AdamW (torch's, to 1e-6)."""
    params = [torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(9, 11))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer = SOAP(params, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, one_sided_dim=8)
    torch_adamw = torch.optim.AdamW(reference, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        for p, r in zip(params, reference):
            p.grad = torch.randn(p.shape, generator=generator)
            r.grad = p.grad.clone()
        optimizer.step()
        torch_adamw.step()
    assert max((p - r).abs().max().item() for p, r in zip(params, reference)) < 1e-6
