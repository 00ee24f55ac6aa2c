"""Training one arm of the MNIST recipe for a group of seeds at once (``ArmTrainer``).

The seeds' models form one ``SeedStack``; each seed keeps its own tasks, data order,
early stopping and optimizer state, so it trains bitwise as it would alone. Under
``accelerate launch`` each seed is its own group and every rank trains on its share of each
batch (DDP averages the gradients); the pruning fine-tune trains through the same
prepared, stacked path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from basinlab.data.streams import NUM_CLASSES, NUM_PIXELS, TaskStream, stacked_train_batches
from basinlab.eval.pruning import fraction_below, magnitude_masks, pruning_curve
from basinlab.eval.results import MnistUnitResult
from basinlab.launch.config import ArmConfig
from basinlab.launch.mnist_config import MnistRunConfig
from basinlab.launch.driver import UnitLog
from basinlab.launch.mnist_evaluation import UnitHistory, accuracy
from basinlab.models import MLP, effective_weights
from basinlab.models.seed_stack import SeedStack
from basinlab.optim.checkpoint import state_shards

logger = logging.getLogger(__name__)
PHASES = ("first", "then")  # an arm's optimizers in the order they train each task


@dataclass
class Member:
    """One seed of the group an ArmTrainer trains: its data and its place in the run."""

    seed: int
    stream: TaskStream
    log: UnitLog  # its metrics lines and TensorBoard scalars
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
        arm: ArmConfig,
        members: list[Member],
        progress: tqdm,
    ):
        self.accelerator = accelerator
        self.config = config
        self.arm = arm
        self.members = members
        self.progress = progress
        model_config = config.model_for(arm)
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
        specs = [self.arm, self.arm.then]
        return [spec.build(list(members)) for spec in specs if spec is not None]

    def _phase(self, task_step: int) -> int:
        """Index of the optimizer that takes a task's ``task_step``-th step (from 0)."""
        switch = self.arm.switch_after_steps
        return int(switch is not None and task_step >= switch)

    def _penalties(self, nets: list[MLP]) -> torch.Tensor | float:
        """The arm's L1 penalty on the weight matrices of ``nets`` (Powerprop: on v, same ranking as w) and
        its rank penalty: the nuclear norm of the last hidden layer's weights, which bounds the rank of the
        layer's pre-activations, so the optimizer stays what it was while the representation is pushed low-rank."""
        total = 0.0
        if self.arm.l1_penalty:
            total = self.arm.l1_penalty * sum(w.abs().sum() for net in nets for w in _weight_matrices(net))
        if self.arm.rank_penalty:
            total = total + self.arm.rank_penalty * sum(torch.linalg.svdvals(net.hidden[-1].weight).sum() for net in nets)
        return total

    def _record(self, member: Member, event: str, **values: Any) -> None:
        member.log.write(event, step=member.step, **values)

    def _log(self, member: Member, values: dict[str, float]) -> None:
        member.log.scalars(values, step=member.step)

    def _evaluate_all(self, i: int) -> list[float]:
        net, stream = self.net(i), self.members[i].stream
        net.eval()
        batch = self.config.train.eval_batch_size
        return [accuracy(net, stream, t, "test", batch) for t in range(len(stream))]

    def _step(self, active: list[int], fits: list[TaskFit], optimizers: list[torch.optim.Optimizer]) -> None:
        """One optimizer step for the ``active`` members, each by the optimizer of its own phase."""
        phases = [self._phase(sum(fits[i].steps)) for i in active]
        for phase in sorted(set(phases)):
            stepping = [i for i, p in zip(active, phases) if p == phase]
            # Members in another phase must not move: hide their gradients from this optimizer.
            held = [p for i in active if i not in stepping for p in self.net(i).parameters()]
            grads = [p.grad for p in held]
            for p in held:
                p.grad = None
            optimizers[phase].step()
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
                self.accelerator.backward(losses.sum() + self._penalties([self.net(i) for i in active]))
                self._step(active, fits, self.optimizers)
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
                f"{self.arm.label} task {task + 1}/{len(self.members[0].stream)} epoch {epoch + 1}: "
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

    def train(self) -> list[MnistUnitResult]:
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
                    member.log.unit,
                    task + 1,
                    num_tasks,
                    member.stream.tasks[task].name,
                    fit["epochs"],
                    fit["best_val_accuracy"],
                    evaluation["average_accuracy_seen"],
                )
        pruning = self._pruning() if self.config.pruning.enabled else [None] * len(self.members)
        wall_time = time.perf_counter() - started
        return [
            MnistUnitResult(
                unit=member.log.unit,
                arm=self.arm.label,
                optimizer_name=self.arm.name,
                seed=member.seed,
                world_size=self.accelerator.num_processes,
                optimizer_state_shards=self._optimizer_state_shards(),
                wall_time_s=wall_time / len(self.members),  # its share, so a run's units sum to its time
                task_names=[t.name for t in member.stream.tasks],
                **history.result(),
                pruning=pruned,
                steps=member.step,
                seeds_trained_together=len(self.members),
            )
            for member, history, pruned in zip(self.members, histories, pruning)
        ]

    def _mean_accuracy(self, i: int) -> float:
        net, stream = self.net(i), self.members[i].stream
        net.eval()
        batch = self.config.train.eval_batch_size
        return sum(accuracy(net, stream, t, "test", batch) for t in range(len(stream))) / len(stream)

    def _pruning(self) -> list[dict[str, Any]]:
        """Each member's mean test accuracy over all tasks after magnitude pruning to each keep
        fraction, and with ``finetune_steps`` after a masked fine-tune of all members together."""
        pruning = self.config.pruning
        results = []
        for i in range(len(self.members)):
            net = self.net(i)
            curve = pruning_curve(
                net, _weight_matrices(net), lambda: self._mean_accuracy(i), pruning.keep_fractions, pruning.scope
            )
            results.append({"scope": pruning.scope, "keep": list(pruning.keep_fractions), "accuracy": [p["accuracy"] for p in curve]})
        if pruning.finetune_steps:
            finetuned = self._finetuned_pruning()
            for result, accuracies in zip(results, finetuned):
                result.update(finetune_steps=pruning.finetune_steps, finetuned_accuracy=accuracies)
        return results

    def _finetuned_pruning(self) -> list[list[float]]:
        """Per member, the accuracy per keep fraction after pruning and a masked fine-tune; the
        trained weights are restored after each fraction."""
        pruning = self.config.pruning
        saved = {name: value.clone() for name, value in self.stack.state_dict().items()}
        rankings = [[w.detach().clone() for w in _weight_matrices(self.net(i))] for i in range(len(self.members))]
        accuracies: list[list[float]] = [[] for _ in self.members]
        try:
            for keep in pruning.keep_fractions:
                masks = [magnitude_masks(ranking, keep, pruning.scope) for ranking in rankings]
                self._apply_masks(masks)
                self._masked_finetune(masks)
                for i in range(len(self.members)):
                    accuracies[i].append(self._mean_accuracy(i))
                self.stack.load_state_dict(saved)
        finally:
            self.stack.load_state_dict(saved)
        return accuracies

    @torch.no_grad()
    def _apply_masks(self, masks: list[list[torch.Tensor]]) -> None:
        for i, member_masks in enumerate(masks):
            for weight, mask in zip(_weight_matrices(self.net(i)), member_masks):
                weight.mul_(mask)

    def _masked_finetune(self, masks: list[list[torch.Tensor]]) -> None:
        """``finetune_steps`` steps of every member on the last task, through the prepared model with
        fresh prepared optimizers (switching as in a task), pruned weights held at zero."""
        steps, train = self.config.pruning.finetune_steps, self.config.train
        optimizers = [self.accelerator.prepare_optimizer(o) for o in self._new_optimizers(self.stack)]
        fits = [TaskFit(steps=[0] * len(optimizers)) for _ in self.members]
        task = len(self.members[0].stream) - 1
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        streams = [m.stream for m in self.members]
        seeds = [m.seed for m in self.members]
        self.model.train()
        epoch, stepped = 0, True
        while stepped and any(sum(fit.steps) < steps for fit in fits):
            stepped = False  # a task without one full batch would never finish the loop
            for rows, x, y in stacked_train_batches(
                streams, task, train.batch_size, seeds=seeds, epoch=epoch, rank=rank, world_size=world
            ):
                keep = [r for r in range(len(rows)) if sum(fits[rows[r]].steps) < steps]
                if not keep:
                    continue
                stepped = True
                active = [rows[r] for r in keep]
                self.stack.zero_grad(set_to_none=True)
                logits = self.model(x[keep], active)
                losses = torch.stack([F.cross_entropy(logits[a], y[keep[a]]) for a in range(len(active))])
                self.accelerator.backward(losses.sum() + self._penalties([self.net(i) for i in active]))
                self._step(active, fits, optimizers)
                self._apply_masks(masks)
            epoch += 1

    def _optimizer_state_shards(self) -> int:
        """Over how many ranks the arm's optimizers split their state (distributed Shampoo, SOAP, Muon), else 1."""
        return max(state_shards(optimizer) for optimizer in self.optimizers)


def _weight_matrices(net: MLP) -> list[torch.nn.Parameter]:
    """The parameters magnitude pruning and the L1 penalty act on (Powerprop: v, same ranking as w)."""
    return [p for p in net.parameters() if p.dim() >= 2]
