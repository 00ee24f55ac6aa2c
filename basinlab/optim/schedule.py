"""When each bucket recomputes its preconditioner (its inverse roots, or SOAP's eigenbasis).

Every bucket recomputes at ``start`` and then once every ``frequency`` steps. Unstaggered
(the default), all buckets recompute on the same steps, start + k f: that one step pays
for every root. Staggered, bucket b recomputes at start and then at start + o_b + k f with
an offset o_b in [1, f] chosen so that the root cost falls evenly on the f steps of a
window (largest bucket first to the cheapest step). Each bucket still recomputes exactly
once in every window [start + 1 + k f, start + (k + 1) f]. The offsets come from the
layout alone (not the world size), so staggering changes no result between world sizes.
"""

from __future__ import annotations

from basinlab.optim.balance import balance


def stagger_offsets(costs: list[int], frequency: int) -> list[int]:
    """An offset in [1, frequency] per bucket that evens out the root cost per step."""
    return [slot + 1 for slot in balance(costs, frequency)]


def is_due(step: int, start: int, frequency: int, offset: int) -> bool:
    """Whether a bucket whose blocks have taken ``step`` steps (1-based) recomputes now."""
    if step < start:
        return False
    return step == start or (step - start - offset) % frequency == 0
