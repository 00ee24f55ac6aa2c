"""Run configs: dataclasses loaded from YAML, overridable from the CLI, strictly checked.

A config's ``recipe`` key picks its schema: ``mnist`` (the default; sequential MNIST tasks,
:class:`MnistRunConfig`) or ``text`` (masked-LM training over text domains, :class:`TextRunConfig`).

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
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from basinlab.data.cache import check_cache_dir
from basinlab.data.streams import CLASS_PAIRS, NUM_TRAIN, STREAMS, most_train_examples
from basinlab.data.text import TEXT_DOMAINS, check_domain_spec, domain_name, read_utf8
from basinlab.data.tokenizer import check_tokenizer_dir
from basinlab.errors import UserError
from basinlab.launch.recipes import config_class
from basinlab.eval.pruning import KEEP_FRACTIONS, SCOPES
from basinlab.models.bert import BERT_PRESETS
from basinlab.optim import build_optimizer
from basinlab.optim.registry import option_parameters


@dataclass
class MnistDataConfig:
    stream: str = "permuted"  # permuted | class_incremental
    num_tasks: int = 5
    first_task_unpermuted: bool = True  # permuted only: task 1 is plain MNIST
    validation_size: int = 5000  # held out of the 60k training images for early stopping
    probe_size: int = 1000  # test images per task used for representation metrics
    max_train_examples: Optional[int] = None  # cap per task, for quick runs
    cache_dir: Optional[str] = None  # default: $BASINLAB_CACHE or ~/.cache/basinlab

    def check(self) -> None:
        _require(self.stream in STREAMS, "data.stream", f"must be one of {', '.join(STREAMS)}")
        _require(self.num_tasks >= 1, "data.num_tasks", "must be >= 1")
        if self.stream == "class_incremental":
            _require(
                self.num_tasks <= len(CLASS_PAIRS),
                "data.num_tasks",
                f"class_incremental has at most {len(CLASS_PAIRS)} tasks (class pairs)",
            )
        _require(0 < self.validation_size < NUM_TRAIN, "data.validation_size", f"must be in 1..{NUM_TRAIN - 1}")
        _require(self.probe_size >= 10, "data.probe_size", "must be >= 10")
        if self.max_train_examples is not None:
            _require(self.max_train_examples >= 1, "data.max_train_examples", "must be >= 1 or null")
        if self.cache_dir is not None:
            _keyed("data.cache_dir", check_cache_dir, self.cache_dir)

    def check_task_sizes(self, batch_size: int) -> None:
        """Every task must have a full training batch; the sizes of MNIST's classes are known."""
        most = min(most_train_examples(self.stream, self.num_tasks, self.validation_size))
        cap = self.max_train_examples
        if cap is not None and cap < min(most, batch_size):
            raise UserError(f"config key 'data.max_train_examples' ({cap}) is below train.batch_size ({batch_size}), "
                            "so no full batch would train; raise it or lower train.batch_size")
        _require(most >= batch_size, "data.validation_size",
                 f"({self.validation_size}) leaves a task at most {most} training image(s), fewer than train.batch_size "
                 f"({batch_size}), so it would train no batch; lower data.validation_size")


@dataclass
class MnistModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [100])
    powerprop_alpha: Optional[float] = None  # Powerpropagation layers w = v|v|^(alpha-1); null = plain

    def check(self, prefix: str = "model") -> None:
        _require(
            bool(self.hidden_sizes) and all(h >= 1 for h in self.hidden_sizes),
            f"{prefix}.hidden_sizes",
            "must be a non-empty list of positive layer widths",
        )
        if self.powerprop_alpha is not None:
            _require(self.powerprop_alpha >= 1, f"{prefix}.powerprop_alpha", "must be >= 1 or null")


@dataclass
class MnistTrainConfig:
    batch_size: int = 128
    max_epochs: int = 5  # per task
    patience: int = 1  # stop a task after this many epochs without a new best val accuracy
    eval_batch_size: int = 10_000
    reset_optimizer_per_task: bool = False  # default carries optimizer state across tasks
    convergence_target: float = 0.95  # task-1 val accuracy whose first crossing times convergence (report only)

    def check(self) -> None:
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            _require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _require(0 < self.convergence_target <= 1, "train.convergence_target", "must be in (0, 1]")


@dataclass
class PruningConfig:
    """Magnitude-pruning evaluation after the last task, and small-weight fractions after each."""

    enabled: bool = False  # accuracy after pruning to each keep fraction, at the end of every unit
    keep_fractions: list[float] = field(default_factory=lambda: list(KEEP_FRACTIONS))
    scope: str = "global"  # global | layer (basinlab.eval.pruning.SCOPES): rank weights across all layers or within each
    finetune_steps: int = 0  # also: this many masked training steps on the last task before evaluating
    thresholds: list[float] = field(default_factory=lambda: [1e-3, 1e-2])  # |w| below these, after each task

    def check(self) -> None:
        _require(
            bool(self.keep_fractions) and all(0 < k <= 1 for k in self.keep_fractions),
            "pruning.keep_fractions",
            "must be a non-empty list of fractions in (0, 1]",
        )
        _require(self.scope in SCOPES, "pruning.scope", f"must be one of {', '.join(SCOPES)}")
        _require(self.finetune_steps >= 0, "pruning.finetune_steps", "must be >= 0")
        _require(all(t > 0 for t in self.thresholds), "pruning.thresholds", "must be positive")


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
    then: Optional[OptimizerSpec] = None  # trains each task after the first switch_after_steps steps
    switch_after_steps: Optional[int] = None

    def to_yaml(self) -> dict[str, Any]:
        extras = {"model": self.model} if self.model else {}
        if self.l1_penalty:
            extras["l1_penalty"] = self.l1_penalty
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
        _check_label(self.name, "name", "it names the run directory; the default is the config file's name")
        _require(bool(self.seeds), "seeds", "must list at least one seed")
        _require(all(0 <= s < 2**32 for s in self.seeds), "seeds", f"must be integers in 0..{2**32 - 1}, got {self.seeds}")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        _require(bool(self.arms), "arms", "must list at least one arm ({name: <optimizer>, ...})")
        labels = [o.label for o in self.arms]
        _require(len(set(labels)) == len(labels), "arms", f"labels must be unique, got {labels}")
        _require(self.log_with in ("tensorboard", "none"), "log_with", "must be tensorboard or none")

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


@dataclass
class MnistRunConfig(ExperimentConfig):
    """The sequential-MNIST recipe (basinlab.launch.mnist_recipe)."""

    data: MnistDataConfig = field(default_factory=MnistDataConfig)
    model: MnistModelConfig = field(default_factory=MnistModelConfig)
    train: MnistTrainConfig = field(default_factory=MnistTrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def check(self) -> None:
        super().check()
        self.data.check()
        self.model.check()
        self.train.check()
        self.pruning.check()
        self.data.check_task_sizes(self.train.batch_size)
        for arm in self.arms:
            self.model_for(arm)

    def model_for(self, arm: ArmConfig) -> MnistModelConfig:
        """The run's model section with ``arm``'s overrides applied (checked)."""
        prefix = f"arms.{arm.label}.model"
        model = _section(MnistModelConfig, {**dataclasses.asdict(self.model), **arm.model}, prefix)
        model.check(prefix)
        return model


@dataclass
class TextDataConfig:
    """Text domains trained in order, the tokenizer, and how much of each domain is used."""

    domains: list[Any] = field(default_factory=lambda: list(TEXT_DOMAINS))  # built-in names or spec mappings
    max_length: int = 128  # tokens per packed training/evaluation sequence
    vocab_size: int = 8192  # WordPiece vocabulary trained on the union of the train splits
    tokenizer: Optional[str] = None  # a local pretrained tokenizer directory instead
    max_train_sequences: Optional[int] = None  # cap per domain, for quick runs
    eval_sequences: int = 256  # validation sequences per domain for the loss matrix
    probe_sequences: int = 64  # of those, the fixed probe set for representation metrics
    cache_dir: Optional[str] = None  # default: $BASINLAB_CACHE or ~/.cache/basinlab

    def check(self) -> None:
        _require(len(self.domains) >= 1, "data.domains", "must list at least one domain")
        names = [_keyed(f"data.domains[{i}]", check_domain_spec, entry) for i, entry in enumerate(self.domains)]
        _require(len(set(names)) == len(names), "data.domains", f"names must be unique, got {names}")
        _require(self.max_length >= 8, "data.max_length", "must be >= 8")
        _require(self.vocab_size >= 1000, "data.vocab_size", "must be >= 1000")
        if self.max_train_sequences is not None:
            _require(self.max_train_sequences >= 1, "data.max_train_sequences", "must be >= 1 or null")
        _require(self.eval_sequences >= 2, "data.eval_sequences", "must be >= 2")
        _require(
            2 <= self.probe_sequences <= self.eval_sequences,
            "data.probe_sequences",
            "must be >= 2 and at most data.eval_sequences (the probes are the first evaluation sequences)",
        )
        if self.tokenizer is not None:
            _keyed("data.tokenizer", check_tokenizer_dir, self.tokenizer)
        if self.cache_dir is not None:
            _keyed("data.cache_dir", check_cache_dir, self.cache_dir)

    def domain_names(self) -> list[str]:
        return [domain_name(entry) for entry in self.domains]


@dataclass
class TextModelConfig:
    preset: str = "tiny"  # tiny | mini | small | base (basinlab.models.BERT_PRESETS)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # further BertConfig fields

    def check(self) -> None:
        from transformers import BertConfig, PretrainedConfig

        _require(self.preset in BERT_PRESETS, "model.preset", f"must be one of {', '.join(BERT_PRESETS)}")
        defaults, common = BertConfig().to_dict(), PretrainedConfig().to_dict()
        bert_fields = [k for k in defaults if k not in common and k not in _SET_BY_RECIPE]  # what a message lists
        for name, value in self.config_overrides.items():
            key = f"model.config_overrides.{name}"
            _require(name not in _SET_BY_RECIPE, key, f"is set by the recipe (from {_SET_BY_RECIPE.get(name)}); drop it")
            _require(name in defaults, key, f"is not a BertConfig field; valid ones include {', '.join(bert_fields)}")
            _check_like_default(value, defaults[name], key, integer=isinstance(defaults[name], int))
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The preset's sizes with the overrides applied must build: positive, heads dividing the width."""
        overridden = {k: v for k, v in self.config_overrides.items() if k in _PRESET_FIELDS}
        sizes = {**dict(zip(_PRESET_FIELDS, BERT_PRESETS[self.preset])), **overridden}
        for name, size in sizes.items():
            _require(size >= 1, f"model.config_overrides.{name}", f"must be >= 1, got {size}")
        _require(
            sizes["hidden_size"] % sizes["num_attention_heads"] == 0,
            "model.config_overrides",
            f"give a hidden_size ({sizes['hidden_size']}) that is a multiple of num_attention_heads ({sizes['num_attention_heads']})",
        )


@dataclass
class TextTrainConfig:
    """One HF Trainer per domain; these map onto its TrainingArguments."""

    steps_per_domain: int = 200  # optimizer steps per domain
    batch_size: int = 32  # per device
    gradient_accumulation_steps: int = 1
    mlm_probability: float = 0.15
    lr_scheduler: str = "constant_with_warmup"  # any transformers SchedulerType, restarted per domain
    warmup_steps: int = 0  # per domain
    max_grad_norm: float = 1.0  # 0 disables clipping
    bf16: bool = False  # autocast (fp32 master weights); needs a GPU
    eval_batch_size: int = 64
    eval_every_n_steps: Optional[int] = None  # extra evaluations inside each domain
    logging_steps: int = 10
    reset_optimizer_per_domain: bool = False  # default carries optimizer state across domains
    deepspeed: Optional[str] = None  # DeepSpeed JSON config (ZeRO stage 0), passed to TrainingArguments
    dataloader_num_workers: int = 0

    def check(self) -> None:
        from transformers import SchedulerType

        for name in ("steps_per_domain", "batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps"):
            _require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _require(0 < self.mlm_probability < 1, "train.mlm_probability", "must lie in (0, 1)")
        schedulers = [s.value for s in SchedulerType]
        _require(self.lr_scheduler in schedulers, "train.lr_scheduler", f"must be one of {', '.join(schedulers)}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 disables clipping)")
        if self.eval_every_n_steps is not None:
            _require(self.eval_every_n_steps >= 1, "train.eval_every_n_steps", "must be >= 1 or null")
        _require(self.dataloader_num_workers >= 0, "train.dataloader_num_workers", "must be >= 0")
        if self.deepspeed is not None:
            self._check_deepspeed()

    def _check_deepspeed(self) -> None:
        """Carrying optimizer state across domains needs the raw optimizer to own the model's
        parameters: ZeRO >= 1 and DeepSpeed's fp16/bf16 give it new copies at every engine."""
        path = Path(self.deepspeed)
        _require(path.is_file(), "train.deepspeed", f"names {str(path)!r}, which is not a file (e.g. configs/deepspeed/zero0_fp32.json)")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"config key 'train.deepspeed': {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if self.reset_optimizer_per_domain:
            return
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        mixed = [k for k in ("fp16", "bf16") if ds.get(k, {}).get("enabled") in (True, "auto")]
        _require(
            stage == 0 and not mixed,
            "train.deepspeed",
            f"({path.name}: ZeRO stage {stage}{', ' + '/'.join(mixed) if mixed else ''}) would give the optimizer new "
            "parameter copies at every domain, losing its state; use ZeRO stage 0 without fp16/bf16 "
            "(configs/deepspeed/zero0_fp32.json; train.bf16 for autocast) or set train.reset_optimizer_per_domain: true",
        )


@dataclass
class TextRunConfig(ExperimentConfig):
    """The continual masked-LM recipe over text domains (basinlab.launch.text_recipe)."""

    recipe: str = "text"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: TextModelConfig = field(default_factory=TextModelConfig)
    train: TextTrainConfig = field(default_factory=TextTrainConfig)

    def check(self) -> None:
        super().check()
        self.data.check()
        self.model.check()
        self.train.check()
        for optimizer in self.arms:
            _require(
                not optimizer.model and not optimizer.l1_penalty and optimizer.then is None,
                f"arms.{optimizer.label}",
                "sets model overrides, l1_penalty or then/switch_after_steps, which only the mnist recipe supports",
            )


_PRESET_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")  # BERT_PRESETS order
_SET_BY_RECIPE = {"vocab_size": "the tokenizer", "max_position_embeddings": "data.max_length", "pad_token_id": "the tokenizer"}

def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"config key '{key}' {message}")


def _keyed(key: str, check: typing.Callable[..., Any], *args: Any) -> Any:
    """Run a data-layer check; its UserError is prefixed with the config key that supplied the value."""
    try:
        return check(*args)
    except UserError as err:
        raise UserError(f"config key '{key}': {err}") from None


def _one_line(err: BaseException) -> str:
    """An exception as one line (its first), for messages the CLI prints on one line."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _check_label(value: Any, key: str, why: str) -> None:
    """Labels and the run name become folder names: no '/', no leading '.', nothing a shell would mangle."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise UserError(f"config key '{key}' must be letters, digits and '_.+-', starting with a letter or digit ({why}), got {value!r}")


def _check_finite(value: Any, key: str) -> None:
    """No NaN or infinity anywhere in the raw config (they pass every range check)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{key}' must be a finite number, got {value}")
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")


def import_plugins(modules: list[str]) -> None:
    """Import each plug-in module, so the optimizers it registers exist before the arms are checked."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as err:  # a plug-in's own import may fail in any way
            raise UserError(
                f"config key 'plugins[{i}]': cannot import {module!r}: {_one_line(err)}; "
                "is it installed (pip install -e ...) or on PYTHONPATH?"
            ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expectation(default: Any, integer: bool) -> tuple[typing.Callable[[Any], bool], str] | None:
    """What a value must be to stand in for ``default``, and how to say so (None: anything goes)."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "a boolean"
    if _is_number(default):
        return ((lambda v: _is_number(v) and isinstance(v, int)), "an integer") if integer else (_is_number, "a number")
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, (tuple, list)) and all(map(_is_number, default)):
        n = len(default)
        return (lambda v: isinstance(v, (tuple, list)) and len(v) == n and all(map(_is_number, v))), f"a list of {n} numbers"
    return None


def _check_like_default(value: Any, default: Any, key: str, integer: bool = False) -> None:
    """``value`` must have the kind of ``default`` (a number for a number, a list of as many numbers
    for a tuple); an option whose default is None takes anything."""
    expected = _expectation(default, integer)
    if expected is not None and not expected[0](value):
        raise UserError(
            f"config key '{key}' must be {expected[1]} like {json.dumps(default)} (the default), "
            f"got {type(value).__name__} {value!r}"
        )


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation (int, float, bool, str, Any, dict, list[T], Optional[T])."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if origin is typing.Union:  # Optional[T]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise UserError(
            f"config key '{key}' must be {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _section(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config key '{prefix}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}.{unknown[0]}'; valid keys in '{prefix}': {', '.join(sorted(fields))}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()})


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
        raise UserError(f"config key '{key}' ({label}): {_one_line(err)}") from None
    for option, value in options.items():
        parameter = parameters.get(option)  # an unknown option fails in the construction below
        if parameter is not None and parameter.annotation not in (Any, "Any"):
            _check_like_default(value, parameter.default, f"{key}.{option}", integer=parameter.annotation in (int, "int"))


def _checked_spec(name: str, options: dict[str, Any], key: str, label: str) -> OptimizerSpec:
    _check_option_types(name, options, key, label)
    try:  # constructing over a throwaway model runs the optimizer's own value checks
        build_optimizer(name, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), **options)
    except Exception as err:  # a plug-in optimizer may raise anything; the user sees one line
        raise UserError(f"config key '{key}' ({label}): {_one_line(err)}") from None
    return OptimizerSpec(name=name.lower(), options=options)


def _optimizer(raw: Any, index: int) -> ArmConfig:
    key = f"arms[{index}]"
    name, options = _named_options(raw, key)
    label = options.pop("label", name)
    _check_label(label, f"{key}.label", "it names the arm's units and plots")
    model = options.pop("model", {})
    if not isinstance(model, dict):
        raise UserError(f"config key '{key}.model' must be a mapping of model overrides, e.g. {{powerprop_alpha: 2}}")
    l1_penalty = _coerce(options.pop("l1_penalty", 0.0), float, f"{key}.l1_penalty")
    _require(l1_penalty >= 0, f"{key}.l1_penalty", "must be >= 0")
    then, switch = options.pop("then", None), options.pop("switch_after_steps", None)
    if (then is None) != (switch is None):
        raise UserError(
            f"config key '{key}' ({label}) needs both 'then' and 'switch_after_steps' or neither, "
            "e.g. then: {name: sgd, lr: 0.05}, switch_after_steps: 100"
        )
    if then is not None:
        then = _checked_spec(*_named_options(then, f"{key}.then"), f"{key}.then", label)
        switch = _coerce(switch, int, f"{key}.switch_after_steps")
        _require(switch >= 1, f"{key}.switch_after_steps", "must be >= 1")
    spec = _checked_spec(name, options, key, label)
    return ArmConfig(
        name=spec.name, label=label, options=spec.options, model=model, l1_penalty=l1_penalty,
        then=then, switch_after_steps=switch,
    )


def config_from_dict(raw: Any) -> ExperimentConfig:
    """Build and check a run config from plain YAML data; its ``recipe`` key picks the schema."""
    _require_mapping(raw)
    _check_finite(raw, "")
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
    import_plugins(_coerce(raw.get("plugins", []), hints["plugins"], "plugins"))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in sections:
            values[key] = _section(sections[key], value, key)
        elif key == "arms":
            if not isinstance(value, list):
                raise UserError("config key 'arms' must be a list of {name: ..., <option>: ...}")
            values[key] = [_optimizer(o, i) for i, o in enumerate(value)]
        else:
            values[key] = _coerce(value, hints[key], key)
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
    path = Path(path)
    text, _ = read_utf8(path, "config file", "pass a YAML file such as configs/mnist/demo.yaml")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raise UserError(f"config file {str(path)!r} is empty; a run config needs at least arms: [{{name: sgd, lr: 0.1}}]")
    _require_mapping(raw)
    raw.setdefault("name", path.stem)
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)
