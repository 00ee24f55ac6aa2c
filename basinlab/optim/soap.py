"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors (Vyas et al. 2024), bucketed.

For a block G (m x n; blocks and buckets as Shampoo's, layout.py) at step t (1-based,
counted per parameter), in the order the engine runs its phases:

    L, R = shampoo_beta-EMA of G G^T, G^T G             (kronecker.py; no bias correction: only
                                                         their eigenvectors are used)
    if t = 1 + k f: refresh the bases Q_L, Q_R           (eigh at t = 1, then one power-iteration
                                                         step + QR, moments follow: soap_math.py)
    G'   = Q_L^T G Q_R
    M', V' = Adam's moments of G' (betas), bias-corrected
    D    = Q_L (M' / (sqrt(V') + eps)) Q_R^T
    p   *= 1 - lr * weight_decay ;  p -= lr * D

The factors include G_t before its own rotation (Meta's Distributed Shampoo orders it so
too; the SOAP paper's code refreshes after the step and skips the update of step 1).
``precondition_frequency`` = f. A dim longer than ``one_sided_dim`` carries no factor and
is left unrotated (the paper's answer to embeddings' vocabulary dims); a matrix with both
dims that long, vectors and scalars take plain AdamW (``precondition_1d`` off, as the
paper's default). Robustness and distribution as Shampoo's (engine.py): a non-finite
gradient skips the parameter (state and weights bitwise), a basis that comes out
non-finite is not taken, no host read on any step, one all-gather per step distributed.
"""

from __future__ import annotations

from typing import Any

import torch

from basinlab.optim import grafting as adam_math
from basinlab.optim.coefficients import CoefficientTable
from basinlab.optim.engine import BucketedOptimizer, GroupStep
from basinlab.optim.kronecker import factored_sides, update_factors
from basinlab.optim.layout import Bucket, unit_gradients, unit_param
from basinlab.optim.schedule import is_due
from basinlab.optim.shampoo_options import NONFINITE_POLICIES, factor_dtype_of
from basinlab.optim.soap_math import project, project_back, refresh_basis

BASIS_METHODS = ("power_qr", "eigh")
# Columns of the coefficient table, in the order _coefficients asks for them.
FACTOR_DECAY, KEEP_BETA2, WEIGHT_BETA1, USABLE, CORRECTION1, CORRECTION2 = range(6)


def rotated(unit) -> bool:
    """Whether a unit has a factored side (its Adam runs in an eigenbasis)."""
    return isinstance(unit, Bucket) and any(unit.sides)


class SOAP(BucketedOptimizer):
    """SOAP (see the module docstring for the exact update).

    Args:
        lr: learning rate.
        betas: Adam's (beta1, beta2) in the rotated basis.
        shampoo_beta: EMA coefficient of the factors (None: betas[1], the paper's default).
        eps: Adam's epsilon.
        weight_decay: decoupled (AdamW-style) weight decay.
        precondition_frequency: steps between basis refreshes (the first is at step 1).
        max_preconditioner_dim: longer factored dims are cut into blocks, as Shampoo's.
        one_sided_dim: dims longer than this get no factor (not rotated, not blocked).
        basis_method: "power_qr" (one warm-started power-iteration step and QR per refresh;
            the paper's) or "eigh" (exact eigenvectors at every refresh).
        factor_dtype: "float32" or "float64" for factors, bases and rotations.
        nonfinite_grads: "skip" (count and skip the parameter's step) or "raise" (one host read per step).
        distributed, communication_dtype, process_group, distributed_group_size: see distribution.py.
    """

    name = "SOAP"

    def __init__(
        self,
        params,
        lr: float = 3e-3,
        *,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_preconditioner_dim: int = 1024,
        one_sided_dim: int = 4096,
        basis_method: str = "power_qr",
        factor_dtype: str | torch.dtype = "float32",
        nonfinite_grads: str = "skip",
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
    ):
        beta1, beta2 = betas
        shampoo_beta = beta2 if shampoo_beta is None else shampoo_beta
        checks = [
            (lr >= 0, f"lr must be >= 0, got {lr}"),
            (0 <= beta1 < 1 and 0 <= beta2 < 1, f"betas must be in [0, 1), got {betas}"),
            (0 <= shampoo_beta < 1, f"shampoo_beta must be in [0, 1), got {shampoo_beta}"),
            (eps > 0, f"eps must be > 0, got {eps}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (precondition_frequency >= 1, f"precondition_frequency must be >= 1, got {precondition_frequency}"),
            (max_preconditioner_dim >= 1, f"max_preconditioner_dim must be >= 1, got {max_preconditioner_dim}"),
            (one_sided_dim >= 1, f"one_sided_dim must be >= 1, got {one_sided_dim}"),
            (basis_method in BASIS_METHODS, f"basis_method must be one of {', '.join(BASIS_METHODS)}, got {basis_method!r}"),
            (nonfinite_grads in NONFINITE_POLICIES, f"nonfinite_grads must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite_grads!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        dtype = factor_dtype_of(factor_dtype)
        defaults = dict(
            lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=precondition_frequency, max_preconditioner_dim=max_preconditioner_dim,
            one_sided_dim=one_sided_dim, basis_method=basis_method, factor_dtype=str(dtype).removeprefix("torch."),
            nonfinite_grads=nonfinite_grads,
        )
        distribution = dict(distributed=distributed, communication_dtype=communication_dtype,
                            process_group=process_group, distributed_group_size=distributed_group_size)
        super().__init__(params, defaults, **distribution)
        self._table = CoefficientTable()

    def diagnostics(self) -> dict[str, int]:
        """Skipped parameter steps, basis refreshes that raised in torch.linalg (bases kept), and how
        many parameters are rotated on at least one side (reads the device)."""
        refreshed = {(u.group, p) for layout in self._plan().groups for u in layout.buckets if rotated(u) for p in u.row_params}
        failures = sum(s.get("basis_failures", 0) for k, s in self.state.items() if str(k).startswith("bucket."))
        return {"skipped_steps": self.skipped_steps(), "basis_failures": failures, "rotated_params": len(refreshed)}

    # ----------------------------------------------------------------- engine hooks

    def _layout_dims(self, group: dict[str, Any]) -> tuple:
        return group["max_preconditioner_dim"], 0, group["one_sided_dim"]

    def _unit_state(self, unit, like: torch.Tensor, factor_dtype: torch.dtype) -> dict[str, Any]:
        if unit.key in self.state:
            return self.state[unit.key]
        shape = (unit.size, *unit.block) if isinstance(unit, Bucket) else (unit.numel,)
        zeros = torch.zeros(shape, dtype=like.dtype, device=like.device)
        state: dict[str, Any] = {"exp_avg": zeros, "exp_avg_sq": zeros.clone()}
        if rotated(unit):
            for side, dim in factored_sides(unit):
                state[side] = torch.zeros(unit.size, dim, dim, dtype=factor_dtype, device=like.device)
                identity = torch.eye(dim, dtype=factor_dtype, device=like.device)
                state[f"{side}_basis"] = identity.expand(unit.size, dim, dim).clone()
            state["basis_failures"] = 0
        self.state[unit.key] = state
        return state

    def _update_statistics(self, step: GroupStep) -> None:
        """Mask the gradients and advance the factors (the moments move after the basis refresh)."""
        group, units = step.group, step.owned
        params = group["params"]
        beta1, beta2 = group["betas"]
        factor_dtype = factor_dtype_of(group["factor_dtype"])
        coefficients = self._table.build(
            self._plan(), step, units,
            keep=(group["shampoo_beta"], beta2),
            gate=(1 - beta1, 1.0),
            corrections=(beta1, beta2),
            dtype=params[0].dtype,
            factor_dtype=factor_dtype,
            factor_columns=(FACTOR_DECAY,),
        )
        grads = self._table.masked(unit_gradients(units, step.grads), coefficients)
        states = [self._unit_state(u, unit_param(u, params), factor_dtype) for u in units]
        factors, decays = [], []
        for unit, state, c in zip(units, states, coefficients):
            for side, _ in factored_sides(unit) if rotated(unit) else ():
                factors.append(state[side])
                decays.append(c.factor_columns[0])
        if factors:
            torch._foreach_mul_(factors, decays)
        weight = 1.0 - group["shampoo_beta"]
        for unit, state, grad in zip(units, states, grads):
            if rotated(unit):
                update_factors(state.get("left"), state.get("right"), grad, weight)
        step.scratch.update(grads=grads, states=states, coefficients=coefficients)

    def _refresh(self, steps: list[GroupStep]) -> None:
        """New bases for the blocks whose parameters reached step 1 + k f (no host read)."""
        for step in steps:
            frequency, exact_always = step.group["precondition_frequency"], step.group["basis_method"] == "eigh"
            for unit, state in zip(step.owned, step.scratch.get("states", ())):
                if not rotated(unit):
                    continue
                rows = [(step.present[p], step.host_steps[p]) for p in unit.row_params]
                flags = tuple(has and is_due(t, 1, frequency, frequency) for has, t in rows)
                if not any(flags):
                    continue
                due = None if all(flags) else self._mask(flags, step.ok.device)
                first = any(flag and t == 1 for flag, (_, t) in zip(flags, rows))
                sides = tuple(side for side, _ in factored_sides(unit))
                if not refresh_basis(state, sides, due, exact_always or first):
                    state["basis_failures"] += 1

    def _directions(self, step: GroupStep) -> list[torch.Tensor]:
        if not step.owned:
            return []
        group, scratch = step.group, step.scratch
        grads, states, coefficients = scratch["grads"], scratch["states"], scratch["coefficients"]
        beta2 = group["betas"][1]
        inputs = []
        for unit, state, grad in zip(step.owned, states, grads):
            if rotated(unit):
                left, right = state.get("left_basis"), state.get("right_basis")
                grad = project(left, right, grad.to(left.dtype if left is not None else right.dtype)).to(grad.dtype)
            inputs.append(grad)
        averages, squares = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        adam_math.update_average(averages, inputs, [c.columns[WEIGHT_BETA1] for c in coefficients])
        adam_math.accumulate(squares, inputs, [c.columns[KEEP_BETA2] for c in coefficients], "adam", beta2)
        moments = torch._foreach_div(averages, [c.columns[CORRECTION1] for c in coefficients])
        corrections = [c.columns[CORRECTION2] for c in coefficients]
        out = list(adam_math.directions(moments, squares, corrections, "adam", group["eps"]))
        for i, (unit, state) in enumerate(zip(step.owned, states)):
            if rotated(unit):
                left, right = state.get("left_basis"), state.get("right_basis")
                out[i] = project_back(left, right, out[i].to(left.dtype if left is not None else right.dtype)).to(out[i].dtype)
        return torch._foreach_mul(out, [c.columns[USABLE] for c in coefficients])
