"""One training epoch of the reference MLP: our on-device tensor batching vs a DataLoader.

The recipe keeps MNIST as uint8 tensors on the device and cuts each batch by indexing
(with the task's pixel permutation applied per batch). The baseline is the usual
``DataLoader(TensorDataset(...), shuffle=True)`` over pre-permuted float inputs, which
collates each batch from per-sample Python indexing. Both train the same model with the
same optimizer in this process, interleaved, and the ratio of median epoch times is
printed.

    python benchmarks/batching.py [--repeats 5] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from basinlab.data.mnist import load_mnist
from basinlab.data.streams import TaskStream, build_tasks
from basinlab.models import MLP


def epoch_time(batches, model: MLP, optimizer: torch.optim.Optimizer) -> float:
    started = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    arrays = load_mnist()
    tasks = build_tasks("permuted", arrays, 2, seed=0)
    stream = TaskStream(arrays, tasks)
    task = 1  # a permuted task, so both sides pay for the permutation
    x_all, y_all = next(stream.eval_batches(task, "train", batch_size=len(tasks[task].train_index)))
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=args.batch_size, shuffle=True, drop_last=True)

    model = MLP(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ours, baseline = [], []
    for repeat in range(args.repeats + 1):  # the first round warms up both paths
        t_ours = epoch_time(stream.train_batches(task, args.batch_size, seed=0, epoch=repeat), model, optimizer)
        t_base = epoch_time(loader, model, optimizer)
        if repeat:
            ours.append(t_ours)
            baseline.append(t_base)
    ours_s, base_s = statistics.median(ours), statistics.median(baseline)
    print(f"threads={torch.get_num_threads()} batch_size={args.batch_size} examples/epoch={len(y_all)} repeats={args.repeats}")
    print(f"DataLoader(TensorDataset) epoch: {base_s:.3f} s (median)")
    print(f"basinlab TaskStream epoch:       {ours_s:.3f} s (median)")
    print(f"speedup (DataLoader / TaskStream): {base_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
