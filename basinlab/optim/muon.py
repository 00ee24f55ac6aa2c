"""Muon: momentum orthogonalised by Newton–Schulz for the hidden matrices, AdamW for the rest.

For a hidden weight matrix (a block of at most ``max_preconditioner_dim`` per side; buckets
of equal blocks, as Shampoo's) with gradient G, at step t:

    B  = momentum-EMA of G                     B <- B + (1 - momentum) (G - B)
    U  = (1 - momentum) G + momentum B         (Nesterov; U = B without)
    O  = NewtonSchulz5(U)                      ~ U_svd V_svd^T (orthogonal.py)
    p *= 1 - lr * weight_decay ;  p -= lr * s * O

The scale s sets the convention. ``scale="rms"`` (default): s = 0.2 sqrt(max(h, w)), which
gives O's entries an RMS of about 0.2, the RMS of a typical AdamW update (Moonshot AI's
convention), so one learning rate and weight decay serve both halves. ``scale="spectral"``:
s = sqrt(max(1, h / w)) (Jordan et al.'s), with which Muon wants a learning rate ~0.02 and
the AdamW parameters their own group with a smaller one. The EMA form of the momentum only
changes U's scale, which the normalisation in Newton–Schulz removes.

Which parameters are orthogonalised is the param group's ``use_muon`` flag: in a group
with ``use_muon=True`` the matrices (size-1 dims dropped; conv kernels flattened) take Muon
and vectors AdamW; a group with ``use_muon=False`` is all AdamW (torch.optim.AdamW's update:
``adamw_betas``, ``adamw_eps``, the group's lr and weight decay). A group without the flag is
refused, since bare parameters cannot tell embeddings and the head from hidden matrices:
``param_rules.muon_param_groups(model)`` makes the usual split.

Shared with Shampoo (engine.py): masking of non-finite gradients on the device (a skipped
parameter's state and weights stay bitwise), no host read in a step, distribution of the
buckets over data-parallel ranks with one all-gather, bucket-keyed state dicts.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from basinlab.optim import grafting as adam_math
from basinlab.optim.coefficients import CoefficientTable
from basinlab.optim.engine import BucketedOptimizer, GroupStep
from basinlab.optim.layout import Bucket, unit_gradients, unit_param
from basinlab.optim.orthogonal import newton_schulz
from basinlab.optim.shampoo_options import NONFINITE_POLICIES

NS_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
SCALES = ("rms", "spectral")
RMS_MATCH = 0.2  # AdamW's typical update RMS
# Columns of the coefficient table, in the order _coefficients asks for them.
KEEP_BETA2, WEIGHT_MOMENTUM, WEIGHT_BETA1, USABLE, CORRECTION1, CORRECTION2 = range(6)

MISSING_FLAG = (
    "Muon: parameter group {index} has no 'use_muon' flag, and bare parameters cannot tell embeddings and "
    "the output head (which should take AdamW) from hidden matrices; build the groups with "
    "basinlab.optim.muon_param_groups(model), or set 'use_muon': True on a group of hidden matrices"
)


def native_bfloat16_matmul(device: torch.device) -> bool:
    """CUDA, or a CPU with AVX512-BF16 or AMX: bfloat16 GEMMs there are several times faster than
    float32 (measured 4.7x on this project's AVX512-BF16 CPU); elsewhere they are emulated, slower."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def orthogonalised(unit) -> bool:
    """Whether a unit takes Muon's update (a factored matrix bucket) rather than AdamW's."""
    return isinstance(unit, Bucket) and unit.sides == (True, True)


class Muon(BucketedOptimizer):
    """Muon with an AdamW half (see the module docstring for the exact update).

    Args:
        lr: learning rate of both halves (scale="rms"; per-group lr for anything else).
        momentum, nesterov: Muon's momentum EMA and Nesterov look-ahead.
        ns_steps: Newton–Schulz iterations.
        ns_dtype: "auto" (bfloat16 where matmuls are native in it: CUDA, CPUs with AVX512-BF16 or AMX;
            float32 elsewhere), "bfloat16", "float32" or "float64" (for float64 references).
        scale: "rms" (0.2 sqrt(max(h, w)): AdamW-like update RMS) or "spectral" (sqrt(max(1, h/w))).
        weight_decay: decoupled weight decay of both halves.
        adamw_betas, adamw_eps: the AdamW half's betas and epsilon.
        max_preconditioner_dim: larger matrix dims are cut into blocks orthogonalised separately.
        nonfinite_grads: "skip" (count and skip the parameter's step) or "raise" (one host read per step).
        distributed, communication_dtype, process_group, distributed_group_size: see distribution.py.
    """

    name = "Muon"

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "auto",
        scale: str = "rms",
        weight_decay: float = 0.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        max_preconditioner_dim: int = 8192,
        nonfinite_grads: str = "skip",
        distributed: bool | None = None,
        communication_dtype: str = "float32",
        process_group: Any = None,
        distributed_group_size: int | None = None,
    ):
        beta1, beta2 = adamw_betas
        checks = [
            (lr >= 0, f"lr must be >= 0, got {lr}"),
            (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}"),
            (nesterov in (True, False), f"nesterov must be True or False, got {nesterov!r}"),
            (isinstance(ns_steps, int) and ns_steps >= 1, f"ns_steps must be an integer >= 1, got {ns_steps!r}"),
            (ns_dtype in NS_DTYPES, f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}"),
            (scale in SCALES, f"scale must be one of {', '.join(SCALES)}, got {scale!r}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (0 <= beta1 < 1 and 0 <= beta2 < 1, f"adamw_betas must be in [0, 1), got {adamw_betas}"),
            (adamw_eps > 0, f"adamw_eps must be > 0, got {adamw_eps}"),
            (max_preconditioner_dim >= 1, f"max_preconditioner_dim must be >= 1, got {max_preconditioner_dim}"),
            (nonfinite_grads in NONFINITE_POLICIES, f"nonfinite_grads must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite_grads!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype, scale=scale,
            weight_decay=weight_decay, adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps,
            max_preconditioner_dim=max_preconditioner_dim, nonfinite_grads=nonfinite_grads,
        )
        distribution = dict(distributed=distributed, communication_dtype=communication_dtype,
                            process_group=process_group, distributed_group_size=distributed_group_size)
        super().__init__(params, defaults, **distribution)
        self._table = CoefficientTable()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's; the group must say whether its matrices take Muon (``use_muon``)."""
        if param_group.get("use_muon") not in (True, False):
            raise ValueError(MISSING_FLAG.format(index=len(self.param_groups)))
        super().add_param_group(param_group)

    def diagnostics(self) -> dict[str, int]:
        """Skipped parameter steps and how many parameters take each half (reads the device)."""
        plan = self._plan()
        muon = {(u.group, p) for layout in plan.groups for u in layout.buckets if orthogonalised(u) for p in u.row_params}
        total = sum(len(g["params"]) for g in self.param_groups)
        return {"skipped_steps": self.skipped_steps(), "muon_params": len(muon), "adamw_params": total - len(muon)}

    # ----------------------------------------------------------------- engine hooks

    def _layout_dims(self, group: dict[str, Any]) -> tuple:
        return group["max_preconditioner_dim"], 0, None, not group["use_muon"]

    def _unit_state(self, unit, like: torch.Tensor) -> dict[str, torch.Tensor]:
        if unit.key not in self.state:
            shape = (unit.size, *unit.block) if isinstance(unit, Bucket) else (unit.numel,)
            zeros = torch.zeros(shape, dtype=like.dtype, device=like.device)
            names = ("momentum_buffer",) if orthogonalised(unit) else ("exp_avg", "exp_avg_sq")
            self.state[unit.key] = {name: zeros.clone() for name in names}
        return self.state[unit.key]

    def _update_statistics(self, step: GroupStep) -> None:
        group, units = step.group, step.owned
        params = group["params"]
        beta1, beta2 = group["adamw_betas"]
        coefficients = self._table.build(
            self._plan(), step, units,
            keep=(beta2,),
            gate=(1 - group["momentum"], 1 - beta1, 1.0),
            corrections=(beta1, beta2),
            dtype=params[0].dtype,
            factor_dtype=params[0].dtype,
        )
        grads = self._table.masked(unit_gradients(units, step.grads), coefficients)
        states = [self._unit_state(u, unit_param(u, params)) for u in units]
        muon = [i for i, u in enumerate(units) if orthogonalised(u)]
        adam = [i for i, u in enumerate(units) if not orthogonalised(u)]
        if muon:
            adam_math.update_average(
                [states[i]["momentum_buffer"] for i in muon],
                [grads[i] for i in muon],
                [coefficients[i].columns[WEIGHT_MOMENTUM] for i in muon],
            )
        if adam:
            adam_grads = [grads[i] for i in adam]
            adam_math.update_average(
                [states[i]["exp_avg"] for i in adam], adam_grads, [coefficients[i].columns[WEIGHT_BETA1] for i in adam]
            )
            decays = [coefficients[i].columns[KEEP_BETA2] for i in adam]
            adam_math.accumulate([states[i]["exp_avg_sq"] for i in adam], adam_grads, decays, "adam", beta2)
        step.scratch.update(grads=grads, states=states, coefficients=coefficients, muon=muon, adam=adam)

    def _directions(self, step: GroupStep) -> list[torch.Tensor]:
        if not step.owned:
            return []
        group, scratch = step.group, step.scratch
        grads, states, coefficients = scratch["grads"], scratch["states"], scratch["coefficients"]
        out: list[torch.Tensor | None] = [None] * len(step.owned)
        if scratch["muon"]:
            muon = scratch["muon"]
            buffers = [states[i]["momentum_buffer"] for i in muon]
            updates = torch._foreach_lerp([grads[i] for i in muon], buffers, group["momentum"]) if group["nesterov"] else buffers
            dtype = self._ns_dtype(group, updates[0].device)
            directions = [newton_schulz(u, group["ns_steps"], dtype).to(u.dtype) for u in updates]
            torch._foreach_mul_(directions, [self._scale(group["scale"], step.owned[i].block) for i in muon])
            for i, d in zip(muon, directions):
                out[i] = d
        if scratch["adam"]:
            adam = scratch["adam"]
            moments = torch._foreach_div([states[i]["exp_avg"] for i in adam], [coefficients[i].columns[CORRECTION1] for i in adam])
            accumulators = [states[i]["exp_avg_sq"] for i in adam]
            corrections = [coefficients[i].columns[CORRECTION2] for i in adam]
            for i, d in zip(adam, adam_math.directions(moments, accumulators, corrections, "adam", group["adamw_eps"])):
                out[i] = d
        return torch._foreach_mul(out, [c.columns[USABLE] for c in coefficients])

    @staticmethod
    def _ns_dtype(group: dict[str, Any], device: torch.device) -> torch.dtype:
        chosen = NS_DTYPES[group["ns_dtype"]]
        return (torch.bfloat16 if native_bfloat16_matmul(device) else torch.float32) if chosen is None else chosen

    @staticmethod
    def _scale(convention: str, block: tuple[int, int]) -> float:
        rows, cols = block
        if convention == "rms":
            return RMS_MATCH * math.sqrt(max(rows, cols))
        return math.sqrt(max(1.0, rows / cols))
