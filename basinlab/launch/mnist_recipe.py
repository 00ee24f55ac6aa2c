"""The sequential-MNIST recipe: every arm (optimizer config) trained through a task stream
for every seed, as a :class:`basinlab.launch.driver.Recipe`.

The driver plans the units; this module loads MNIST, builds each seed's tasks and hands a
group of seeds of one arm to :class:`basinlab.launch.mnist_trainer.ArmTrainer` (by
default all seeds of an arm train together; under ``accelerate launch`` each seed is its
own group and the ranks split every batch).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from basinlab import ranks
from basinlab.data.mnist import load_mnist
from basinlab.data.streams import Task, TaskStream, build_tasks
from basinlab.errors import UserError
from basinlab.eval.plots import write_mnist_plots
from basinlab.eval.report import render_mnist_report
from basinlab.eval.results import MnistUnitResult
from basinlab.eval.summary import build_mnist_summary
from basinlab.launch.config import ArmConfig
from basinlab.launch.mnist_config import MnistRunConfig
from basinlab.launch.driver import UnitLog
from basinlab.launch.mnist_trainer import ArmTrainer, Member
from basinlab.launch.rundir import RunDirectory


def make_accelerator() -> Accelerator:
    """An Accelerator that really spans every launched process, GPUs or not.

    Launched as N processes on a machine without CUDA, a default Accelerator treats each
    process as its own single-process run (N independent runs writing one directory), so
    we ask for CPU ranks (gloo) explicitly, which is what ACCELERATE_USE_CPU=true does.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=launched > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != launched:
        raise UserError(
            f"{launched} processes were launched but Accelerate sees {accelerator.num_processes}; "
            "check the accelerate config (distributed_type, num_processes)"
        )
    return accelerator


def tracker_config(config: MnistRunConfig, arm: ArmConfig, seed: int) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's hparams view."""
    flat = {"seed": seed, "optimizer": arm.name}
    specs = {"optim": arm}
    if arm.then is not None:
        flat.update({"then": arm.then.name, "switch_after_steps": arm.switch_after_steps})
        specs["then"] = arm.then
    for prefix, spec in specs.items():
        flat.update({f"{prefix}.{k}": v for k, v in spec.options.items() if isinstance(v, (int, float, str, bool))})
    flat.update({f"train.{k}": v for k, v in vars(config.train).items()})
    flat.update({"data.stream": config.data.stream, "data.num_tasks": config.data.num_tasks})
    return flat


class MnistRecipe:
    """Sequential MNIST tasks on Accelerate, seeds of an arm trained as one stacked model."""

    result_type: ClassVar[type[MnistUnitResult]] = MnistUnitResult
    trains_seed_groups: ClassVar[bool] = True
    supports_workers: ClassVar[bool] = True
    summarize = staticmethod(build_mnist_summary)
    plots = staticmethod(write_mnist_plots)
    render = staticmethod(render_mnist_report)

    def __init__(self, config: MnistRunConfig):
        self.config = config
        self.accelerator = make_accelerator()
        self.arrays = None

    def prepare(self) -> None:
        with ranks.main_process_first():
            self.arrays = load_mnist(self.config.data.cache_dir)
        for seed in self.config.seeds:  # each seed's task split is checked (build_tasks) before training
            self.task_list(seed)

    def hparams(self, arm: ArmConfig, seed: int) -> dict[str, Any]:
        return tracker_config(self.config, arm, seed)

    def task_list(self, seed: int) -> list[Task]:
        data = self.config.data
        return build_tasks(
            data.stream,
            self.arrays,
            data.num_tasks,
            seed,
            first_task_unpermuted=data.first_task_unpermuted,
            validation_size=data.validation_size,
            probe_size=data.probe_size,
            max_train_examples=data.max_train_examples,
        )

    def train(
        self, arm: ArmConfig, seeds: list[int], logs: list[UnitLog], run: RunDirectory, progress: tqdm
    ) -> list[MnistUnitResult]:
        streams = [TaskStream(self.arrays, self.task_list(seed), self.accelerator.device) for seed in seeds]
        members = [Member(seed, stream, log) for seed, stream, log in zip(seeds, streams, logs)]
        results = ArmTrainer(self.accelerator, self.config, arm, members, progress).train()
        self.accelerator.free_memory()
        return results

