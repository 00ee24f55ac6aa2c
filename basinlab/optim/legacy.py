"""Load Shampoo states saved before buckets (basinlab <= 0.1: one state dict per parameter).

Those states keyed every block's tensors by parameter index and block number
("factor_{b}_{k}", "inv_root_{b}_{k}", "grad_ema_{b}", ...; block b = row chunk x column
chunks + column chunk). The same blocks exist in today's layout, only stacked, so the
conversion is exact: a run resumed from an old checkpoint continues with the same
factors, roots, moments and step counts (and the default, unstaggered schedule).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from basinlab.optim.layout import Bucket, matrix_shape

def is_legacy(state_dict: dict[str, Any]) -> bool:
    return any(isinstance(k, int) and isinstance(v, dict) and "step" in v for k, v in state_dict["state"].items())


def upgrade_legacy_state(optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The bucketed equivalent of a per-parameter Shampoo state dict (others are returned unchanged)."""
    if not is_legacy(state_dict):
        return state_dict
    old = state_dict["state"]
    groups = [{**optimizer.defaults, **saved, "root_method": saved.get("root_method", "eigh")} for saved in state_dict["param_groups"]]
    plan = optimizer._plan()  # built from the current parameters, whose shapes the old ones had
    state: dict[str, Any] = {}
    for g, (group, layout) in enumerate(zip(groups, plan.groups)):
        params = optimizer.param_groups[g]["params"]
        entries = [old.get(index, {}) for index in group["params"]]
        steps = [int(e.get("step", 0)) for e in entries]
        if any(steps):
            state[f"group.{g}"] = {
                "steps": torch.tensor(steps, dtype=torch.float32),
                "skipped": torch.tensor([float(e.get("skipped_steps", 0)) for e in entries]),
                "host_steps": tuple(steps),
            }
        for bucket in layout.buckets:
            state[bucket.key] = _bucket_state(bucket, entries, group, params)
        if layout.diagonal is not None:
            state[layout.diagonal.key] = _diagonal_state(layout.diagonal, entries, group, params)
    return {"state": state, "param_groups": groups}


def _old_block_numbers(bucket: Bucket, shapes, max_dim: int) -> list[tuple[int, int]]:
    """(parameter, old block number) of every stacked block, in bucket order."""
    numbers = []
    for tile in bucket.tiles:
        matrix = matrix_shape(shapes[tile.param])
        col_chunks = math.ceil(matrix[1] / max_dim) if len(matrix) == 2 else 1
        rows, cols = tile.grid
        for r in range(rows):
            for c in range(cols):
                row_chunk = (tile.rows[0] + r * tile.block[0]) // max_dim
                col_chunk = (tile.cols[0] + c * tile.block[1]) // max_dim
                numbers.append((tile.param, row_chunk * col_chunks + col_chunk))
    return numbers


def _take(entries, param: int, key: str, shape, fill: str = "zeros", dtype=torch.float32) -> torch.Tensor:
    value = entries[param].get(key)
    if value is None:
        if entries[param].get("step", 0):
            raise ValueError(
                f"Shampoo: this pre-bucket optimizer state lacks {key!r} of parameter {param}: it is one rank's shard "
                "of a distributed run; load every rank's shard with basinlab.optim.load_sharded_state"
            )
        return torch.eye(shape[-1], dtype=dtype) if fill == "eye" else torch.zeros(shape, dtype=dtype)
    return value.reshape(shape)


def _bucket_state(bucket: Bucket, entries, group, params) -> dict[str, Any]:
    numbers = _old_block_numbers(bucket, [tuple(p.shape) for p in params], group["max_preconditioner_dim"])
    factor_dtype = torch.float64 if group["factor_dtype"] == "float64" else torch.float32
    param_dtype = params[0].dtype
    state: dict[str, Any] = {}
    for k, (side, dim) in enumerate((s, d) for s, d, f in zip(("left", "right"), bucket.block, bucket.sides) if f):
        state[side] = torch.stack([_take(entries, p, f"factor_{b}_{k}", (dim, dim), dtype=factor_dtype) for p, b in numbers])
        state[f"{side}_root"] = torch.stack(
            [_take(entries, p, f"inv_root_{b}_{k}", (dim, dim), "eye", factor_dtype) for p, b in numbers]
        )
        if all(f"eigvecs_{b}_{k}" in entries[p] for p, b in numbers):
            state[f"{side}_basis"] = torch.stack([entries[p][f"eigvecs_{b}_{k}"] for p, b in numbers])
    for old, new in (("grad_ema_", "grad_ema"), ("graft_accumulator_", "graft_acc"), ("momentum_buffer_", "momentum_buffer")):
        if _uses(group, new):
            state[new] = torch.stack([_take(entries, p, f"{old}{b}", bucket.block, dtype=param_dtype) for p, b in numbers])
    consecutive = [max(int(entries[p].get(f"consecutive_failures_{b}_{k}", 0)) for k in range(bucket.order)) for p, b in numbers]
    state["consecutive_failures"] = torch.tensor(consecutive, dtype=torch.float32)
    firsts = {p: i for i, (p, _) in reversed(list(enumerate(numbers)))}
    failures = [float(entries[p].get("root_failures", 0)) if firsts[p] == i else 0.0 for i, (p, _) in enumerate(numbers)]
    state["root_failures"] = torch.tensor(failures)
    state["refreshes"] = tuple(int(entries[p].get("roots_computed", 0)) for p, _ in numbers)
    return state


def _diagonal_state(bucket, entries, group, params) -> dict[str, Any]:
    shapes = [tuple(p.shape) for p in params]
    dtype = params[0].dtype
    state = {}
    for old, new in (("grad_ema_", "grad_ema"), ("graft_accumulator_", "graft_acc"), ("momentum_buffer_", "momentum_buffer")):
        if _uses(group, new):
            pieces = [_take(entries, p, f"{old}0", matrix_shape(shapes[p]), dtype=dtype).reshape(-1) for p in bucket.params]
            state[new] = torch.cat(pieces)
    return state


def _uses(group, key: str) -> bool:
    if key == "grad_ema":
        return group["betas"][0] > 0
    if key == "graft_acc":
        return group["grafting"] in ("adagrad", "rmsprop", "adam")
    return group["momentum"] > 0
