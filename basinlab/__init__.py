"""basinlab: a PyTorch testbed for how the optimizer shapes which solution a network finds."""

__version__ = "0.1.0"
