"""The sparsity-inducing preconditioner P = diag(|theta|^beta) on top of SGD or Adam.

    d      = base direction: the gradient (SGD, with optional heavy-ball/Nesterov momentum
             exactly as torch.optim.SGD) or Adam's bias-corrected m / (sqrt(v) + eps)
    P      = max(|theta|, floor)^beta          (from theta before this step)
    theta *= 1 - lr * weight_decay             (decoupled)
    theta -= lr * P * d

With beta > 0 small weights move slowly and zero is a fixed point (a saddle the dynamics
cannot cross without ``floor`` > 0), so information concentrates in large weights and
magnitude pruning removes most of the rest: the dynamics of Powerpropagation
(models/powerprop.py) without changing the model (docs/powerprop.md derives the link:
beta = 2 - 2/alpha, lr scaled by alpha^2). With beta = 0 it is plain SGD / AdamW.

Only matrices and higher-order tensors are preconditioned by default; vectors (biases,
norm scales) take the base update, as Powerprop reparameterises weights only and a bias
initialised at zero would otherwise never move. ``precondition_vectors=True`` changes that.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

BASES = ("sgd", "adam")


class SparsityPreconditioned(torch.optim.Optimizer):
    """theta <- theta - lr * max(|theta|, floor)^beta * d, d from SGD or Adam (see module docstring).

    Args:
        lr: learning rate.
        beta: exponent of the preconditioner (>= 0; 0 = the base optimizer).
        floor: |theta| is clamped to at least this before the power (0 = zero stays zero).
        base: "sgd" or "adam".
        momentum, nesterov: SGD momentum (torch.optim.SGD semantics, no dampening).
        betas, eps: Adam's moment EMAs and epsilon.
        weight_decay: decoupled (AdamW-style) weight decay.
        precondition_vectors: also precondition 1-D parameters and scalars.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        *,
        beta: float = 1.0,
        floor: float = 0.0,
        base: str = "sgd",
        momentum: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        precondition_vectors: bool = False,
    ):
        checks = [
            (lr >= 0, f"lr must be >= 0, got {lr}"),
            (beta >= 0, f"beta must be >= 0, got {beta}"),
            (floor >= 0, f"floor must be >= 0, got {floor}"),
            (base in BASES, f"base must be one of {', '.join(BASES)}, got {base!r}"),
            (momentum >= 0, f"momentum must be >= 0, got {momentum}"),
            (not nesterov or momentum > 0, "nesterov requires momentum > 0"),
            (base == "sgd" or momentum == 0, "momentum applies to base='sgd'; Adam has betas"),
            (0 <= betas[0] < 1 and 0 <= betas[1] < 1, f"betas must lie in [0, 1), got {betas}"),
            (eps > 0, f"eps must be > 0, got {eps}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        defaults = dict(
            lr=lr, beta=beta, floor=floor, base=base, momentum=momentum, nesterov=nesterov,
            betas=tuple(betas), eps=eps, weight_decay=weight_decay, precondition_vectors=precondition_vectors,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            directions = self._base_directions(params, group)
            lr, beta = group["lr"], group["beta"]
            gets_p = [beta != 0 and (p.dim() >= 2 or group["precondition_vectors"]) for p in params]
            preconditioned = [p for p, s in zip(params, gets_p) if s]
            # P from theta before the decay; one fused addcmul then applies -lr * P * d
            weights = self._preconditioner(preconditioned, group) if preconditioned else []
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            if preconditioned:
                torch._foreach_addcmul_(preconditioned, weights, [d for d, s in zip(directions, gets_p) if s], value=-lr)
            plain = [(p, d) for p, d, s in zip(params, directions, gets_p) if not s]
            if plain:
                torch._foreach_add_([p for p, _ in plain], [d for _, d in plain], alpha=-lr)
        return loss

    @staticmethod
    def _preconditioner(params: list[torch.Tensor], group: dict[str, Any]) -> list[torch.Tensor]:
        """max(|theta|, floor)^beta, with the common exponents as cheaper kernels than pow."""
        weights = torch._foreach_abs(params)
        if group["floor"]:
            torch._foreach_clamp_min_(weights, group["floor"])
        beta = group["beta"]
        if beta == 0.5:
            torch._foreach_sqrt_(weights)
        elif beta == 2:
            torch._foreach_mul_(weights, weights)
        elif beta != 1:
            torch._foreach_pow_(weights, beta)
        return weights

    def _base_directions(self, params: list[torch.Tensor], group: dict[str, Any]) -> list[torch.Tensor]:
        grads = [p.grad for p in params]
        if group["base"] == "sgd":
            if not group["momentum"]:
                return grads
            buffers = [self._state_tensor(p, "momentum_buffer") for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            return torch._foreach_add(grads, buffers, alpha=group["momentum"]) if group["nesterov"] else list(buffers)
        beta1, beta2 = group["betas"]
        exp_avgs = [self._state_tensor(p, "exp_avg") for p in params]
        exp_avg_sqs = [self._state_tensor(p, "exp_avg_sq") for p in params]
        steps = []
        for p in params:
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
            steps.append(self.state[p]["step"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
        torch._foreach_add_(denominators, group["eps"])
        directions = torch._foreach_div(exp_avgs, denominators)
        torch._foreach_div_(directions, [1 - beta1**t for t in steps])
        return directions

    def _state_tensor(self, param: torch.Tensor, key: str) -> torch.Tensor:
        state = self.state[param]
        if key not in state:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state[key]
