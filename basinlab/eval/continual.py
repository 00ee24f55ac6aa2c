"""Continual-learning metrics on an accuracy matrix.

The central question of basinlab is whether an optimizer finds solutions that survive
later training. These metrics turn the accuracy matrix of a task sequence into the
standard summary numbers, with the definitions of docs/metrics.md, 0-indexed:

    R[i, j]  accuracy on task j after training task i        (T x T)
    b[j]     accuracy on task j at initialization             (length T)

    ACC        = mean_j R[T-1, j]
    BWT        = mean_{j < T-1} (R[T-1, j] - R[j, j])                    Lopez-Paz & Ranzato 2017
    FWT        = mean_{j >= 1} (R[j-1, j] - b[j])                        Lopez-Paz & Ranzato 2017
    f[j]       = max_{l < T-1} R[l, j] - R[T-1, j]   for j < T-1         Chaudhry et al. 2018
    forgetting = mean_j f[j]

During training the same functions are applied to the leading i x i block
(``R[:i, :i]``, ``b[:i]``), which is the matrix of a run that stopped after task i-1.
A metric that averages over an empty set (BWT, FWT and forgetting when T == 1) is NaN.
Entries are used as given: a NaN entry that a metric reads makes that metric NaN.
For losses in place of accuracies (text domains) either pass the negated losses (R = -L,
b = -L0): every metric then keeps its reading (positive BWT/FWT help, positive forgetting
hurts) and forgetting compares with the lowest earlier loss, as it should; or use
:func:`loss_continual_metrics`, which reports the same quantities in loss units with the
loss sign convention (lower is better; positive BWT and forgetting = the loss went up).
"""

from __future__ import annotations

import math

import numpy as np


def _matrix(R, what: str = "accuracy matrix R") -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"{what} must be square (T x T), got shape {R.shape}")
    if R.shape[0] == 0:
        raise ValueError(f"{what} is empty; it needs at least one task (T >= 1)")
    return R


def _initial(b, T: int, what: str = "initial accuracies b") -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (T,):
        raise ValueError(
            f"{what} must be a vector of length T={T} (one per task), got shape {b.shape}"
        )
    return b


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def average_accuracy(R) -> float:
    """ACC: mean accuracy over all tasks after training the last one."""
    return float(_matrix(R)[-1].mean())


def backward_transfer(R) -> float:
    """BWT: mean change on earlier tasks from just after learning them to the end."""
    R = _matrix(R)
    j = np.arange(R.shape[0] - 1)
    return _mean(R[-1, j] - R[j, j])


def forward_transfer(R, b) -> float:
    """FWT: mean accuracy on task j just before training it, relative to initialization."""
    R = _matrix(R)
    b = _initial(b, R.shape[0])
    j = np.arange(1, R.shape[0])
    return _mean(R[j - 1, j] - b[j])


def forgetting_per_task(R) -> np.ndarray:
    """f[j] for j < T-1: best accuracy before the last task minus final accuracy.

    The max runs over all rows l < T-1, not only l >= j, as in Chaudhry et al.; f[j]
    can be negative when the last task improved task j. Length T-1 (empty for T == 1).
    """
    R = _matrix(R)
    T = R.shape[0]
    return R[: T - 1, : T - 1].max(axis=0, initial=-np.inf) - R[-1, : T - 1]


def forgetting(R) -> float:
    """F: mean of ``forgetting_per_task(R)``; NaN when T == 1."""
    return _mean(forgetting_per_task(R))


def continual_metrics(R, b) -> dict[str, float]:
    """All four summary numbers: keys "acc", "bwt", "fwt", "forgetting"."""
    R = _matrix(R)
    b = _initial(b, R.shape[0])
    return {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, b),
        "forgetting": forgetting(R),
    }


def loss_continual_metrics(loss_matrix, initial_losses) -> dict[str, float]:
    """Continual-learning summary of a loss matrix (lower is better), in loss units.

    ``loss_matrix[i][j]`` = L[i, j] = validation (MLM) loss on domain j after training domain i
    (T x T, 0-indexed); ``initial_losses[j]`` = L0[j], the loss on domain j at initialization.

    - ``final_loss``      = mean_j L[T-1, j]
    - ``bwt_loss``        = mean_{j<T-1} (L[T-1, j] - L[j, j]).
      POSITIVE = forgetting (the loss on earlier domains went up); negative = backward transfer.
    - ``fwt_loss``        = mean_{j>=1} (L[j-1, j] - L0[j]).
      NEGATIVE = positive forward transfer (earlier domains lowered the loss on domain j
      before it was trained); positive = interference.
    - ``forgetting_loss`` = mean_{j<T-1} (L[T-1, j] - min_{l<T-1} L[l, j]).
      POSITIVE = forgetting (final loss above the best loss seen before the last domain);
      not clipped, so it is negative when the last domain lowered earlier losses.

    With acc = :func:`continual_metrics` (-L, -L0): final_loss = -acc["acc"], bwt_loss =
    -acc["bwt"], fwt_loss = -acc["fwt"], forgetting_loss = +acc["forgetting"]. Metrics that
    average over an empty set (all but ``final_loss`` when T == 1) are NaN, and a NaN entry
    that a metric reads makes that metric NaN.
    """
    L = _matrix(loss_matrix, "loss matrix L")
    L0 = _initial(initial_losses, L.shape[0], "initial losses")
    T = L.shape[0]
    earlier = np.arange(T - 1)
    later = np.arange(1, T)
    best_before_last = L[: T - 1, : T - 1].min(axis=0, initial=np.inf)
    return {
        "final_loss": float(L[-1].mean()),
        "bwt_loss": _mean(L[-1, earlier] - L[earlier, earlier]),
        "fwt_loss": _mean(L[later - 1, later] - L0[later]),
        "forgetting_loss": _mean(L[-1, : T - 1] - best_before_last),
    }
