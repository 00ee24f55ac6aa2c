"""One short GPU session for Shampoo, SOAP and Muon: correct on CUDA, free of host syncs, and what they cost there.

Run from the repository root (basinlab need not be installed), about 6 minutes on one H200:

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--device cuda] [--output FILE] [--quick]
        [--sections correctness sync roots step-time] [--matmul-precision highest|high]

Sections, cheapest first; each is independent (one that raises prints its traceback and the
others still run) and prints its rows as it goes and its wall time; the JSON (``--output``)
is rewritten atomically after every row, so a run cut short keeps what it measured.

1. correctness. The same small seeded model twice, one copy on the CPU and one on the
   device, trains 30 steps on identical fixed batches with each option set below (every
   root method, staggered roots, blocks, grafting kinds); printed: max over parameters of
   ||p_cpu - p_dev|| / ||p_cpu||, and whether the two optimizers' state dicts agree in
   keys, tensor shapes and dtypes and in every counter. Also a hand-off: 15 steps on the
   device, ``state_dict()`` loaded with ``map_location="cpu"`` into a fresh CPU optimizer,
   15 more on the CPU, compared with the all-CPU run. float64 (model, data and factors)
   passes below 1e-9, float32 below 1e-3 or 3x the CPU's own float32-vs-float64 spread,
   whichever is larger (SOAP's spread is 1e-2 - 4e-2: Adam in a rotated basis amplifies
   round-off). TF32 is off here. The model is built so the
   comparison measures the code, not ill-conditioning: tanh, and roots from step 10, when
   every factor is full rank. SOAP (blocks; eigh bases with one-sided dims) and Muon
   (float32 Newton-Schulz) run the same comparison.
2. sync. BERT-mini on the device, each root method: steps that recompute no root run under
   ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises); steps that
   do are counted in "warn" mode (eigh's cuSOLVER error check syncs once per bucket; newton
   only for the one failure check); SOAP and Muon must have none on any step (SOAP's basis
   refreshes in "warn" mode count). Also the census of aten ops and host reads per step.
3. roots. N symmetric positive-definite d x d factors: ms per matrix of the batched eigh,
   the warm-started eigenbasis step and coupled Newton (float32 and TF32), and Newton's
   accuracy against float64 eigh on gradient-like directions.
4. step-time. Shampoo (each root method), SOAP and Muon vs AdamW per training step on BERT-mini/-small/
   -base (vocab 8192, batch 32 x 128) at f = 10 and 100: benchmarks/optimizer_step.py's
   measurement, plus the roots' share of the amortized step: (root step() - plain step())
   / f over the whole step; and, on the first row, newton with ``torch_compile=True``.

``--quick`` runs every section at toy sizes (BERT "tiny", vocab 512): ``--device cpu
--quick`` is a self-test of this script in a minute. The exit status is 1 when a
correctness or sync check fails or a section raises.
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
import soap_muon
from optimizer_step import synchronize

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from basinlab.atomic import atomic_write_json  # noqa: E402
from basinlab.optim import SOAP, Muon, Shampoo  # noqa: E402
from basinlab.optim.census import StepCensus  # noqa: E402
from basinlab.optim.roots import (  # noqa: E402
    NEWTON_RIDGE_FLOOR,
    eigenbasis_inverse_root,
    eigh_inverse_root,
    matmul_precision,
    newton_inverse_root,
)

SECTIONS = ("correctness", "sync", "roots", "step-time")
ROOT_METHODS = ("eigh", "eigenbasis", "newton")
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
    "newton+staggered+blocks16": dict(lr=1e-2, root_method="newton", stagger_roots=True, max_preconditioner_dim=16),
}


def muon_every_matrix(params, **options):
    """Muon over one use_muon group (CheckNet has no embedding or head to set apart)."""
    return Muon([{"params": list(params), "use_muon": True}], **options)


# SOAP and Muon: (name, constructor, options, options for the float64 run)
OTHER_SETS = [
    ("soap", "f5+blocks16", SOAP, dict(lr=3e-3, precondition_frequency=ROOT_EVERY, max_preconditioner_dim=16),
     {"factor_dtype": "float64"}),
    ("soap", "eigh+onesided20", SOAP, dict(lr=3e-3, precondition_frequency=ROOT_EVERY, basis_method="eigh",
                                           one_sided_dim=20), {"factor_dtype": "float64"}),
    ("muon", "float32+wd", muon_every_matrix, dict(lr=1e-2, weight_decay=0.01, ns_dtype="float32"), {"ns_dtype": "float64"}),
]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of every section: the GPU run, or --quick."""

    correctness_steps: int
    sync: tuple[str, int]  # (preset, steps)
    root_shapes: tuple[tuple[int, int], ...]  # (count, dim)
    bert: dict[str, tuple[int, int, int]]  # preset -> (batch, seq, vocab)
    step_rows: tuple[tuple[str, int, int], ...]  # (preset, f, windows)


# Estimated on an H200 from the 2026-11-28 session (eigh ~10 ms per 1024^2 matrix; a BERT-base
# eigh root step ~260 factors): correctness ~20 s, sync ~20 s, roots ~20 s, step-time ~4 min.
FULL = Plan(
    correctness_steps=30,
    sync=("mini", 12),
    root_shapes=((16, 1024), (48, 768)),
    bert={"mini": (32, 128, 8192), "small": (32, 128, 8192), "base": (32, 128, 8192)},
    step_rows=(("mini", 10, 3), ("small", 10, 3), ("base", 10, 2), ("base", 100, 1)),
)
QUICK = Plan(
    correctness_steps=30,
    sync=("tiny", 6),
    root_shapes=((4, 64),),
    bert={"tiny": (2, 32, 512)},
    step_rows=(("tiny", 2, 1), ("tiny", 4, 1)),
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
        "diagnostics": dev_opt.diagnostics(),
    }
    row["state_ok"] = (
        row["state_difference"] is None and row["handoff_state_difference"] is None and row["handoff_state_on_cpu"]
    )
    judge(row)
    return cpu_model, row


def judge(row: dict) -> None:
    row["pass"] = row["cpu_vs_device"] < row["tolerance"] and row["handoff_vs_cpu"] < row["tolerance"] and row["state_ok"]


def correctness_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    """Every option set in float64 (Shampoo with float64 factors), then float32 (see the module docstring)."""
    batches = check_batches(plan.correctness_steps)
    half = plan.correctness_steps // 2
    schedule = dict(precondition_frequency=ROOT_EVERY, start_preconditioning_step=ROOT_START)
    sets = [("shampoo", name, Shampoo, {**schedule, **options}, {"factor_dtype": "float64"})
            for name, options in SHAMPOO_SETS.items()] + OTHER_SETS
    print(
        f"{'optimizer':<9} {'option set':<31} {'dtype':<7} {'cpu vs dev':>10} {'handoff':>9} "
        f"{'f32 vs f64':>10} {'state':>5} {'limit':>7}  verdict"
    )
    with full_fp32():
        for kind, name, cls, options, float64_extra in sets:
            float64_options = {**options, **float64_extra}
            reference64, row = compare_runs(cls, float64_options, torch.float64, device, batches, half)
            model32, row32 = compare_runs(cls, options, torch.float32, device, batches, half)
            row32["cpu_f32_vs_f64"] = max_relative_difference(reference64, model32)
            # SOAP's Adam in the rotated basis amplifies round-off (measured 1.5e-2 - 3.9e-2 float32 vs
            # float64 on the CPU alone): a device run cannot be closer than the CPU is to itself.
            row32["tolerance"] = max(row32["tolerance"], 3 * row32["cpu_f32_vs_f64"])
            judge(row32)
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


# --- 2. sync ------------------------------------------------------------------------------


def sync_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    """Per root method: no synchronising call on steps without a root refresh ("error" mode), and
    how many a refresh step makes ("warn" mode), with the census of ops and host reads."""
    import warnings

    preset, steps = plan.sync
    work = workload(preset, device, plan)
    cuda = device.type == "cuda"
    print(f"{'root method':<11} {'plain steps':>11} {'sync-free':>9} {'plain ops':>9} {'reads':>5} | "
          f"{'root ops':>8} {'reads':>5} {'syncs':>5}  verdict")
    contenders = {m: lambda model, m=m: Shampoo(model.parameters(), lr=1e-4, precondition_frequency=4,
                                                start_preconditioning_step=2, root_method=m) for m in ROOT_METHODS}
    contenders.update({name: lambda model, build=build: build(model, 4) for name, build in soap_muon.our_builders().items()})
    for method, build in contenders.items():
        model = copy.deepcopy(work.model).train()
        optimizer = build(model)
        plain, root, clean, syncs = [], [], True, 0
        for t in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            work.loss(model).backward()
            synchronize(device)
            refresh = t >= 2 and (t - 2) % 4 == 0 if method in ROOT_METHODS else "SOAP" in method and (t - 1) % 4 == 0
            with warnings.catch_warnings(record=True) as caught, StepCensus() as census:
                warnings.simplefilter("always")
                if cuda and t > 2:
                    torch.cuda.set_sync_debug_mode("warn" if refresh else "error")
                try:
                    optimizer.step()
                except RuntimeError as error:
                    clean = False
                    print(f"    {method} step {t}: {str(error).splitlines()[0]}")
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
            if t > 2:
                (root if refresh else plain).append((census.ops, census.reads))
                if refresh:
                    syncs = max(syncs, sum("synchroniz" in str(w.message) for w in caught))
        reads_ok = all(r == 0 for _, r in plain) and all(r <= (2 if method in ROOT_METHODS else 0) for _, r in root)
        row = {"root_method": method, "plain_steps": len(plain), "sync_free": clean, "reads_ok": reads_ok,
               "plain_ops": max(o for o, _ in plain), "plain_reads": max(r for _, r in plain),
               "root_ops": max((o for o, _ in root), default=0), "root_reads": max((r for _, r in root), default=0),
               "root_syncs": syncs if cuda else None, "checked_on_device": cuda}
        row["pass"] = clean and reads_ok
        print(f"{method:<11} {row['plain_steps']:>11} {'yes' if clean else 'NO':>9} {row['plain_ops']:>9} "
              f"{row['plain_reads']:>5} | {row['root_ops']:>8} {row['root_reads']:>5} "
              f"{syncs if cuda else '-':>5}  {'PASS' if row['pass'] else 'FAIL'}")
        yield row
    print("plain: steps without a root refresh, run under set_sync_debug_mode('error') on CUDA; root: refresh steps "
          "in 'warn' mode (syncs = synchronising calls warned about); ops/reads: StepCensus (max over steps)")


# --- 3. roots ------------------------------------------------------------------------------


def timed(fn: Callable[[Any], Any], stack: torch.Tensor, device: torch.device, budget_s: float = 1.0):
    """(median ms of ``fn(stack)``, its last result): warmed up on two matrices, then repeated 1 to 3
    times, as many as fit the budget after the first."""
    fn(stack[:2])
    times, result = [], None
    while not times or (len(times) < 3 and sum(times) + times[0] <= budget_s):
        synchronize(device)
        started = time.perf_counter()
        result = fn(stack)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, result


def factor_stack(count: int, dim: int, device: torch.device) -> torch.Tensor:
    """Rank-deficient SPD factors like early Shampoo statistics: G G^T of dim x dim/2 gradients."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, dim, dim // 2, generator=generator)
    return (x @ x.mT / dim).to(device)


def roots_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    print(f"{'N x d':<11} {'eigh':>8} {'eigenbasis':>10} {'newton f32':>10} {'newton tf32':>11} | "
          f"{'eigh/newton f32':>15} {'eigh/newton tf32':>16} | {'dir err f32':>11} {'tf32':>8}")
    for count, dim in plan.root_shapes:
        stack = factor_stack(count, dim, device)
        eigh_ms, (_, vectors) = timed(lambda s: eigh_inverse_root(s, 4, 1e-12), stack, device)
        basis_ms, _ = timed(lambda s: eigenbasis_inverse_root(s, vectors[: len(s)], 4, 1e-12), stack, device)
        newton_ms, (x32, _) = timed(lambda s: newton_inverse_root(s, 4, 1e-12), stack, device)
        precision = "tf32" if device.type == "cuda" else "float32"
        with matmul_precision(precision, device):
            tf32_ms, (xtf, _) = timed(lambda s: newton_inverse_root(s, 4, 1e-12), stack, device)
        ridge = NEWTON_RIDGE_FLOOR * torch.linalg.matrix_norm(stack.double()).view(-1, 1, 1)
        values, q = torch.linalg.eigh(stack.double())
        reference = (q * (values.clamp_min(0) + ridge.view(-1, 1)).pow(-0.25).unsqueeze(-2)) @ q.mT
        directions = stack.double() @ torch.randn(count, dim, 8, dtype=torch.float64, device=device)
        expected = reference @ directions

        def error(x):
            return ((x.double() @ directions - expected).norm() / expected.norm()).item()

        row = {"count": count, "dim": dim, "eigh_ms": eigh_ms / count, "eigenbasis_ms": basis_ms / count,
               "newton_ms": newton_ms / count, "newton_tf32_ms": tf32_ms / count,
               "newton_direction_error": error(x32), "newton_tf32_direction_error": error(xtf)}
        print(f"{f'{count} x {dim}':<11} {row['eigh_ms']:>8.2f} {row['eigenbasis_ms']:>10.2f} {row['newton_ms']:>10.2f} "
              f"{row['newton_tf32_ms']:>11.2f} | {eigh_ms / newton_ms:>14.2f}x {eigh_ms / tf32_ms:>15.2f}x | "
              f"{row['newton_direction_error']:>11.1e} {row['newton_tf32_direction_error']:>8.1e}")
        yield row
    print("ms per matrix (batched over N); dir err: ||X G - R G|| / ||R G|| for G in the factors' range, R = float64 "
          "eigh root with newton's ridge (1e-6 ||A||_F); tf32 = float32 off CUDA")


# --- 4. step time --------------------------------------------------------------------------


def workload(preset: str, device: torch.device, plan: Plan) -> optimizer_step.Workload:
    batch, seq, vocab = plan.bert[preset]
    return optimizer_step.bert_workload(preset, device, batch=batch, seq=seq, vocab=vocab)


def step_time_rows(device: torch.device, plan: Plan) -> Iterator[dict[str, Any]]:
    rows = []
    for preset in dict.fromkeys(row[0] for row in plan.step_rows):
        work = workload(preset, device, plan)
        for _, frequency, windows in (r for r in plan.step_rows if r[0] == preset):
            builders = {f"shampoo {m}": optimizer_step.ours(m) for m in ROOT_METHODS} | soap_muon.our_builders()
            if (preset, frequency) == plan.step_rows[0][:2]:  # one compiled row: compiling costs ~a minute
                builders["shampoo newton compiled"] = optimizer_step.ours("newton", torch_compile=True)
            started = time.perf_counter()
            for row in optimizer_step.measure(work, frequency, builders, windows, structure=True):
                row["roots_share"] = max(0.0, row["root_ms"] - row["plain_ms"]) / frequency / row["ms"]
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                print(f"  {work.name} f={frequency} {row['optimizer']}: AdamW {row['adamw_ms']:.1f} ms, "
                      f"{row['ms']:.1f} ms, ratio {row['ratio']:.2f}x, roots {100 * row['roots_share']:.0f} % of the step, "
                      f"step() {row['plain_ms']:.1f} ms plain / {row['root_ms']:.1f} ms refresh [{row['seconds']:.0f} s]")
                yield row
        del work
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("ratio = Shampoo / AdamW per whole training step; roots = (refresh step() - plain step()) / f as a share "
          "of the whole step")


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
    sections = {"correctness": correctness_rows, "sync": sync_rows, "roots": roots_rows, "step-time": step_time_rows}
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
    ] + [f"sync {r['root_method']}" for r in results["sections"].get("sync", {}).get("rows", []) if not r["pass"]]
    errors = [name for name, s in results["sections"].items() if s["status"] == "error"]
    results["failed_checks"], results["section_errors"] = failed, errors
    results["wall_s"] = time.perf_counter() - total
    save()
    print(
        f"\ntotal {results['wall_s']:.0f} s; failed checks: {', '.join(failed) or 'none'}; "
        f"sections with errors: {', '.join(errors) or 'none'}"
    )
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
