"""Training a group of seeds as one stacked model gives every seed bitwise its unbatched run."""

import dataclasses
import pytest
import torch
from accelerate import Accelerator
from tqdm import tqdm

from basinlab.data.streams import TaskStream, build_tasks, stacked_train_batches
from basinlab.launch.config import load_config
from basinlab.launch.driver import UnitLog, plan_groups
from basinlab.launch.mnist_recipe import MnistRecipe
from basinlab.launch.text_recipe import TextRecipe
from basinlab.launch.mnist_trainer import ArmTrainer, Member
from basinlab.models import MLP
from basinlab.models.seed_stack import SeedStack

ARMS = {
    "sgd": {"name": "sgd", "lr": 0.5},  # large enough that validation accuracy dips: early stops
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    "shampoo": {"name": "shampoo", "lr": 1e-3, "precondition_frequency": 3, "grafting": "adam"},
    # each seed switches on its own step count: seeds with shorter epochs switch later in the epoch
    "switch": {"name": "adamw", "lr": 1e-3, "label": "switch", "then": {"name": "sgd", "lr": 0.05}, "switch_after_steps": 7},
    "l1": {"name": "sgd", "lr": 0.05, "label": "l1", "l1_penalty": 1e-4},
}


def _streams(mnist_arrays, stream="permuted"):
    """Three seeds with 320, 256 and 320 training images per task: 5, 4 and 5 steps per epoch."""
    return {
        seed: TaskStream(
            mnist_arrays,
            build_tasks(stream, mnist_arrays, 2, seed, validation_size=1000, probe_size=50, max_train_examples=cap),
        )
        for seed, cap in ((0, 320), (1, 256), (2, 320))
    }


def _train(config, streams, seeds):
    members = [Member(seed, streams[seed], UnitLog(None, config.arms[0], seed, {}, "none")) for seed in seeds]
    trainer = ArmTrainer(Accelerator(cpu=True), config, config.arms[0], members, tqdm(disable=True))
    results = [dataclasses.replace(r, wall_time_s=0.0, seeds_trained_together=0) for r in trainer.train()]
    return results, [trainer.net(i).state_dict() for i in range(len(seeds))]


@pytest.mark.parametrize("arm", list(ARMS))
def test_a_group_of_seeds_trains_each_seed_bitwise_as_alone(tiny_config, mnist_arrays, arm):
    # patience 1 over 4 epochs: seeds may stop early, at different epochs, and sit out the rest
    config = load_config(tiny_config(train={"max_epochs": 4, "patience": 1}, arms=[ARMS[arm]]))
    streams = _streams(mnist_arrays)
    together, weights = _train(config, streams, [0, 1, 2])
    for i, seed in enumerate([0, 1, 2]):
        (alone,), (alone_weights,) = _train(config, streams, [seed])
        assert together[i] == alone
        assert all(torch.equal(weights[i][k], v) for k, v in alone_weights.items())
    if arm == "sgd":  # the case is really exercised: seeds stop on a task after different epochs
        assert len({r.epochs[0] for r in together}) > 1


def test_stacked_batches_are_each_streams_own_batches(mnist_arrays):
    for kind in ("permuted", "class_incremental"):
        streams = _streams(mnist_arrays, kind)
        seeds = [0, 1, 2]
        own = {s: list(streams[s].train_batches(1, 64, seed=s, epoch=3)) for s in seeds}
        got = {s: [] for s in seeds}
        for members, x, y in stacked_train_batches([streams[s] for s in seeds], 1, 64, seeds=seeds, epoch=3):
            for row, member in enumerate(members):
                got[seeds[member]].append((x[row], y[row]))
        for s in seeds:
            assert len(got[s]) == len(own[s]) and len(own[s]) in (4, 5)
            assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got[s], own[s]))


def test_seed_stack_forward_is_each_members_forward():
    nets = [MLP(784, [32], 10, seed=s) for s in range(3)]
    stack = SeedStack(nets)
    x = torch.randn(2, 5, 784)
    out = stack(x, [2, 0])
    assert torch.equal(out[0], nets[2](x[0])) and torch.equal(out[1], nets[0](x[1]))
    with pytest.raises(ValueError, match="2 input stacks for 3 active members"):
        stack(x, [0, 1, 2])


def test_seed_groups_split_each_arms_unfinished_seeds_among_workers(tiny_config, monkeypatch):
    config = load_config(tiny_config(seeds=[0, 1, 2, 3, 4]))

    def groups(workers=1, finished=frozenset(), recipe=MnistRecipe):
        return [(arm.label, seeds) for arm, seeds in plan_groups(recipe, config, config.arms, finished, workers)]

    assert groups() == [("sgd", [0, 1, 2, 3, 4]), ("adamw", [0, 1, 2, 3, 4])]
    assert groups(2) == [("sgd", [0, 1]), ("sgd", [2, 3, 4]), ("adamw", [0, 1]), ("adamw", [2, 3, 4])]
    finished = {"sgd__seed0", "sgd__seed1", "sgd__seed2", "sgd__seed3", "adamw__seed4"}
    assert groups(2, finished) == [("sgd", [4]), ("adamw", [0, 1]), ("adamw", [2, 3])]
    one_each = [(label, [s]) for label in ("sgd", "adamw") for s in range(5)]
    assert groups(recipe=TextRecipe) == one_each  # a recipe that trains one unit at a time
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert groups(2) == one_each  # under a launcher the ranks split each seed's batches (DDP)
