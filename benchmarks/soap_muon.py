"""SOAP and Muon next to AdamW and their peers, measured in one process.

1. Step time: whole training steps (zero_grad, forward, backward, ``step()``) against torch
   AdamW on copies of the same initial weights and batch, windows interleaved
   (optimizer_step.measure), f = 10, with each optimizer's step structure (aten ops and
   host reads of one step() that refreshes no basis, and of one that does).
2. Directions on the same inputs: one 96 x 48 weight from zero, the same stream of 12
   anisotropic gradients (G = A Z B with fixed A, B of decaying spectra, so the factors
   have distinct eigenvalues) that do not depend on the weight, lr 1e-2, no weight decay:
   every optimizer sees the same inputs. Per step, the cosine between our update
   and each peer's (weights before minus after), and between the peers; mean and min over
   steps 2-12, and step 1 (nan where one of them takes no step 1, as the SOAP paper's code).

Peers (``pip install -e ".[bench]"``): heavyball 3.2.1 SOAP and MuonAdamW / Muon,
pytorch-optimizer 4.1.0 SOAP and Muon. Step-time rows use their defaults except lr, f and a
1024 block limit (as in the issue's reference figures); the direction rows match the
hyperparameters the algorithms share (SOAP: betas 0.95/0.95, shampoo_beta 0.95, f 10, eps
1e-8; Muon: momentum 0.95, Nesterov, 5 Newton-Schulz steps; ours in float32 and bfloat16,
pytorch-optimizer's Newton-Schulz runs in bfloat16) and keep the rest
of their defaults. pytorch-optimizer's Muon gets our parameter rule's groups (use_muon).

    python benchmarks/soap_muon.py [--model bert-mini|mlp|...] [--windows K] [--no-peers] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import optimizer_step as bench
import torch
from torch import nn

from basinlab.optim import SOAP, Muon, muon_param_groups

FREQUENCY = 10
STEPS, SHAPE, STREAM_LR = 12, (96, 48), 1e-2


def our_builders() -> dict:
    return {
        "ours SOAP": lambda m, f: SOAP(m.parameters(), lr=bench.LR, precondition_frequency=f),
        "ours Muon": lambda m, f: Muon(muon_param_groups(m), lr=bench.LR),
    }


def peer_builders() -> dict:
    found = {}
    try:
        import heavyball

        heavyball.utils.compile_mode = None
        found["heavyball SOAP"] = lambda m, f: heavyball.SOAP(m.parameters(), lr=bench.LR, precondition_frequency=f,
                                                              max_precond_dim=1024)
        found["heavyball MuonAdamW"] = lambda m, f: heavyball.MuonAdamW(m.parameters(), lr=bench.LR)
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        found["pytorch-optimizer SOAP"] = lambda m, f: po.SOAP(m.parameters(), lr=bench.LR, precondition_frequency=f,
                                                               max_precondition_dim=1024)
        found["pytorch-optimizer Muon"] = lambda m, f: po.Muon(muon_param_groups(m), lr=bench.LR)
    except ImportError:
        pass
    return found


# ----------------------------------------------------------------------------- directions


def gradient_stream(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def spectrum_matrix(n: int) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
        return q @ torch.diag(torch.logspace(0, -1.5, n)) @ q.T

    left, right = spectrum_matrix(SHAPE[0]), spectrum_matrix(SHAPE[1])
    return [left @ torch.randn(SHAPE, generator=generator) @ right for _ in range(STEPS)]


def matched(family: str) -> dict:
    """name -> optimizer over [weight] with the shared hyperparameters (see the module docstring)."""
    soap = dict(betas=(0.95, 0.95), shampoo_beta=0.95, eps=1e-8, weight_decay=0.0)
    if family == "soap":
        found = {"ours SOAP": lambda w: SOAP([w], lr=STREAM_LR, precondition_frequency=FREQUENCY, **soap)}
    else:
        found = {
            f"ours Muon {dtype}": lambda w, dtype=dtype: Muon([{"params": [w], "use_muon": True}], lr=STREAM_LR,
                                                              momentum=0.95, ns_dtype=dtype)
            for dtype in ("float32", "bfloat16")
        }
    try:
        import heavyball

        heavyball.utils.compile_mode = None
        if family == "soap":
            found["heavyball SOAP"] = lambda w: heavyball.SOAP([w], lr=STREAM_LR, precondition_frequency=FREQUENCY, **soap)
        else:
            found["heavyball Muon"] = lambda w: heavyball.Muon([w], lr=STREAM_LR, betas=(0.95, 0.99), nesterov=True)
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        if family == "soap":
            found["pytorch-optimizer SOAP"] = lambda w: po.SOAP([w], lr=STREAM_LR, precondition_frequency=FREQUENCY, **soap)
        else:
            found["pytorch-optimizer Muon"] = lambda w: po.Muon([{"params": [w], "use_muon": True}], lr=STREAM_LR,
                                                                momentum=0.95, nesterov=True, ns_steps=5)
    except ImportError:
        pass
    return found


def updates(build, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    weight = nn.Parameter(torch.zeros(SHAPE))  # from 0, so before - after keeps the update's bits
    optimizer = build(weight)
    out = []
    for grad in grads:
        before = weight.detach().clone()
        weight.grad = grad.clone()
        optimizer.step()
        out.append((before - weight.detach()).flatten())
    return out


def direction_rows() -> list[dict]:
    """Cosines of ours against each peer, and of the peers against each other (how far apart they are)."""
    grads = gradient_stream()
    rows = []
    for family in ("soap", "muon"):
        runs = {name: updates(build, grads) for name, build in matched(family).items()}
        names = list(runs)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        for a, b in pairs:
            cosines = [torch.nn.functional.cosine_similarity(x, y, dim=0).item() if x.norm() * y.norm() > 0
                       else float("nan") for x, y in zip(runs[a], runs[b])]
            later = cosines[1:]
            rows.append({"pair": f"{a} vs {b}", "step1": cosines[0], "mean": statistics.fmean(later), "min": min(later)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(bench.WORKLOADS), default="bert-mini")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    builders = {**our_builders(), **(peer_builders() if args.peers else {})}
    print(f"torch {torch.__version__}, device {where}, threads={torch.get_num_threads()}, lr={bench.LR}, f={FREQUENCY}; "
          f"contenders: {', '.join(builders)}")
    started = time.perf_counter()
    work = bench.WORKLOADS[args.model](device)
    rows = bench.measure(work, FREQUENCY, builders, args.windows, structure=True)
    print(f"  measured {args.model} ({time.perf_counter() - started:.0f} s)\n")
    header = (f"{'model':<10} {'optimizer':<24} {'AdamW ms':>9} {'ms':>8} {'ratio':>7} | {'ops/step':>8} {'reads':>5} "
              f"| {'refresh ops':>11} {'reads':>5} | {'state':>6}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:<10} {r['optimizer']:<24} {r['adamw_ms']:>9.1f} {r['ms']:>8.1f} {r['ratio']:>6.2f}x | "
              f"{r['plain_ops']:>8.0f} {r['plain_reads']:>5} | {r['root_ops']:>11} {r['root_reads']:>5} | "
              f"{r['state_ratio']:>5.1f}x" + ("" if r["finite"] else "  (non-finite parameters!)"))
    print("\nratio: median whole-step time / AdamW's (same process, interleaved windows); ops/step, reads: one step() "
          "that refreshes nothing; refresh: the costliest step after the start (SOAP: a basis refresh); state: "
          "optimizer-state bytes / AdamW's.\n")
    print(f"{'directions on the same inputs (cosine of updates)':<56} {'step 1':>7} {'mean 2-12':>10} {'min 2-12':>9}")
    for r in direction_rows():
        print(f"{r['pair']:<56} {r['step1']:>7.3f} {r['mean']:>10.3f} {r['min']:>9.3f}")


if __name__ == "__main__":
    main()
