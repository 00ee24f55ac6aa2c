"""One registry from optimizer names to constructors, so a run config can name any optimizer.

The recipes only ever call ``build_optimizer``; a new optimizer (Shampoo, the sparsity
preconditioner) becomes usable everywhere by one ``register_optimizer`` call, and its
keyword options are checked against its constructor before any training starts.

An optimizer whose param groups depend on the model (Muon: which matrices it
orthogonalises) registers a ``param_groups(module, **options)`` function too; its options
(Muon's ``adamw_rule``) are then valid config options, and ``build_optimizer`` given
modules instead of parameters forms the groups with it, one set per module.

Installed packages add optimizers through the ``basinlab.optimizers`` entry-point group: an
entry point names a module (imported for its ``register_optimizer`` calls), a function that
takes no arguments (called, to register), or an optimizer factory taking the parameters first
(registered under the entry point's name). They are loaded lazily, each once, the first
time a name is not found (and by ``available_optimizers``).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Callable, Iterable

import torch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
GroupsFactory = Callable[..., list]

_REGISTRY: dict[str, OptimizerFactory] = {}
_GROUPS: dict[str, GroupsFactory] = {}
_NOT_GROUP_OPTIONS = ("weight_decay",)  # the optimizer's own option, also accepted by a groups function
ENTRY_POINT_GROUP = "basinlab.optimizers"
_LOADED_ENTRY_POINTS: set[tuple[str, str]] = set()  # (name, value) of every entry point already loaded


def register_optimizer(name: str, factory: OptimizerFactory, param_groups: GroupsFactory | None = None) -> None:
    """Make ``factory(params, **kwargs)`` available as ``name`` (lower-case, unique); ``param_groups``
    (module, **options) -> groups, for optimizers that need the model to form their groups."""
    key = name.lower()
    if key in _REGISTRY and _REGISTRY[key] is not factory:
        raise ValueError(f"optimizer name {name!r} is already registered to {_REGISTRY[key]!r}")
    _REGISTRY[key] = factory
    if param_groups is not None:
        _GROUPS[key] = param_groups


def load_entry_points() -> None:
    """Register what installed packages declare in the ``basinlab.optimizers`` group, each entry point
    once (a rescan finds packages added to sys.path since); a broken one raises ValueError naming it."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (entry.name, entry.value) in _LOADED_ENTRY_POINTS:
            continue
        _LOADED_ENTRY_POINTS.add((entry.name, entry.value))
        where = f"entry point {entry.name} = {entry.value} (group {ENTRY_POINT_GROUP})"
        try:
            target = entry.load()
            registrar = callable(target) and not inspect.ismodule(target) and _takes_no_arguments(target)
            if registrar:
                target()
        except Exception as err:
            raise ValueError(f"{where} failed to load ({type(err).__name__}: {err}); fix or uninstall its package") from None
        if inspect.ismodule(target) or registrar:
            continue  # importing the module, or calling the function, registered its optimizers
        if not callable(target):
            raise ValueError(f"{where} is neither a module nor a callable; fix its package")
        register_optimizer(entry.name, target)


def _takes_no_arguments(function: Callable) -> bool:
    """A registration function can be called bare; an optimizer factory needs its parameters."""
    try:
        inspect.signature(function).bind()
    except (TypeError, ValueError):  # ValueError: no signature to inspect
        return False
    return True


def available_optimizers() -> list[str]:
    load_entry_points()
    return sorted(_REGISTRY)


def optimizer_factory(name: str) -> OptimizerFactory:
    """The constructor registered as ``name`` (e.g. for HF's ``optimizer_cls_and_kwargs``)."""
    if name.lower() not in _REGISTRY:
        load_entry_points()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; available: {', '.join(available_optimizers())}"
        ) from None


def _parameters(function: Callable) -> list[inspect.Parameter]:
    """The keyword-capable parameters after the first (the parameters or the module)."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _group_parameters(name: str) -> list[inspect.Parameter]:
    optimizer_factory(name)  # an unknown name raises here
    groups = _GROUPS.get(name.lower())
    return [p for p in _parameters(groups) if p.name not in _NOT_GROUP_OPTIONS] if groups else []


def group_options(name: str) -> list[str]:
    """The options of ``name``'s param-groups function (empty if it has none)."""
    return [p.name for p in _group_parameters(name)]


def option_parameters(name: str) -> dict[str, inspect.Parameter]:
    """Every option ``name`` accepts, with its default and annotation (constructor, then group options)."""
    return {p.name: p for p in _parameters(optimizer_factory(name)) + _group_parameters(name)}


def optimizer_options(name: str) -> list[str]:
    """The keyword options ``name`` accepts (everything after the parameters, and its group options)."""
    return list(option_parameters(name))


def check_optimizer_options(name: str, options: Iterable[str]) -> None:
    """Raise ValueError naming the first option ``name`` does not accept."""
    valid = optimizer_options(name)
    for option in options:
        if option not in valid:
            raise ValueError(
                f"optimizer {name!r} has no option {option!r}; valid options: {', '.join(valid)}"
            )


def model_param_groups(name: str, module: torch.nn.Module, **options: Any) -> list[dict] | None:
    """``name``'s param groups for ``module`` (its param-groups function), or None if it takes plain parameters."""
    groups_of = _GROUPS.get(name.lower())
    return groups_of(module, **options) if groups_of else None


def build_optimizer(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Construct the optimizer registered as ``name`` with ``kwargs`` over ``params``: parameters or
    param groups (torch's convention), or a module or list of modules (groups formed per module by
    the optimizer's param-groups function, or one group per module)."""
    check_optimizer_options(name, kwargs)
    grouping = {k: kwargs.pop(k) for k in group_options(name) if k in kwargs}
    modules = [params] if isinstance(params, torch.nn.Module) else params
    if isinstance(modules, (list, tuple)) and modules and all(isinstance(m, torch.nn.Module) for m in modules):
        params = [g for m in modules for g in (model_param_groups(name, m, **grouping) or [{"params": list(m.parameters())}])]
    elif grouping:
        raise ValueError(f"optimizer {name!r}: option {next(iter(grouping))!r} needs the model; pass modules, not parameters")
    return optimizer_factory(name)(params, **kwargs)


register_optimizer("sgd", torch.optim.SGD)
register_optimizer("adamw", torch.optim.AdamW)
