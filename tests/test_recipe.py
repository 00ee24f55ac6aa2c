"""The sequential-MNIST recipe end to end on real data (small), in this process."""

import json

import pytest
import torch
from accelerate import Accelerator
from tqdm import tqdm

from basinlab.data.streams import TaskStream, build_tasks
from basinlab.errors import UserError
from basinlab.launch.config import load_config
from basinlab.launch.driver import UnitLog, run_experiment, write_report
from basinlab.launch.mnist_evaluation import accuracy
from basinlab.launch.mnist_trainer import ArmTrainer, Member
from basinlab.launch.rundir import RunDirectory


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_cache_dir):
    """One small real run shared by the tests that only read its outputs."""
    path = tmp_path_factory.mktemp("run") / "tiny.yaml"
    path.write_text(
        "seeds: [0, 1]\n"
        f"data: {{num_tasks: 3, max_train_examples: 1500, validation_size: 1000, probe_size: 200, cache_dir: '{mnist_cache_dir}'}}\n"
        "train: {batch_size: 64, max_epochs: 2, patience: 1}\n"
        "arms: [{name: sgd, lr: 0.05, momentum: 0.9}, {name: adamw, lr: 0.001}]\n"
    )
    return run_experiment(load_config(path), path.parent / "out")


def test_run_directory_holds_every_artifact(finished_run):
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "report.md"]:
        assert (finished_run / name).is_file()
    plots = sorted(p.name for p in (finished_run / "plots").glob("*.png"))
    assert plots == ["accuracy_matrix.png", "average_accuracy.png", "covariance_spectra.png", "cross_class_cosine.png"]
    assert sorted(p.name for p in (finished_run / "tensorboard").iterdir()) == [
        "adamw__seed0", "adamw__seed1", "sgd__seed0", "sgd__seed1"
    ]
    report = (finished_run / "report.md").read_text()
    assert "| sgd | 2 |" in report and "| adamw | 2 |" in report


def test_summary_schema_and_metric_consistency(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["complete"] and summary["num_tasks"] == 3 and summary["world_size"] == 1
    assert [u["unit"] for u in summary["units"]] == ["sgd__seed0", "sgd__seed1", "adamw__seed0", "adamw__seed1"]
    for unit in summary["units"]:
        R = unit["accuracy_matrix"]
        assert len(R) == 3 and all(len(row) == 3 for row in R)
        assert unit["acc"] == pytest.approx(sum(R[-1]) / 3)
        assert unit["bwt"] == pytest.approx(((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2)
        assert len(unit["effective_rank"]) == 3 and 1 <= unit["effective_rank"][-1] <= 100
        assert len(unit["final_covariance_spectrum"]) == 100
        assert unit["first_task_cka"][0] == pytest.approx(1.0)
        assert R[0][0] > 0.8  # learned the first task even from 1500 images
    sgd = summary["aggregate"]["sgd"]
    assert sgd["acc"]["n"] == 2 and sgd["acc"]["mean"] == pytest.approx(
        sum(u["acc"] for u in summary["units"][:2]) / 2
    )


def test_units_keep_validation_curves_and_the_summary_carries_intervals_and_the_card(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    for unit in summary["units"]:
        for curve, epochs, best in zip(unit["val_accuracy_curve"], unit["epochs"], unit["best_val_accuracy"]):
            assert len(curve) == epochs and max(acc for _, acc in curve) == best
        steps = [step for curve in unit["val_accuracy_curve"] for step, _ in curve]
        assert steps == sorted(steps) and steps[-1] == unit["steps"]
    acc = summary["aggregate"]["sgd"]["acc"]
    assert acc["ci_level"] == 0.95 and acc["ci_low"] <= acc["mean"] <= acc["ci_high"]
    (pair,) = summary["paired_differences"]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("sgd", "adamw", [0, 1]) and pair["acc"]["n"] == 2
    card = summary["property_card"]
    assert card["convergence_target"] == 0.95 and card["sparsity_threshold"] == "0.001"
    assert set(card["arms"]["sgd"]) == {
        "convergence_steps", "acc", "forgetting", "final_effective_rank", "final_cross_class_cosine_mean", "sparsity"
    }
    report = (finished_run / "report.md").read_text()
    assert "## Paired differences (same seed)" in report and "| sgd − adamw | 2 |" in report
    assert "## Optimizer property card" in report


def test_same_seed_starts_every_optimizer_from_the_same_weights(finished_run):
    units = {u["unit"]: u for u in json.loads((finished_run / "summary.json").read_text())["units"]}
    assert units["sgd__seed0"]["initial_accuracies"] == units["adamw__seed0"]["initial_accuracies"]
    assert units["sgd__seed0"]["initial_accuracies"] != units["sgd__seed1"]["initial_accuracies"]


def test_metrics_log_has_init_epoch_and_task_records(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    sgd0 = [r for r in records if r["unit"] == "sgd__seed0"]
    assert [r["event"] for r in sgd0 if r["event"] != "epoch"] == ["init", "task", "task", "task"]
    task_records = [r for r in sgd0 if r["event"] == "task"]
    for task, record in enumerate(task_records):
        epochs = [r for r in sgd0 if r["event"] == "epoch" and r["task"] == task]
        assert len(epochs) == record["epochs"]
        assert record["best_val_accuracy"] == max(r["val_accuracy"] for r in epochs)


def test_report_command_rebuilds_the_same_summary(finished_run):
    before = (finished_run / "summary.json").read_text()
    (finished_run / "summary.json").unlink()
    (finished_run / "report.md").unlink()
    write_report(RunDirectory(finished_run))
    assert (finished_run / "summary.json").read_text() == before and (finished_run / "report.md").exists()


def test_existing_run_needs_resume_and_an_unchanged_config(finished_run):
    config = load_config(finished_run / "config.yaml")
    with pytest.raises(UserError, match="already holds a run; add --resume"):
        run_experiment(config, finished_run)
    changed = load_config(finished_run / "config.yaml", ["train.max_epochs=3"])
    with pytest.raises(UserError, match="config differs in train"):
        run_experiment(changed, finished_run, resume=True)


def test_early_stopping_restores_the_best_weights(tiny_config, mnist_arrays):
    config = load_config(tiny_config(train={"max_epochs": 6, "patience": 2}, arms=[{"name": "sgd", "lr": 0.5}]))
    tasks = build_tasks("permuted", mnist_arrays, 1, seed=0, validation_size=1000, probe_size=50, max_train_examples=600)
    stream = TaskStream(mnist_arrays, tasks)
    trainer = ArmTrainer(Accelerator(cpu=True), config, config.arms[0], [Member(0, stream, UnitLog(None, config.arms[0], 0, {}, "none"))], tqdm(disable=True))
    (fit,) = trainer.fit_task(0)
    assert 1 <= fit["epochs"] <= 6
    assert accuracy(trainer.net(0), stream, 0, "val", 10_000) == fit["best_val_accuracy"]


def test_optimizer_state_carries_over_or_resets(tiny_config, mnist_arrays):
    tasks = build_tasks("permuted", mnist_arrays, 2, seed=0, validation_size=1000, probe_size=50, max_train_examples=300)
    steps = {}
    for reset in (False, True):
        config = load_config(tiny_config(train={"reset_optimizer_per_task": reset}, arms=[{"name": "adamw"}]))
        member = Member(0, TaskStream(mnist_arrays, tasks), UnitLog(None, config.arms[0], 0, {}, "none"))
        trainer = ArmTrainer(Accelerator(cpu=True), config, config.arms[0], [member], tqdm(disable=True))
        trainer.train()
        state = trainer.optimizer.state[next(iter(trainer.net(0).parameters()))]
        steps[reset] = int(torch.as_tensor(state["step"]).item())
    per_task = 300 // 64
    assert steps == {False: 2 * per_task, True: per_task}


def test_sparsity_arms_prune_and_report(tiny_config, tmp_path):
    """Powerprop and L1 arms next to SGD and the sparsity preconditioner; pruning curves land in the report."""
    config = tiny_config(
        arms=[
            {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            {"name": "sgd", "label": "powerprop-a2", "lr": 0.05, "momentum": 0.9, "model": {"powerprop_alpha": 2.0}},
            {"name": "sgd", "label": "sgd-l1", "lr": 0.05, "momentum": 0.9, "l1_penalty": 1e-3},
            {"name": "sparsity", "label": "sparsity-b1", "lr": 0.5, "beta": 1.0, "momentum": 0.9},
        ],
        pruning={"enabled": True, "keep_fractions": [1.0, 0.1, 0.01], "finetune_steps": 3},
        log_with="none",
    )
    run = run_experiment(load_config(config), tmp_path / "out")
    summary = json.loads((run / "summary.json").read_text())
    units = {u["arm"]: u for u in summary["units"]}
    for unit in units.values():
        pruning = unit["pruning"]
        assert pruning["keep"] == [1.0, 0.1, 0.01] and pruning["finetune_steps"] == 3
        assert pruning["accuracy"][0] == pytest.approx(unit["acc"])  # keeping everything is the trained model
        assert pruning["accuracy"][2] < pruning["accuracy"][0]
        assert len(pruning["finetuned_accuracy"]) == 3
    # Powerprop starts from the same effective weights as the plain MLP of the seed
    assert units["powerprop-a2"]["initial_accuracies"] == units["sgd"]["initial_accuracies"]
    # the L1 penalty drives more weights towards zero than plain SGD
    assert units["sgd-l1"]["weights_below"][-1]["0.001"] > units["sgd"]["weights_below"][-1]["0.001"]
    report = (run / "report.md").read_text()
    assert "## Sparsity" in report and "| powerprop-a2 (+fine-tune) |" in report
    assert (run / "plots" / "pruning_curves.png").is_file()
    assert summary["aggregate"]["sparsity-b1"]["pruning"]["accuracy"]["mean"][0] == pytest.approx(units["sparsity-b1"]["acc"])
