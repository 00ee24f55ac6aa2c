"""Parameters -> blocks -> buckets: the layout every matrix optimizer here computes on.

A *block* is a 2-D piece of a parameter's matrix view (size-1 dims dropped, a conv kernel
viewed as [out, in*kh*kw], a short vector as an [n, 1] column) with at most ``max_dim``
rows and columns. A *bucket* stacks blocks of one shape from one parameter group, so
each statistic, root and direction is one batched op over [B, h, w] / [B, h, h] tensors
instead of B small ones. Parameters that take a purely elementwise (diagonal) update —
scalars, and vectors longer than ``max_vector_dim`` — form one flat *diagonal bucket* per
group.

Two options serve optimizers other than Shampoo. ``one_sided_dim``: a matrix dim longer
than this carries no factor and is not blocked (SOAP leaves an embedding's vocabulary
dim unrotated); a matrix with both dims that long is elementwise. ``elementwise``: every
matrix of the group is elementwise (Muon's AdamW groups). An elementwise matrix is one
[numel, 1] column block with no factored side, so it still travels in buckets (per-block
coefficients, not per-element ones as in the diagonal bucket).

Buckets are formed from the parameter groups' shapes alone, never from the world size:
a bucket's arithmetic (whose bits depend on its batch composition in BLAS and LAPACK)
is then the same on 1 rank or 64, and buckets are also the unit of ownership when the
work is distributed. So that ownership can balance, a bucket holds at most
``1 / BUCKET_SHARE`` of its group's root cost (or one block-row, if that is more).

Within a parameter, equal-shape blocks form a *tile*: a rectangle of R x C blocks that
is gathered into (and scattered back from) a bucket by views, with a copy only when the
tile has several block-rows and several block-columns.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

BUCKET_SHARE = 8  # a bucket holds at most 1/8 of its group's root cost: ownership balances over ~8 ranks


def matrix_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The order-0, 1 or 2 shape a parameter of ``shape`` is preconditioned as."""
    dims = [d for d in shape if d != 1]
    if len(dims) <= 1:
        return tuple(dims)
    return (dims[0], math.prod(dims[1:]))


def block_cost(block: tuple[int, int], sides: tuple[bool, bool]) -> int:
    """Relative cost of one block: its inverse roots grow like dim^3, its elementwise work like its size."""
    return sum(d**3 for d, factored in zip(block, sides) if factored) + block[0] * block[1]


@dataclass(frozen=True)
class Tile:
    """R x C equal blocks of one parameter's matrix view, rows [r0, r1) and columns [c0, c1)."""

    param: int  # index of the parameter in its group
    rows: tuple[int, int]
    cols: tuple[int, int]
    block: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return (self.rows[1] - self.rows[0]) // self.block[0], (self.cols[1] - self.cols[0]) // self.block[1]

    @property
    def count(self) -> int:
        r, c = self.grid
        return r * c

    def block_rows(self) -> list["Tile"]:
        """This tile cut into one tile per block-row (to split a tile between buckets)."""
        h = self.block[0]
        return [Tile(self.param, (r, r + h), self.cols, self.block) for r in range(self.rows[0], self.rows[1], h)]


@dataclass(frozen=True)
class Bucket:
    """Blocks of one shape from one group, stacked in tile order (row-major inside a tile)."""

    key: str
    group: int
    block: tuple[int, int]
    sides: tuple[bool, bool]  # which of the block's dims carry a Kronecker factor
    tiles: tuple[Tile, ...]
    column: bool = False  # blocks are [n, 1] columns of the flattened parameter (vectors, elementwise matrices)

    @property
    def size(self) -> int:
        return sum(t.count for t in self.tiles)

    @property
    def numel(self) -> int:
        return self.size * self.block[0] * self.block[1]

    @property
    def cost(self) -> int:
        return self.size * block_cost(self.block, self.sides)

    @property
    def order(self) -> int:
        """Number of factored dims (the default inverse root is 2 * order)."""
        return sum(self.sides)

    @functools.cached_property
    def row_params(self) -> tuple[int, ...]:
        """The group-parameter index of every stacked block (computed once: read on every step)."""
        return tuple(t.param for t in self.tiles for _ in range(t.count))


@dataclass(frozen=True)
class DiagonalBucket:
    """A group's elementwise-only parameters, concatenated into one flat vector."""

    key: str
    group: int
    params: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    @property
    def cost(self) -> int:
        return self.numel


@dataclass(frozen=True)
class GroupLayout:
    buckets: tuple[Bucket, ...]
    diagonal: DiagonalBucket | None
    shapes: tuple[tuple[int, ...], ...]  # every parameter's shape, for views and checks

    @property
    def units(self) -> tuple[Bucket | DiagonalBucket, ...]:
        return self.buckets + ((self.diagonal,) if self.diagonal is not None else ())


def _chunks(n: int, max_dim: int) -> list[tuple[int, int]]:
    return [(start, min(start + max_dim, n)) for start in range(0, n, max_dim)]


def _tiles(param: int, matrix: tuple[int, int], max_dim: int, sides: tuple[bool, bool]) -> list[Tile]:
    """A matrix's blocks as at most four tiles: full rows x full columns, and the remainders
    (a dim without a factor is not cut)."""
    tiles = []
    row_runs, col_runs = (_runs(n, max_dim) if factored else [(0, n, n)] for n, factored in zip(matrix, sides))
    for r0, r1, h in row_runs:
        for c0, c1, w in col_runs:
            tiles.append(Tile(param, (r0, r1), (c0, c1), (h, w)))
    return tiles


def _runs(n: int, max_dim: int) -> list[tuple[int, int, int]]:
    """[start, end, chunk size] of the full-size chunks of a dim, then of its remainder."""
    full = (n // max_dim) * max_dim
    runs = [(0, full, max_dim)] if full else []
    if n > full:
        runs.append((full, n, n - full))
    return runs


def _placement(matrix: tuple[int, ...], max_vector_dim: int, one_sided_dim: int | None, elementwise: bool):
    """(matrix view, factored sides, column view) of a parameter's blocks; None for the diagonal bucket."""
    if not matrix or (len(matrix) == 1 and matrix[0] > max_vector_dim):
        return None
    if len(matrix) == 1:
        return (matrix[0], 1), (True, False), True
    sides = tuple(one_sided_dim is None or d <= one_sided_dim for d in matrix)
    if elementwise or not any(sides):
        return (math.prod(matrix), 1), (False, False), True
    return matrix, sides, False


def group_layout(
    group: int,
    shapes: Sequence[tuple[int, ...]],
    max_dim: int,
    max_vector_dim: int,
    one_sided_dim: int | None = None,
    elementwise: bool = False,
) -> GroupLayout:
    """Cut a group's parameters into tiles and pack equal-shape blocks into buckets (see module docstring)."""
    by_shape: dict[tuple, list[Tile]] = {}
    diagonal: list[int] = []
    for index, shape in enumerate(shapes):
        placement = _placement(matrix_shape(shape), max_vector_dim, one_sided_dim, elementwise)
        if placement is None:
            diagonal.append(index)
            continue
        view, sides, column = placement
        for tile in _tiles(index, view, max_dim, sides):
            by_shape.setdefault((tile.block, sides, column), []).append(tile)
    total = sum(t.count * block_cost(key[0], key[1]) for key, tiles in by_shape.items() for t in tiles)
    buckets: list[Bucket] = []
    for (block, sides, column), tiles in by_shape.items():
        cost = block_cost(block, sides)
        cap = max(cost, total // BUCKET_SHARE)
        current: list[Tile] = []
        for tile in tiles:
            pieces = [tile] if tile.count * cost <= cap else tile.block_rows()
            for piece in pieces:
                if current and (sum(t.count for t in current) + piece.count) * cost > cap:
                    buckets.append(Bucket(f"bucket.{group}.{len(buckets)}", group, block, sides, tuple(current), column))
                    current = []
                current.append(piece)
        buckets.append(Bucket(f"bucket.{group}.{len(buckets)}", group, block, sides, tuple(current), column))
    diag = None
    if diagonal:
        sizes = tuple(max(1, math.prod(shapes[i])) for i in diagonal)
        diag = DiagonalBucket(f"diagonal.{group}", group, tuple(diagonal), sizes)
    return GroupLayout(tuple(buckets), diag, tuple(tuple(s) for s in shapes))


# ----------------------------------------------------------------------------- gather / scatter


def _matrix_view(tensor: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """``tensor`` (a parameter or its gradient) as the 2-D matrix its blocks are cut from."""
    if bucket.column:
        return tensor.view(-1, 1)
    if tensor.dim() == 2:
        return tensor
    return tensor.view(matrix_shape(tensor.shape))


def _tile_region(matrix: torch.Tensor, tile: Tile) -> torch.Tensor:
    rows, cols = matrix.shape
    if tile.rows != (0, rows):
        matrix = matrix[tile.rows[0] : tile.rows[1]]
    if tile.cols != (0, cols):
        matrix = matrix[:, tile.cols[0] : tile.cols[1]]
    return matrix


def _tile_grid(region: torch.Tensor, tile: Tile) -> torch.Tensor:
    """A tile's region as [R, C, h, w] (a view)."""
    (r, c), (h, w) = tile.grid, tile.block
    return region.view(r, h, c, w).permute(0, 2, 1, 3)


def gather(bucket: Bucket, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack the blocks of ``tensors`` (indexed like the group's parameters) into [B, h, w]."""
    pieces = []
    for tile in bucket.tiles:
        region = _tile_region(_matrix_view(tensors[tile.param], bucket), tile)
        if tile.count == 1:
            pieces.append(region)
        elif tile.grid[1] == 1:
            pieces.append(region.view(tile.grid[0], *tile.block))
        else:
            pieces.append(_tile_grid(region, tile).reshape(tile.count, *tile.block))
    if all(p.dim() == 2 for p in pieces):
        return torch.stack(pieces)
    return torch.cat([p.unsqueeze(0) if p.dim() == 2 else p for p in pieces])


def scatter_pairs(bucket: Bucket, params: Sequence[torch.Tensor], stacked: torch.Tensor):
    """(parameter view, matching slice of ``stacked`` [B, h, w]) pairs, to update parameters in place."""
    if all(t.count == 1 for t in bucket.tiles):
        sources = stacked.unbind(0)
    else:
        sources, start = [], 0
        for tile in bucket.tiles:
            piece = stacked[start] if tile.count == 1 else stacked[start : start + tile.count]
            sources.append(piece if tile.count == 1 else piece.view(*tile.grid, *tile.block))
            start += tile.count
    targets = []
    for tile in bucket.tiles:
        param = params[tile.param]
        if tile.count == 1 and param.dim() == 2 and tuple(param.shape) == tile.block:
            targets.append(param)
            continue
        region = _tile_region(_matrix_view(param, bucket), tile)
        targets.append(region if tile.count == 1 else _tile_grid(region, tile))
    return targets, list(sources)


def flatten_diagonal(bucket: DiagonalBucket, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The diagonal parameters' tensors (indexed like the group's parameters) as one flat vector."""
    return torch.cat([tensors[i].reshape(-1) for i in bucket.params])


def diagonal_pairs(bucket: DiagonalBucket, params: Sequence[torch.Tensor], flat: torch.Tensor):
    """(parameter, matching piece of ``flat``) pairs for an in-place update."""
    pieces = flat.split(list(bucket.sizes))
    targets = [params[i] for i in bucket.params]
    return targets, [p.view(t.shape) if t.dim() != 1 else p for p, t in zip(pieces, targets)]


def unit_gradients(units: Sequence[Bucket | DiagonalBucket], grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each unit's gradients stacked as it computes on them: [B, h, w] for a bucket, flat for the diagonal."""
    return [gather(u, grads) if isinstance(u, Bucket) else flatten_diagonal(u, grads) for u in units]


def unit_param(unit: Bucket | DiagonalBucket, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A parameter of ``unit`` (whose dtype and device its state takes)."""
    return params[unit.tiles[0].param if isinstance(unit, Bucket) else unit.params[0]]
