"""The sequential-MNIST recipe's config (``recipe: mnist``, the default): its data stream,
MLP, training and pruning sections, checked when the config loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from basinlab.data.cache import check_cache_dir
from basinlab.data.streams import CLASS_PAIRS, NUM_TRAIN, STREAMS, most_train_examples
from basinlab.errors import UserError
from basinlab.eval.pruning import KEEP_FRACTIONS, SCOPES
from basinlab.launch.config import ArmConfig, ExperimentConfig
from basinlab.launch.config_checks import keyed, require, section


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
        require(self.stream in STREAMS, "data.stream", f"must be one of {', '.join(STREAMS)}")
        require(self.num_tasks >= 1, "data.num_tasks", "must be >= 1")
        if self.stream == "class_incremental":
            require(
                self.num_tasks <= len(CLASS_PAIRS),
                "data.num_tasks",
                f"class_incremental has at most {len(CLASS_PAIRS)} tasks (class pairs)",
            )
        require(0 < self.validation_size < NUM_TRAIN, "data.validation_size", f"must be in 1..{NUM_TRAIN - 1}")
        require(self.probe_size >= 10, "data.probe_size", "must be >= 10")
        if self.max_train_examples is not None:
            require(self.max_train_examples >= 1, "data.max_train_examples", "must be >= 1 or null")
        if self.cache_dir is not None:
            keyed("data.cache_dir", check_cache_dir, self.cache_dir)

    def check_task_sizes(self, batch_size: int) -> None:
        """Every task must have a full training batch; the sizes of MNIST's classes are known."""
        most = min(most_train_examples(self.stream, self.num_tasks, self.validation_size))
        cap = self.max_train_examples
        if cap is not None and cap < min(most, batch_size):
            raise UserError(f"config key 'data.max_train_examples' ({cap}) is below train.batch_size ({batch_size}), "
                            "so no full batch would train; raise it or lower train.batch_size")
        require(most >= batch_size, "data.validation_size",
                 f"({self.validation_size}) leaves a task at most {most} training image(s), fewer than train.batch_size "
                 f"({batch_size}), so it would train no batch; lower data.validation_size")


@dataclass
class MnistModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [100])
    powerprop_alpha: Optional[float] = None  # Powerpropagation layers w = v|v|^(alpha-1); null = plain

    def check(self, prefix: str = "model") -> None:
        require(
            bool(self.hidden_sizes) and all(h >= 1 for h in self.hidden_sizes),
            f"{prefix}.hidden_sizes",
            "must be a non-empty list of positive layer widths",
        )
        if self.powerprop_alpha is not None:
            require(self.powerprop_alpha >= 1, f"{prefix}.powerprop_alpha", "must be >= 1 or null")


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
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        require(0 < self.convergence_target <= 1, "train.convergence_target", "must be in (0, 1]")


@dataclass
class PruningConfig:
    """Magnitude-pruning evaluation after the last task, and small-weight fractions after each."""

    enabled: bool = False  # accuracy after pruning to each keep fraction, at the end of every unit
    keep_fractions: list[float] = field(default_factory=lambda: list(KEEP_FRACTIONS))
    scope: str = "global"  # global | layer (basinlab.eval.pruning.SCOPES): rank weights across all layers or within each
    finetune_steps: int = 0  # also: this many masked training steps on the last task before evaluating
    thresholds: list[float] = field(default_factory=lambda: [1e-3, 1e-2])  # |w| below these, after each task

    def check(self) -> None:
        require(
            bool(self.keep_fractions) and all(0 < k <= 1 for k in self.keep_fractions),
            "pruning.keep_fractions",
            "must be a non-empty list of fractions in (0, 1]",
        )
        require(self.scope in SCOPES, "pruning.scope", f"must be one of {', '.join(SCOPES)}")
        require(self.finetune_steps >= 0, "pruning.finetune_steps", "must be >= 0")
        require(all(t > 0 for t in self.thresholds), "pruning.thresholds", "must be positive")


REPRESENTATION_LAYERS = ("post_relu", "pre_activation")
PROBE_POOLS = ("pooled", "per_task")
CLASS_MEANS = ("raw", "centred")


@dataclass
class RepresentationConfig:
    """Where the representation metrics look, so a reader can check whether a claim depends on it.
    The defaults are what every documented result used."""

    layer: str = "post_relu"  # last hidden layer after its ReLU, or its pre-activation (W h + b)
    probes: str = "pooled"  # one measurement over the seen tasks' probes pooled, or one per seen task, averaged
    class_means: str = "raw"  # cosine between raw class means, or between means of features centred on their grand mean

    def check(self) -> None:
        for name, choices in (("layer", REPRESENTATION_LAYERS), ("probes", PROBE_POOLS), ("class_means", CLASS_MEANS)):
            require(getattr(self, name) in choices, f"representation.{name}", f"must be one of {', '.join(choices)}")


@dataclass
class MnistRunConfig(ExperimentConfig):
    """The sequential-MNIST recipe (basinlab.launch.mnist_recipe)."""

    data: MnistDataConfig = field(default_factory=MnistDataConfig)
    model: MnistModelConfig = field(default_factory=MnistModelConfig)
    train: MnistTrainConfig = field(default_factory=MnistTrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    representation: RepresentationConfig = field(default_factory=RepresentationConfig)

    def check(self) -> None:
        super().check()
        self.data.check()
        self.representation.check()
        self.model.check()
        self.train.check()
        self.pruning.check()
        self.data.check_task_sizes(self.train.batch_size)
        for arm in self.arms:
            self.model_for(arm)

    def model_for(self, arm: ArmConfig) -> MnistModelConfig:
        """The run's model section with ``arm``'s overrides applied (checked)."""
        prefix = f"arms.{arm.label}.model"
        model = section(MnistModelConfig, {**dataclasses.asdict(self.model), **arm.model}, prefix)
        model.check(prefix)
        return model
