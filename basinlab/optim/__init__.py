"""Optimizers and the name -> constructor registry. Imports nothing else from basinlab."""

from basinlab.optim.registry import (
    available_optimizers,
    build_optimizer,
    check_optimizer_options,
    optimizer_options,
    register_optimizer,
)
from basinlab.optim.shampoo import Shampoo

register_optimizer("shampoo", Shampoo)

__all__ = [
    "available_optimizers",
    "build_optimizer",
    "check_optimizer_options",
    "optimizer_options",
    "register_optimizer",
    "Shampoo",
]
