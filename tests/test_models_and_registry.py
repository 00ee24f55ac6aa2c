"""Matched initialization across optimizers, and the optimizer registry."""

import pytest
import torch

from basinlab.models import MLP
from basinlab.optim import registry
from basinlab.optim import available_optimizers, build_optimizer, optimizer_options, register_optimizer


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_bit_identical_weights_whatever_the_optimizer():
    initial = {}
    for name in available_optimizers():
        torch.manual_seed(len(name))  # global RNG state must not matter
        torch.rand(17)
        model = MLP(784, [100], 10, seed=7)
        build_optimizer(name, model, lr=0.01)
        initial[name] = _weights(model)
    first, *rest = initial.values()
    for other in rest:
        assert all(torch.equal(first[k], other[k]) for k in first)


def test_different_seeds_differ_and_init_matches_torch_default_bounds():
    a, b = MLP(784, [100, 50], 10, seed=0), MLP(784, [100, 50], 10, seed=1)
    assert not torch.equal(a.hidden[0].weight, b.hidden[0].weight)
    for layer in [*a.hidden, a.head]:
        bound = layer.in_features**-0.5
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound  # uniform over the whole range
    assert a(torch.zeros(3, 784)).shape == (3, 10) and a.features(torch.zeros(3, 784)).shape == (3, 50)


def test_build_optimizer_passes_options():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer("SGD", params, lr=0.1, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer("adamw", params, lr=1e-3), torch.optim.AdamW)


def test_unknown_name_and_option_are_named():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; available: .*adamw.*sgd"):
        build_optimizer("adam", params)
    with pytest.raises(ValueError, match="has no option 'lrr'"):
        build_optimizer("sgd", params, lrr=0.1)


def test_registered_optimizer_is_usable_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    class Halver(torch.optim.SGD):
        def __init__(self, params, *, lr=0.5):
            super().__init__(params, lr=lr)

    register_optimizer("test-halver", Halver)
    register_optimizer("test-halver", Halver)  # same factory again is fine
    assert optimizer_options("test-halver") == ["lr"]
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    build_optimizer("test-halver", [param]).step()
    assert torch.equal(param.detach(), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("test-halver", torch.optim.SGD)
