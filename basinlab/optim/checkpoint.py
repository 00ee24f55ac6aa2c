"""Save and resume optimizer state, a distributed optimizer's sharded state at any world size.

Distributed, each rank's ``state_dict()`` holds only the buckets it owns, and the usual
"rank 0 saves the optimizer" convention would lose the others. Here every rank writes its
own shard (atomically) and loading merges all shards, so each rank picks the buckets it
owns under the *current* world size: resuming on 1, 2 or 8 ranks continues the same run.
The shards are small next to the model (only the optimizer's own buckets), so each rank
reads all of them rather than coordinating through torch.distributed.checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from basinlab.atomic import atomic_write

_SHARD = re.compile(r"shampoo-shard-(\d+)-of-(\d+)\.pt")
PLAIN_STATE = "optimizer.pt"  # the state of an optimizer that keeps all of it on every rank


def shard_name(rank: int, world_size: int) -> str:
    return f"shampoo-shard-{rank:05d}-of-{world_size:05d}.pt"


def save_sharded_state(optimizer: torch.optim.Optimizer, directory: str | Path) -> Path:
    """Write this rank's shard of the optimizer state into ``directory`` (call on every rank)."""
    state_dict = optimizer.state_dict()
    sharding = getattr(optimizer, "sharding", lambda: None)() or {"rank": 0, "world_size": 1}
    path = Path(directory) / shard_name(sharding["rank"], sharding["world_size"])
    return atomic_write(path, lambda f: torch.save(state_dict, f))


def load_sharded_state(optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
    """Load the shards in ``directory`` into ``optimizer``, re-sharding to the current world size."""
    directory = Path(directory)
    shards = {}
    for path in sorted(directory.glob("shampoo-shard-*-of-*.pt")):
        match = _SHARD.fullmatch(path.name)
        if match:
            shards[path] = (int(match[1]), int(match[2]))
    if not shards:
        raise FileNotFoundError(f"no optimizer shards (shampoo-shard-*-of-*.pt) in {directory}; save with save_sharded_state")
    world_sizes = {world for _, world in shards.values()}
    if len(world_sizes) != 1:
        raise ValueError(
            f"{directory} mixes shards of runs with world sizes {sorted(world_sizes)}; keep one run's shards per folder"
        )
    world_size = world_sizes.pop()
    missing = sorted(set(range(world_size)) - {rank for rank, _ in shards.values()})
    if missing:
        raise ValueError(f"{directory} lacks the shards of ranks {missing} (of {world_size}); copy every rank's file")
    merged: dict = {"state": {}}
    for path in shards:
        shard = torch.load(path, map_location="cpu", weights_only=True)
        merged.setdefault("param_groups", shard["param_groups"])
        for key, values in shard["state"].items():
            merged["state"].setdefault(key, {}).update(values)
    optimizer.load_state_dict(merged)


# ---------------------------------------------------------------------- optimizers in general


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer inside Accelerate's / DeepSpeed's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def shards_state(optimizer: Any) -> bool:
    """Whether ``optimizer`` may keep different state on different ranks, so that every rank must
    save its own: it says so by having ``sharding()``, as every optimizer on the bucket machinery
    (Shampoo, SOAP, Muon) does."""
    return callable(getattr(unwrap_optimizer(optimizer), "sharding", None))


def state_shards(optimizer: Any) -> int:
    """Over how many ranks ``optimizer`` splits its state now (1: every rank holds all of it)."""
    inner = unwrap_optimizer(optimizer)
    sharding = inner.sharding() if shards_state(inner) else None
    return sharding["world_size"] if sharding else 1


def save_optimizer_state(optimizer: Any, directory: str | Path, main_process: bool) -> None:
    """Every rank calls this: a sharding optimizer's ranks each write their shard, any other
    optimizer's state is written once, by the main process."""
    inner = unwrap_optimizer(optimizer)
    if shards_state(inner):
        save_sharded_state(inner, directory)
    elif main_process:
        atomic_write(Path(directory) / PLAIN_STATE, lambda f: torch.save(inner.state_dict(), f))


def load_optimizer_state(optimizer: Any, directory: str | Path) -> None:
    """What save_optimizer_state wrote, into ``optimizer`` (sharded state re-sharded to this world size)."""
    inner = unwrap_optimizer(optimizer)
    if shards_state(inner):
        load_sharded_state(inner, directory)
    else:
        inner.load_state_dict(torch.load(Path(directory) / PLAIN_STATE, map_location="cpu", weights_only=True))
