"""Optimizers and the name -> constructor registry. Imports nothing else from basinlab."""

from basinlab.optim.registry import (
    available_optimizers,
    build_optimizer,
    check_optimizer_options,
    optimizer_options,
    register_optimizer,
)

__all__ = [
    "available_optimizers",
    "build_optimizer",
    "check_optimizer_options",
    "optimizer_options",
    "register_optimizer",
]
