"""Where a domain's training data stands, as one number that does not depend on the world size.

A cached domain is read in a seeded order of its packed sequences, epoch after epoch; the
training run consumes that order position by position: global batch ``g`` (of ``batch_size``
sequences per rank) holds positions ``[g·B·W, (g+1)·B·W)``, rank ``r`` the ``r``-th slice of
``B``. A checkpoint records how many positions the domain has consumed, so a resumed run, at
the same world size or another one, continues with the next unseen sequence; masks are drawn
per position (``basinlab.data.mlm.PositionMaskingCollator``), so they follow the data.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch


class DomainOrder:
    """Position -> sequence index: a fresh seeded permutation of the ``size`` sequences per epoch
    (4 bytes per sequence, one epoch held at a time), or the file order when not ``shuffle``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._epoch, self._permutation = -1, np.empty(0, dtype=np.int64)

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            dtype = np.int32 if self.size < 2**31 else np.int64
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size).astype(dtype)
            self._epoch = epoch
        return int(self._permutation[offset])


class RankBatches(torch.utils.data.Sampler):
    """This rank's batches of (position, sequence index) for ``batches`` global batches from ``start``."""

    def __init__(self, order: DomainOrder, batch_size: int, rank: int, world_size: int, start: int, batches: int):
        self.order, self.batch_size = order, batch_size
        self.rank, self.world_size = rank, world_size
        self.start, self.batches = start, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_step = self.batch_size * self.world_size
        for g in range(self.batches):
            first = self.start + g * per_step + self.rank * self.batch_size
            yield [(p, self.order[p]) for p in range(first, first + self.batch_size)]


class PositionedSequences(torch.utils.data.Dataset):
    """Packed sequences read by (position, index) pairs, each row tagged with its position."""

    def __init__(self, sequences: Any):
        self.sequences = sequences.with_format("numpy")

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, Any]]:
        rows = self.sequences[[index for _, index in keys]]["input_ids"]  # one Arrow read per batch
        return [{"input_ids": torch.from_numpy(np.asarray(row, dtype=np.int64)), "position": p} for row, (p, _) in zip(rows, keys)]
