"""What seed groups and worker processes buy the MNIST recipe, measured in this process.

1. Seed groups: ``ArmTrainer.train()`` (training, per-epoch validation and the per-task
   evaluations, as in a run) on the paper's 784-100-10 MLP for one group of S seeds vs S
   groups of one seed, interleaved, per optimizer. Early stopping is off (patience >
   epochs), so both do the same steps.
2. Worker processes: a whole ``run_experiment`` of that arm and those seeds with
   ``workers=N`` vs ``workers=1`` (fresh run directories, interleaved; process start-up
   included).

Prints the ratio of median times for each, per optimizer.

    python benchmarks/mnist_recipe_speed.py [--seeds 10] [--tasks 2] [--train-examples 54912] [--repeats 1] [--workers 2]

(about 3.5 minutes on a 2-core CPU with the defaults; 54,912 images = 429 steps, a full task)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from basinlab.data.mnist import load_mnist
from basinlab.data.streams import TaskStream, build_tasks
from basinlab.launch.config import config_from_dict
from basinlab.launch.driver import UnitLog, run_experiment
from basinlab.launch.mnist_trainer import ArmTrainer, Member

OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.03, "momentum": 0.9},
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    "shampoo": {
        "name": "shampoo", "lr": 3e-4, "weight_decay": 0.01, "grafting": "adam", "precondition_frequency": 20,
    },
}


def group_time(accelerator, config, streams: dict[int, TaskStream], seeds: list[int]) -> float:
    members = [Member(seed, streams[seed], UnitLog(None, config.arms[0], seed, {}, "none")) for seed in seeds]
    started = time.perf_counter()
    ArmTrainer(accelerator, config, config.arms[0], members, tqdm(disable=True)).train()
    return time.perf_counter() - started


def run_time(config, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):  # no progress bar
        started = time.perf_counter()
        run_experiment(config, Path(folder) / "run", workers=workers)
        return time.perf_counter() - started


def median_ratio(baseline, candidate, repeats: int) -> tuple[float, float]:
    """Median times of two interleaved measurements."""
    a, b = [], []
    for _ in range(repeats):
        a.append(baseline())
        b.append(candidate())
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=54_912, help="per task (429 steps of 128)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="for part 2; 1 skips it")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the runs' per-task lines (workers use this level too)

    arrays = load_mnist()
    seeds = list(range(args.seeds))
    base = {
        "seeds": seeds,
        "data": {"num_tasks": args.tasks, "max_train_examples": args.train_examples},
        "train": {"max_epochs": 1, "patience": 2},
        "log_with": "none",
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.seeds} seeds, {args.tasks} permuted tasks "
        f"x {args.train_examples // 128} steps of 128, one epoch each; median of {args.repeats}"
    )
    streams = {
        s: TaskStream(arrays, build_tasks("permuted", arrays, args.tasks, s, max_train_examples=args.train_examples))
        for s in seeds
    }
    accelerator = Accelerator(cpu=True)
    header = f"{'optimizer':<9} | {'seeds alone':>11} {'one group':>10} {'speedup':>8}"
    if args.workers > 1:
        header += f" | {'run, 1 worker':>13} {f'{args.workers} workers':>10} {'speedup':>8}"
    print(f"{header}\n{'-' * len(header)}")
    for name in args.optimizers:
        config = config_from_dict({**base, "arms": [OPTIMIZERS[name]]})
        alone, grouped = median_ratio(
            lambda: sum(group_time(accelerator, config, streams, [s]) for s in seeds),
            lambda: group_time(accelerator, config, streams, seeds),
            args.repeats,
        )
        line = f"{name:<9} | {alone:>10.2f}s {grouped:>9.2f}s {alone / grouped:>7.2f}x"
        if args.workers > 1:
            serial, parallel = median_ratio(
                lambda: run_time(config, 1), lambda: run_time(config, args.workers), args.repeats
            )
            line += f" | {serial:>12.2f}s {parallel:>9.2f}s {serial / parallel:>7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
