"""Several seeds' MLPs trained as one model: how the MNIST recipe trains all seeds of an arm at once.

Why: the reference MLP is so small that much of a training step of one seed is fixed
per-step cost (Python, dispatch, Accelerate's wrappers, the optimizer's bookkeeping,
gathering the batch). A group of seeds shares those: one backward, one optimizer call
over every seed's tensors, one data gather.

Why each seed stays its own ``MLP`` with its own parameters (rather than one [S, out, in]
parameter), in its own parameter group of the arm's optimizer: torch optimizers keep
per-tensor state (Adam's step count) and Shampoo stacks blocks within a group only (its
factors, roots and schedule per bucket), so one optimizer over all members treats every
seed exactly as it would treat that seed alone, and a member that takes no step (it
stopped early, or has no batch left this epoch) simply has no gradient and is skipped.

Why the forward runs the members one by one instead of one ``baddbmm`` per layer: on a
2-core CPU the batched product of these shapes measured no faster with 2 threads and
16 % slower with 1 (10 seeds, forward + backward), and the per-member products are the
very ones an unbatched run computes, so a seed's weights are bitwise identical whether
it trains alone or in any group.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from basinlab.models.mlp import MLP


class SeedStack(nn.Module):
    """``S`` independent MLPs (``members[i]`` is one seed's model) run as one forward."""

    def __init__(self, members: Sequence[MLP]):
        super().__init__()
        if not members:
            raise ValueError("SeedStack needs at least one member model")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor, active: Sequence[int]) -> torch.Tensor:
        """Logits [A, B, classes] of members ``active`` (len A) on their own inputs ``x`` [A, B, in]."""
        if len(active) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} input stacks for {len(active)} active members")
        return torch.stack([self.members[i](inputs) for i, inputs in zip(active, x)])
