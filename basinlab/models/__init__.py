"""Models built from configs with seeded, optimizer-independent initialization."""

from basinlab.models.mlp import MLP

__all__ = ["MLP"]
