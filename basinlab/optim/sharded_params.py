"""Parameters sharded by FSDP2 (``fully_shard``: DTensors split on dim 0): the preconditioner
works on the whole matrix, the update on this rank's rows.

Each step the gradient of a sharded parameter is gathered whole (``full_tensor``), so every
rank sees exactly what a DDP or single-process run sees; the bucket owners compute the
directions as in the DDP path, and each rank applies the rows of its own shard. The
arithmetic on every element is the single-process one, so a run equals it bitwise when the
gradients do. Layouts whose local pieces are not whole rows of the global matrix (tensor or
sequence parallelism) are refused.
"""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # a torch build without distributed
    DTensor = None


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def check_layout(params: list[torch.Tensor], optimizer: str) -> None:
    """Only replication and dim-0 sharding (FSDP2, HSDP) keep a shard's rows whole."""
    for p in params:
        if not is_sharded(p):
            continue
        if not all(isinstance(x, Replicate) or (isinstance(x, Shard) and x.dim == 0) for x in p.placements):
            raise ValueError(
                f"{optimizer}: a parameter of shape {tuple(p.shape)} is a DTensor placed {p.placements}; only FSDP2's "
                "dim-0 sharding (fully_shard) and replication are supported, so precondition without tensor or "
                "sequence parallelism"
            )


def full_gradient(grad: torch.Tensor) -> torch.Tensor:
    """The whole gradient (a collective for a sharded one: every rank calls it in the same order)."""
    return grad.full_tensor() if is_sharded(grad) else grad


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank stores (its shard), updated in place by the step."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def local_region(param: torch.Tensor) -> tuple[slice, ...]:
    """Where this rank's shard of ``param`` sits in the whole tensor."""
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, shape))
