"""Per-step cost of Shampoo (each root method) and of Shampoo-family peers, relative to AdamW.

Three tables, all measured in this process:

1. Whole training steps (zero_grad, forward, loss, backward, ``optimizer.step()``) of
   each optimizer against torch AdamW on its own copy of the same initial weights and the
   same fixed batch: the ratio of the median step times. Windows alternate between the
   optimizers (AdamW first, then the next, rotating), so machine drift hits all of them;
   the ratio is what to read on a shared, noisy machine. A window is a whole multiple of
   f steps, so it holds the same number of root computations as training does.
2. Step structure of our optimizers and the peers: aten ops dispatched and host reads of
   tensor values (each a device sync on a GPU) during one ``step()`` that recomputes roots
   and one that does not (basinlab.optim.census), and the CPU time of those ``step()``s.
3. Optimizer-state size (tensor bytes in ``optimizer.state``) against AdamW.

Peers (optional, ``pip install -e ".[bench]"``): heavyball 3.2.1 SOAP and KLShampoo,
pytorch-optimizer 4.1.0 SOAP and ScalableShampoo, at their documented defaults except lr,
precondition frequency f and a 1024 block limit; they run at f = 10 only (at f = 1 SOAP
re-decomposes every step; at f = 100 their windows alone would take many minutes here).

    python benchmarks/optimizer_step.py [--model mlp|bert-mini|bert-small|bert-base|all]
        [--frequencies 1 10 100] [--root-methods eigh eigenbasis newton] [--no-peers]
        [--windows K] [--threads T] [--device cpu|cuda] [--batch B]

Models: the MNIST MLP 784-100-10 (batch 128 of random inputs) and BERT masked LM of a
basinlab.models preset (mini: hidden 256, 4 layers, FFN 1024; small: 512, 4, 2048; base:
768, 12, 3072), vocab 8192, batch ``--batch`` (default 16) x 128 random token ids, ~15 %
labelled. ``all`` is the CPU set, mlp and bert-mini. With ``--device cuda`` every clock
read waits for the GPU (torch.cuda.synchronize).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from basinlab.optim import Shampoo  # noqa: E402
from basinlab.optim.census import StepCensus  # noqa: E402

LR = 1e-3
WARMUP = 3  # steps before measuring: state allocated, preconditioning started (at step 2), first kernels run
START = 2
PEER_FREQUENCY = 10


@dataclass
class Workload:
    name: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    min_steps: int  # fewest steps in a window (cheap steps need long windows for a stable clock)


def mlp_workload(device="cpu", batch: int = 128) -> Workload:
    from basinlab.models import MLP

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 784, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(device)
    return Workload("mlp", MLP(784, [100], 10, seed=0).to(device), lambda m: F.cross_entropy(m(x), y), 50)


def bert_workload(preset: str, device="cpu", batch: int = 16, seq: int = 128, vocab: int = 8192) -> Workload:
    from basinlab.models import build_bert_mlm

    model = build_bert_mlm(preset, vocab, max_length=512, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    ids, labels = ids.to(device), labels.to(device)
    return Workload(f"bert-{preset}", model, lambda m: m(input_ids=ids, labels=labels).loss, 2)


WORKLOADS = {"mlp": mlp_workload, **{f"bert-{p}": functools.partial(bert_workload, p) for p in ("mini", "small", "base")}}
CPU_SET = ("mlp", "bert-mini")


def ours(method: str, **extra):
    def build(model, frequency):
        return Shampoo(model.parameters(), lr=LR, precondition_frequency=frequency, start_preconditioning_step=START,
                       root_method=method, **extra)

    return build


def peers() -> dict[str, Callable]:
    """The installed Shampoo-family peers' constructors, (model, f) -> optimizer (none without the bench extra)."""
    found = {}
    try:
        import heavyball

        heavyball.utils.compile_mode = None  # no inductor on the CPU for them (their CPU advice)
        found["heavyball SOAP"] = lambda m, f: heavyball.SOAP(m.parameters(), lr=LR, precondition_frequency=f, max_precond_dim=1024)
        found["heavyball KLShampoo"] = lambda m, f: heavyball.KLShampoo(
            m.parameters(), lr=LR, precondition_frequency=f, max_precond_dim=1024
        )
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        found["pytorch-optimizer SOAP"] = lambda m, f: po.SOAP(
            m.parameters(), lr=LR, precondition_frequency=f, max_precondition_dim=1024
        )
        found["pytorch-optimizer ScalableShampoo"] = lambda m, f: po.ScalableShampoo(
            m.parameters(), lr=LR, start_preconditioning_step=START, preconditioning_compute_steps=f, block_size=1024
        )
    except ImportError:
        pass
    return found


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, optimizer, loss_fn, steps: int) -> float:
    """Seconds for ``steps`` whole training steps."""
    device = next(model.parameters()).device
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def state_bytes(optimizer) -> int:
    seen: set[int] = set()

    def walk(value) -> int:
        if id(value) in seen:
            return 0
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            return value.nbytes
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0

    return sum(walk(s) for s in optimizer.state.values())


def step_structure(work: Workload, build: Callable, frequency: int) -> dict[str, float]:
    """Ops, host reads and step() CPU ms of steps 1 .. START + frequency of two fresh copies (one
    counted, one timed: counting slows a step down). The costliest counted step after preconditioning
    started is the root step; the median of the others is the plain one."""
    counted, timed = [], []
    for sink in (counted, timed):
        model = copy.deepcopy(work.model).train()
        optimizer = build(model, frequency)
        device = next(model.parameters()).device
        for _ in range(START + frequency):
            optimizer.zero_grad(set_to_none=True)
            work.loss(model).backward()
            if sink is counted:
                with StepCensus() as census:
                    optimizer.step()
                sink.append((census.ops, census.reads))
            else:
                synchronize(device)
                started = time.perf_counter()
                optimizer.step()
                synchronize(device)
                sink.append((time.perf_counter() - started) * 1e3)
    after = list(range(START - 1, START - 1 + frequency))  # steps START .. START + f - 1: one root step
    root = max(after, key=lambda i: counted[i][0])
    plain = [i for i in after if i != root] or [root]
    return {
        "root_ops": counted[root][0], "root_reads": counted[root][1], "root_ms": timed[root],
        "plain_ops": statistics.median(counted[i][0] for i in plain),
        "plain_reads": max(counted[i][1] for i in plain), "plain_ms": statistics.median(timed[i] for i in plain),
    }


def measure(work: Workload, frequency: int, builders: dict[str, Callable], windows: int, structure: bool) -> list[dict]:
    """Rows of table 1 (and 2, with ``structure``) for ``builders``: name -> (model, f) -> optimizer."""
    contenders = {"AdamW": lambda m, f: torch.optim.AdamW(m.parameters(), lr=LR), **builders}
    runs = {}
    for name, build in contenders.items():
        model = copy.deepcopy(work.model).train()
        optimizer = build(model, frequency)
        train_steps(model, optimizer, work.loss, WARMUP)
        runs[name] = (model, optimizer, [])
    steps = frequency * max(1, -(-work.min_steps // frequency))
    names = list(runs)
    for window in range(windows):
        order = names[window % len(names):] + names[: window % len(names)]
        for name in order:
            model, optimizer, times = runs[name]
            times.append(train_steps(model, optimizer, work.loss, steps) / steps)
    baseline = statistics.median(runs["AdamW"][2])
    rows = []
    for name in builders:
        model, optimizer, times = runs[name]
        counts = step_structure(work, builders[name], frequency) if structure else {}
        rows.append({
            "model": work.name, "optimizer": name, "f": frequency, "windows": windows, "steps": steps,
            "adamw_ms": baseline * 1e3, "ms": statistics.median(times) * 1e3,
            "ratio": statistics.median(times) / baseline,
            "state_ratio": state_bytes(optimizer) / max(1, state_bytes(runs["AdamW"][1])),
            "finite": all(torch.isfinite(p).all() for p in model.parameters()), **counts,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--frequencies", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--root-methods", nargs="+", default=["eigh", "eigenbasis", "newton"],
                        choices=["eigh", "eigenbasis", "newton"])
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--windows", type=int, default=3, help="windows per optimizer (f >= 100: one)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.linalg.eigh(torch.eye(64, device=device) + 1)  # load LAPACK's / cuSOLVER's kernels first
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peer_builders = peers() if args.peers else {}
    print(f"torch {torch.__version__}, device {where}, threads={torch.get_num_threads()}, lr={LR}, "
          f"Shampoo start_preconditioning_step={START}, {WARMUP} warm-up steps, other options default; "
          f"peers: {', '.join(peer_builders) or 'none installed'}")
    names = list(CPU_SET) if args.model == "all" else [args.model]
    rows, started = [], time.perf_counter()
    for name in names:
        work = WORKLOADS[name](device, **({} if args.batch is None else {"batch": args.batch}))
        for frequency in args.frequencies:
            builders = {f"shampoo {m}": ours(m) for m in args.root_methods}
            if 1 < frequency < 100:  # staggering moves root cost between steps; the amortized cost stays
                builders["shampoo eigh staggered"] = ours("eigh", stagger_roots=True)
            if frequency == PEER_FREQUENCY:
                builders.update(peer_builders)
            windows = 1 if frequency >= 100 else args.windows
            rows += measure(work, frequency, builders, windows, structure=frequency == PEER_FREQUENCY)
            print(f"  measured {name} f={frequency} ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
    print()
    header = (f"{'model':<10} {'optimizer':<34} {'f':>4} {'win x steps':>11} {'AdamW ms':>9} {'ms':>9} {'ratio':>7} | "
              f"{'ops/step':>8} {'reads':>5} {'ms':>7} | {'root ops':>8} {'reads':>5} {'ms':>8} | {'state':>6}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        counts = (f"{r['plain_ops']:>8.0f} {r['plain_reads']:>5} {r['plain_ms']:>7.1f} | {r['root_ops']:>8} "
                  f"{r['root_reads']:>5} {r['root_ms']:>8.1f}") if "root_ops" in r else f"{'':>22} | {'':>23}"
        print(f"{r['model']:<10} {r['optimizer']:<34} {r['f']:>4} {r['windows']:>4} x {r['steps']:<4} "
              f"{r['adamw_ms']:>9.1f} {r['ms']:>9.1f} {r['ratio']:>6.2f}x | {counts} | {r['state_ratio']:>5.1f}x"
              + ("" if r["finite"] else "  (non-finite parameters!)"))
    print(f"\nratio: median whole-step time / AdamW's, same process, interleaved windows. At f={PEER_FREQUENCY}: "
          "ops/step, reads, ms: aten ops dispatched, host reads of tensor values (a device sync each on GPUs) and "
          "CPU ms of a step() that recomputes no root (median over one window from a fresh start); root ...: the "
          "costliest step after preconditioning starts (the one recomputing roots; staggered: the first, which "
          "computes every bucket's). state: optimizer-state bytes / AdamW's.")


if __name__ == "__main__":
    main()
