"""Models built from configs with seeded, optimizer-independent initialization."""

from basinlab.models.mlp import MLP
from basinlab.models.powerprop import PowerpropLinear, effective_weights

__all__ = ["MLP", "PowerpropLinear", "effective_weights"]
