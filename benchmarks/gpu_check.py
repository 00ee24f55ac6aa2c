"""One short GPU session: are Shampoo and the sparsity preconditioner correct on CUDA, and what do they cost there.

Run from the repository root (basinlab need not be installed):

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--device cuda] [--output FILE] [--quick]
        [--sections correctness eigh sparsity step-time] [--matmul-precision highest|high]

Sections, cheapest first; each is independent (one that raises prints its traceback and the
others still run) and prints its rows as it goes and its wall time; the JSON (``--output``)
is rewritten atomically after every row, so a run cut short keeps what it measured.

1. correctness. The same small seeded model twice, one copy on the CPU and one on the
   device, trains 30 steps on identical fixed batches with each option set below; printed:
   max over parameters of ||p_cpu - p_dev|| / ||p_cpu||, and whether the two optimizers'
   state dicts agree in keys, tensor shapes and dtypes and in every counter. Also a hand-off:
   15 steps on the device, ``state_dict()`` saved and loaded with ``map_location="cpu"`` into
   a fresh CPU optimizer (its state must land on the CPU with the same structure), 15 more
   on the CPU, compared with the all-CPU run. float64 (model, data and Shampoo factors: a
   float32 factor would bound the agreement at float32 round-off) passes below 1e-9;
   float32 below 1e-3, next to the CPU's own float32-vs-float64 difference for scale.
   TF32 is off here (cuDNN convolutions use it by default). The model is built so the
   comparison measures the code, not ill-conditioning: tanh (a ReLU kink flipped by
   round-off changes a gradient by a whole term), and roots start at step 10, when every
   Kronecker factor has seen enough gradients to be full rank (the eigenvectors of a
   singular factor's null space, scaled by epsilon^(-1/p), are round-off themselves).
2. eigh. N symmetric positive-definite d x d matrices: one batched ``torch.linalg.eigh`` vs
   a Python loop of single calls (how Shampoo computes roots, one factor at a time), and the
   loop of Shampoo's two root functions (eigh vs the warm-started eigenbasis QR step), float32
   and float64, ms per matrix.
3. sparsity. ``SparsityPreconditioned`` vs its torch base (sgd+momentum, AdamW) on BERT-small:
   benchmarks/sparsity.py's interleaved windows, whole training steps and step() alone.
4. step-time. Shampoo vs AdamW per training step on BERT-mini/-small/-base (vocab 8192,
   batch 32 x 128; f = 10, and 100 for base): benchmarks/optimizer_step.py's measurement
   (interleaved windows of whole multiples of f, bounded by a time budget per row; profiler
   shares of GPU kernel time inside step()); ``max_preconditioner_dim`` 1024.

``--quick`` runs every section at toy sizes (BERT "tiny", vocab 512): ``--device cpu
--quick`` is a self-test of this script in seconds. The exit status is 1 when a correctness
check fails or a section raises.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.metadata
import io
import math
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Iterator

import optimizer_step  # first: it sets KINETO_LOG_LEVEL before torch is imported
from optimizer_step import synchronize
import sparsity as sparsity_bench

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from basinlab.atomic import atomic_write_json  # noqa: E402
from basinlab.optim import Shampoo, SparsityPreconditioned  # noqa: E402
from basinlab.optim.matrix_functions import eigenbasis_inverse_root, eigh_inverse_root  # noqa: E402

SECTIONS = ("correctness", "eigh", "sparsity", "step-time")
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}
BATCH = 64  # > every factor's dim: with start_preconditioning_step 10 every factor is full rank
ROOT_START, ROOT_EVERY = 10, 5

# Shampoo: start at step 10, recompute every 5 (roots at 10, 15, ..., 30) in every set.
SHAMPOO_SETS = {
    "adam+blocks16+nesterov+wd": dict(
        lr=1e-2, grafting="adam", max_preconditioner_dim=16, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "sgd+eigenbasis+f64factors+vec": dict(
        lr=5e-2, grafting="sgd", root_method="eigenbasis", factor_dtype="float64",
        max_vector_preconditioner_dim=8, momentum=0.5, betas=(0.9, 1.0),
    ),
    "adagrad+pinv+root2+rawgrad": dict(
        lr=5e-2, grafting="adagrad", betas=(0.0, 0.99), pseudo_inverse=True, root_override=2, max_preconditioner_dim=20
    ),
    "nograft+momentum": dict(lr=1e-3, grafting="none", momentum=0.9),
}
# One set per exponent code path (beta 1, 2, 0.5 = sqrt, 1.5 = pow).
SPARSITY_SETS = {
    "sgd+nesterov+wd,b=1": dict(lr=0.5, base="sgd", momentum=0.9, nesterov=True, beta=1.0, weight_decay=0.01),
    "sgd+momentum+floor,b=2": dict(lr=1.0, base="sgd", momentum=0.9, beta=2.0, floor=1e-3),
    "adam+wd+vectors,b=0.5": dict(lr=1e-2, base="adam", beta=0.5, weight_decay=0.01, precondition_vectors=True),
    "adam+floor,b=1.5": dict(lr=1e-2, base="adam", beta=1.5, floor=1e-2),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of every section: the GPU run, or --quick."""

    correctness_steps: int
    eigh_shapes: tuple[tuple[int, int], ...]  # (count, dim)
    bert: dict[str, tuple[int, int, int]]  # preset -> (batch, seq, vocab)
    sparsity: tuple[str, int, int]  # (preset, steps, windows)
    # (preset, f, steps per window or None = optimizer_step's 2 x f, windows, budget s, profile)
    step_rows: tuple[tuple[str, int, int | None, int, float, bool], ...]


# Rough H100 estimate: correctness ~15 s, eigh ~20 s, sparsity ~15 s, step-time 60-110 s (a
# BERT-base root step is 260 eighs of 768/1024, 4-10 s each time; the budgets cap the windows).
FULL = Plan(
    correctness_steps=30,
    eigh_shapes=((16, 1024), (48, 768)),
    bert={"mini": (32, 128, 8192), "small": (32, 128, 8192), "base": (32, 128, 8192)},
    sparsity=("small", 10, 5),
    step_rows=(
        ("mini", 10, None, 3, 15.0, True),
        ("small", 10, None, 3, 20.0, True),
        ("base", 10, 10, 2, 25.0, True),
        ("base", 100, 100, 1, 40.0, False),  # timed only: the f=10 row profiles the same steps
    ),
)
QUICK = Plan(
    correctness_steps=30,
    eigh_shapes=((4, 64),),
    bert={"tiny": (2, 32, 512)},
    sparsity=("tiny", 2, 1),
    step_rows=(("tiny", 2, 2, 1, 5.0, True), ("tiny", 4, 4, 1, 5.0, False)),
)


# --- 1. correctness ------------------------------------------------------------------------


class CheckNet(nn.Module):
    """Every shape class Shampoo treats apart: a conv kernel, matrices, a 3-D tensor, a size-1
    dim, vectors and a scalar; tanh, not ReLU, so round-off never flips a gradient term."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)  # 7x7 input -> 4 x 3 x 3; kernel as a 4 x 27 matrix
        self.fc = nn.Linear(36, 24)
        self.mix = nn.Parameter(0.3 * torch.randn(5, 4, 6))  # 3-D, a 5 x 24 matrix
        self.gate = nn.Parameter(torch.ones(1, 24))  # size-1 dim: a vector
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(torch.tanh(self.conv(x)).flatten(1))) * self.gate
        return self.scale * h @ self.mix.flatten(1).T


def check_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CheckNet()


def check_batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(BATCH, 3, 7, 7, generator=generator, dtype=torch.float64), torch.randint(0, 5, (BATCH,), generator=generator))
        for _ in range(steps)
    ]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def max_relative_difference(reference: nn.Module, other: nn.Module) -> float:
    """max over parameters of ||a - b|| / ||a|| in float64 on the CPU (inf if anything is non-finite)."""
    worst = 0.0
    for a, b in zip(reference.parameters(), other.parameters()):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        value = (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-300)).item()
        worst = max(worst, value if math.isfinite(value) else math.inf)
    return worst


def state_structure(optimizer: torch.optim.Optimizer) -> dict:
    """The state dict with tensors replaced by (shape, dtype): what must not depend on the device."""
    state_dict = optimizer.state_dict()

    def describe(value):
        return (tuple(value.shape), str(value.dtype)) if isinstance(value, torch.Tensor) else value

    return {
        "state": {i: {k: describe(v) for k, v in s.items()} for i, s in state_dict["state"].items()},
        "param_groups": dict(enumerate(state_dict["param_groups"])),
    }


def structure_difference(a: dict, b: dict) -> str | None:
    """None when equal, else the first differing entry, e.g. "state/3/factor_0_1: ((24, 24), ...) != ..."."""
    for section in ("state", "param_groups"):
        for index in sorted(set(a[section]) | set(b[section])):
            left, right = a[section].get(index, {}), b[section].get(index, {})
            for key in sorted(set(left) | set(right), key=str):
                if left.get(key, "<missing>") != right.get(key, "<missing>"):
                    return f"{section}/{index}/{key}: {left.get(key, '<missing>')} != {right.get(key, '<missing>')}"
    return None


def state_on_cpu(optimizer: torch.optim.Optimizer) -> bool:
    return all(v.device.type == "cpu" for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))


@contextlib.contextmanager
def full_fp32():
    """No TF32 in matmuls and convolutions (cuDNN's default on Ampere and later): a float32
    comparison with the CPU needs float32 arithmetic on both sides."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compare_runs(cls, options: dict, dtype: torch.dtype, device: torch.device, batches, half: int):
    """The all-CPU run, the all-device run and the device-then-CPU hand-off of one option set:
    (the CPU model, the row of differences and state checks)."""
    base = check_model()

    def make(where):
        model = copy.deepcopy(base).to(device=where, dtype=dtype)
        return model, cls(model.parameters(), **options)

    on_cpu = [(x.to("cpu", dtype), y) for x, y in batches]
    on_device = [(x.to(device, dtype), y.to(device)) for x, y in batches]
    cpu_model, cpu_opt = make("cpu")
    train(cpu_model, cpu_opt, on_cpu)
    dev_model, dev_opt = make(device)
    train(dev_model, dev_opt, on_device)
    hand_model, hand_opt = make(device)
    train(hand_model, hand_opt, on_device[:half])
    buffer = io.BytesIO()
    torch.save(hand_opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_model, resumed_opt = make("cpu")
    resumed_model.load_state_dict(hand_model.state_dict())
    resumed_opt.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    train(resumed_model, resumed_opt, on_cpu[half:])

    reference = state_structure(cpu_opt)
    row = {
        "options": options,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_vs_device": max_relative_difference(cpu_model, dev_model),
        "handoff_vs_cpu": max_relative_difference(cpu_model, resumed_model),
        "state_difference": structure_difference(reference, state_structure(dev_opt)),
        "handoff_state_difference": structure_difference(reference, state_structure(resumed_opt)),
        "handoff_state_on_cpu": state_on_cpu(resumed_opt),
        "tolerance": TOLERANCE[dtype],
        "diagnostics": dev_opt.diagnostics() if isinstance(dev_opt, Shampoo) else None,
    }
    row["state_ok"] = (
        row["state_difference"] is None and row["handoff_state_difference"] is None and row["handoff_state_on_cpu"]
    )
    row["pass"] = row["cpu_vs_device"] < row["tolerance"] and row["handoff_vs_cpu"] < row["tolerance"] and row["state_ok"]
    return cpu_model, row


def correctness_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    """Every option set in float64 (Shampoo with float64 factors), then float32 (see the module docstring)."""
    batches = check_batches(plan.correctness_steps)
    half = plan.correctness_steps // 2
    schedule = dict(precondition_frequency=ROOT_EVERY, start_preconditioning_step=ROOT_START)
    sets = [("shampoo", name, Shampoo, {**schedule, **options}) for name, options in SHAMPOO_SETS.items()]
    sets += [("sparsity", name, SparsityPreconditioned, options) for name, options in SPARSITY_SETS.items()]
    print(
        f"{'optimizer':<9} {'option set':<31} {'dtype':<7} {'cpu vs dev':>10} {'handoff':>9} "
        f"{'f32 vs f64':>10} {'state':>5} {'limit':>7}  verdict"
    )
    with full_fp32():
        for kind, name, cls, options in sets:
            float64_options = {**options, "factor_dtype": "float64"} if cls is Shampoo else options
            reference64, row = compare_runs(cls, float64_options, torch.float64, device, batches, half)
            model32, row32 = compare_runs(cls, options, torch.float32, device, batches, half)
            row32["cpu_f32_vs_f64"] = max_relative_difference(reference64, model32)
            for row in (row, row32):
                row.update(optimizer=kind, set=name)
                spread = f"{row['cpu_f32_vs_f64']:.1e}" if "cpu_f32_vs_f64" in row else "-"
                print(
                    f"{kind:<9} {name:<31} {row['dtype']:<7} {row['cpu_vs_device']:>10.1e} {row['handoff_vs_cpu']:>9.1e} "
                    f"{spread:>10} {'same' if row['state_ok'] else 'DIFF':>5} {row['tolerance']:>7.0e}  "
                    f"{'PASS' if row['pass'] else 'FAIL'}"
                )
                for key in ("state_difference", "handoff_state_difference"):
                    if row[key]:
                        print(f"    {key}: {row[key]}")
                yield row
    print(
        "cpu vs dev / handoff: max over parameters of ||p_cpu - p||/||p_cpu|| after "
        f"{plan.correctness_steps} steps (handoff: {half} on the device, state_dict -> torch.load(map_location='cpu'), "
        f"{plan.correctness_steps - half} on the CPU); f32 vs f64: the same on the CPU alone (float32 round-off scale); "
        "state: keys, shapes, dtypes and counters equal to the CPU optimizer's (and hand-off state on the CPU)"
    )


# --- 2. eigh -------------------------------------------------------------------------------


def timed(fn: Callable[[Any], Any], stack: torch.Tensor, device: torch.device, budget_s: float = 1.0):
    """(median ms of ``fn(stack)``, its last result): warmed up on two matrices (solver handles,
    workspaces), then repeated 1 to 3 times, as many as fit the budget after the first."""
    fn(stack[:2])
    times, result = [], None
    while not times or (len(times) < 3 and sum(times) + times[0] <= budget_s):
        synchronize(device)
        started = time.perf_counter()
        result = fn(stack)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, result


def spd_stack(count: int, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Well-conditioned SPD matrices X X^T / (2 dim) + 1e-3 I, like a Kronecker factor with ample statistics."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, dim, 2 * dim, generator=generator, dtype=torch.float64)
    return (x @ x.transpose(-1, -2) / (2 * dim) + 1e-3 * torch.eye(dim, dtype=torch.float64)).to(device, dtype)


def eigh_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    print(
        f"{'N x d':<11} {'dtype':<7} {'batched ms':>10} {'loop ms':>9} {'loop/batched':>12} | "
        f"{'eigh root':>9} {'eigenbasis':>10} {'eigh/eigenbasis':>15} | {'max |dlambda|/lambda_max':>24}"
    )
    for count, dim in plan.eigh_shapes:
        for dtype in (torch.float32, torch.float64):
            stack = spd_stack(count, dim, dtype, device)
            batched_ms, batched = timed(torch.linalg.eigh, stack, device)
            loop_ms, looped = timed(lambda s: [torch.linalg.eigh(m) for m in s], stack, device)
            root_ms, roots = timed(lambda s: [eigh_inverse_root(m, 4, 1e-12) for m in s], stack, device)
            bases = [vectors for _, vectors in roots]  # the eigenbasis method's warm start
            eigenbasis_ms, _ = timed(
                lambda s: [eigenbasis_inverse_root(m, q, 4, 1e-12) for m, q in zip(s, bases)], stack, device
            )
            looped_values = torch.stack([values for values, _ in looped])
            agreement = ((batched.eigenvalues - looped_values).abs().amax() / looped_values.abs().amax()).item()
            row = {
                "count": count, "dim": dim, "dtype": str(dtype).removeprefix("torch."),
                "batched_ms": batched_ms / count, "loop_ms": loop_ms / count,
                "eigh_root_ms": root_ms / count, "eigenbasis_root_ms": eigenbasis_ms / count,
                "batched_vs_loop_eigenvalues": agreement,
            }
            print(
                f"{f'{count} x {dim}':<11} {row['dtype']:<7} {row['batched_ms']:>10.2f} {row['loop_ms']:>9.2f} "
                f"{loop_ms / batched_ms:>11.2f}x | {row['eigh_root_ms']:>9.2f} {row['eigenbasis_root_ms']:>10.2f} "
                f"{root_ms / eigenbasis_ms:>14.2f}x | {agreement:>24.1e}"
            )
            yield row
    print(
        "ms per matrix. batched: one torch.linalg.eigh of the stack; loop: one call per matrix (Shampoo's way); "
        "eigh root / eigenbasis: Shampoo's eigh_inverse_root vs eigenbasis_inverse_root (warm-started QR step) per matrix"
    )


# --- 3. sparsity and 4. step time ----------------------------------------------------------


def workload(preset: str, device: torch.device, plan: Plan) -> optimizer_step.Workload:
    batch, seq, vocab = plan.bert[preset]
    return optimizer_step.bert_workload(preset, device, batch=batch, seq=seq, vocab=vocab)


def sparsity_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    preset, steps, windows = plan.sparsity
    work = workload(preset, device, plan)
    rows = []
    for pair in sparsity_bench.PAIRS:
        rows.append(sparsity_bench.measure_pair(work, pair, steps, windows, with_step_only=True))
        print(f"  measured {work.name} {pair[0]}: sparsity/base {rows[-1]['ratio']:.2f}x", flush=True)
        yield rows[-1]
    sparsity_bench.print_step_table(rows)


def step_time_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    rows = []
    for preset in dict.fromkeys(row[0] for row in plan.step_rows):
        work = workload(preset, device, plan)
        for _, frequency, steps, windows, budget_s, profile in (r for r in plan.step_rows if r[0] == preset):
            args = argparse.Namespace(
                steps=steps, windows=windows, budget_s=budget_s, max_preconditioner_dim=1024, profile=profile
            )
            started = time.perf_counter()
            row = optimizer_step.measure(work, frequency, args)
            row["batch"], row["seq"] = plan.bert[preset][:2]
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            profiled = row["profile"]
            kernels = f"step() GPU {profiled['step']:.1f} ms, CPU {profiled['step_cpu']:.1f} ms" if "step_cpu" in profiled else ""
            print(
                f"  {work.name} batch {row['batch']}x{row['seq']} f={frequency}: adamw {row['adamw_ms']:.1f} ms, "
                f"shampoo {row['shampoo_ms']:.1f} ms, ratio {row['ratio']:.2f}x ({row['windows']} x {row['steps']} steps) "
                f"{kernels} [{row['seconds']:.0f} s]",
                flush=True,
            )
            yield row
        del work
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    optimizer_step.print_table(rows)
    print(
        "shares and step() ms: GPU kernel time inside each profiler range on CUDA (CPU time on cpu); "
        "nan: not profiled. ratio = Shampoo / AdamW per whole training step."
    )


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to check against the CPU (default cuda)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a self-test of this script (CPU: < 1 min)")
    parser.add_argument("--output", default=None, help="write every result as JSON here (atomically, after each section)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--matmul-precision", choices=("highest", "high", "medium"), default="highest",
        help="torch.set_float32_matmul_precision for the timing sections (high = TF32); correctness always runs without TF32",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    device = torch.device(args.device)
    plan = QUICK if args.quick else FULL
    torch.set_float32_matmul_precision(args.matmul_precision)
    meta = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": importlib.metadata.version("transformers"),
        "python": platform.python_version(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "linalg_library": str(torch.backends.cuda.preferred_linalg_library()),
        "matmul_precision": args.matmul_precision, "threads": torch.get_num_threads(), "quick": args.quick,
        "plan": dataclasses.asdict(plan),
    }
    print(" ".join(f"{k}={v}" for k, v in meta.items() if k != "plan"))
    results: dict[str, Any] = {"meta": meta, "sections": {}}
    sections = {"correctness": correctness_rows, "eigh": eigh_rows, "sparsity": sparsity_rows, "step-time": step_time_rows}
    total = time.perf_counter()

    def save() -> None:
        if args.output:
            atomic_write_json(args.output, results)

    for name in (s for s in SECTIONS if s in args.sections):
        print(f"\n=== {name} ===")
        started = time.perf_counter()
        section = results["sections"][name] = {"status": "running", "rows": []}
        try:
            for row in sections[name](device, plan):
                section["rows"].append(row)
                save()  # a run cut short keeps every finished row
            section["status"] = "ok"
        except Exception:  # noqa: BLE001 - every section is independent; the traceback is the report
            traceback.print_exc()
            sys.stderr.flush()
            section.update(status="error", traceback=traceback.format_exc())
        section["wall_s"] = time.perf_counter() - started
        print(f"=== {name}: {section['status']}, {section['wall_s']:.1f} s ===")
        save()
    failed = [
        f"{r['optimizer']} {r['set']} {r['dtype']}"
        for r in results["sections"].get("correctness", {}).get("rows", [])
        if not r["pass"]
    ]
    errors = [name for name, s in results["sections"].items() if s["status"] == "error"]
    results["failed_checks"], results["section_errors"] = failed, errors
    results["wall_s"] = time.perf_counter() - total
    save()
    print(
        f"\ntotal {results['wall_s']:.0f} s; correctness failures: {', '.join(failed) or 'none'}; "
        f"sections with errors: {', '.join(errors) or 'none'}"
    )
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
