"""The reference model: a ReLU MLP whose initial weights depend only on the seed.

Matched initialization is the point of the experiments (same seed => the same starting
point for every optimizer), so weights are drawn from a private ``torch.Generator``
rather than the global RNG, which other code may have advanced.

``powerprop_alpha`` swaps every layer for a ``PowerpropLinear`` whose *effective* weights
come from the same generator draws, so a Powerprop model starts at the very function the
plain model with that seed starts at.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from basinlab.models.powerprop import PowerpropLinear


class MLP(nn.Module):
    """``in_features -> hidden_sizes (ReLU) -> num_classes``; exposes the last hidden layer.

    ``powerprop_alpha``: when set, every layer (hidden and head) is a ``PowerpropLinear``
    with that alpha (>= 1), initialised to the same effective weights and biases.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden_sizes: Sequence[int] = (100,),
        num_classes: int = 10,
        *,
        seed: int = 0,
        powerprop_alpha: float | None = None,
    ):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one hidden layer")
        if powerprop_alpha is None:
            linear = nn.Linear
        else:
            alpha = PowerpropLinear.check_alpha(powerprop_alpha)

            def linear(a: int, b: int) -> PowerpropLinear:
                return PowerpropLinear(a, b, alpha)

        self.powerprop_alpha = powerprop_alpha
        sizes = [in_features, *hidden_sizes]
        self.hidden = nn.ModuleList(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = linear(sizes[-1], num_classes)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """PyTorch's default ``nn.Linear`` init, drawn from a generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        for layer in [*self.hidden, self.head]:
            if isinstance(layer, PowerpropLinear):
                layer.reset_parameters(generator)  # the same draws, in the same order
                continue
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def get_output_embeddings(self) -> nn.Module:
        """The classifier head (HF's name for it: Muon's parameter rule gives it AdamW)."""
        return self.head

    def features(self, x: torch.Tensor, pre_activation: bool = False) -> torch.Tensor:
        """Activations of the last hidden layer (what the representation metrics measure), after its ReLU
        or, with ``pre_activation``, before it."""
        for layer in self.hidden[:-1]:
            x = torch.relu(layer(x))
        x = self.hidden[-1](x)
        return x if pre_activation else torch.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
