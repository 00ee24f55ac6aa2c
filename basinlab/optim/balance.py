"""Greedy cost balancing: largest item first onto the least-loaded bin.

Used for two things that must depend on costs alone: which rank owns a bucket, and on
which step of a window a bucket recomputes its roots.
"""

from __future__ import annotations

import heapq
from typing import Sequence


def balance(costs: Sequence[int], bins: int, classes: Sequence[int] | None = None) -> list[int]:
    """A bin per item, by longest-processing-time-first (ties: lower index, lower bin).

    With ``classes`` (staggered roots: the step a bucket recomputes on), every class is
    balanced over the bins on its own, and ties between bins go to the one with the least
    load over all classes so far, which keeps the total balanced too.
    """
    classes = list(classes) if classes is not None else [0] * len(costs)
    totals = [0] * bins
    assignment = [0] * len(costs)
    for cls in sorted(set(classes)):
        heap = [(0, totals[b], b) for b in range(bins)]
        heapq.heapify(heap)
        members = sorted((i for i in range(len(costs)) if classes[i] == cls), key=lambda i: (-costs[i], i))
        for index in members:
            load, _, b = heapq.heappop(heap)
            assignment[index] = b
            totals[b] += costs[index]
            heapq.heappush(heap, (load + costs[index], totals[b], b))
    return assignment
