"""The local `evaluate` modules load offline with the real evaluate.load and agree with
the functions they wrap."""

import math

import evaluate
import numpy as np
import pytest
import torch

from basinlab.eval import (
    class_mean_cosine,
    continual_metrics,
    effective_rank,
    mean_off_diagonal,
    metric_path,
)


def load(name):
    """The real evaluate.load on our local module (conftest points HF caches at a tmp dir)."""
    return evaluate.load(metric_path(name))


R = [[0.8, 0.3, 0.1], [0.9, 0.7, 0.2], [0.6, 0.5, 0.95]]
B = [0.1, 0.1, 0.2]


def test_metric_path_unknown_lists_available():
    with pytest.raises(ValueError, match="continual_learning, representation"):
        metric_path("accuracy")


def test_continual_learning_compute_matches_function():
    metric = load("continual_learning")
    assert metric.compute(accuracy_matrix=R, initial_accuracies=B) == continual_metrics(R, B)


def test_continual_learning_rows_added_one_by_one():
    metric = load("continual_learning")
    for row in R:
        metric.add(accuracy_matrix=np.array(row))
    assert metric.compute(initial_accuracies=B) == continual_metrics(R, B)


def test_continual_learning_single_task_gives_nan():
    out = load("continual_learning").compute(accuracy_matrix=[[0.9]], initial_accuracies=[0.1])
    assert out["acc"] == pytest.approx(0.9) and math.isnan(out["bwt"])


def test_representation_matches_functions():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g)
    metric = load("representation")
    metric.add_batch(representations=h[:100].numpy(), labels=labels[:100].numpy())
    out = metric.compute(representations=h[100:].tolist(), labels=labels[100:].tolist(), num_classes=6)
    assert out == {
        "effective_rank": effective_rank(h),
        "mean_cross_class_cosine": mean_off_diagonal(class_mean_cosine(h, labels, 6)),
    }
