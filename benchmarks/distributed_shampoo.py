"""What distributed Shampoo saves per rank: state bytes, root time, load balance, step time.

Runs itself under ``torch.distributed.run`` with 1 and then 2 processes (gloo, CPU, one
torch thread per rank, so a rank has the same compute in both launches), training
BERT-mini masked LM (see optimizer_step.py) wrapped in DistributedDataParallel, each rank
on its own fixed batch of 16 x 128. Each launch measures, per rank:

- optimizer-state bytes of Shampoo (tensor nbytes in ``optimizer.state``) and AdamW;
- root-computation time: CPU time in the "shampoo.root" profiler range during one step
  that recomputes every inverse root;
- load balance: max / mean of the summed block cost per rank (Shampoo's own assignment);
- step time of whole DDP training steps, Shampoo / AdamW, both in this launch, in
  interleaved windows of f steps (f = precondition_frequency, so each window holds one
  root computation).

It prints world-2 / world-1 ratios of the per-rank state bytes and root time (the
critical path: the slowest rank), the goal being <= 0.55 for both.

    python benchmarks/distributed_shampoo.py [--frequency 10] [--windows 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from basinlab.ranks import exit_rank  # noqa: E402
from optimizer_step import LR, WARMUP, bert_workload, state_bytes, train_steps  # noqa: E402
from self_launch import launch, parse_arguments  # noqa: E402


def root_time_ms(model, optimizer, loss_fn) -> float:
    """CPU ms inside "shampoo.root" for the next step (a step that recomputes every root)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        train_steps(model, optimizer, loss_fn, 1)
    return next((e.cpu_time_total / 1e3 for e in profiler.key_averages() if e.key == "shampoo.root"), 0.0)


def worker(args: argparse.Namespace) -> None:
    from basinlab.optim import Shampoo

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    work = bert_workload("mini")
    ddp = torch.nn.parallel.DistributedDataParallel
    model_a, model_s = ddp(copy.deepcopy(work.model)), ddp(copy.deepcopy(work.model))
    adamw = torch.optim.AdamW(model_a.parameters(), lr=LR)
    # Roots at steps WARMUP+1, WARMUP+1+f, ...: the profiled step right after warm-up computes them.
    shampoo = Shampoo(
        model_s.parameters(), lr=LR, precondition_frequency=args.frequency, start_preconditioning_step=WARMUP + 1
    )
    train_steps(model_a, adamw, work.loss, WARMUP)
    train_steps(model_s, shampoo, work.loss, WARMUP)
    root_ms = root_time_ms(model_s, shampoo, work.loss)
    train_steps(model_s, shampoo, work.loss, args.frequency - 1)  # back to the start of a root period
    times_a, times_s = [], []
    for window in range(args.windows):
        pair = [(model_a, adamw, times_a), (model_s, shampoo, times_s)]
        for model, optimizer, times in pair if window % 2 == 0 else reversed(pair):
            times.append(train_steps(model, optimizer, work.loss, args.frequency) / args.frequency)
    sharding = shampoo.sharding()  # None in one process
    row = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "shampoo_state": state_bytes(shampoo),
        "adamw_state": state_bytes(adamw),
        "root_ms": root_ms,
        "loads": sharding["loads"] if sharding else None,
        "adamw_ms": statistics.median(times_a) * 1e3,
        "shampoo_ms": statistics.median(times_s) * 1e3,
    }
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if dist.get_rank() == 0:
        Path(args.output).write_text(json.dumps(rows))
    exit_rank(0)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "optimizer")
    if args.worker:
        worker(args)
        return
    print(
        f"BERT-mini MLM under DDP (gloo, CPU), batch 16 x 128 per rank, {args.threads} torch thread(s) per rank, "
        f"Shampoo defaults (max_preconditioner_dim 1024) with precondition_frequency={args.frequency}",
        flush=True,
    )
    results = {world: launch(__file__, world, args) for world in (1, 2)}
    header = f"{'world':>5} {'rank':>4} {'shampoo MB':>10} {'adamw MB':>8} {'root ms':>8} {'adamw ms':>9} {'shampoo ms':>10} {'ratio':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for world, rows in results.items():
        for r in rows:
            print(
                f"{world:>5} {r['rank']:>4} {r['shampoo_state'] / 2**20:>10.1f} {r['adamw_state'] / 2**20:>8.1f} "
                f"{r['root_ms']:>8.0f} {r['adamw_ms']:>9.1f} {r['shampoo_ms']:>10.1f} {r['shampoo_ms'] / r['adamw_ms']:>5.2f}x"
            )
    one, two = results[1][0], results[2]
    loads = two[0]["loads"]
    print()
    print(f"per-rank state bytes, world 2 / world 1 (largest rank): {max(r['shampoo_state'] for r in two) / one['shampoo_state']:.2f}")
    print(f"per-rank root time,   world 2 / world 1 (slowest rank): {max(r['root_ms'] for r in two) / one['root_ms']:.2f}")
    print(f"load balance at world 2 (max / mean block cost per rank): {max(loads) / (sum(loads) / len(loads)):.3f}")
    for world, rows in results.items():
        ratio = max(r["shampoo_ms"] for r in rows) / max(r["adamw_ms"] for r in rows)
        print(f"step time Shampoo / AdamW at world {world} (slowest rank): {ratio:.2f}x")


if __name__ == "__main__":
    main()
