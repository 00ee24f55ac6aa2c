"""Arms that switch optimizer after the first N steps of every task (the basin-selection ablation)."""

import json

import pytest
import torch
from accelerate import Accelerator
from tqdm import tqdm

from basinlab.data.streams import TaskStream, build_tasks
from basinlab.launch.config import config_from_dict, load_config
from basinlab.launch.driver import UnitLog, run_experiment
from basinlab.launch.mnist_trainer import ArmTrainer, Member

# AdamW on both sides: each keeps a step counter in its state
ADAMW_THEN_ADAMW = {
    "name": "adamw", "label": "adamw-then-adamw", "lr": 1e-3, "then": {"name": "adamw", "lr": 1e-4}, "switch_after_steps": 7
}


def trained(config, mnist_arrays, arm=0):
    """An ArmTrainer for ``config.arms[arm]`` (seed 0) after training 2 tasks of 320 images (5 steps per epoch)."""
    tasks = build_tasks("permuted", mnist_arrays, 2, seed=0, validation_size=1000, probe_size=50, max_train_examples=320)
    member = Member(0, TaskStream(mnist_arrays, tasks), UnitLog(None, config.arms[arm], 0, {}, "none"))
    trainer = ArmTrainer(Accelerator(cpu=True), config, config.arms[arm], [member], tqdm(disable=True))
    (result,) = trainer.train()
    return trainer, result


def test_switch_config_round_trips_and_overrides(tmp_path):
    config = config_from_dict({"arms": [ADAMW_THEN_ADAMW]})
    arm = config.arms[0]
    assert (arm.name, arm.options, arm.switch_after_steps) == ("adamw", {"lr": 1e-3}, 7)
    assert (arm.then.name, arm.then.options) == ("adamw", {"lr": 1e-4})
    assert config.to_yaml()["arms"][0]["then"] == {"name": "adamw", "lr": 1e-4}
    assert config_from_dict(config.to_yaml()) == config
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config.to_yaml()))
    overridden = load_config(path, ["arms.adamw-then-adamw.then.lr=0.01", "arms.0.switch_after_steps=3"])
    assert overridden.arms[0].then.options == {"lr": 0.01} and overridden.arms[0].switch_after_steps == 3


@pytest.mark.parametrize("reset", [False, True])
def test_first_optimizer_takes_exactly_n_steps_of_every_task(tiny_config, mnist_arrays, reset):
    """10 steps per task (2 epochs of 5): the first optimizer takes steps 1-7 of each task, across
    the epoch boundary, the second the other 3; each counts only its own steps."""
    train = {"max_epochs": 2, "patience": 2, "reset_optimizer_per_task": reset}
    config = load_config(tiny_config(train=train, arms=[ADAMW_THEN_ADAMW]))
    trainer, result = trained(config, mnist_arrays)
    assert result.optimizer_steps == [{"first": 7, "then": 3}] * 2
    weight = next(iter(trainer.net(0).parameters()))
    counters = [int(torch.as_tensor(o.state[weight]["step"]).item()) for o in trainer.optimizers]
    assert counters == ([7, 3] if reset else [14, 6])


@pytest.mark.parametrize(
    "plain, switch",
    [
        # plain SGD keeps no state, so handing over to an identical one mid-task changes nothing
        ({"name": "sgd", "lr": 0.05}, {"then": {"name": "sgd", "lr": 0.05}, "switch_after_steps": 4}),
        # a switch never reached: the idle second optimizer leaves training untouched
        ({"name": "adamw", "lr": 1e-3}, {"then": {"name": "sgd", "lr": 0.05}, "switch_after_steps": 1000}),
    ],
    ids=["sgd-then-sgd", "never-switches"],
)
def test_switches_that_change_nothing_give_bitwise_the_same_weights(tiny_config, mnist_arrays, plain, switch):
    arms = [plain, {**plain, "label": "switching", **switch}]
    config = load_config(tiny_config(train={"max_epochs": 2, "patience": 2}, arms=arms))
    (reference, ref_result), (switching, result) = (trained(config, mnist_arrays, arm) for arm in (0, 1))
    first = min(switch["switch_after_steps"], 10)
    assert ref_result.optimizer_steps == [{"first": 10}] * 2
    assert result.optimizer_steps == [{"first": first, "then": 10 - first}] * 2
    expected = reference.net(0).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in switching.net(0).state_dict().items())


def test_run_records_steps_per_optimizer_and_resumes(tiny_config, tmp_path):
    """The counts land in the unit results and metrics.jsonl; config.yaml re-parses for --resume."""
    arms = [{"name": "sgd", "lr": 0.05}, {"name": "sgd", "label": "sgd-then-adamw", "lr": 0.05,
                                          "then": {"name": "adamw", "lr": 1e-3}, "switch_after_steps": 3}]
    config = load_config(tiny_config(data={"max_train_examples": 320}, arms=arms))
    run = run_experiment(config, tmp_path / "out")
    units = {u["arm"]: u for u in json.loads((run / "summary.json").read_text())["units"]}
    assert units["sgd"]["optimizer_steps"] == [{"first": 5}] * 2
    assert units["sgd-then-adamw"]["optimizer_steps"] == [{"first": 3, "then": 2}] * 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tasks = [r["optimizer_steps"] for r in records if r["unit"] == "sgd-then-adamw__seed0" and r["event"] == "task"]
    assert tasks == [{"first": 3, "then": 2}] * 2
    assert load_config(run / "config.yaml") == config
    run_experiment(load_config(run / "config.yaml"), run, resume=True)  # nothing left to train, same config
