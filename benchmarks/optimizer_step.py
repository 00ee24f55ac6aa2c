"""Per-step cost of Shampoo relative to AdamW: forward + backward + optimizer step.

For each model and precondition_frequency f this measures the wall time of whole training
steps (zero_grad, forward, loss, backward, ``optimizer.step()``) with Shampoo and with
AdamW, and prints the ratio of the two medians. Both optimizers train their own copy of
the same initial weights on the same fixed random batch, in this process, after warm-up,
in alternating windows (AdamW then Shampoo, then Shampoo then AdamW, ...). These machines
are shared and noisy: absolute times drift with whatever else runs, but a same-process,
interleaved ratio sees the same drift on both sides, so the ratio is what to read.

Shampoo recomputes its inverse roots once every f steps, so a measured window is always a
whole multiple of f steps (by default 2 x f, at least ``min_steps``): every window then
holds the same number of root computations, and their cost is amortized exactly as in
training. When that would not fit the time budget the number of windows drops (down to
one), and without ``--steps`` a window may drop to 1 x f; the table states what was
measured ("windows x steps").

It also prints where Shampoo's ``optimizer.step()`` time goes: torch.profiler (CPU total
time in key_averages; on CUDA the GPU kernel time launched inside each range) of the
record_function ranges "shampoo.factor_update", "shampoo.root", "shampoo.graft" and
"shampoo.precondition" as shares of step() (``--no-profile`` skips it). Profiling
f consecutive steps would cost minutes at f=100 (key_averages is slow on many events), so
one training step that computes roots and a few that do not are profiled and weighted as
an f-step window holds them: (root step + (f - 1) x mean other step) / f. Last, the
optimizer-state size (sum of tensor nbytes in ``optimizer.state``) of Shampoo vs AdamW.

    python benchmarks/optimizer_step.py [--model mlp|bert-mini|bert-small|bert-base|all]
        [--frequencies 1 10 100] [--steps N] [--windows K] [--budget-s S]
        [--max-preconditioner-dim D] [--threads T] [--device cpu|cuda] [--batch B] [--no-profile]

Models: (a) the MNIST MLP 784-100-10, batch 128 of random inputs and labels; (b) BERT
masked LM of a basinlab.models preset (mini: hidden 256, 4 layers, 4 heads, FFN 1024;
small: 512, 4, 8, 2048; base: 768, 12, 12, 3072), vocab 8192, random init, batch
``--batch`` (default 16) x 128 random token ids, ~15% of positions labelled, the rest -100.
``all`` is the CPU set, mlp and bert-mini. With ``--device cuda`` models and batches live
on the GPU and every clock read waits for it (torch.cuda.synchronize).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import os
import statistics
import time
from typing import Any, Callable

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # before torch: silences kineto's profiler_start/stop lines

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402

PHASES = ("shampoo.factor_update", "shampoo.root", "shampoo.graft", "shampoo.precondition")
LR = 1e-3
WARMUP = 3  # steps per optimizer before anything is measured (state allocation, first kernels)


@dataclasses.dataclass
class Workload:
    name: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    min_steps: int  # fewest steps in a window (cheap steps need long windows for a stable clock)
    default_windows: int
    profiled_plain_steps: int  # steps without a root computation profiled (see amortized_profile)


def mlp_workload(device: str | torch.device = "cpu", batch: int = 128) -> Workload:
    from basinlab.models import MLP

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    model = MLP(784, [100], 10, seed=0).to(device)
    return Workload("mlp", model, lambda m: F.cross_entropy(m(x), y), 100, 5, 20)


def bert_workload(
    preset: str, device: str | torch.device = "cpu", batch: int = 16, seq: int = 128, vocab: int = 8192
) -> Workload:
    """BERT masked LM of a basinlab.models preset on a fixed random batch; weights depend only on the seed."""
    from basinlab.models import build_bert_mlm

    model = build_bert_mlm(preset, vocab, max_length=512, seed=0).to(device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.15, ids, torch.full_like(ids, -100))
    ids, labels = ids.to(device), labels.to(device)
    return Workload(f"bert-{preset}", model, lambda m: m(input_ids=ids, labels=labels).loss, 2, 3, 4)


WORKLOADS = {"mlp": mlp_workload, **{f"bert-{p}": functools.partial(bert_workload, p) for p in ("mini", "small", "base")}}
CPU_SET = ("mlp", "bert-mini")  # --model all: the larger BERTs take minutes per step on a CPU


def make_adamw(params, frequency: int, args: argparse.Namespace) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR)


def make_shampoo(params, frequency: int, args: argparse.Namespace) -> torch.optim.Optimizer:
    from basinlab.optim import Shampoo

    # Roots are computed at steps WARMUP+1, WARMUP+1+f, ...: the first one comes right after
    # a short warm-up whatever f is, and the benchmark knows which steps compute roots.
    return Shampoo(
        params,
        lr=LR,
        precondition_frequency=frequency,
        start_preconditioning_step=WARMUP + 1,
        max_preconditioner_dim=args.max_preconditioner_dim,
    )


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    """Wait for the GPU: CUDA runs kernels asynchronously, so a clock read without this would
    time their launches, not their work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, steps: int) -> float:
    """Seconds for ``steps`` whole training steps."""
    device = device_of(model)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Sum of nbytes of every tensor reachable from ``optimizer.state`` (each counted once)."""
    seen: set[int] = set()

    def walk(value: Any) -> int:
        if id(value) in seen:
            return 0
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            return value.nbytes
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple, set)):
            return sum(walk(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return sum(walk(getattr(value, f.name)) for f in dataclasses.fields(value))
        if hasattr(value, "__dict__") and not isinstance(value, type):
            return sum(walk(v) for v in vars(value).values())
        return 0

    return sum(walk(s) for s in optimizer.state.values())


def profile_steps(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, steps: int, enabled: bool = True):
    """Profile ``steps`` whole training steps: ms of each phase range, of step() ("step"), and wall ms.

    Phase and step() times are CPU time, on CUDA the GPU kernel time launched inside each
    range (then "step_cpu" is step()'s CPU time: far above "step" means launch-bound).
    Not ``enabled``: wall ms only, with no profiler overhead.
    """
    if not enabled:
        return {"wall": train_steps(model, optimizer, loss_fn, steps) * 1e3}
    cuda = device_of(model).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        train_steps(model, optimizer, loss_fn, steps)
    wall_ms = (time.perf_counter() - started) * 1e3
    # CPU-side entries only: on CUDA each range also has a GPU-side twin under the same key.
    events = [e for e in profiler.key_averages() if e.device_type == DeviceType.CPU]
    cpu = {e.key: e.cpu_time_total / 1e3 for e in events}
    totals = {e.key: e.device_time_total / 1e3 for e in events} if cuda else cpu
    step_key = f"Optimizer.step#{type(optimizer).__name__}.step"
    result = {phase: totals[phase] for phase in PHASES if phase in totals}
    result["step"] = totals.get(step_key, math.nan)
    if cuda:
        result["step_cpu"] = cpu.get(step_key, math.nan)
    result["wall"] = wall_ms
    return result


def amortized_profile(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, frequency: int, work: Workload, enabled: bool = True
):
    """Per-step profile of Shampoo amortized over its root schedule, right after warm-up.

    The next step computes roots (see make_shampoo); it is profiled alone, then up to
    ``work.profiled_plain_steps`` of the f - 1 steps without roots that follow. Per step:
    (root step + (f - 1) x mean step without roots) / f, exactly what an f-step window
    holds, at the price of a few profiled steps instead of f (torch.profiler's
    key_averages costs seconds per ten thousand events). Not ``enabled``: the same steps,
    timed only (the window plan still needs their wall time).
    """
    if frequency == 1:  # every step computes roots
        steps = min(3, work.profiled_plain_steps)
        profile = profile_steps(model, optimizer, loss_fn, steps, enabled)
        return {k: v / steps for k, v in profile.items()}, steps, 0
    root = profile_steps(model, optimizer, loss_fn, 1, enabled)
    others = min(frequency - 1, work.profiled_plain_steps)
    plain = profile_steps(model, optimizer, loss_fn, others, enabled)
    keys = set(root) | set(plain)
    per_step = {k: (root.get(k, 0.0) + (frequency - 1) * plain.get(k, 0.0) / others) / frequency for k in keys}
    if plain.get("shampoo.root", 0.0) / others > 0.5 * root.get("shampoo.root", 0.0):
        print(f"warning: f={frequency}: steps without a root computation spent as long in shampoo.root as the root step")
    return per_step, 1, others


def window_plan(frequency: int, work: Workload, args: argparse.Namespace, per_step_s: float) -> tuple[int, int]:
    """(steps per window, number of windows) for one frequency; see the module docstring."""
    if args.steps:
        steps = frequency * math.ceil(args.steps / frequency)
    else:
        steps = frequency * math.ceil(max(2 * frequency, work.min_steps) / frequency)
    windows = args.windows or work.default_windows
    fits = max(1, int(args.budget_s / (steps * per_step_s)))
    if fits < windows and not args.steps:
        # More windows of one f-multiple beat fewer of two: the median needs several.
        shorter = frequency * math.ceil(work.min_steps / frequency)
        fits_shorter = max(1, int(args.budget_s / (shorter * per_step_s)))
        if shorter < steps and (fits_shorter > fits or steps * per_step_s > args.budget_s):
            steps, fits = shorter, fits_shorter
    return steps, max(1, min(windows, fits))


def measure(work: Workload, frequency: int, args: argparse.Namespace) -> dict[str, Any]:
    model_a, model_s = copy.deepcopy(work.model).train(), copy.deepcopy(work.model).train()
    adamw = make_adamw(model_a.parameters(), frequency, args)
    shampoo = make_shampoo(model_s.parameters(), frequency, args)
    t_a = train_steps(model_a, adamw, work.loss, WARMUP) / WARMUP
    train_steps(model_s, shampoo, work.loss, WARMUP)
    profile, root_steps, plain_steps = amortized_profile(model_s, shampoo, work.loss, frequency, work, args.profile)
    # Shampoo is now in its steady state; every window of f-multiple steps holds the same
    # number of root computations.
    steps, windows = window_plan(frequency, work, args, t_a + profile["wall"] / 1e3)
    times_a, times_s = [], []
    for window in range(windows):
        pair = [(model_a, adamw, times_a), (model_s, shampoo, times_s)]
        for model, optimizer, times in pair if window % 2 == 0 else reversed(pair):
            times.append(train_steps(model, optimizer, work.loss, steps) / steps)
    step_a, step_s = statistics.median(times_a), statistics.median(times_s)
    return {
        "model": work.name,
        "frequency": frequency,
        "steps": steps,
        "windows": windows,
        "adamw_ms": step_a * 1e3,
        "shampoo_ms": step_s * 1e3,
        "ratio": step_s / step_a,
        "profiled": f"{root_steps}+{plain_steps}",
        "profile": profile,
        "adamw_state": state_bytes(adamw),
        "shampoo_state": state_bytes(shampoo),
        "finite": all(torch.isfinite(p).all() for p in model_s.parameters()),
        "device": str(device_of(model_s)),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':<10} {'f':>4} {'windows x steps':>15} {'adamw ms':>9} {'shampoo ms':>10} {'ratio':>6} | "
        f"{'factor':>6} {'root':>6} {'graft':>6} {'precond':>7} {'other':>6} {'step() ms':>9} {'profiled':>8} | "
        f"{'adamw MB':>8} {'shampoo MB':>10} {'x':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        profile = r["profile"]
        step = profile.get("step", math.nan)
        pct = [100 * profile.get(p, math.nan) / step for p in PHASES]
        other = 100 - sum(pct)
        print(
            f"{r['model']:<10} {r['frequency']:>4} {r['windows']:>6} x {r['steps']:<6} "
            f"{r['adamw_ms']:>9.1f} {r['shampoo_ms']:>10.1f} {r['ratio']:>5.2f}x | "
            + " ".join(f"{v:>5.1f}%" for v in pct[:3])
            + f" {pct[3]:>6.1f}% {other:>5.1f}% {step:>9.1f} {r['profiled']:>8} | "
            f"{r['adamw_state'] / 2**20:>8.2f} {r['shampoo_state'] / 2**20:>10.2f} "
            f"{r['shampoo_state'] / max(r['adamw_state'], 1):>4.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*WORKLOADS, "all"], default="all", help="all: " + " and ".join(CPU_SET))
    parser.add_argument("--frequencies", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument(
        "--steps", type=int, default=None,
        help="steps per measured window, rounded up to a multiple of f (default: 2 x f, at least 100 for mlp, 2 for BERT)",
    )
    parser.add_argument("--windows", type=int, default=None, help="windows per optimizer (default: mlp 5, BERT 3)")
    parser.add_argument(
        "--budget-s", type=float, default=50.0,
        help="rough time budget per model and frequency; fewer windows (at least one) when exceeded",
    )
    parser.add_argument("--max-preconditioner-dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or a CUDA device such as cuda, cuda:1")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: mlp 128, BERT 16 sequences)")
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the profiler share table (timing only)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(f < 1 for f in args.frequencies) or any(v is not None and v < 1 for v in (args.steps, args.windows, args.batch)):
        parser.error("--frequencies, --steps, --windows and --batch must be positive")

    names = list(CPU_SET) if args.model == "all" else [args.model]
    device = torch.device(args.device)
    torch.linalg.eigh(torch.eye(64, device=device) + 1)  # load LAPACK's / cuSOLVER's kernels before anything is measured
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {where}, threads={torch.get_num_threads()}, "
        f"max_preconditioner_dim={args.max_preconditioner_dim}, "
        f"lr={LR}, Shampoo start_preconditioning_step={WARMUP + 1} (after {WARMUP} warm-up steps), other options default; "
        "times are medians over windows (whole multiples of f) of the mean step time, AdamW and Shampoo interleaved "
        "in this process"
    )
    rows = []
    started = time.perf_counter()
    for name in names:
        work = WORKLOADS[name](device, **({} if args.batch is None else {"batch": args.batch}))
        for frequency in args.frequencies:
            rows.append(measure(work, frequency, args))
            r = rows[-1]
            print(
                f"  measured {name} f={frequency}: {r['windows']} x {r['steps']} steps per optimizer "
                f"({time.perf_counter() - started:.0f} s elapsed)",
                flush=True,
            )
    print()
    print_table(rows)
    clock = "GPU kernel time (device_time_total)" if device.type == "cuda" else "CPU time (cpu_time_total)"
    print(
        "\nratio = Shampoo ms / AdamW ms per whole training step (forward + backward + step()).\n"
        f"factor/root/graft/precond/other: share of Shampoo's optimizer.step() {clock} in the record_function ranges "
        "shampoo.factor_update/.root/.graft/.precondition (torch.profiler key_averages), amortized "
        "over f steps from the profiled steps: R steps computing roots + N steps without (profiled = R+N; R=1 unless f=1), weighted "
        f"(root + (f-1) x mean other) / f. step() ms: profiled {clock} of step() per step (profiler overhead "
        "included). MB: tensor bytes in optimizer.state."
    )
    for r in rows:
        missing = [p for p in PHASES if p not in r["profile"]]
        if args.profile and missing:
            print(f"warning: {r['model']} f={r['frequency']}: profiler ranges not found: {', '.join(missing)}")
        if not r["finite"]:
            print(f"warning: {r['model']} f={r['frequency']}: Shampoo left non-finite parameters")
    print()
    for r in rows:
        measured = "1 window" if r["windows"] == 1 else f"median of {r['windows']} windows"
        launch = f"; step() CPU {r['profile']['step_cpu']:.1f} ms per step" if "step_cpu" in r["profile"] else ""
        print(
            f"{r['model']} f={r['frequency']}: shampoo/adamw step time = {r['ratio']:.2f}x"
            f"  ({measured} x {r['steps']} steps{launch})"
        )


if __name__ == "__main__":
    main()
