"""Splitting the optimizer's work over data-parallel ranks, ZeRO-1 style, by bucket.

Every bucket (see layout.py) has one owner rank that keeps all its state and computes its
search directions; one all-gather per step hands every rank every direction, so the
parameters stay identical across ranks while each rank holds and computes about 1/world
of the optimizer. Owners come from greedy cost balancing of the buckets, derived from the
layout alone, so ranks agree without communicating, and since a bucket is the same at any
world size, with float32 communication the result is bitwise that of one process.

This module knows buckets (as sizes and costs) and directions, not which optimizer it
serves. Gradients must already be averaged across ranks (DDP, Accelerate, DeepSpeed
stage 0 and the HF Trainer do that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from basinlab.optim.balance import balance

COMMUNICATION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Comm:
    group: Any  # a torch.distributed ProcessGroup (None = the default group)
    rank: int
    world_size: int


def resolve_comm(distributed: bool | None, process_group: Any, group_size: int | None, name: str) -> Comm | None:
    """Decide, once, whether and over which ranks the work is split (None: not distributed)."""
    initialized = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not initialized):
        return None
    if not initialized:
        raise RuntimeError(
            f"{name}(distributed=True) needs torch.distributed initialized before its first step "
            "(accelerate launch / torchrun do it); or pass distributed=None to decide automatically"
        )
    group = process_group
    if group_size is not None:
        world = dist.get_world_size()
        if world % group_size:
            raise ValueError(
                f"{name}: distributed_group_size={group_size} does not divide the world size {world}; "
                f"pick a divisor of {world}"
            )
        group, _ = dist.new_subgroups(group_size)
    world_size = dist.get_world_size(group)
    if world_size == 1 and distributed is None:
        return None
    return Comm(group, dist.get_rank(group), world_size)


@dataclass(frozen=True)
class Distribution:
    """Who owns each unit (bucket), and where its directions lie in the gathered buffer.

    Rank r's segment holds the directions of the units it owns, in unit order; segments
    are padded to the longest so the exchange is one ``all_gather_single``.
    """

    comm: Comm
    owners: tuple[int, ...]
    offsets: tuple[int, ...]  # start of each unit's directions inside its owner's segment
    segment_size: int

    @classmethod
    def build(cls, comm: Comm, sizes: Sequence[int], costs: Sequence[int], classes=None) -> "Distribution":
        owners = balance(costs, comm.world_size, classes)
        offsets, filled = [0] * len(sizes), [0] * comm.world_size
        for unit, owner in enumerate(owners):
            offsets[unit] = filled[owner]
            filled[owner] += sizes[unit]
        return cls(comm, tuple(owners), tuple(offsets), max(filled, default=0))

    def owns(self, unit: int) -> bool:
        return self.owners[unit] == self.comm.rank

    def position(self, unit: int) -> int:
        """Start of a unit's directions in the gathered buffer."""
        return self.owners[unit] * self.segment_size + self.offsets[unit]

    def exchange(self, send: torch.Tensor) -> torch.Tensor:
        """All ranks' segments, concatenated in rank order."""
        gathered = send.new_empty(self.segment_size * self.comm.world_size)
        dist.all_gather_single(gathered, send, group=self.comm.group)
        return gathered

    def loads(self, costs: Sequence[int]) -> list[int]:
        """Summed unit cost per rank (for load-balance reports)."""
        totals = [0] * self.comm.world_size
        for owner, cost in zip(self.owners, costs):
            totals[owner] += cost
        return totals
