"""One registry from optimizer names to constructors, so a run config can name any optimizer.

The recipes only ever call ``build_optimizer``; a new optimizer (Shampoo, the sparsity
preconditioner) becomes usable everywhere by one ``register_optimizer`` call, and its
keyword options are checked against its constructor before any training starts.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

OptimizerFactory = Callable[..., torch.optim.Optimizer]

_REGISTRY: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str, factory: OptimizerFactory) -> None:
    """Make ``factory(params, **kwargs)`` available as ``name`` (lower-case, unique)."""
    key = name.lower()
    if key in _REGISTRY and _REGISTRY[key] is not factory:
        raise ValueError(f"optimizer name {name!r} is already registered to {_REGISTRY[key]!r}")
    _REGISTRY[key] = factory


def available_optimizers() -> list[str]:
    return sorted(_REGISTRY)


def optimizer_factory(name: str) -> OptimizerFactory:
    """The constructor registered as ``name`` (e.g. for HF's ``optimizer_cls_and_kwargs``)."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; available: {', '.join(available_optimizers())}"
        ) from None


def optimizer_options(name: str) -> list[str]:
    """The keyword options ``name`` accepts (everything after the parameters)."""
    parameters = list(inspect.signature(optimizer_factory(name)).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_optimizer_options(name: str, options: Iterable[str]) -> None:
    """Raise ValueError naming the first option ``name`` does not accept."""
    valid = optimizer_options(name)
    for option in options:
        if option not in valid:
            raise ValueError(
                f"optimizer {name!r} has no option {option!r}; valid options: {', '.join(valid)}"
            )


def build_optimizer(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Construct the optimizer registered as ``name`` over ``params`` with ``kwargs``."""
    check_optimizer_options(name, kwargs)
    return optimizer_factory(name)(params, **kwargs)


register_optimizer("sgd", torch.optim.SGD)
register_optimizer("adamw", torch.optim.AdamW)
