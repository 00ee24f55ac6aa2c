"""The sparsity preconditioner (from its formula, and as SGD/AdamW at beta 0) and magnitude pruning."""

import pytest
import torch

from basinlab.eval.pruning import fraction_below, magnitude_masks, pruning_curve
from basinlab.optim import SparsityPreconditioned, build_optimizer


def _pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(5, 4, generator=generator), torch.randn(4, generator=generator)]
    return [p.clone().requires_grad_() for p in params], [p.clone().requires_grad_() for p in params]


def _trajectories(ours, reference, steps=20):
    a, b = _pair()
    opt_a, opt_b = ours(a), reference(b)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p, q in zip(a, b):
            grad = torch.randn(p.shape, generator=generator)
            p.grad, q.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    return a, b


@pytest.mark.parametrize(
    "ours, reference",
    [
        (dict(lr=0.1, beta=0.0), lambda p: torch.optim.SGD(p, lr=0.1)),
        (dict(lr=0.1, beta=0.0, momentum=0.9, nesterov=True), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
        (dict(lr=0.01, beta=0.0, base="adam", weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    ],
)
def test_beta_zero_is_the_base_optimizer(ours, reference):
    a, b = _trajectories(lambda p: build_optimizer("sparsity", p, **ours), reference)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_one_step_follows_the_formula():
    weight = torch.tensor([[0.5, -2.0], [0.0, 1e-3]], requires_grad=True)
    bias = torch.tensor([0.0, 3.0], requires_grad=True)
    grad_w, grad_b = torch.tensor([[1.0, 1.0], [1.0, -2.0]]), torch.tensor([1.0, 1.0])
    weight.grad, bias.grad = grad_w.clone(), grad_b.clone()
    start = weight.detach().clone()
    SparsityPreconditioned([weight, bias], lr=0.1, beta=1.5, weight_decay=0.2).step()
    expected = start * (1 - 0.1 * 0.2) - 0.1 * start.abs() ** 1.5 * grad_w
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-7)
    assert weight[1, 0] == 0  # zero is a fixed point without a floor
    # vectors take the plain base step by default
    torch.testing.assert_close(bias.detach(), torch.tensor([0.0, 3.0]) * (1 - 0.02) - 0.1 * grad_b)


def test_floor_lets_zero_weights_move_and_vectors_can_be_preconditioned():
    weight = torch.zeros(2, 2, requires_grad=True)
    bias = torch.tensor([0.0, 4.0], requires_grad=True)
    weight.grad, bias.grad = torch.ones(2, 2), torch.ones(2)
    SparsityPreconditioned([weight, bias], lr=1.0, beta=1.0, floor=0.01, precondition_vectors=True).step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), -0.01))
    torch.testing.assert_close(bias.detach(), torch.tensor([-0.01, 0.0]))  # 4 - |4| * 1


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(beta=-1.0), "beta must be >= 0"),
        (dict(base="lion"), "base must be one of"),
        (dict(base="adam", momentum=0.9), "momentum applies to base='sgd'"),
        (dict(floor=-1e-3), "floor must be >= 0"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(ValueError, match=message):
        SparsityPreconditioned([torch.nn.Parameter(torch.zeros(2, 2))], **options)


def test_masks_keep_the_largest_entries_globally_or_per_layer():
    a = torch.tensor([[0.1, -5.0], [3.0, 0.2]])
    b = torch.tensor([4.0, -0.3, 0.05, 1.0])
    global_masks = magnitude_masks([a, b], keep=0.5)  # 4 of 8: 5, 4, 3, 1
    assert global_masks[0].tolist() == [[False, True], [True, False]]
    assert global_masks[1].tolist() == [True, False, False, True]
    layer_masks = magnitude_masks([a, b], keep=0.25, scope="layer")  # 1 of 4 in each
    assert layer_masks[0].tolist() == [[False, True], [False, False]]
    assert layer_masks[1].tolist() == [True, False, False, False]
    assert all(m.all() for m in magnitude_masks([a, b], keep=1.0))
    with pytest.raises(ValueError, match="keep fraction"):
        magnitude_masks([a], keep=0.0)


def test_fraction_below_thresholds():
    weights = [torch.tensor([0.0, 0.005, 0.02, 1.0]), torch.tensor([[0.5, -0.001]])]
    assert fraction_below(weights, [0.01, 0.1]) == {"0.01": 0.5, "0.1": pytest.approx(4 / 6)}


def test_pruning_curve_evaluates_masked_weights_and_restores_the_model():
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen_masks = []

    def finetune(masks):
        seen_masks.append(masks[0].sum().item())
        with torch.no_grad():
            model.bias.add_(100.0)  # anything the fine-tune changes is undone afterwards

    curve = pruning_curve(
        model, [model.weight], lambda: model.weight.count_nonzero().item() + model.bias.item(),
        keep_fractions=(1.0, 0.5, 0.25), finetune=finetune,
    )
    bias = before["bias"].item() + 100.0
    assert [c["keep"] for c in curve] == [1.0, 0.5, 0.25]
    assert [c["accuracy"] for c in curve] == pytest.approx([4 + bias, 2 + bias, 1 + bias])
    assert seen_masks == [4, 2, 1]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("base", ["adam", "sgd-nesterov"])
def test_preconditioned_adam_and_nesterov_follow_the_formula(base):
    """beta > 0 on top of Adam or Nesterov momentum, three steps against a hand-written loop."""
    theta = torch.tensor([[0.3, -1.2], [0.05, 2.0]], dtype=torch.float64)
    param = theta.clone().requires_grad_()
    options = dict(base="adam") if base == "adam" else dict(momentum=0.9, nesterov=True)
    optimizer = SparsityPreconditioned([param], lr=0.1, beta=0.5, **options)
    m = v = buf = torch.zeros_like(theta)
    for t in range(1, 4):
        grad = torch.tensor([[1.0, -0.5], [2.0, 0.25]], dtype=torch.float64) * t
        param.grad = grad.clone()
        optimizer.step()
        if base == "adam":
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            d = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        else:
            buf = 0.9 * buf + grad
            d = grad + 0.9 * buf
        theta = theta - 0.1 * theta.abs().sqrt() * d
    torch.testing.assert_close(param.detach(), theta, rtol=0, atol=1e-12)
