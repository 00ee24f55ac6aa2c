"""All seeds of an arm as one stacked model vs one seed at a time, in the MNIST recipe.

Times ``ArmTrainer.train()`` (training, per-epoch validation and the per-task
evaluations, as in a run) on the paper's 784-100-10 MLP for one group of S seeds and for
S groups of one seed, interleaved, in this process, per optimizer, and prints the ratio
of median times. Early stopping is off (patience > epochs) so both do the same steps.

    python benchmarks/seed_batching.py [--seeds 10] [--tasks 2] [--train-examples 12800] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator
from tqdm import tqdm

from basinlab.data.mnist import load_mnist
from basinlab.data.streams import TaskStream, build_tasks
from basinlab.launch.config import config_from_dict
from basinlab.launch.mnist_recipe import ArmTrainer, Member

OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.03, "momentum": 0.9},
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    "shampoo": {
        "name": "shampoo", "lr": 3e-4, "weight_decay": 0.01, "grafting": "adam", "precondition_frequency": 20,
    },
}


def train_time(accelerator, config, arm, streams: dict[int, TaskStream], seeds: list[int]) -> float:
    members = [Member(seed, streams[seed], f"seed{seed}") for seed in seeds]
    started = time.perf_counter()
    ArmTrainer(accelerator, config, arm, members, None, tqdm(disable=True)).train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=12_800, help="per task (100 steps of 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    args = parser.parse_args()

    arrays = load_mnist()
    seeds = list(range(args.seeds))
    data = {"num_tasks": args.tasks, "max_train_examples": args.train_examples}
    streams = {s: TaskStream(arrays, build_tasks("permuted", arrays, args.tasks, s, max_train_examples=args.train_examples)) for s in seeds}
    accelerator = Accelerator(cpu=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.seeds} seeds, {args.tasks} permuted tasks "
        f"x {args.train_examples // 128} steps of 128, one epoch each, median of {args.repeats}"
    )
    print(f"{'optimizer':<10} {'one at a time (s)':>18} {'stacked (s)':>12} {'speedup':>8}")
    for name in args.optimizers:
        config = config_from_dict(
            {"seeds": seeds, "data": data, "train": {"max_epochs": 1, "patience": 2}, "optimizers": [OPTIMIZERS[name]]}
        )
        arm = config.optimizers[0]
        loop, stacked = [], []
        for _ in range(args.repeats):
            loop.append(sum(train_time(accelerator, config, arm, streams, [s]) for s in seeds))
            stacked.append(train_time(accelerator, config, arm, streams, seeds))
        a, b = statistics.median(loop), statistics.median(stacked)
        print(f"{name:<10} {a:>18.2f} {b:>12.2f} {a / b:>7.2f}x")


if __name__ == "__main__":
    main()
