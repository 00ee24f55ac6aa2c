"""Confidence intervals, paired differences and the property card, on hand-made numbers (no training)."""

import json
import math

import pytest

from basinlab.errors import UserError
from basinlab.eval.report import render_mnist_report
from basinlab.eval.results import InvalidUnitFile, MnistUnitResult
from basinlab.eval.stats import mean_ci, paired_differences, t_cdf, t_quantile
from basinlab.eval.summary import build_mnist_summary
from basinlab.launch.config import config_from_dict


@pytest.mark.parametrize(
    "p, df, table",  # Student-t tables, to the 3 decimals they print
    [(0.975, 1, 12.706), (0.975, 9, 2.262), (0.975, 29, 2.045), (0.975, 4, 2.776), (0.995, 4, 4.604), (0.95, 2, 2.920)],
)
def test_t_quantile_matches_the_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-t_quantile(p, df))


def test_t_cdf_matches_the_closed_forms():
    for t in (-3.0, -0.4, 0.0, 0.7, 25.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)


def test_mean_ci_on_known_data():
    stat = mean_ci([1, 2, 3, 4, 5])
    half_width = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975,4} * std / sqrt(n)
    assert stat["mean"] == 3 and stat["n"] == 5 and stat["ci_level"] == 0.95
    assert stat["std"] == pytest.approx(math.sqrt(2.5))
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((3 - half_width, 3 + half_width))
    assert mean_ci([1, 2, 3, 4, 5], level=0.99)["ci_high"] > stat["ci_high"]


def test_mean_ci_drops_diverged_seeds_and_has_no_interval_from_one():
    assert mean_ci([0.5, None, math.nan, math.inf]) == {
        "mean": 0.5, "std": None, "n": 1, "ci_low": None, "ci_high": None, "ci_level": 0.95
    }
    assert mean_ci([None, math.nan])["mean"] is None and mean_ci([])["n"] == 0
    assert mean_ci([1.0, 3.0, None]) == pytest.approx(mean_ci([1.0, 3.0]))


def test_paired_differences_use_shared_finite_seeds_and_cancel_the_seed_effect():
    a = {0: 1.0, 1: 2.0, 2: 3.5, 3: None, 5: 7.0}
    b = {0: 0.5, 1: 1.0, 2: 2.0, 3: 1.0, 4: 9.0}
    stat = paired_differences(a, b)  # seeds 0, 1, 2: differences 0.5, 1.0, 1.5
    half_width = 4.3026527 * 0.5 / math.sqrt(3)
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(1.0)
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((1 - half_width, 1 + half_width))
    # a seed effect shared by both arms hides the gap between the means but not the paired one
    arm_b = {0: 0.1, 1: 0.5, 2: 0.9}
    arm_a = {s: v + 0.02 + 0.001 * s for s, v in arm_b.items()}
    assert mean_ci(arm_a.values())["ci_low"] < mean_ci(arm_b.values())["ci_high"]
    assert paired_differences(arm_a, arm_b)["ci_low"] > 0.015


def _config(labels, target=0.95):
    return {
        "name": "synthetic",
        "seeds": [0, 1, 2],
        "data": {"stream": "permuted", "num_tasks": 2},
        "train": {"convergence_target": target},
        "arms": [{"name": "sgd", "label": label, "lr": 0.1} for label in labels],
    }


def _unit(label, seed, acc, reached_at=None, small=0.2):
    """A finished 2-task unit whose headline numbers derive from ``acc``; task-1 val accuracy
    crosses 0.95 at step ``reached_at`` (never if None)."""
    curve = [[100, 0.90], [200, 0.93]] if reached_at is None else [[reached_at - 100, 0.9], [reached_at, 0.96]]
    return MnistUnitResult(
        unit=f"{label}__seed{seed}",
        arm=label,
        optimizer_name="sgd",
        seed=seed,
        world_size=1,
        optimizer_state_shards=1,
        wall_time_s=1.0,
        task_names=["task1", "task2"],
        initial_accuracies=[0.1, 0.1],
        accuracy_matrix=[[0.97, 0.1], [2 * acc - 0.9, 0.9]],
        acc=acc,
        bwt=acc - 0.5,
        fwt=0.0,
        forgetting=0.5 - acc,
        forgetting_per_task=[0.5 - acc],
        epochs=[2, 2],
        best_val_accuracy=[max(a for _, a in curve), 0.95],
        val_accuracy_curve=[curve, [[300, 0.9], [400, 0.95]]],
        optimizer_steps=[{"first": 200}, {"first": 200}],
        effective_rank=[40.0, 30.0 + seed],
        cross_class_cosine_mean=[0.5, 0.6],
        first_task_cka=[1.0, 0.8],
        final_covariance_spectrum=[2.0, 1.0],
        final_cross_class_cosine=[[1.0, 0.6], [0.6, 1.0]],
        weights_below=[{"0.001": 0.0, "0.01": 0.1}, {"0.001": small, "0.01": 0.5}],
        pruning=None,
        steps=400,
        seeds_trained_together=3,
    )


@pytest.fixture
def summary():
    units = [
        *[_unit("sgd", s, acc, reached_at=400, small=0.2 + 0.01 * s) for s, acc in enumerate([0.5, 0.6, 0.7])],
        *[_unit("adamw", s, acc, reached_at=at) for s, acc, at in [(0, 0.7, 200), (1, 0.8, 300), (2, 0.8, None)]],
        # shampoo's seed 1 diverged
        *[_unit("shampoo", s, acc, reached_at=100) for s, acc in [(0, 0.9), (1, math.nan), (2, 0.9)]],
    ]
    return build_mnist_summary(_config(["sgd", "adamw", "shampoo"]), units)


def test_summary_headline_stats_carry_intervals(summary):
    acc = summary["aggregate"]["sgd"]["acc"]
    assert acc["mean"] == pytest.approx(0.6) and acc["n"] == 3 and acc["ci_level"] == 0.95
    assert acc["ci_high"] - acc["mean"] == pytest.approx(4.3026527 * 0.1 / math.sqrt(3))
    assert summary["aggregate"]["shampoo"]["acc"]["n"] == 2
    assert "confidence_interval" in summary["conventions"] and "paired_differences" in summary["conventions"]


def test_summary_paired_differences_follow_the_config_order(summary):
    pairs = summary["paired_differences"]
    assert [(d["a"], d["b"]) for d in pairs] == [("sgd", "adamw"), ("sgd", "shampoo"), ("adamw", "shampoo")]
    sgd_adamw = pairs[0]
    assert sgd_adamw["seeds"] == [0, 1, 2]
    assert sgd_adamw["acc"]["mean"] == pytest.approx(-(0.2 + 0.2 + 0.1) / 3) and sgd_adamw["acc"]["n"] == 3
    assert pairs[1]["acc"]["n"] == 2 and pairs[1]["acc"]["mean"] == pytest.approx(-0.3)  # diverged seed dropped
    assert set(sgd_adamw) >= {"bwt", "fwt", "forgetting", "final_effective_rank", "total_epochs"}


def test_summary_property_card(summary):
    card = summary["property_card"]
    assert card["convergence_target"] == 0.95 and card["sparsity_threshold"] == "0.001"
    sgd, adamw = card["arms"]["sgd"], card["arms"]["adamw"]
    assert sgd["convergence_steps"]["mean"] == 400 and sgd["convergence_steps"]["std"] == 0
    assert adamw["convergence_steps"]["mean"] == 250 and adamw["convergence_steps"]["n"] == 2  # one never reached
    assert sgd["sparsity"]["mean"] == pytest.approx(0.21)
    assert sgd["acc"] == summary["aggregate"]["sgd"]["acc"]
    assert set(sgd) == {
        "convergence_steps", "acc", "forgetting", "final_effective_rank", "final_cross_class_cosine_mean", "sparsity"
    }


def test_unit_files_are_checked_when_read(tmp_path):
    good = _unit("sgd", 0, 0.5)
    path = tmp_path / "sgd__seed0.json"
    path.write_text(json.dumps(good.to_json()))
    assert MnistUnitResult.read(path) == good
    broken = {
        "truncated": json.dumps(good.to_json())[:100],
        "empty": "",
        "missing key": json.dumps({k: v for k, v in good.to_json().items() if k != "acc"}),
        "wrong type": json.dumps({**good.to_json(), "accuracy_matrix": "x"}),
        "old schema": json.dumps({**good.to_json(), "schema_version": 1}),
        "not an object": "[1, 2]",
    }
    for kind, text in broken.items():
        path.write_text(text)
        with pytest.raises(InvalidUnitFile, match="sgd__seed0.json"):
            MnistUnitResult.read(path)


def test_report_shows_intervals_paired_differences_and_the_card(summary):
    report = render_mnist_report(summary, [])
    assert "## Comparison (mean ± 95 % CI half-width over seeds)" in report
    half_width = 4.3026527 * 0.1 / math.sqrt(3)
    assert f"| sgd | 3 | 0.600 ± {half_width:.3f} |" in report
    assert "| shampoo | 3 | 0.900 ± 0.000 (n=2) |" in report  # seed 1 diverged
    assert "## Paired differences (same seed)" in report
    assert "| sgd − adamw | 3 | -0.167 ± 0.143 * |" in report  # the interval excludes 0
    assert "| sgd − shampoo | 3 | -0.300 ± 1.271 (n=2) |" in report  # it does not
    assert "## Optimizer property card" in report
    assert "steps to val acc ≥ 0.95 on task 1 ↓" in report and "share \\|w\\| < 0.001" in report
    assert "| adamw | 3 | 250 ± " in report and " (n=2) |" in report


def test_convergence_target_is_checked():
    config = config_from_dict({"arms": [{"name": "sgd", "lr": 0.1}]})
    assert config.train.convergence_target == 0.95
    with pytest.raises(UserError, match="'train.convergence_target' must be in"):
        config_from_dict({"arms": [{"name": "sgd", "lr": 0.1}], "train": {"convergence_target": 1.5}})
