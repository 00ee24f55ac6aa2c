"""Sequential MNIST tasks on Accelerate: train each (optimizer, seed) unit task by task.

Read top to bottom: ``run_experiment`` loops over units; ``train_unit`` trains one
model through the task sequence with early stopping per task and evaluates after
every task (accuracy on all tasks, representation metrics on the probe sets).
Under ``accelerate launch`` each rank trains on its share of every batch (DDP averages
the gradients) and evaluates the full sets itself, so all ranks take identical
early-stopping decisions without extra communication; only the main process writes.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from basinlab.data.mnist import load_mnist
from basinlab.data.streams import NUM_CLASSES, NUM_PIXELS, TaskStream, build_tasks
from basinlab.errors import UserError
from basinlab.eval.continual import continual_metrics, forgetting_per_task
from basinlab.eval.sparsity import fraction_below, pruning_curve
from basinlab.eval.representation import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)
from basinlab.launch.config import OptimizerConfig, RunConfig
from basinlab.launch.rundir import RunDirectory, unit_id
from basinlab.models import MLP, effective_weights

logger = logging.getLogger(__name__)
PHASES = ("first", "then")  # an arm's optimizers in the order they train each task


@torch.no_grad()
def accuracy(model: MLP, stream: TaskStream, task: int, split: str, batch_size: int) -> float:
    correct = total = 0
    for x, y in stream.eval_batches(task, split, batch_size):
        correct += (model(x).argmax(dim=1) == y).sum().item()
        total += len(y)
    return correct / total


@torch.no_grad()
def probe_features(model: MLP, stream: TaskStream, tasks: range, batch_size: int):
    """Last-hidden-layer activations and labels on the probe sets of ``tasks``, pooled."""
    features, labels = [], []
    for task in tasks:
        for x, y in stream.eval_batches(task, "probe", batch_size):
            features.append(model.features(x))
            labels.append(y)
    return torch.cat(features), torch.cat(labels)


class UnitTrainer:
    """Trains one model with one arm through the task sequence of one seed.

    An arm with ``then`` trains each task with its own optimizer for the first
    ``switch_after_steps`` steps and with the ``then`` optimizer for the rest.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: RunConfig,
        optimizer_config: OptimizerConfig,
        stream: TaskStream,
        seed: int,
        run: RunDirectory | None,
        progress: tqdm,
    ):
        self.accelerator = accelerator
        self.config = config
        self.optimizer_config = optimizer_config
        self.stream = stream
        self.seed = seed
        self.run = run  # None on non-main processes
        self.progress = progress
        self.unit = unit_id(optimizer_config.label, seed)
        self.step = 0
        model_config = config.model_for(optimizer_config)
        model = MLP(
            NUM_PIXELS, model_config.hidden_sizes, NUM_CLASSES, seed=seed, powerprop_alpha=model_config.powerprop_alpha
        )
        self.model, *self.optimizers = accelerator.prepare(model, *self._new_optimizers(model))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The arm's first optimizer (its only one unless it switches)."""
        return self.optimizers[0]

    def _new_optimizers(self, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        """The arm's optimizer and, if it switches, its ``then`` optimizer: separate objects over the
        same parameters, so each keeps its own state (and its own Shampoo sharding)."""
        specs = [self.optimizer_config, self.optimizer_config.then]
        return [spec.build(model.parameters()) for spec in specs if spec is not None]

    def _phase(self, task_step: int) -> int:
        """Index of the optimizer that takes a task's ``task_step``-th step (from 0)."""
        switch = self.optimizer_config.switch_after_steps
        return int(switch is not None and task_step >= switch)

    def _weight_matrices(self) -> list[torch.nn.Parameter]:
        """The parameters magnitude pruning and the L1 penalty act on (Powerprop: v, same ranking as w)."""
        return [p for p in self.net.parameters() if p.dim() >= 2]

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to minimise, cross-entropy to report): the objective adds the arm's L1 penalty."""
        loss = F.cross_entropy(self.model(x), y)
        penalty = self.optimizer_config.l1_penalty
        if not penalty:
            return loss, loss
        return loss + penalty * sum(w.abs().sum() for w in self._weight_matrices()), loss

    @property
    def net(self) -> MLP:
        return self.accelerator.unwrap_model(self.model)

    def _record(self, event: str, **values: Any) -> None:
        if self.run is not None:
            record = {"unit": self.unit, "optimizer": self.optimizer_config.label, "seed": self.seed}
            self.run.log_metrics({**record, "event": event, "step": self.step, **values})

    def _evaluate_all(self) -> list[float]:
        self.net.eval()
        batch = self.config.train.eval_batch_size
        return [accuracy(self.net, self.stream, t, "test", batch) for t in range(len(self.stream))]

    def fit_task(self, task: int) -> dict[str, Any]:
        """Train ``task`` until validation accuracy stops improving; keep the best weights."""
        train = self.config.train
        best_accuracy, best_state, stale, epochs = -1.0, None, 0, 0
        curve = []  # [optimizer step, val accuracy] after each epoch: how fast the task is learned
        steps = [0] * len(self.optimizers)  # this task's steps per optimizer; every task starts with the first
        for epoch in range(train.max_epochs):
            self.model.train()
            loss_sum = torch.zeros((), device=self.accelerator.device)
            batches = 0
            for x, y in self.stream.train_batches(
                task,
                train.batch_size,
                seed=self.seed,
                epoch=epoch,
                rank=self.accelerator.process_index,
                world_size=self.accelerator.num_processes,
            ):
                objective, loss = self._loss(x, y)
                phase = self._phase(sum(steps))
                self.optimizers[phase].zero_grad(set_to_none=True)
                self.accelerator.backward(objective)
                self.optimizers[phase].step()
                steps[phase] += 1
                loss_sum += loss.detach()
                batches += 1
                self.step += 1
            train_loss = self.accelerator.reduce(loss_sum / max(batches, 1), "mean").item()
            self.net.eval()
            val_accuracy = accuracy(self.net, self.stream, task, "val", train.eval_batch_size)
            curve.append([self.step, val_accuracy])
            epochs = epoch + 1
            below = fraction_below(effective_weights(self.net), self.config.sparsity.thresholds)
            self._record(
                "epoch", task=task, epoch=epoch, train_loss=train_loss, val_accuracy=val_accuracy, weights_below=below
            )
            self.accelerator.log(
                {f"task{task}/train_loss": train_loss, f"task{task}/val_accuracy": val_accuracy}, step=self.step
            )
            self.progress.set_postfix_str(
                f"{self.unit} task {task + 1}/{len(self.stream)} epoch {epochs} val {val_accuracy:.4f}"
            )
            if val_accuracy > best_accuracy:
                best_accuracy, stale = val_accuracy, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                stale += 1
                if stale >= train.patience:
                    break
        self.net.load_state_dict(best_state)
        return {
            "epochs": epochs,
            "best_val_accuracy": best_accuracy,
            "stopped_early": epochs < train.max_epochs,
            "val_accuracy_curve": curve,
            "optimizer_steps": dict(zip(PHASES, steps)),
        }

    def train(self) -> dict[str, Any]:
        started = time.perf_counter()
        num_tasks = len(self.stream)
        batch = self.config.train.eval_batch_size
        initial = self._evaluate_all()
        self._record("init", accuracies=initial)
        rows, per_task = [], []
        first_task_features = None
        for task in range(num_tasks):
            if task and self.config.train.reset_optimizer_per_task:
                self.optimizers = [self.accelerator.prepare_optimizer(o) for o in self._new_optimizers(self.model)]
            fit = self.fit_task(task)
            rows.append(self._evaluate_all())
            seen = range(task + 1)
            features, labels = probe_features(self.net, self.stream, seen, batch)
            task0_features, _ = probe_features(self.net, self.stream, range(1), batch)
            if first_task_features is None:
                first_task_features = task0_features
            spectrum = covariance_spectrum(features)
            cosine = class_mean_cosine(features, labels, NUM_CLASSES)
            square = [row[: task + 1] for row in rows]
            metrics = continual_metrics(square, initial[: task + 1])
            evaluation = {
                **fit,
                "task": task,
                "accuracies": rows[-1],
                "average_accuracy_seen": metrics["acc"],
                "effective_rank": effective_rank_from_spectrum(spectrum),
                "cross_class_cosine_mean": mean_off_diagonal(cosine),
                "first_task_cka": linear_cka(first_task_features, task0_features),
                "weights_below": fraction_below(effective_weights(self.net), self.config.sparsity.thresholds),
            }
            per_task.append(evaluation)
            self._record("task", **evaluation)
            self.accelerator.log(
                {
                    **{f"test_accuracy/task{j}": acc for j, acc in enumerate(rows[-1])},
                    "test_accuracy/average_seen": metrics["acc"],
                    "representation/effective_rank": evaluation["effective_rank"],
                    "representation/cross_class_cosine": evaluation["cross_class_cosine_mean"],
                },
                step=self.step,
            )
            logger.info(
                "%s: task %d/%d (%s) %d epochs, best val %.4f, avg acc on seen tasks %.4f",
                self.unit,
                task + 1,
                num_tasks,
                self.stream.tasks[task].name,
                fit["epochs"],
                fit["best_val_accuracy"],
                metrics["acc"],
            )
        return {
            "unit": self.unit,
            "optimizer": self.optimizer_config.label,
            "optimizer_name": self.optimizer_config.name,
            "seed": self.seed,
            "world_size": self.accelerator.num_processes,
            "optimizer_state_shards": self._optimizer_state_shards(),
            "initial_accuracies": initial,
            "accuracy_matrix": rows,
            **continual_metrics(rows, initial),
            "forgetting_per_task": forgetting_per_task(rows).tolist(),
            "epochs": [t["epochs"] for t in per_task],
            "best_val_accuracy": [t["best_val_accuracy"] for t in per_task],
            "val_accuracy_curve": [t["val_accuracy_curve"] for t in per_task],
            "optimizer_steps": [t["optimizer_steps"] for t in per_task],
            "effective_rank": [t["effective_rank"] for t in per_task],
            "cross_class_cosine_mean": [t["cross_class_cosine_mean"] for t in per_task],
            "first_task_cka": [t["first_task_cka"] for t in per_task],
            "final_covariance_spectrum": spectrum.tolist(),
            "final_cross_class_cosine": cosine.tolist(),
            "weights_below": [t["weights_below"] for t in per_task],
            **({"pruning": self._pruning()} if self.config.sparsity.prune else {}),
            "steps": self.step,
            "wall_time_s": time.perf_counter() - started,
        }


    def _pruning(self) -> dict[str, Any]:
        """Mean test accuracy over all tasks after magnitude pruning to each keep fraction."""
        sparsity = self.config.sparsity
        batch = self.config.train.eval_batch_size

        def mean_accuracy() -> float:
            self.net.eval()
            return sum(accuracy(self.net, self.stream, t, "test", batch) for t in range(len(self.stream))) / len(
                self.stream
            )

        result = {"scope": sparsity.scope, "keep": list(sparsity.keep_fractions)}
        curve = pruning_curve(self.net, self._weight_matrices(), mean_accuracy, sparsity.keep_fractions, sparsity.scope)
        result["accuracy"] = [point["accuracy"] for point in curve]
        if sparsity.finetune_steps:
            curve = pruning_curve(
                self.net, self._weight_matrices(), mean_accuracy, sparsity.keep_fractions, sparsity.scope,
                finetune=self._masked_finetune,
            )
            result["finetune_steps"] = sparsity.finetune_steps
            result["finetuned_accuracy"] = [point["accuracy"] for point in curve]
        return result

    def _masked_finetune(self, masks: list[torch.Tensor]) -> None:
        """A few steps on the last task with fresh optimizers (switching as in a task), pruned weights held at zero."""
        optimizers = self._new_optimizers(self.net)
        task, batch = len(self.stream) - 1, self.config.train.batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        batches = (
            b for epoch in itertools.count()
            for b in self.stream.train_batches(task, batch, seed=self.seed, epoch=epoch, rank=rank, world_size=world)
        )
        self.model.train()
        for step, (x, y) in enumerate(itertools.islice(batches, self.config.sparsity.finetune_steps)):
            optimizer = optimizers[self._phase(step)]
            objective, _ = self._loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(objective)
            optimizer.step()
            with torch.no_grad():
                for weight, mask in zip(self._weight_matrices(), masks):
                    weight.mul_(mask)

    def _optimizer_state_shards(self) -> int:
        """Over how many ranks the arm's optimizers split their state (distributed Shampoo), else 1."""
        shards = [1]
        for optimizer in self.optimizers:
            sharding = getattr(optimizer.optimizer, "sharding", None)
            info = sharding() if sharding is not None else None
            shards.append(info["world_size"] if info else 1)
        return max(shards)


def _tracker_config(config: RunConfig, optimizer: OptimizerConfig, seed: int) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's hparams view."""
    flat = {"seed": seed, "optimizer": optimizer.name}
    specs = {"optim": optimizer}
    if optimizer.then is not None:
        flat.update({"then": optimizer.then.name, "switch_after_steps": optimizer.switch_after_steps})
        specs["then"] = optimizer.then
    for prefix, spec in specs.items():
        flat.update({f"{prefix}.{k}": v for k, v in spec.options.items() if isinstance(v, (int, float, str, bool))})
    flat.update({f"train.{k}": v for k, v in vars(config.train).items()})
    flat.update({"data.stream": config.data.stream, "data.num_tasks": config.data.num_tasks})
    return flat


def make_accelerator(**kwargs: Any) -> Accelerator:
    """An Accelerator that really spans every launched process, GPUs or not.

    Launched as N processes on a machine without CUDA, a default Accelerator treats each
    process as its own single-process run (N independent runs writing one directory), so
    we ask for CPU ranks (gloo) explicitly, which is what ACCELERATE_USE_CPU=true does.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=launched > 1 and not torch.cuda.is_available(), **kwargs)
    if accelerator.num_processes != launched:
        raise UserError(
            f"{launched} processes were launched but Accelerate sees {accelerator.num_processes}; "
            "check the accelerate config (distributed_type, num_processes)"
        )
    return accelerator


def run_experiment(config: RunConfig, output: str | Path, resume: bool = False) -> Path:
    """Run every (optimizer, seed) unit of ``config`` into ``output``; returns the run dir."""
    run = RunDirectory(output)
    log_with = None if config.log_with == "none" else config.log_with
    accelerator = make_accelerator(log_with=log_with, project_dir=str(run.tensorboard_dir))
    main = accelerator.is_main_process
    run.check(config.to_yaml(), resume)
    accelerator.wait_for_everyone()  # every rank has checked before the main one writes
    if main:
        run.open(config.to_yaml())
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        arrays = load_mnist(config.data.cache_dir)
    finished = run.finished_units()
    units = [(o, s) for s in config.seeds for o in config.optimizers]
    todo = [(o, s) for o, s in units if unit_id(o.label, s) not in finished]
    if finished:
        logger.info("resuming %s: %d of %d units already finished", run.path, len(units) - len(todo), len(units))
    logger.info(
        "%s: %d units on %d process(es), device %s", config.name, len(todo), accelerator.num_processes, accelerator.device
    )
    data = config.data
    with logging_redirect_tqdm(), tqdm(total=len(units), initial=len(units) - len(todo), desc="units", disable=not main) as bar:
        for optimizer, seed in todo:
            tasks = build_tasks(
                data.stream,
                arrays,
                data.num_tasks,
                seed,
                first_task_unpermuted=data.first_task_unpermuted,
                validation_size=data.validation_size,
                probe_size=data.probe_size,
                max_train_examples=data.max_train_examples,
            )
            stream = TaskStream(arrays, tasks, accelerator.device)
            unit = unit_id(optimizer.label, seed)
            if log_with:
                accelerator.init_trackers(unit, config=_tracker_config(config, optimizer, seed))
            result = UnitTrainer(accelerator, config, optimizer, stream, seed, run if main else None, bar).train()
            result["task_names"] = [t.name for t in tasks]
            if main:
                run.write_unit(unit, result)
            for tracker in accelerator.trackers:
                tracker.finish()
            accelerator.trackers = []
            accelerator.free_memory()
            bar.update()
    accelerator.wait_for_everyone()
    if main:
        run.write_report()
        logger.info("report written to %s", run.path / "report.md")
    return run.path
