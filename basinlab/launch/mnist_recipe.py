"""Sequential MNIST tasks on Accelerate: train each arm (optimizer config) for every seed, task by task.

Read top to bottom: ``run_experiment`` splits the (arm, seed) units into groups of seeds
(``seed_groups``: by default all seeds of an arm together); ``ArmTrainer`` trains a
group through the task sequence as one stacked model with early stopping per seed and
task, and evaluates each seed after every task (accuracy on all tasks, representation
metrics on the probe sets); ``UnitHistory`` turns one seed's evaluations into its unit file.
Under ``accelerate launch`` each seed is its own group, each rank trains on its share of
every batch (DDP averages the gradients) and evaluates the full sets itself, so all ranks
take identical early-stopping decisions without extra communication; only the main
process writes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.tracking import TensorBoardTracker
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from basinlab.data.mnist import MnistArrays, load_mnist
from basinlab.data.streams import NUM_CLASSES, NUM_PIXELS, TaskStream, build_tasks, stacked_train_batches
from basinlab.errors import UserError
from basinlab.eval.continual import continual_metrics, forgetting_per_task
from basinlab.eval.pruning import fraction_below, pruning_curve
from basinlab.eval.representation import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)
from basinlab.launch.config import ArmConfig, MnistRunConfig
from basinlab.launch.logs import configure_logging
from basinlab.launch.rundir import RunDirectory, unit_id
from basinlab.models import MLP, effective_weights
from basinlab.models.seed_stack import SeedStack

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


@dataclass
class Member:
    """One seed of the group an ArmTrainer trains: its data and its place in the run."""

    seed: int
    stream: TaskStream
    unit: str
    tracker: Any = None  # its TensorBoard writer (main process, log_with: tensorboard)
    step: int = 0  # optimizer steps it has taken, over all tasks


@dataclass
class TaskFit:
    """One member's early stopping on one task."""

    steps: list[int]  # this task's steps per optimizer phase; every task starts with the first
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    epochs: int = 0
    done: bool = False
    curve: list[list[float]] = field(default_factory=list)  # [step, val accuracy] after each epoch

    def summary(self, max_epochs: int) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_val_accuracy": self.best_accuracy,
            "stopped_early": self.epochs < max_epochs,
            "val_accuracy_curve": self.curve,
            "optimizer_steps": dict(zip(PHASES, self.steps)),
        }


class ArmTrainer:
    """Trains one arm (an optimizer config) through the task sequence for a group of seeds at once.

    The seeds' models form one ``SeedStack`` and one optimizer (per phase) holds all their
    parameters; optimizers keep per-parameter state, so each seed trains bitwise as it
    would alone. Each seed has its own tasks, data order and early stopping: a seed that
    has stopped on a task, or has no batch left in an epoch, leaves the forward and takes
    no step. A group of one seed is the plain unbatched run. An arm with ``then`` trains each task with its own
    optimizer for the first ``switch_after_steps`` steps and with the ``then`` optimizer
    for the rest, counted per seed.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: MnistRunConfig,
        optimizer_config: ArmConfig,
        members: list[Member],
        run: RunDirectory | None,
        progress: tqdm,
    ):
        self.accelerator = accelerator
        self.config = config
        self.optimizer_config = optimizer_config
        self.members = members
        self.run = run  # None on non-main processes
        self.progress = progress
        model_config = config.model_for(optimizer_config)
        stack = SeedStack(
            [
                MLP(NUM_PIXELS, model_config.hidden_sizes, NUM_CLASSES, seed=m.seed, powerprop_alpha=model_config.powerprop_alpha)
                for m in members
            ]
        )
        self.stack = stack  # what self.model wraps (DDP under several processes); unwrap_model is slow per call
        self.model, *self.optimizers = accelerator.prepare(stack, *self._new_optimizers(stack))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The arm's first optimizer (its only one unless it switches)."""
        return self.optimizers[0]

    def net(self, member: int) -> MLP:
        return self.stack.members[member]

    def _new_optimizers(self, model: SeedStack | MLP) -> list[torch.optim.Optimizer]:
        """The arm's optimizer and, if it switches, its ``then`` optimizer: separate objects over the
        same parameters, so each keeps its own state (and its own Shampoo sharding). Groups per seed
        (one, or Muon's split): matrix optimizers stack blocks within a group only, so a seed's
        arithmetic is the same alone or in any group of seeds."""
        members = model.members if isinstance(model, SeedStack) else [model]
        specs = [self.optimizer_config, self.optimizer_config.then]
        return [spec.build(list(members)) for spec in specs if spec is not None]

    def _phase(self, task_step: int) -> int:
        """Index of the optimizer that takes a task's ``task_step``-th step (from 0)."""
        switch = self.optimizer_config.switch_after_steps
        return int(switch is not None and task_step >= switch)

    def _l1(self, nets: list[MLP]) -> torch.Tensor | float:
        """The arm's L1 penalty on the weight matrices of ``nets`` (Powerprop: on v, same ranking as w)."""
        penalty = self.optimizer_config.l1_penalty
        if not penalty:
            return 0.0
        return penalty * sum(w.abs().sum() for net in nets for w in _weight_matrices(net))

    def _record(self, member: Member, event: str, **values: Any) -> None:
        if self.run is not None:
            record = {"unit": member.unit, "optimizer": self.optimizer_config.label, "seed": member.seed}
            self.run.log_metrics({**record, "event": event, "step": member.step, **values})

    def _log(self, member: Member, values: dict[str, float]) -> None:
        if member.tracker is not None:
            member.tracker.log(values, step=member.step)

    def _evaluate_all(self, i: int) -> list[float]:
        net, stream = self.net(i), self.members[i].stream
        net.eval()
        batch = self.config.train.eval_batch_size
        return [accuracy(net, stream, t, "test", batch) for t in range(len(stream))]

    def _step(self, active: list[int], fits: list[TaskFit]) -> None:
        """One optimizer step for the ``active`` members, each by the optimizer of its own phase."""
        phases = [self._phase(sum(fits[i].steps)) for i in active]
        for phase in sorted(set(phases)):
            stepping = [i for i, p in zip(active, phases) if p == phase]
            # Members in another phase must not move: hide their gradients from this optimizer.
            held = [p for i in active if i not in stepping for p in self.net(i).parameters()]
            grads = [p.grad for p in held]
            for p in held:
                p.grad = None
            self.optimizers[phase].step()
            for p, grad in zip(held, grads):
                p.grad = grad
            for i in stepping:
                fits[i].steps[phase] += 1

    def fit_task(self, task: int) -> list[dict[str, Any]]:
        """Train ``task`` until each member's validation accuracy stops improving; keep its best weights."""
        train = self.config.train
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        fits = [TaskFit(steps=[0] * len(self.optimizers)) for _ in self.members]
        for epoch in range(train.max_epochs):
            training = [i for i, fit in enumerate(fits) if not fit.done]
            if not training:
                break
            self.model.train()
            loss_sums = torch.zeros(len(self.members), device=self.accelerator.device)
            batches = [0] * len(self.members)
            streams = [self.members[i].stream for i in training]
            seeds = [self.members[i].seed for i in training]
            for rows, x, y in stacked_train_batches(
                streams, task, train.batch_size, seeds=seeds, epoch=epoch, rank=rank, world_size=world
            ):
                active = [training[r] for r in rows]
                self.stack.zero_grad(set_to_none=True)
                logits = self.model(x, active)
                losses = torch.stack([F.cross_entropy(logits[a], y[a]) for a in range(len(active))])
                self.accelerator.backward(losses.sum() + self._l1([self.net(i) for i in active]))
                self._step(active, fits)
                loss_sums.index_add_(0, torch.tensor(active, device=loss_sums.device), losses.detach())
                for i in active:
                    self.members[i].step += 1
                    batches[i] += 1
            counts = torch.tensor(batches, device=loss_sums.device).clamp_min(1)
            train_losses = self.accelerator.reduce(loss_sums / counts, "mean").tolist()
            for i in training:
                self._end_epoch(i, task, epoch, fits[i], train_losses[i])
            val = [fits[i].curve[-1][1] for i in training]
            self.progress.set_postfix_str(
                f"{self.optimizer_config.label} task {task + 1}/{len(self.members[0].stream)} epoch {epoch + 1}: "
                f"{len(training)} of {len(self.members)} seeds training, val {min(val):.4f}-{max(val):.4f}"
            )
        for i, fit in enumerate(fits):
            self.net(i).load_state_dict(fit.best_state)
        return [fit.summary(train.max_epochs) for fit in fits]

    def _end_epoch(self, i: int, task: int, epoch: int, fit: TaskFit, train_loss: float) -> None:
        """Validate member ``i`` after an epoch, log it, and update its early stopping."""
        member, net = self.members[i], self.net(i)
        net.eval()
        val_accuracy = accuracy(net, member.stream, task, "val", self.config.train.eval_batch_size)
        fit.curve.append([member.step, val_accuracy])
        fit.epochs = epoch + 1
        below = fraction_below(effective_weights(net), self.config.pruning.thresholds)
        self._record(
            member, "epoch", task=task, epoch=epoch, train_loss=train_loss, val_accuracy=val_accuracy, weights_below=below
        )
        self._log(member, {f"task{task}/train_loss": train_loss, f"task{task}/val_accuracy": val_accuracy})
        if val_accuracy > fit.best_accuracy:
            fit.best_accuracy, fit.stale = val_accuracy, 0
            fit.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            fit.stale += 1
            fit.done = fit.stale >= self.config.train.patience

    def train(self) -> list[dict[str, Any]]:
        """Train every member through the task sequence; one result per member (its unit file)."""
        started = time.perf_counter()
        histories = [UnitHistory(self._evaluate_all(i)) for i in range(len(self.members))]
        for member, history in zip(self.members, histories):
            self._record(member, "init", accuracies=history.initial)
        num_tasks = len(self.members[0].stream)
        for task in range(num_tasks):
            if task and self.config.train.reset_optimizer_per_task:
                self.optimizers = [self.accelerator.prepare_optimizer(o) for o in self._new_optimizers(self.stack)]
            fits = self.fit_task(task)
            for i, (member, history, fit) in enumerate(zip(self.members, histories, fits)):
                evaluation = history.add_task(
                    task, fit, self._evaluate_all(i), self.net(i), member.stream, self.config
                )
                self._record(member, "task", **evaluation)
                self._log(
                    member,
                    {
                        **{f"test_accuracy/task{j}": acc for j, acc in enumerate(evaluation["accuracies"])},
                        "test_accuracy/average_seen": evaluation["average_accuracy_seen"],
                        "representation/effective_rank": evaluation["effective_rank"],
                        "representation/cross_class_cosine": evaluation["cross_class_cosine_mean"],
                    },
                )
                logger.info(
                    "%s: task %d/%d (%s) %d epochs, best val %.4f, avg acc on seen tasks %.4f",
                    member.unit,
                    task + 1,
                    num_tasks,
                    member.stream.tasks[task].name,
                    fit["epochs"],
                    fit["best_val_accuracy"],
                    evaluation["average_accuracy_seen"],
                )
        pruning = [self._pruning(i) if self.config.pruning.enabled else None for i in range(len(self.members))]
        wall_time = time.perf_counter() - started
        return [
            {
                "unit": member.unit,
                "optimizer": self.optimizer_config.label,
                "optimizer_name": self.optimizer_config.name,
                "seed": member.seed,
                "world_size": self.accelerator.num_processes,
                "optimizer_state_shards": self._optimizer_state_shards(),
                **history.result(),
                **({"pruning": pruned} if pruned is not None else {}),
                "steps": member.step,
                "seeds_trained_together": len(self.members),
                "wall_time_s": wall_time / len(self.members),  # its share, so a run's units sum to its time
            }
            for member, history, pruned in zip(self.members, histories, pruning)
        ]

    def _pruning(self, i: int) -> dict[str, Any]:
        """Member ``i``'s mean test accuracy over all tasks after magnitude pruning to each keep fraction."""
        sparsity, net, stream = self.config.pruning, self.net(i), self.members[i].stream
        batch = self.config.train.eval_batch_size

        def mean_accuracy() -> float:
            net.eval()
            return sum(accuracy(net, stream, t, "test", batch) for t in range(len(stream))) / len(stream)

        result = {"scope": sparsity.scope, "keep": list(sparsity.keep_fractions)}
        curve = pruning_curve(net, _weight_matrices(net), mean_accuracy, sparsity.keep_fractions, sparsity.scope)
        result["accuracy"] = [point["accuracy"] for point in curve]
        if sparsity.finetune_steps:
            curve = pruning_curve(
                net, _weight_matrices(net), mean_accuracy, sparsity.keep_fractions, sparsity.scope,
                finetune=functools.partial(self._masked_finetune, i),
            )
            result["finetune_steps"] = sparsity.finetune_steps
            result["finetuned_accuracy"] = [point["accuracy"] for point in curve]
        return result

    def _masked_finetune(self, i: int, masks: list[torch.Tensor]) -> None:
        """A few steps of member ``i`` on the last task with fresh optimizers (switching as in a task),
        pruned weights held at zero."""
        member, net = self.members[i], self.net(i)
        optimizers = self._new_optimizers(net)
        task, batch = len(member.stream) - 1, self.config.train.batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        batches = (
            b for epoch in itertools.count()
            for b in member.stream.train_batches(task, batch, seed=member.seed, epoch=epoch, rank=rank, world_size=world)
        )
        net.train()
        for step, (x, y) in enumerate(itertools.islice(batches, self.config.pruning.finetune_steps)):
            optimizer = optimizers[self._phase(step)]
            optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(F.cross_entropy(net(x), y) + self._l1([net]))
            optimizer.step()
            with torch.no_grad():
                for weight, mask in zip(_weight_matrices(net), masks):
                    weight.mul_(mask)

    def _optimizer_state_shards(self) -> int:
        """Over how many ranks the arm's optimizers split their state (distributed Shampoo), else 1."""
        shards = [1]
        for optimizer in self.optimizers:
            sharding = getattr(optimizer.optimizer, "sharding", None)
            info = sharding() if sharding is not None else None
            shards.append(info["world_size"] if info else 1)
        return max(shards)


def _weight_matrices(net: MLP) -> list[torch.nn.Parameter]:
    """The parameters magnitude pruning and the L1 penalty act on (Powerprop: v, same ranking as w)."""
    return [p for p in net.parameters() if p.dim() >= 2]


class UnitHistory:
    """One unit's evaluations after every task, and the result file they make."""

    def __init__(self, initial: list[float]):
        self.initial = initial
        self.rows: list[list[float]] = []  # test accuracy on every task, after each task
        self.per_task: list[dict[str, Any]] = []
        self.first_task_features: torch.Tensor | None = None
        self.spectrum = self.cosine = None  # after the latest task

    def add_task(
        self, task: int, fit: dict[str, Any], accuracies: list[float], net: MLP, stream: TaskStream, config: MnistRunConfig
    ) -> dict[str, Any]:
        """Representation metrics on the probes of the tasks seen so far; returns the task's record."""
        batch = config.train.eval_batch_size
        self.rows.append(accuracies)
        features, labels = probe_features(net, stream, range(task + 1), batch)
        task0_features, _ = probe_features(net, stream, range(1), batch)
        if self.first_task_features is None:
            self.first_task_features = task0_features
        self.spectrum = covariance_spectrum(features)
        self.cosine = class_mean_cosine(features, labels, NUM_CLASSES)
        square = [row[: task + 1] for row in self.rows]
        evaluation = {
            **fit,
            "task": task,
            "accuracies": accuracies,
            "average_accuracy_seen": continual_metrics(square, self.initial[: task + 1])["acc"],
            "effective_rank": effective_rank_from_spectrum(self.spectrum),
            "cross_class_cosine_mean": mean_off_diagonal(self.cosine),
            "first_task_cka": linear_cka(self.first_task_features, task0_features),
            "weights_below": fraction_below(effective_weights(net), config.pruning.thresholds),
        }
        self.per_task.append(evaluation)
        return evaluation

    def result(self) -> dict[str, Any]:
        column = lambda key: [t[key] for t in self.per_task]  # noqa: E731
        return {
            "initial_accuracies": self.initial,
            "accuracy_matrix": self.rows,
            **continual_metrics(self.rows, self.initial),
            "forgetting_per_task": forgetting_per_task(self.rows).tolist(),
            **{
                key: column(key)
                for key in (
                    "epochs",
                    "best_val_accuracy",
                    "val_accuracy_curve",
                    "optimizer_steps",
                    "effective_rank",
                    "cross_class_cosine_mean",
                    "first_task_cka",
                )
            },
            "final_covariance_spectrum": self.spectrum.tolist(),
            "final_cross_class_cosine": self.cosine.tolist(),
            "weights_below": column("weights_below"),
        }


def _tracker_config(config: MnistRunConfig, optimizer: ArmConfig, seed: int) -> dict[str, Any]:
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


def seed_groups(
    config: MnistRunConfig, workers: int = 1, num_processes: int = 1, finished: set[str] = frozenset()
) -> list[tuple[ArmConfig, list[int]]]:
    """(arm, seeds) groups still to train: each arm's unfinished seeds in ``workers`` near-equal groups.

    A seed trains bitwise the same in any group, so groups can follow the machine. Under
    several processes (accelerate launch) the ranks split every batch of one seed (DDP),
    so each seed is its own group there.
    """
    groups = []
    for arm in config.arms:
        todo = [seed for seed in config.seeds if unit_id(arm.label, seed) not in finished]
        parts = len(todo) if num_processes > 1 else min(workers, len(todo))
        bounds = [len(todo) * k // parts for k in range(parts + 1)] if parts else []
        groups += [(arm, todo[a:b]) for a, b in zip(bounds, bounds[1:])]
    return groups


def train_group(
    accelerator: Accelerator,
    config: MnistRunConfig,
    arrays: MnistArrays,
    run: RunDirectory,
    arm: ArmConfig,
    seeds: list[int],
    progress: tqdm,
) -> list[str]:
    """Train one (arm, seeds) group and write its unit files (main process); returns the unit ids."""
    main = accelerator.is_main_process
    data = config.data
    members = []
    for seed in seeds:
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
        unit = unit_id(arm.label, seed)
        tracker = None
        if main and config.log_with == "tensorboard":
            tracker = TensorBoardTracker(unit, run.tensorboard_dir)  # what accelerator.init_trackers builds
            tracker.start()
            tracker.store_init_configuration(_tracker_config(config, arm, seed))
        members.append(Member(seed, TaskStream(arrays, tasks, accelerator.device), unit, tracker))
    results = ArmTrainer(accelerator, config, arm, members, run if main else None, progress).train()
    for member, result in zip(members, results):
        if member.tracker is not None:
            member.tracker.finish()
        if main:
            result["task_names"] = [t.name for t in member.stream.tasks]
            run.write_unit(member.unit, result)
    accelerator.free_memory()
    return [member.unit for member in members]


_WORKER: dict[str, Any] = {}  # one worker process's accelerator, config, data and run directory


def _start_worker(config: MnistRunConfig, run_path: Path, threads: int, log_level: int) -> None:
    torch.set_num_threads(threads)
    configure_logging(level=log_level)
    _WORKER.update(
        accelerator=make_accelerator(), config=config, arrays=load_mnist(config.data.cache_dir), run=RunDirectory(run_path)
    )


def _worker_train_group(job: tuple[int, list[int]]) -> list[str]:
    arm, seeds = job
    w = _WORKER
    config = w["config"]
    return train_group(w["accelerator"], config, w["arrays"], w["run"], config.arms[arm], seeds, tqdm(disable=True))


def run_experiment(config: MnistRunConfig, output: str | Path, resume: bool = False, workers: int = 1) -> Path:
    """Run every (optimizer, seed) unit of ``config`` into ``output``; returns the run dir.

    ``workers`` > 1 trains the seed groups in that many spawned processes, each with an
    equal share of this process's CPU threads: the MLP's products are too small to keep
    two threads busy, so on a CPU separate processes use the cores far better.
    """
    run = RunDirectory(output)
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    if workers > 1 and accelerator.num_processes > 1:
        raise UserError(
            f"--workers {workers} under a {accelerator.num_processes}-process launch: use one or the other "
            "(--workers splits seeds among processes on one machine; accelerate launch splits each batch)"
        )
    run.check(config.to_yaml(), resume)
    accelerator.wait_for_everyone()  # every rank has checked before the main one writes
    if main:
        run.open(config.to_yaml())
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        arrays = load_mnist(config.data.cache_dir)
    finished = run.finished_units()
    groups = seed_groups(config, workers, accelerator.num_processes, finished)
    total = len(config.seeds) * len(config.arms)
    if finished:
        logger.info("resuming %s: %d of %d units already finished", run.path, len(finished), total)
    logger.info(
        "%s: %d units in %d groups of seeds, %s, device %s",
        config.name,
        total - len(finished),
        len(groups),
        f"{workers} worker processes" if workers > 1 else f"{accelerator.num_processes} process(es)",
        accelerator.device,
    )
    with logging_redirect_tqdm(), tqdm(total=total, initial=len(finished), desc="units", disable=not main) as bar:
        if workers > 1:
            threads = max(1, torch.get_num_threads() // workers)
            context = torch.multiprocessing.get_context("spawn")
            jobs = [(config.arms.index(arm), seeds) for arm, seeds in groups]
            initargs = (config, run.path, threads, logging.getLogger().getEffectiveLevel())
            with context.Pool(workers, _start_worker, initargs) as pool:
                for units in pool.imap_unordered(_worker_train_group, jobs):
                    bar.update(len(units))
                pool.close()  # let the workers exit on their own (leaving the block would kill them)
                pool.join()
        else:
            for arm, seeds in groups:
                bar.update(len(train_group(accelerator, config, arrays, run, arm, seeds, bar)))
    accelerator.wait_for_everyone()
    if main:
        run.write_report()
        logger.info("report written to %s", run.path / "report.md")
    return run.path
