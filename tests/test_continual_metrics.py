"""Continual-learning metrics on hand-worked accuracy matrices (definitions: docs/metrics.md)."""

import math

import numpy as np
import pytest

from basinlab.eval import (
    average_accuracy,
    backward_transfer,
    continual_metrics,
    forgetting,
    forgetting_per_task,
    forward_transfer,
)

# Worked by hand (0-indexed, R[i, j] = accuracy on task j after training task i):
#
#        task0  task1  task2
#   R = [[0.8,  0.3,  0.1 ],   after task 0
#        [0.9,  0.7,  0.2 ],   after task 1: task 0 went UP (0.8 -> 0.9)
#        [0.6,  0.5,  0.95]]   after task 2
#   b =  [0.1,  0.1,  0.2 ]    at initialization
#
# ACC = (0.6 + 0.5 + 0.95) / 3                    = 2.05 / 3 = 0.68333...
# BWT = ((0.6 - 0.8) + (0.5 - 0.7)) / 2           = -0.2        (uses the diagonal R[j, j])
# FWT = ((R[0,1] - b1) + (R[1,2] - b2)) / 2
#     = ((0.3 - 0.1) + (0.2 - 0.2)) / 2           = 0.1
# f0  = max(0.8, 0.9) - 0.6 = 0.3                 (max is row 1, not the diagonal row 0)
# f1  = max(0.3, 0.7) - 0.5 = 0.2
# F   = (0.3 + 0.2) / 2                           = 0.25
R = [[0.8, 0.3, 0.1], [0.9, 0.7, 0.2], [0.6, 0.5, 0.95]]
B = [0.1, 0.1, 0.2]


def test_hand_worked_3x3():
    assert average_accuracy(R) == pytest.approx(2.05 / 3)
    assert backward_transfer(R) == pytest.approx(-0.2)
    assert forward_transfer(R, B) == pytest.approx(0.1)
    np.testing.assert_allclose(forgetting_per_task(R), [0.3, 0.2])
    assert forgetting(R) == pytest.approx(0.25)


def test_continual_metrics_dict_matches_and_accepts_arrays():
    out = continual_metrics(np.array(R), np.array(B))
    assert out == pytest.approx({"acc": 2.05 / 3, "bwt": -0.2, "fwt": 0.1, "forgetting": 0.25})
    assert all(type(v) is float for v in out.values())


def test_leading_block_is_the_run_so_far():
    # After task 1 only: R = [[0.8, 0.3], [0.9, 0.7]], b = [0.1, 0.1].
    # ACC = (0.9 + 0.7)/2 = 0.8; BWT = 0.9 - 0.8 = 0.1; FWT = 0.3 - 0.1 = 0.2; F = 0.8 - 0.9 = -0.1.
    out = continual_metrics(np.array(R)[:2, :2], B[:2])
    assert out == pytest.approx({"acc": 0.8, "bwt": 0.1, "fwt": 0.2, "forgetting": -0.1})


def test_forgetting_is_not_clipped_and_excludes_last_row():
    # The last task improved task 0 (0.5 -> 0.7): f0 = 0.5 - 0.7 = -0.2, not 0.
    assert forgetting([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(-0.2)


def test_single_task_undefined_metrics_are_nan():
    out = continual_metrics([[0.9]], [0.1])
    assert out["acc"] == pytest.approx(0.9)
    assert math.isnan(out["bwt"]) and math.isnan(out["fwt"]) and math.isnan(out["forgetting"])
    assert forgetting_per_task([[0.9]]).shape == (0,)


@pytest.mark.parametrize(
    "bad_R, match",
    [
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "square"),
        ([0.1, 0.2], "square"),
        (np.zeros((2, 2, 2)), "square"),
        (np.zeros((0, 0)), "empty"),
    ],
)
def test_bad_matrix_shape_raises(bad_R, match):
    with pytest.raises(ValueError, match=match):
        average_accuracy(bad_R)


@pytest.mark.parametrize("bad_b", [[0.1, 0.1], [[0.1, 0.1, 0.2]], [0.1, 0.1, 0.2, 0.3]])
def test_bad_initial_accuracies_raise(bad_b):
    with pytest.raises(ValueError, match="length T=3"):
        continual_metrics(R, bad_b)


# --- loss matrices (text domains): lower is better, signs stated in loss_continual_metrics ---
#
#        dom0  dom1  dom2
#   L = [[2.0,  5.0,  6.0],   after domain 0
#        [1.5,  1.0,  4.0],   after domain 1: dom0 went DOWN (2.0 -> 1.5)
#        [3.0,  2.5,  0.5]]   after domain 2
#   L0 = [6.0,  6.5,  5.0]    at initialization
#
# final_loss      = (3.0 + 2.5 + 0.5) / 3                 = 2.0
# bwt_loss        = ((3.0 - 2.0) + (2.5 - 1.0)) / 2       = 1.25   (> 0: forgetting)
# fwt_loss        = ((5.0 - 6.5) + (4.0 - 5.0)) / 2       = -1.25  (< 0: positive transfer)
# forgetting_loss = ((3.0 - min(2.0, 1.5)) + (2.5 - min(5.0, 1.0))) / 2
#                 = (1.5 + 1.5) / 2                        = 1.5    (min is row 1 for dom0)
L_LOSS = [[2.0, 5.0, 6.0], [1.5, 1.0, 4.0], [3.0, 2.5, 0.5]]
L0_LOSS = [6.0, 6.5, 5.0]


def test_loss_metrics_hand_worked_3x3():
    from basinlab.eval.continual import loss_continual_metrics

    out = loss_continual_metrics(L_LOSS, L0_LOSS)
    assert out == pytest.approx({"final_loss": 2.0, "bwt_loss": 1.25, "fwt_loss": -1.25, "forgetting_loss": 1.5})
    assert all(type(v) is float for v in out.values())


def test_loss_metrics_match_accuracy_metrics_on_negated_losses():
    from basinlab.eval.continual import loss_continual_metrics

    out = loss_continual_metrics(np.array(L_LOSS), np.array(L0_LOSS))
    acc = continual_metrics(-np.array(L_LOSS), -np.array(L0_LOSS))
    assert out["final_loss"] == pytest.approx(-acc["acc"])
    assert out["bwt_loss"] == pytest.approx(-acc["bwt"])
    assert out["fwt_loss"] == pytest.approx(-acc["fwt"])
    assert out["forgetting_loss"] == pytest.approx(acc["forgetting"])  # forgetting keeps its sign


def test_loss_metrics_2x2_improvement_gives_negative_forgetting():
    from basinlab.eval.continual import loss_continual_metrics

    # L = [[2, 4], [1, 3]], L0 = [5, 5]: training dom1 lowered dom0's loss 2 -> 1.
    # final = 2; bwt = 1 - 2 = -1; fwt = 4 - 5 = -1; forgetting = 1 - 2 = -1 (not clipped).
    out = loss_continual_metrics([[2.0, 4.0], [1.0, 3.0]], [5.0, 5.0])
    assert out == pytest.approx({"final_loss": 2.0, "bwt_loss": -1.0, "fwt_loss": -1.0, "forgetting_loss": -1.0})


def test_loss_metrics_single_domain_and_nan_entries():
    from basinlab.eval.continual import loss_continual_metrics

    out = loss_continual_metrics([[1.5]], [4.0])
    assert out["final_loss"] == pytest.approx(1.5)
    assert math.isnan(out["bwt_loss"]) and math.isnan(out["fwt_loss"]) and math.isnan(out["forgetting_loss"])
    # A NaN initial loss only affects FWT.
    out = loss_continual_metrics([[2.0, 4.0], [3.0, 1.0]], [math.nan, math.nan])
    assert math.isnan(out["fwt_loss"])
    assert out["bwt_loss"] == pytest.approx(1.0) and out["forgetting_loss"] == pytest.approx(1.0)


def test_loss_metrics_bad_shapes_raise():
    from basinlab.eval.continual import loss_continual_metrics

    with pytest.raises(ValueError, match="loss matrix L must be square"):
        loss_continual_metrics([[1.0, 2.0]], [1.0])
    with pytest.raises(ValueError, match="empty"):
        loss_continual_metrics(np.zeros((0, 0)), [])
    with pytest.raises(ValueError, match="initial losses must be a vector of length T=3"):
        loss_continual_metrics(L_LOSS, [1.0, 2.0])
