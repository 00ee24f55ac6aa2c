"""State dicts of the bucketed optimizers: per bucket inside, per parameter outside.

The optimizer keeps state per bucket (a stack of blocks), but torch.distributed.checkpoint,
Accelerate and the HF Trainer expect ``state`` keyed by parameter. So ``state_dict`` files each
bucket's entries under the index of its first parameter (``"<bucket>:<name>"``), every
parameter present; ``load_state_dict`` takes that, any outer keys DCP passes (parameter
names), or the bucket-keyed layout of older checkpoints. Distributed, a rank holds only its
buckets: every key lives on exactly one rank, or is the same on all, so DCP keeps them all.
"""

from __future__ import annotations

from typing import Any

import torch

from basinlab.optim.layout import Bucket, DiagonalBucket


class BucketStateDicts:
    """Mixed into BucketedOptimizer (before torch.optim.Optimizer); uses its plan and name."""

    def state_dict(self) -> dict[str, Any]:
        """As torch's, each unit's state filed under the index of its first parameter (as
        ``"<unit>:<name>"``), so torch.distributed.checkpoint and the frameworks built on it map it
        to parameter names like any optimizer's (every parameter has an entry, most of them empty).
        Distributed, it holds this rank's buckets only:
        every key lives on exactly one rank (or is the same on all), so DCP keeps all of them."""
        state_dict = super().state_dict()
        anchors = self._anchors()
        nested: dict[int, dict[str, Any]] = {i: {} for group in state_dict["param_groups"] for i in group["params"]}
        for key, values in state_dict["state"].items():
            if not isinstance(key, str):  # a per-parameter entry: a lookup made it (state is a defaultdict)
                if values:
                    raise RuntimeError(f"{self.name}: per-parameter state {sorted(values)} was added from outside; "
                                       "this optimizer keeps its state per bucket")
                continue
            entries = nested.setdefault(anchors[key], {})
            entries.update({f"{key}:{name}": value for name, value in values.items()} or {f"{key}:": None})  # kept if empty
        state_dict["state"] = nested
        return state_dict

    def _anchors(self) -> dict[str, int]:
        """The parameter index (torch's state_dict numbering) each unit's and group's state is filed under."""
        plan, anchors, first = self._plan(), {}, 0
        offsets = []
        for group in self.param_groups:
            offsets.append(first)
            first += len(group["params"])
        for g, layout in enumerate(plan.groups):
            anchors[f"group.{g}"] = offsets[g]
            for unit in layout.units:
                anchors[unit.key] = offsets[g] + (unit.tiles[0].param if isinstance(unit, Bucket) else unit.params[0])
        return anchors

    @staticmethod
    def _unnested(state: dict[Any, Any]) -> dict[str, Any]:
        """Units' state keyed by unit again, whatever the outer keys are (parameter indices, or the
        names torch.distributed.checkpoint passes); a state saved before nesting already is."""
        if not any(":" in str(name) for entries in state.values() for name in entries):
            return state
        units: dict[str, dict[str, Any]] = {}
        for entries in state.values():
            for composite, value in entries.items():
                key, _, name = str(composite).rpartition(":")
                unit = units.setdefault(key, {})
                if name:
                    unit[name] = value
        return units

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, keeping every tensor's dtype, moving it to the parameters' device, keeping only
        the buckets this rank owns, and refusing a state that lacks any of them."""
        state_dict = self._upgrade_state_dict(state_dict)
        state_dict = {**state_dict, "state": self._unnested(state_dict["state"])}
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sharding"})
        plan = self._plan()
        device = self.param_groups[0]["params"][0].device
        for key, values in list(self.state.items()):
            if isinstance(key, str):
                self.state[key] = {k: v.to(device, copy=True) if torch.is_tensor(v) else v for k, v in values.items()}
        started = {g for g in range(len(self.param_groups)) if f"group.{g}" in self.state}
        for unit in plan.units:
            if unit.group not in started:
                continue
            if plan.owns(unit) and unit.key not in self.state:
                raise ValueError(self._missing_shard_message(unit))
            if not plan.owns(unit):
                self.state.pop(unit.key, None)

    def _upgrade_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Convert a state saved by an older layout (subclasses override); the default keeps it."""
        return state_dict

    def _missing_shard_message(self, unit: Bucket | DiagonalBucket) -> str:
        return (
            f"{self.name}: the loaded optimizer state lacks {unit.key} (blocks {getattr(unit, 'block', 'diagonal')}), "
            "which this rank owns: it holds only some ranks' buckets (saved by rank 0 alone?). Save every rank's state "
            "through torch.distributed.checkpoint (dcp.save, Accelerate save_state with FSDP2 SHARDED_STATE_DICT) or "
            "basinlab.optim.save_sharded_state with load_sharded_state; both re-shard to any world size"
        )
