"""Evaluating an MNIST unit: accuracies on every task and the representation metrics on the
probe sets after each task, collected into the fields of its result (``UnitHistory``)."""

from __future__ import annotations

from typing import Any

import torch

from basinlab.data.streams import NUM_CLASSES, TaskStream
from basinlab.eval.continual import continual_metrics, forgetting_per_task
from basinlab.eval.pruning import fraction_below
from basinlab.eval.representation import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)
from basinlab.launch.mnist_config import MnistRunConfig
from basinlab.models import MLP, effective_weights


@torch.no_grad()
def accuracy(model: MLP, stream: TaskStream, task: int, split: str, batch_size: int) -> float:
    correct = total = 0
    for x, y in stream.eval_batches(task, split, batch_size):
        correct += (model(x).argmax(dim=1) == y).sum().item()
        total += len(y)
    return correct / total


@torch.no_grad()
def probe_features(model: MLP, stream: TaskStream, tasks: range, batch_size: int, pre_activation: bool = False):
    """Last-hidden-layer activations (after the ReLU unless ``pre_activation``) and labels on the probe
    sets of ``tasks``, pooled."""
    features, labels = [], []
    for task in tasks:
        for x, y in stream.eval_batches(task, "probe", batch_size):
            features.append(model.features(x, pre_activation))
            labels.append(y)
    return torch.cat(features), torch.cat(labels)


def measure_representation(net: MLP, stream: TaskStream, seen: int, config: MnistRunConfig):
    """Covariance spectrum, class-mean cosine matrix, effective rank and mean cross-class cosine of the
    ``seen`` tasks' probes, measured where ``config.representation`` says: pooled over the tasks, or per
    task with the spectra, matrices and scalars averaged over the tasks."""
    where = config.representation
    pools = [range(seen)] if where.probes == "pooled" else [range(t, t + 1) for t in range(seen)]
    spectra, cosines = [], []
    for tasks in pools:
        features, labels = probe_features(net, stream, tasks, config.train.eval_batch_size, where.layer == "pre_activation")
        if where.class_means == "centred":
            features = features - features.mean(dim=0, keepdim=True)
        spectra.append(covariance_spectrum(features))
        cosines.append(class_mean_cosine(features, labels, NUM_CLASSES))
    ranks = [effective_rank_from_spectrum(s) for s in spectra]
    overlaps = [mean_off_diagonal(c) for c in cosines]
    spectrum = torch.stack(spectra).mean(dim=0)
    cosine = torch.stack(cosines).nanmean(dim=0)
    return spectrum, cosine, sum(ranks) / len(ranks), sum(overlaps) / len(overlaps)


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
        self.rows.append(accuracies)
        pre_activation = config.representation.layer == "pre_activation"
        task0_features, _ = probe_features(net, stream, range(1), config.train.eval_batch_size, pre_activation)
        if self.first_task_features is None:
            self.first_task_features = task0_features
        self.spectrum, self.cosine, rank, overlap = measure_representation(net, stream, task + 1, config)
        square = [row[: task + 1] for row in self.rows]
        evaluation = {
            **fit,
            "task": task,
            "accuracies": accuracies,
            "average_accuracy_seen": continual_metrics(square, self.initial[: task + 1])["acc"],
            "effective_rank": rank,
            "cross_class_cosine_mean": overlap,
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
