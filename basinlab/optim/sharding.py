"""Which rank owns which Shampoo block, and where each block's direction travels.

Distributed Shampoo splits its work by block: the owner of a block keeps that block's
optimizer state, computes its search direction, and one all-gather per step hands every
rank all directions. Ownership comes from greedy cost balancing (largest block first to
the least-loaded rank), a deterministic function of the parameter shapes, so every rank
derives the same assignment without communicating.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass


def block_cost(shape: tuple[int, ...], dims: tuple[int, ...]) -> int:
    """Relative cost of one block: its inverse roots grow like dim^3, its elementwise work like its size."""
    return sum(d**3 for d in dims) + math.prod(shape)


def assign_owners(costs: list[int], world_size: int) -> list[int]:
    """Owner rank per item: longest-processing-time-first bin packing (ties: lower index, lower rank)."""
    loads = [(0, rank) for rank in range(world_size)]
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        owners[index] = rank
        heapq.heappush(loads, (load + costs[index], rank))
    return owners


@dataclass(frozen=True)
class ShardLayout:
    """Where each block's direction lies in the all-gathered buffer.

    Rank r's segment holds the directions of the blocks it owns, in block order, then
    one flag per owned block (1 = the owner computed this block's direction this step).
    Segments are padded to the longest so the gather is one ``all_gather_single``.
    """

    owners: tuple[int, ...]
    offsets: tuple[int, ...]  # start of each block's direction inside its owner's segment
    flag_offsets: tuple[int, ...]  # position of each block's flag inside its owner's segment
    segment_size: int

    @classmethod
    def build(cls, shapes: list[tuple[int, ...]], costs: list[int], world_size: int) -> "ShardLayout":
        owners = assign_owners(costs, world_size)
        offsets, flag_offsets = [0] * len(shapes), [0] * len(shapes)
        sizes = []
        for rank in range(world_size):
            mine = [i for i, owner in enumerate(owners) if owner == rank]
            position = 0
            for i in mine:
                offsets[i] = position
                position += math.prod(shapes[i])
            for i in mine:
                flag_offsets[i] = position
                position += 1
            sizes.append(position)
        return cls(tuple(owners), tuple(offsets), tuple(flag_offsets), max(sizes, default=0))

    def position(self, block: int) -> int:
        """Start of a block's direction in the gathered buffer."""
        return self.owners[block] * self.segment_size + self.offsets[block]

    def flag_position(self, block: int) -> int:
        return self.owners[block] * self.segment_size + self.flag_offsets[block]

    def loads(self, costs: list[int], world_size: int) -> list[int]:
        """Summed block cost per rank (for load-balance reports)."""
        totals = [0] * world_size
        for owner, cost in zip(self.owners, costs):
            totals[owner] += cost
        return totals
