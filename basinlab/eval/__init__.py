"""Evaluation: continual-learning and representation metrics, and their `evaluate` modules.

The functions are the source of truth; the scripts under ``metrics/`` wrap them for
``evaluate.load(metric_path(name))``, because hub metrics cannot be fetched offline.
"""

from __future__ import annotations

from pathlib import Path

from basinlab.eval.continual import (
    average_accuracy,
    backward_transfer,
    continual_metrics,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    loss_continual_metrics,
)
from basinlab.eval.representation import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)

_METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def available_metrics() -> list[str]:
    """Names of the local `evaluate` modules shipped with basinlab."""
    return sorted(d.name for d in _METRICS_DIR.iterdir() if (d / f"{d.name}.py").is_file())


def metric_path(name: str) -> str:
    """Folder of the local `evaluate` module ``name``, for ``evaluate.load(metric_path(name))``."""
    if name not in available_metrics():
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}")
    return str(_METRICS_DIR / name)


__all__ = [
    "available_metrics",
    "average_accuracy",
    "backward_transfer",
    "class_mean_cosine",
    "continual_metrics",
    "covariance_spectrum",
    "effective_rank",
    "effective_rank_from_spectrum",
    "forgetting",
    "forgetting_per_task",
    "forward_transfer",
    "linear_cka",
    "loss_continual_metrics",
    "mean_off_diagonal",
    "metric_path",
]
