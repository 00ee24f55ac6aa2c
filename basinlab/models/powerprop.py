"""Powerpropagation (Schwarz et al. 2021): a linear layer whose weight is w = v * |v|^(alpha - 1).

Why reparameterise at all: the function the network computes is unchanged (any w is
reachable), but gradient descent on v is not gradient descent on w. The chain rule scales
each weight's gradient by alpha * |v|^(alpha - 1), so small weights learn slowly and zero
is a fixed point; training then piles information into a few large weights and magnitude
pruning costs little. ``SparsityPreconditioned`` (optim/sparsity.py) produces the same
dynamics to first order on an ordinary model; docs/powerprop.md derives the match
(beta = 2 - 2/alpha, lr * alpha^2). This module is the model-side half of that comparison.

Why the init maps a standard draw u to v = sign(u) |u|^(1/alpha): the experiments compare
optimizers from matched starting points, so a Powerprop model must start at the very
function a plain model with the same seed starts at. Biases stay plain parameters: the
paper reparameterises weights only, and the preconditioner by default leaves vectors alone.

Why ``effective_weights``: pruning and sparsity statistics must look at w, never at v
(|v| = |w|^(1/alpha) would rank the same but its histogram and thresholds would not), and
they must treat plain and Powerprop models alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PowerpropLinear(nn.Module):
    """``y = x @ w.T + b`` with ``w = v * |v|^(alpha - 1)``; ``alpha = 1`` is ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, alpha: float, bias: bool = True):
        super().__init__()
        self.alpha = self.check_alpha(alpha)
        self.in_features, self.out_features = in_features, out_features
        self.v = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    @staticmethod
    def check_alpha(alpha: float) -> float:
        alpha = float(alpha)
        if not alpha >= 1:  # also rejects NaN
            raise ValueError(
                f"Powerprop alpha must be >= 1 (alpha = 1 is a plain linear layer; alpha < 1 "
                f"would speed up small weights instead of slowing them), got {alpha}"
            )
        return alpha

    @staticmethod
    def reparameterise(weight: torch.Tensor, alpha: float) -> torch.Tensor:
        """The v with ``v * |v|^(alpha - 1) == weight`` (up to rounding): ``sign(w) |w|^(1/alpha)``."""
        alpha = PowerpropLinear.check_alpha(alpha)
        if alpha == 1:
            return weight.clone()
        # Root in float64 (when working in float32) so the round trip loses only the final rounding.
        wide = weight.double() if weight.dtype == torch.float32 else weight
        return (torch.sign(wide) * wide.abs().pow(1.0 / alpha)).to(weight.dtype)

    @property
    def effective_weight(self) -> torch.Tensor:
        """``w = v * |v|^(alpha - 1)``, differentiable in v (the gradient is 0, not NaN, at v = 0)."""
        if self.alpha == 1:
            return self.v
        return torch.sign(self.v) * self.v.abs().pow(self.alpha)

    @torch.no_grad()
    def set_effective_weight_(self, weight: torch.Tensor) -> None:
        """Set v so that the effective weight is ``weight``."""
        self.v.copy_(self.reparameterise(weight.to(self.v), self.alpha))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``nn.Linear``'s default init for the effective weight and bias, same draws in the same order."""
        weight = torch.empty_like(self.v)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        self.set_effective_weight_(weight)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    @classmethod
    def from_linear(cls, linear: nn.Linear, alpha: float) -> "PowerpropLinear":
        """A Powerprop layer computing exactly what ``linear`` computes (same device and dtype)."""
        layer = cls(linear.in_features, linear.out_features, alpha, bias=linear.bias is not None)
        layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        layer.set_effective_weight_(linear.weight.detach())
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"alpha={self.alpha}, bias={self.bias is not None}"
        )


def effective_weights(model: nn.Module) -> list[torch.Tensor]:
    """Detached effective weight matrices of every ``nn.Linear`` / ``PowerpropLinear``, in module order."""
    weights = []
    for module in model.modules():
        if isinstance(module, PowerpropLinear):
            weights.append(module.effective_weight.detach())
        elif isinstance(module, nn.Linear):
            weights.append(module.weight.detach())
    return weights
