"""Optimizers, the name -> constructor registry, and sharded checkpoints (uses only basinlab.atomic)."""

from basinlab.optim.registry import (
    available_optimizers,
    build_optimizer,
    check_optimizer_options,
    optimizer_options,
    register_optimizer,
)
from basinlab.optim.checkpoint import load_sharded_state, save_sharded_state
from basinlab.optim.muon import Muon
from basinlab.optim.param_rules import adamw_parameter_names, muon_param_groups
from basinlab.optim.shampoo import Shampoo
from basinlab.optim.soap import SOAP
from basinlab.optim.sparsity import SparsityPreconditioned

register_optimizer("shampoo", Shampoo)
register_optimizer("muon", Muon, param_groups=muon_param_groups)
register_optimizer("soap", SOAP)
register_optimizer("sparsity", SparsityPreconditioned)

__all__ = [
    "adamw_parameter_names",
    "available_optimizers",
    "build_optimizer",
    "check_optimizer_options",
    "load_sharded_state",
    "Muon",
    "muon_param_groups",
    "optimizer_options",
    "register_optimizer",
    "save_sharded_state",
    "Shampoo",
    "SOAP",
    "SparsityPreconditioned",
]
