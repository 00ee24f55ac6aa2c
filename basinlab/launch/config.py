"""Run configs: dataclasses loaded from YAML, overridable from the CLI, strictly checked.

A config's ``recipe`` key picks its schema from the recipe table (basinlab.launch.recipes):
``mnist`` (the default; sequential MNIST tasks, basinlab.launch.mnist_config) or ``text``
(masked-LM training over text domains, basinlab.launch.text_config). This module holds what
every recipe shares: arms, seeds, plugins, loading and ``--set`` overrides.

Every mistake (unknown key, wrong type, a value out of range or not finite, an unknown
optimizer or optimizer option or one of the wrong type, sizes that leave a task empty,
unreadable data files or folders) raises ``UserError`` naming the dotted key when the
config loads: before any run directory, download or training. Overrides use
``--set key=value`` with a YAML value; list entries are addressed by index, ``arms``
entries also by label: ``--set arms.sgd.lr=0.05``.

``plugins: [module, ...]`` names modules imported before the arms are checked, so an
optimizer they register (``basinlab.optim.register_optimizer``) can be an arm; installed
packages can register through the ``basinlab.optimizers`` entry-point group instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from basinlab.data.corpus_spec import read_utf8
from basinlab.errors import UserError
from basinlab.launch.config_checks import check_finite, check_label, check_like_default, coerce, one_line, require, section
from basinlab.launch.recipes import config_class
from basinlab.optim import build_optimizer
from basinlab.optim.registry import option_parameters


@dataclass
class OptimizerSpec:
    """A registry name and the keyword options to construct it with."""

    name: str
    options: dict[str, Any]

    def build(self, params: Any) -> torch.optim.Optimizer:
        """Over parameters or param groups, or over modules (a list: one set of groups per module)."""
        return build_optimizer(self.name, params, **self.options)

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass
class ArmConfig(OptimizerSpec):
    """One arm of the comparison: a registry name, a label and its keyword options, plus what
    the arm changes besides the optimizer (model overrides such as Powerprop, an L1 penalty,
    a second optimizer that takes over after the first ``switch_after_steps`` steps of each task)."""

    label: str
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the run's model section
    l1_penalty: float = 0.0  # adds l1_penalty * sum |w| over the weight matrices to the loss
    rank_penalty: float = 0.0  # adds rank_penalty * nuclear norm of the last hidden layer's weights to the loss
    then: Optional[OptimizerSpec] = None  # trains each task after the first switch_after_steps steps
    switch_after_steps: Optional[int] = None

    def to_yaml(self) -> dict[str, Any]:
        extras = {"model": self.model} if self.model else {}
        for penalty in ("l1_penalty", "rank_penalty"):
            if getattr(self, penalty):
                extras[penalty] = getattr(self, penalty)
        if self.then is not None:
            extras.update(then=self.then.to_yaml(), switch_after_steps=self.switch_after_steps)
        return {"name": self.name, "label": self.label, **self.options, **extras}


@dataclass
class ExperimentConfig:
    """What every recipe's config holds: the arms (optimizers) x seeds and the logging."""

    name: str = "run"
    recipe: str = "mnist"  # mnist | text
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[ArmConfig] = field(default_factory=list)
    log_with: str = "tensorboard"  # tensorboard | none
    plugins: list[str] = field(default_factory=list)  # modules imported first, for the optimizers they register

    def check(self) -> None:
        check_label(self.name, "name", "it names the run directory; the default is the config file's name")
        require(bool(self.seeds), "seeds", "must list at least one seed")
        require(all(0 <= s < 2**32 for s in self.seeds), "seeds", f"must be integers in 0..{2**32 - 1}, got {self.seeds}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        require(bool(self.arms), "arms", "must list at least one arm ({name: <optimizer>, ...})")
        labels = [o.label for o in self.arms]
        require(len(set(labels)) == len(labels), "arms", f"labels must be unique, got {labels}")
        require(self.log_with in ("tensorboard", "none"), "log_with", "must be tensorboard or none")

    def to_yaml(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["arms"] = [o.to_yaml() for o in self.arms]
        if not self.plugins:  # so runs saved before the key existed still resume
            del raw["plugins"]
        return raw

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (a spawned --workers process) imports the plugins, so their optimizers exist there too."""
        self.__dict__.update(state)
        import_plugins(self.plugins)


def import_plugins(modules: list[str]) -> None:
    """Import each plug-in module, so the optimizers it registers exist before the arms are checked."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as err:  # a plug-in's own import may fail in any way
            raise UserError(
                f"config key 'plugins[{i}]': cannot import {module!r}: {one_line(err)}; "
                "is it installed (pip install -e ...) or on PYTHONPATH?"
            ) from None


def _named_options(raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """(name, the remaining keys) of an optimizer mapping such as {name: sgd, lr: 0.1}."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise UserError(f"config key '{key}' must be a mapping with a 'name', e.g. {{name: sgd, lr: 0.1}}")
    options = dict(raw)
    return options.pop("name"), options


def _check_option_types(name: str, options: dict[str, Any], key: str, label: str) -> None:
    """Each option against its constructor default (annotated Any or defaulting to None: anything)."""
    try:
        parameters = option_parameters(name)
    except ValueError as err:
        raise UserError(f"config key '{key}' ({label}): {one_line(err)}") from None
    for option, value in options.items():
        parameter = parameters.get(option)  # an unknown option fails in the construction below
        if parameter is not None and parameter.annotation not in (Any, "Any"):
            check_like_default(value, parameter.default, f"{key}.{option}", integer=parameter.annotation in (int, "int"))


def _checked_spec(name: str, options: dict[str, Any], key: str, label: str) -> OptimizerSpec:
    _check_option_types(name, options, key, label)
    try:  # constructing over a throwaway model runs the optimizer's own value checks
        build_optimizer(name, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), **options)
    except Exception as err:  # a plug-in optimizer may raise anything; the user sees one line
        raise UserError(f"config key '{key}' ({label}): {one_line(err)}") from None
    return OptimizerSpec(name=name.lower(), options=options)


def _optimizer(raw: Any, index: int) -> ArmConfig:
    key = f"arms[{index}]"
    name, options = _named_options(raw, key)
    label = options.pop("label", name)
    check_label(label, f"{key}.label", "it names the arm's units and plots")
    model = options.pop("model", {})
    if not isinstance(model, dict):
        raise UserError(f"config key '{key}.model' must be a mapping of model overrides, e.g. {{powerprop_alpha: 2}}")
    l1_penalty, rank_penalty = (coerce(options.pop(name, 0.0), float, f"{key}.{name}") for name in ("l1_penalty", "rank_penalty"))
    require(l1_penalty >= 0, f"{key}.l1_penalty", "must be >= 0")
    require(rank_penalty >= 0, f"{key}.rank_penalty", "must be >= 0")
    then, switch = options.pop("then", None), options.pop("switch_after_steps", None)
    if (then is None) != (switch is None):
        raise UserError(
            f"config key '{key}' ({label}) needs both 'then' and 'switch_after_steps' or neither, "
            "e.g. then: {name: sgd, lr: 0.05}, switch_after_steps: 100"
        )
    if then is not None:
        then = _checked_spec(*_named_options(then, f"{key}.then"), f"{key}.then", label)
        switch = coerce(switch, int, f"{key}.switch_after_steps")
        require(switch >= 1, f"{key}.switch_after_steps", "must be >= 1")
    spec = _checked_spec(name, options, key, label)
    return ArmConfig(
        name=spec.name, label=label, options=spec.options, model=model, l1_penalty=l1_penalty,
        rank_penalty=rank_penalty, then=then, switch_after_steps=switch,
    )


def config_from_dict(raw: Any) -> ExperimentConfig:
    """Build and check a run config from plain YAML data; its ``recipe`` key picks the schema."""
    _require_mapping(raw)
    check_finite(raw, "")
    recipe = raw.get("recipe", "mnist")
    cls = config_class(recipe)  # the recipe table (basinlab.launch.recipes)
    hints = typing.get_type_hints(cls)
    sections = {name: hint for name, hint in hints.items() if dataclasses.is_dataclass(hint)}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(
            f"unknown config key '{unknown[0]}'; valid top-level keys of a {recipe} run: {', '.join(sorted(fields))}"
        )
    import_plugins(coerce(raw.get("plugins", []), hints["plugins"], "plugins"))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in sections:
            values[key] = section(sections[key], value, key)
        elif key == "arms":
            if not isinstance(value, list):
                raise UserError("config key 'arms' must be a list of {name: ..., <option>: ...}")
            values[key] = [_optimizer(o, i) for i, o in enumerate(value)]
        else:
            values[key] = coerce(value, hints[key], key)
    config = cls(**values)
    config.check()
    return config


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    path = [token.strip() for token in key.split(".")]
    if not sep or not all(path):
        raise UserError(f"--set expects key=value with a dotted key (e.g. --set train.max_epochs=3), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {value!r} is not valid YAML") from None
    return path, parsed


def _entry(entries: list, token: str, key: str, at: str) -> int:
    """The position of a list entry named by index, or (``arms``) by label or optimizer name."""
    if token.isdigit() and int(token) < len(entries):
        return int(token)
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and token in (entry.get("label"), entry.get("name")):
            return i
    raise UserError(f"--set {key}: '{at}' has no entry with index or label {token!r}")


def _slot(node: Any, token: str, key: str, at: str) -> Any:
    """Where ``token`` lives in ``node`` (the value at ``at``): a mapping's key or a list entry's position."""
    if isinstance(node, dict):
        return token
    if isinstance(node, list):
        return _entry(node, token, key, at)
    raise UserError(f"--set {key}: '{at}' is {type(node).__name__} {node!r}, not a section; set '{at}' itself")


def apply_override(raw: dict, text: str) -> None:
    """Apply one ``key=value`` override to raw config data in place: sections along the key are
    created as needed, but a key never descends into a value, nor replaces a section with one."""
    path, value = _parse_override(text)
    key = ".".join(path)
    node: Any = raw
    for depth, token in enumerate(path[:-1]):
        slot = _slot(node, token, key, ".".join(path[:depth]))
        if isinstance(node, dict) and node.get(slot) is None:
            node[slot] = {}
        node = node[slot]
    slot = _slot(node, path[-1], key, ".".join(path[:-1]))
    current = node[slot] if isinstance(node, list) else node.get(slot)
    if isinstance(current, dict) and not isinstance(value, dict):
        raise UserError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. --set {key}.<key>=VALUE")
    node[slot] = value


def _require_mapping(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise UserError("a run config must be a YAML mapping with keys such as name, seeds, data, arms")


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML run config, apply ``--set`` overrides, and check it."""
    raw = read_yaml_config(path, "a run config needs at least arms: [{name: sgd, lr: 0.1}]")
    raw.setdefault("name", Path(path).stem)
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def read_yaml_config(path: str | Path, needs: str) -> dict:
    """A YAML mapping from ``path``, or one line naming what is wrong with the file (``needs``: what an
    empty file lacks)."""
    path = Path(path)
    text, _ = read_utf8(path, "config file", "pass a YAML file such as configs/mnist/demo.yaml")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raise UserError(f"config file {str(path)!r} is empty; {needs}")
    _require_mapping(raw)
    return raw
