"""Shampoo on BERT-mini under FSDP2 vs DDP at world size 2: per-rank bytes and step time.

Runs itself under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU, one torch
thread per rank), training BERT-mini masked LM (optimizer_step.py's workload, batch
16 x 128 per rank) twice in the same launch: wrapped in DistributedDataParallel, and with
``fully_shard`` on every BertLayer and the root. Per rank it measures the bytes of
parameters, gradients and Shampoo's optimizer state this rank stores (local shards for
FSDP2), and the median step time over interleaved windows of f steps (f =
precondition_frequency, so each window holds one root computation). It prints the
FSDP2 / DDP ratios of both.

    python benchmarks/fsdp2.py [--frequency 10] [--windows 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

from basinlab.ranks import exit_rank
from optimizer_step import LR, WARMUP, bert_workload, state_bytes, train_steps
from self_launch import launch, parse_arguments


def local_bytes(tensors) -> int:
    """Bytes this rank stores for ``tensors`` (a DTensor's local shard)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors if t is not None)


def measure(model, optimizer, loss, args) -> dict:
    train_steps(model, optimizer, loss, WARMUP + args.frequency)  # state allocated, roots computed once
    params = list(model.parameters())
    return {
        "param_bytes": local_bytes(params),
        "grad_bytes": local_bytes(p.grad for p in params),
        "state_bytes": state_bytes(optimizer),
    }


def worker(args: argparse.Namespace) -> None:
    from torch.distributed.fsdp import fully_shard
    from transformers.models.bert.modeling_bert import BertLayer

    from basinlab.optim import Shampoo

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    work = bert_workload("mini")
    ddp_model = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(work.model))
    fsdp_model = copy.deepcopy(work.model)
    for module in fsdp_model.modules():
        if isinstance(module, BertLayer):
            fully_shard(module)
    fully_shard(fsdp_model)
    options = dict(lr=LR, precondition_frequency=args.frequency, start_preconditioning_step=WARMUP + 1)
    runs = {"ddp": (ddp_model, Shampoo(ddp_model.parameters(), **options)),
            "fsdp2": (fsdp_model, Shampoo(fsdp_model.parameters(), **options))}
    row = {"rank": dist.get_rank(), **{name: measure(m, o, work.loss, args) for name, (m, o) in runs.items()}}
    times = {name: [] for name in runs}
    for window in range(args.windows):
        order = list(runs) if window % 2 == 0 else list(reversed(runs))
        for name in order:
            model, optimizer = runs[name]
            times[name].append(train_steps(model, optimizer, work.loss, args.frequency) / args.frequency)
    for name in runs:
        row[name]["step_ms"] = statistics.median(times[name]) * 1e3
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if dist.get_rank() == 0:
        Path(args.output).write_text(json.dumps(rows))
    exit_rank(0)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "layout")
    if args.worker:
        worker(args)
        return
    print(f"BERT-mini MLM, Shampoo (f={args.frequency}), world size 2 (gloo, CPU), batch 16 x 128 per rank, "
          f"{args.threads} torch thread(s) per rank", flush=True)
    rows = launch(__file__, 2, args)
    header = f"{'layout':>6} {'rank':>4} {'params MB':>9} {'grads MB':>8} {'state MB':>8} {'total MB':>8} {'step ms':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    totals = {}
    for name in ("ddp", "fsdp2"):
        for row in rows:
            r = row[name]
            total = r["param_bytes"] + r["grad_bytes"] + r["state_bytes"]
            totals.setdefault(name, []).append(total)
            print(f"{name:>6} {row['rank']:>4} {r['param_bytes'] / 2**20:>9.1f} {r['grad_bytes'] / 2**20:>8.1f} "
                  f"{r['state_bytes'] / 2**20:>8.1f} {total / 2**20:>8.1f} {r['step_ms']:>8.0f}")
    step = {name: max(row[name]["step_ms"] for row in rows) for name in ("ddp", "fsdp2")}
    print()
    print(f"per-rank bytes (params + grads + optimizer state), FSDP2 / DDP (largest rank): "
          f"{max(totals['fsdp2']) / max(totals['ddp']):.2f}x")
    print(f"step time, FSDP2 / DDP (slowest rank): {step['fsdp2'] / step['ddp']:.2f}x")


if __name__ == "__main__":
    main()
