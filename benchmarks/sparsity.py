"""Cost of the sparsity preconditioner against its base optimizer: time per step, steps to a target.

1. Step time. Whole training steps (zero_grad, forward, loss, backward, ``optimizer.step()``)
   with ``SparsityPreconditioned`` and with the torch optimizer it builds on, each training
   its own copy of the same initial weights on the same fixed batch, in this process, after
   warm-up, in alternating windows (base then sparsity, then sparsity then base, ...); the
   ratio of the two medians (over windows, of the mean step time in a window) is printed.
   Pairs, both with lr 1e-3 and otherwise torch defaults (on CPU that is torch's per-tensor
   loop, foreach=False, for the baselines; on CUDA its foreach kernels, like the sparsity
   step's; ``--device cuda`` times there, waiting for the GPU at every clock read):
     sparsity(base="sgd", momentum=0.9, beta=1.0)            vs torch.optim.SGD(momentum=0.9)
     sparsity(base="adam", beta=1.0, weight_decay=0.01)      vs torch.optim.AdamW (weight_decay=0.01 default)
   Workloads (from optimizer_step.py): the MNIST MLP 784-100-10 on a batch of 128 random
   inputs and labels, and BERT-mini masked LM (batch 16 x 128 tokens; fewer steps per window).
   For the MLP, separate interleaved windows time ``optimizer.step()`` alone (forward and
   backward run between the timed calls, untimed), so both ratios are shown. Goal: <= 1.1x.
   Shared machines are noisy; the same-process interleaved ratio is what to read. When other
   processes compete for the cores, each multi-threaded elementwise kernel can wait out a
   scheduler slice, so step() then costs in proportion to its kernel count (the sparsity
   step issues more per tensor) rather than its arithmetic; ``--threads 1`` measures
   without that effect. ``--profile`` prints the top ops of bare step() calls per pair.

2. Convergence. Real MNIST, the single unpermuted task of the streams API (training split
   minus a seeded held-out validation set of 5,000 training images), batch 128, shuffled
   per (seed, epoch), the MLP 784-100-10 initialised from the seed; every optimizer of a
   seed sees the same batches. Counted: optimizer steps until the validation accuracy,
   evaluated every 100 steps, first reaches the target (default 0.97), capped at
   ``--max-epochs`` epochs (a run that never gets there reports "cap"; one whose loss or
   weights become non-finite reports "nan" and stops). Arms:
     SGD, lr 0.05, momentum 0.9 (fixed: not tuned)
     sparsity(base="sgd", momentum=0.9, beta=b) for b in 0.5, 1.0, 1.5, lr = 0.05 x m for m
     in ``--lr-multipliers`` (default 1 3 10); per arm the multiplier with the fewest steps
     (median over seeds, a run that never reaches the target counting as infinite; then
     more seeds reaching it, then the higher median best accuracy, then the smaller lr) is
     reported, flagged when it lies at an edge of the grid.
   Why a grid rather than one rescaled lr: the preconditioner multiplies a weight's step by
   |w|^beta (~0.02 for beta=1 in the first layer at init, ~3x that in the head), so at the
   same lr the typical weight moves far slower than under SGD. Dividing lr by
   mean(|w|^beta) at init also scales the biases (which take the plain base update) and
   the larger head weights by that factor, and diverges. A small grid per arm is the
   cheaper honest choice; the table shows every grid point, and SGD keeps its one lr, so
   the comparison leans, if anything, towards the sparsity arms.
   Printed: steps to target per arm and seed, the median over seeds, and the ratio of that
   median to SGD's. This part runs on ``--convergence-threads`` torch threads (default 1):
   step counts do not depend on speed, and on shared cores a 2-thread OpenMP process whose
   peer thread is descheduled can slow down many-fold, while one thread only shares.

    python benchmarks/sparsity.py [--seeds 0 1 2] [--target 0.97] [--max-epochs 20]
        [--lr-multipliers 1 3 10] [--skip-bert] [--skip-convergence] [--skip-step-time]
        [--profile] [--threads T] [--convergence-threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
from typing import Any, Callable

from optimizer_step import WARMUP, Workload, bert_workload, device_of, mlp_workload, synchronize, train_steps

import torch  # noqa: E402  (optimizer_step sets KINETO_LOG_LEVEL before torch is imported)
import torch.nn.functional as F  # noqa: E402

from basinlab.optim import SparsityPreconditioned  # noqa: E402

GOAL = 1.1
LR = 1e-3  # step-time part only; the value does not change the work done
SGD_LR = 0.05
MOMENTUM = 0.9
BETAS = (0.5, 1.0, 1.5)
BATCH = 128
VALIDATION = 5000
EVAL_EVERY = 100

# (name, baseline description, baseline factory, sparsity description, sparsity factory)
PAIRS = (
    (
        "sgd+momentum",
        "SGD(momentum=0.9)",
        lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        "sparsity(sgd, momentum=0.9, beta=1)",
        lambda params: SparsityPreconditioned(params, lr=LR, base="sgd", momentum=MOMENTUM, beta=1.0),
    ),
    (
        "adam",
        "AdamW(weight_decay=0.01)",
        lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01),
        "sparsity(adam, beta=1, weight_decay=0.01)",
        lambda params: SparsityPreconditioned(params, lr=LR, base="adam", beta=1.0, weight_decay=0.01),
    ),
)


# --- 1. step time --------------------------------------------------------------------------


def step_only(model, optimizer: torch.optim.Optimizer, loss_fn, steps: int) -> float:
    """Seconds spent in ``optimizer.step()`` over ``steps`` training steps (the rest untimed)."""
    spent, device = 0.0, device_of(model)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        synchronize(device)
        started = time.perf_counter()
        optimizer.step()
        synchronize(device)
        spent += time.perf_counter() - started
    return spent


def measure_pair(work: Workload, pair, steps: int, windows: int, with_step_only: bool) -> dict[str, Any]:
    name, base_name, make_base, sparse_name, make_sparse = pair
    model_b, model_s = copy.deepcopy(work.model).train(), copy.deepcopy(work.model).train()
    base, sparse = make_base(model_b.parameters()), make_sparse(model_s.parameters())
    for model, optimizer in ((model_b, base), (model_s, sparse)):
        train_steps(model, optimizer, work.loss, WARMUP)
    whole = {"base": [], "sparse": []}
    only = {"base": [], "sparse": []}
    for window in range(windows):
        sides = [("base", model_b, base), ("sparse", model_s, sparse)]
        for side, model, optimizer in sides if window % 2 == 0 else reversed(sides):
            whole[side].append(train_steps(model, optimizer, work.loss, steps) / steps)
            if with_step_only:
                only[side].append(step_only(model, optimizer, work.loss, steps) / steps)
    row = {
        "model": work.name, "pair": name, "base_name": base_name, "sparse_name": sparse_name,
        "steps": steps, "windows": windows,
        "base_ms": statistics.median(whole["base"]) * 1e3,
        "sparse_ms": statistics.median(whole["sparse"]) * 1e3,
        "finite": all(torch.isfinite(p).all() for p in model_s.parameters()),
    }
    row["ratio"] = row["sparse_ms"] / row["base_ms"]
    if with_step_only:
        row["base_step_ms"] = statistics.median(only["base"]) * 1e3
        row["sparse_step_ms"] = statistics.median(only["sparse"]) * 1e3
        row["step_ratio"] = row["sparse_step_ms"] / row["base_step_ms"]
    return row


def profile_step(work: Workload, pair, steps: int = 50, top: int = 8) -> None:
    """torch.profiler (CPU) of ``steps`` bare step() calls of each optimizer of ``pair``: top ops by self time."""
    name, base_name, make_base, sparse_name, make_sparse = pair
    for label, make in ((base_name, make_base), (sparse_name, make_sparse)):
        model = copy.deepcopy(work.model).train()
        optimizer = make(model.parameters())
        train_steps(model, optimizer, work.loss, WARMUP)  # leaves gradients in place
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(steps):
                optimizer.step()
        events = [e for e in profiler.key_averages() if not e.key.startswith("Optimizer.")]
        total = sum(e.self_cpu_time_total for e in events)
        print(f"  {work.name} {label}: {total / steps:.1f} us self CPU per step() (profiled), top ops:")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
            print(
                f"    {e.key:<28} {e.self_cpu_time_total / steps:>8.1f} us/step "
                f"{100 * e.self_cpu_time_total / total:>5.1f}%  calls/step {e.count / steps:>5.1f}"
            )


def step_time_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    plans = [(mlp_workload, args.mlp_steps, args.mlp_windows, True)]
    if not args.skip_bert:
        plans.append((functools.partial(bert_workload, "mini"), args.bert_steps, args.bert_windows, False))
    rows = []
    for make_work, steps, windows, with_step_only in plans:
        work = make_work(args.device)
        for pair in PAIRS:
            rows.append(measure_pair(work, pair, steps, windows, with_step_only))
            print(f"  measured {work.name} {pair[0]} ({time.perf_counter() - STARTED:.0f} s elapsed)", flush=True)
        if args.profile:
            for pair in PAIRS:
                profile_step(work, pair, steps=50 if with_step_only else 10)
    return rows


def print_step_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':<10} {'pair':<13} {'windows x steps':>15} {'base ms':>8} {'sparsity ms':>11} {'ratio':>6} | "
        f"{'step() base ms':>14} {'sparsity ms':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        step = (
            f"{r['base_step_ms']:>14.3f} {r['sparse_step_ms']:>11.3f} {r['step_ratio']:>5.2f}x"
            if "step_ratio" in r else f"{'-':>14} {'-':>11} {'-':>6}"
        )
        digits = 3 if r["base_ms"] < 10 else 1
        print(
            f"{r['model']:<10} {r['pair']:<13} {r['windows']:>6} x {r['steps']:<6} "
            f"{r['base_ms']:>8.{digits}f} {r['sparse_ms']:>11.{digits}f} {r['ratio']:>5.2f}x | {step}"
        )
    print(
        "base = " + "; ".join(f"{p[0]}: {p[1]}" for p in PAIRS) + "\n"
        "sparsity = " + "; ".join(f"{p[0]}: {p[3]}" for p in PAIRS) + "\n"
        "ratio = sparsity ms / base ms per whole training step (zero_grad + forward + backward + step()); "
        "step() = optimizer.step() alone (where measured). Medians over interleaved windows of the mean step time."
    )
    for r in rows:
        if not r["finite"]:
            print(f"warning: {r['model']} {r['pair']}: the sparsity optimizer left non-finite parameters")


# --- 2. convergence ------------------------------------------------------------------------


def steps_to_target(stream, validation, seed: int, make_optimizer: Callable, args: argparse.Namespace):
    """(steps or None, "ok" | "cap" | "nan", best validation accuracy) of one run."""
    from basinlab.models import MLP

    x_val, y_val = validation
    model = MLP(784, [100], 10, seed=seed)
    optimizer = make_optimizer(model.parameters())
    step, best = 0, 0.0
    for epoch in range(args.max_epochs):
        for x, y in stream.train_batches(0, BATCH, seed=seed, epoch=epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.eval_every:
                continue
            with torch.no_grad():
                logits = model(x_val)
            if not (math.isfinite(loss.item()) and torch.isfinite(logits).all()):
                return None, "nan", best
            accuracy = (logits.argmax(1) == y_val).float().mean().item()
            best = max(best, accuracy)
            if accuracy >= args.target:
                return step, "ok", best
    return None, "cap", best


def convergence_arms(args: argparse.Namespace) -> list[tuple[str, float, float, Callable]]:
    """(arm, lr multiplier, lr, factory): SGD once, each beta at every multiplier."""
    arms = [("sgd", 1.0, SGD_LR, lambda params: torch.optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM))]
    for beta in BETAS:
        for multiplier in args.lr_multipliers:
            lr = SGD_LR * multiplier

            def make(params, lr=lr, beta=beta):
                return SparsityPreconditioned(params, lr=lr, base="sgd", momentum=MOMENTUM, beta=beta)

            arms.append((f"sparsity beta={beta:g}", multiplier, lr, make))
    return arms


def convergence_part(args: argparse.Namespace) -> None:
    from basinlab.data.cache import default_cache_dir
    from basinlab.data.mnist import load_mnist
    from basinlab.data.streams import TaskStream, build_tasks
    from basinlab.models import MLP

    threads = torch.get_num_threads()
    torch.set_num_threads(args.convergence_threads)
    arrays = load_mnist(default_cache_dir(), prepare=True)
    arms = convergence_arms(args)
    results: dict[tuple[str, float], list[tuple[int | None, str, float]]] = {(a, m): [] for a, m, _, _ in arms}
    for seed in args.seeds:
        tasks = build_tasks("permuted", arrays, 1, seed=seed, validation_size=VALIDATION)
        stream = TaskStream(arrays, tasks)
        validation = next(stream.eval_batches(0, "val", batch_size=VALIDATION))
        for arm, multiplier, lr, make in arms:
            results[(arm, multiplier)].append(steps_to_target(stream, validation, seed, make, args))
        print(f"  trained seed {seed}: {len(arms)} runs ({time.perf_counter() - STARTED:.0f} s elapsed)", flush=True)
    torch.set_num_threads(threads)

    weights = [p for p in MLP(784, [100], 10, seed=args.seeds[0]).parameters() if p.dim() >= 2]
    count = sum(p.numel() for p in weights)
    init_scale = {b: sum((p.abs() ** b).sum().item() for p in weights) / count for b in BETAS}
    steps_per_epoch = len(tasks[0].train_index) // BATCH

    def median_steps(runs) -> float:
        return statistics.median(math.inf if s is None else s for s, _, _ in runs)

    def rank(arm: str, multiplier: float) -> tuple:
        runs = results[(arm, multiplier)]
        reached = sum(s is not None for s, _, _ in runs)
        return median_steps(runs), -reached, -statistics.median(b for _, _, b in runs), multiplier

    def cell(run) -> str:
        steps, status, best = run
        return str(steps) if status == "ok" else f"{status}({best:.4f})" if status == "cap" else status

    print(
        f"\nsteps until validation accuracy >= {args.target} (evaluated every {args.eval_every} steps; cap "
        f"{args.max_epochs} epoch{'s' if args.max_epochs != 1 else ''} = {args.max_epochs * steps_per_epoch} steps; cap(x) = never reached, best "
        f"accuracy x; nan = diverged), seeds {' '.join(map(str, args.seeds))}:"
    )
    header = f"{'arm':<18} {'lr':>6} {'x':>4} " + " ".join(f"{'seed ' + str(s):>12}" for s in args.seeds) + f" {'median':>8}"
    print(header)
    print("-" * len(header))
    for arm, multiplier, lr, _ in arms:
        runs = results[(arm, multiplier)]
        median = median_steps(runs)
        shown = f"{median:.0f}" if math.isfinite(median) else "-"
        print(f"{arm:<18} {lr:>6.3g} {multiplier:>4g} " + " ".join(f"{cell(r):>12}" for r in runs) + f" {shown:>8}")

    sgd = median_steps(results[("sgd", 1.0)])
    print(
        f"\nmean |w|^beta over the weight matrices at init (seed {args.seeds[0]}): "
        + ", ".join(f"beta={b:g}: {v:.4f}" for b, v in init_scale.items())
        + " (the factor on a typical weight's step vs SGD at the same lr)"
    )
    print(
        f"best lr per arm = the multiplier of {SGD_LR} among {' '.join(f'{m:g}' for m in args.lr_multipliers)} "
        "with the fewest median steps; SGD is not tuned"
    )
    for beta in BETAS:
        arm = f"sparsity beta={beta:g}"
        best = min(args.lr_multipliers, key=lambda m: rank(arm, m))
        median = median_steps(results[(arm, best)])
        edge = len(args.lr_multipliers) > 1 and best in (min(args.lr_multipliers), max(args.lr_multipliers))
        note = "  (best at the edge of the lr grid)" if edge else ""
        if not math.isfinite(median):
            reached = sum(s is not None for s, _, _ in results[(arm, best)])
            print(
                f"{arm}: at no lr did the median over seeds reach {args.target} (closest: lr x{best:g} = "
                f"{SGD_LR * best:g}, reached on {reached}/{len(args.seeds)}); steps-to-target ratio vs SGD = inf"
            )
        elif not math.isfinite(sgd):
            print(f"{arm}: lr x{best:g} = {SGD_LR * best:g}: median {median:.0f} steps; SGD never reached the target")
        else:
            print(
                f"{arm}: lr x{best:g} = {SGD_LR * best:g}: median {median:.0f} steps vs SGD {sgd:.0f}: "
                f"steps-to-target ratio vs SGD = {median / sgd:.2f}x{note}"
            )


# --- main ----------------------------------------------------------------------------------

STARTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="convergence seeds (default 0 1 2)")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy to reach (default 0.97)")
    parser.add_argument("--max-epochs", type=int, default=20, help="cap per convergence run (default 20)")
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY, help="steps between evaluations (default 100)")
    parser.add_argument(
        "--lr-multipliers", type=float, nargs="+", default=[1.0, 3.0, 10.0],
        help=f"sparsity lr grid, multiples of SGD's {SGD_LR} (default 1 3 10)",
    )
    parser.add_argument("--skip-bert", action="store_true", help="no BERT-mini step timing")
    parser.add_argument("--skip-convergence", action="store_true", help="step timing only")
    parser.add_argument("--skip-step-time", action="store_true", help="convergence only")
    parser.add_argument("--mlp-steps", type=int, default=200, help="steps per MLP window (default 200)")
    parser.add_argument("--mlp-windows", type=int, default=9, help="windows per optimizer, MLP (default 9)")
    parser.add_argument("--bert-steps", type=int, default=3, help="steps per BERT-mini window (default 3)")
    parser.add_argument("--bert-windows", type=int, default=5, help="windows per optimizer, BERT-mini (default 5)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops of bare step() calls for every pair")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for step timing (default: torch's choice)")
    parser.add_argument("--convergence-threads", type=int, default=1, help="torch threads for convergence (default 1)")
    parser.add_argument("--device", default="cpu", help="step timing on cpu (default) or a CUDA device; convergence stays on cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    positive = (args.convergence_threads, args.max_epochs, args.eval_every, args.mlp_steps, args.mlp_windows, args.bert_steps, args.bert_windows)
    if min(positive) < 1 or min(args.lr_multipliers) <= 0 or not 0 < args.target <= 1:
        parser.error("counts and lr multipliers must be positive and --target in (0, 1]")

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, step timing on {args.device}")
    if not args.skip_step_time:
        print(f"1. step time (goal: sparsity / base <= {GOAL}x), {WARMUP} warm-up steps per optimizer, lr {LR}")
        rows = step_time_part(args)
        print()
        print_step_table(rows)
        print()
        for r in rows:
            verdict = "ok" if r["ratio"] <= GOAL else "MISSED"
            line = f"{r['model']} {r['pair']}: sparsity/base whole-step time = {r['ratio']:.2f}x (goal <= {GOAL}x: {verdict})"
            if "step_ratio" in r:
                line += f"; step() alone = {r['step_ratio']:.2f}x"
            print(line)
        print()
    if not args.skip_convergence:
        print(
            f"2. convergence on MNIST (train minus {VALIDATION} held-out validation images, batch {BATCH}, "
            f"MLP 784-100-10 from the seed; SGD lr {SGD_LR} momentum {MOMENTUM}; sparsity base sgd momentum {MOMENTUM}; "
            f"torch threads {args.convergence_threads})"
        )
        convergence_part(args)
    print(f"\ntotal {time.perf_counter() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
