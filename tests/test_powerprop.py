"""Powerprop models: matched init with the plain MLP, alpha = 1 is the plain model, and the
first-order match with the sparsity preconditioner (docs/powerprop.md)."""

import pytest
import torch
import torch.nn.functional as F

from basinlab.models import MLP, PowerpropLinear, effective_weights
from basinlab.optim import SparsityPreconditioned


def _layers(model):
    return [*model.hidden, model.head]


def _batch(dtype=torch.float32, n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=generator, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=generator)
    return x, y


def _sgd_step(model, optimizer, x, y):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("alpha", [1, 2, 4])
def test_powerprop_mlp_starts_at_the_plain_mlp(alpha):
    plain = MLP(784, [32, 16], 10, seed=5)
    powerprop = MLP(784, [32, 16], 10, seed=5, powerprop_alpha=alpha)
    assert all(isinstance(layer, PowerpropLinear) for layer in _layers(powerprop))
    plain_weights = effective_weights(plain)
    assert [w.shape for w in plain_weights] == [(32, 784), (16, 32), (10, 16)]
    for w_pp, w in zip(effective_weights(powerprop), plain_weights, strict=True):
        assert not w_pp.requires_grad
        torch.testing.assert_close(w_pp, w, rtol=1e-6, atol=0)
    for layer_pp, layer in zip(_layers(powerprop), _layers(plain)):
        assert torch.equal(layer_pp.bias, layer.bias)
    x, _ = _batch()
    torch.testing.assert_close(powerprop(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(powerprop.features(x), plain.features(x), rtol=1e-5, atol=1e-5)


def test_alpha_one_trains_exactly_like_the_plain_mlp():
    plain = MLP(784, [32], 10, seed=2)
    powerprop = MLP(784, [32], 10, seed=2, powerprop_alpha=1)
    plain_opt = SparsityPreconditioned(plain.parameters(), lr=0.1, beta=0.0)
    powerprop_opt = torch.optim.SGD(powerprop.parameters(), lr=0.1)
    for step in range(10):
        x, y = _batch(n=32, seed=step)
        _sgd_step(plain, plain_opt, x, y)
        _sgd_step(powerprop, powerprop_opt, x, y)
        for a, b in zip(powerprop.parameters(), plain.parameters(), strict=True):
            assert torch.equal(a, b), f"diverged at step {step}"


def _matched_pair(alpha):
    """A float64 Powerprop MLP and a plain MLP holding exactly its effective weights and biases."""
    powerprop = MLP(784, [32], 10, seed=3, powerprop_alpha=alpha).double()
    plain = MLP(784, [32], 10, seed=3).double()
    with torch.no_grad():
        for layer, layer_pp, w in zip(_layers(plain), _layers(powerprop), effective_weights(powerprop)):
            layer.weight.copy_(w)
            layer.bias.copy_(layer_pp.bias)
    return powerprop, plain


def _discrepancy(alpha, lr, steps, *, beta_shift=0.0, lr_scale=None):
    """Max |w_powerprop - w_plain| after ``steps`` steps: SGD(lr) on v versus the preconditioner
    with beta = 2 - 2/alpha and lr * alpha^2 on w (biases take plain SGD(lr) on both sides)."""
    powerprop, plain = _matched_pair(alpha)
    lr_scale = alpha**2 if lr_scale is None else lr_scale
    powerprop_opt = torch.optim.SGD(powerprop.parameters(), lr=lr)
    plain_opt = SparsityPreconditioned(
        [
            {"params": [layer.weight for layer in _layers(plain)], "lr": lr * lr_scale},
            {"params": [layer.bias for layer in _layers(plain)], "lr": lr},
        ],
        beta=2 - 2 / alpha + beta_shift,
        floor=0.0,
    )
    x, y = _batch(torch.float64)
    for _ in range(steps):
        _sgd_step(powerprop, powerprop_opt, x, y)
        _sgd_step(plain, plain_opt, x, y)
    pairs = zip(effective_weights(powerprop), effective_weights(plain), strict=True)
    return max((a - b).abs().max().item() for a, b in pairs)


def _halving_ratios(lrs, **kwargs):
    discrepancies = [_discrepancy(lr=lr, **kwargs) for lr in lrs]
    return [big / small for big, small in zip(discrepancies[:-1], discrepancies[1:])]


@pytest.mark.parametrize("alpha", [2, 4])
@pytest.mark.parametrize("steps, lrs", [(1, (0.2, 0.1, 0.05)), (5, (0.025, 0.0125, 0.00625))])
def test_powerprop_matches_the_preconditioner_to_first_order(alpha, steps, lrs):
    # The per-step error is O(lr^2): halving lr must quarter the discrepancy.
    ratios = _halving_ratios(lrs, alpha=alpha, steps=steps)
    assert all(3.2 <= r <= 4.8 for r in ratios), ratios


@pytest.mark.parametrize("mistake", [{"beta_shift": 0.5}, {"beta_shift": -0.5}, {"lr_scale": 1.0}])
def test_first_order_check_catches_a_wrong_beta_or_lr(mistake):
    # A first-order mismatch leaves an O(lr) error: the ratio falls to about 2.
    ratios = _halving_ratios((0.2, 0.1, 0.05), alpha=2, steps=1, **mistake)
    assert all(r < 2.5 for r in ratios), ratios


@pytest.mark.parametrize("alpha", [0.5, 0.0, -1.0, float("nan")])
def test_alpha_below_one_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        PowerpropLinear(4, 3, alpha)
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        MLP(8, [4], 2, powerprop_alpha=alpha)


def test_powerprop_linear_round_trips_and_has_finite_gradients_at_zero():
    linear = torch.nn.Linear(5, 3)
    with torch.no_grad():
        linear.weight[0, :2] = 0.0  # pruned weights: zero must stay a clean fixed point
    layer = PowerpropLinear.from_linear(linear, 1.5)
    torch.testing.assert_close(layer.effective_weight, linear.weight, rtol=1e-6, atol=0)
    layer(torch.randn(4, 5)).sum().backward()
    assert torch.isfinite(layer.v.grad).all() and torch.equal(layer.v.grad[0, :2], torch.zeros(2))
    assert "alpha=1.5" in repr(layer)
