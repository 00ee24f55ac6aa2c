"""Shampoo with torch_compile=True: inductor on the CPU, compiled once per layout (not every step),
the same trajectory as eager to float tolerance."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from basinlab.optim import Shampoo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("gcc") is None,
                       reason="inductor on the CPU needs a C++ compiler"),
]


def _train(torch_compile: bool, steps: int, graphs_after: list | None = None):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(12, 8), (8, 8), (5,), (6, 4, 3)]]
    optimizer = Shampoo(params, lr=0.01, precondition_frequency=3, start_preconditioning_step=3, momentum=0.9,
                        weight_decay=0.01, max_preconditioner_dim=8, torch_compile=torch_compile)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
        if graphs_after is not None:
            graphs_after.append(counters["stats"]["unique_graphs"])
    return params


def test_compiled_steps_match_eager_and_compile_once_per_phase():
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    compiled = _train(True, 12, graphs)
    eager = _train(False, 12)
    # statistics, directions before preconditioning starts, directions after: three graphs, then none
    # however many steps follow (root steps included: their refresh runs eagerly between the two)
    assert graphs[2:] == [3] * 10 and graphs[0] == 2
    for a, b in zip(compiled, eager):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
