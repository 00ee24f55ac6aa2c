"""Per-row coefficients of a group's buckets: masks, decays and bias corrections, in a few ops.

Every elementwise update of a bucketed optimizer needs, per block (a bucket row) or per
element (a diagonal bucket), whether its gradient is usable this step and its step count.
A masked row must keep its state bitwise: its decays become 1 and its weights 0. Built
per bucket these would cost several ops each; built once for all of a group's units as
one [rows, columns] table and split, they cost the same handful whatever the number of
buckets. The table is computed in float64 (as torch.optim's host-side math) and cast.

Columns, in the order the caller lists them:
- ``keep``: ``value`` where the row is usable, else 1 (decays: beta2, momentum, ...);
- ``gate``: ``value`` where usable, else 0 (weights: 1 - beta1, the usable mask itself);
- ``corrections``: ``1 - base^t`` with t >= 1 the row's applied steps (bias corrections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from basinlab.optim.layout import Bucket


@dataclass(frozen=True)
class UnitCoefficients:
    usable: torch.Tensor  # bool, [B, 1, 1] or [N]
    columns: tuple[torch.Tensor, ...]  # in the parameters' dtype
    factor_columns: tuple[torch.Tensor, ...]  # the columns asked for in the factor dtype


class CoefficientTable:
    """Builds UnitCoefficients for a group's units; caches its index and constant tensors."""

    def __init__(self):
        self._cache: dict = {}

    def build(
        self,
        plan,
        step,
        units: Sequence,
        *,
        keep: Sequence[float],
        gate: Sequence[float],
        corrections: Sequence[float],
        dtype: torch.dtype,
        factor_dtype: torch.dtype,
        factor_columns: Sequence[int] = (),
    ) -> list[UnitCoefficients]:
        device = step.ok.device
        key = (tuple(keep), tuple(gate), tuple(corrections), device)
        if key not in self._cache:
            on = torch.tensor([*keep, *gate], dtype=torch.float64)
            off = torch.tensor([1.0] * len(keep) + [0.0] * len(gate), dtype=torch.float64)
            bases = torch.tensor(list(corrections), dtype=torch.float64)
            self._cache[key] = tuple(t.to(device) for t in (on, off, bases))
        on, off, bases = self._cache[key]
        index_key = ("rows", tuple(u.key for u in units), device)
        if index_key not in self._cache:
            self._cache[index_key] = torch.cat([plan.rows(u, device) for u in units])
        rows = self._cache[index_key]
        ok = step.ok[rows]
        t = step.steps[rows].clamp_min(1.0)
        exact = torch.cat([torch.where(ok.unsqueeze(1), on, off), 1 - torch.pow(bases, t.unsqueeze(1))], dim=1)
        width = exact.shape[1]
        sizes = [u.size if isinstance(u, Bucket) else u.numel for u in units]
        tables = exact.to(dtype).split(sizes)
        extra = None
        if factor_columns and factor_dtype != dtype:
            extra = exact[:, list(factor_columns)].to(factor_dtype).split(sizes)
        out = []
        for i, (unit, unit_ok, table) in enumerate(zip(units, ok.split(sizes), tables)):
            if not isinstance(unit, Bucket):
                out.append(UnitCoefficients(unit_ok, table.unbind(1), ()))
                continue
            columns = table.view(unit.size, width, 1, 1).unbind(1)
            if extra is None:
                chosen = tuple(columns[c] for c in factor_columns)
            else:
                chosen = extra[i].view(unit.size, len(factor_columns), 1, 1).unbind(1)
            out.append(UnitCoefficients(unit_ok.view(-1, 1, 1), columns, chosen))
        return out

    def masked(self, grads: Sequence[torch.Tensor], coefficients: Sequence[UnitCoefficients]) -> list[torch.Tensor]:
        """The gradients with unusable rows (non-finite, absent) set to 0."""
        zero = self.zero(grads[0])
        return [torch.where(c.usable, g, zero) for g, c in zip(grads, coefficients)]

    def zero(self, like: torch.Tensor) -> torch.Tensor:
        """A cached 0-d zero (``torch.where(mask, x, 0.0)`` would build one every call)."""
        key = ("zero", like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = torch.zeros((), dtype=like.dtype, device=like.device)
        return self._cache[key]
