"""Optimizers, the name -> constructor registry, and sharded checkpoints (uses only basinlab.atomic)."""

from basinlab.optim.registry import (
    available_optimizers,
    build_optimizer,
    check_optimizer_options,
    optimizer_options,
    register_optimizer,
)
from basinlab.optim.checkpoint import load_sharded_state, save_sharded_state
from basinlab.optim.shampoo import Shampoo
from basinlab.optim.sparsity import SparsityPreconditioned

register_optimizer("shampoo", Shampoo)
register_optimizer("sparsity", SparsityPreconditioned)

__all__ = [
    "available_optimizers",
    "build_optimizer",
    "check_optimizer_options",
    "load_sharded_state",
    "optimizer_options",
    "register_optimizer",
    "save_sharded_state",
    "Shampoo",
    "SparsityPreconditioned",
]
