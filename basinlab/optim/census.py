"""Count what an optimizer step costs in structure, not time: dispatched aten ops and host reads.

On an accelerator every dispatched op is a kernel launch (CPU time per step) and every
read of a tensor's value on the host (``item``, ``tolist``, ``bool(t)``, ``float(t)``,
``int(t)``) is a device synchronisation. Both are deterministic, so unlike timings they
can be measured on a CPU and asserted in tests:

    with StepCensus() as census:
        optimizer.step()
    census.ops, census.reads, census.by_op.most_common(10)
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


class _OpCounter(TorchDispatchMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class StepCensus:
    """A context manager counting aten ops (``ops``, ``by_op``) and host reads (``reads``) inside it."""

    def __init__(self):
        self.by_op: collections.Counter = collections.Counter()
        self.reads = 0
        self._mode = _OpCounter(self.by_op)
        self._saved: dict = {}

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self) -> "StepCensus":
        for name in _READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor, *args, _original=original, **kwargs):
                self.reads += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()
