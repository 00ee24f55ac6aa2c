"""Worker: our Shampoo (and SOAP, Muon) as the client optimizer of deepspeed.initialize, 2 CPU ranks (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/workers/deepspeed_engine.py zero0 OUT_DIR
        trains with configs/deepspeed/zero0_fp32.json, then zero0_bf16.json; writes
        OUT_DIR/<precision>_rank<r>.json per rank for Shampoo, <optimizer>_<precision>_rank<r>.json
        for SOAP and Muon.
    python -m torch.distributed.run --nproc_per_node 2 tests/workers/deepspeed_engine.py zero OUT_DIR
        tries ZeRO stages 1, 2 (fp32), 1 (bf16 params, fp32 grad accumulation: BF16_Optimizer),
        3 (plain and with zero.Init) and 1 with a vectors-only first group, each built inline;
        prints each failure's traceback to stderr, writes OUT_DIR/zero_rank<r>.json and exits 1
        if any case raised.
"""

import sys
import traceback
from pathlib import Path

import ds_common  # noqa: F401  (first: disables the shm comm JIT build)
import deepspeed
import torch
import torch.nn.functional as F

from basinlab.optim import SOAP, Muon, Shampoo, muon_param_groups
from basinlab.ranks import exit_rank
from ds_common import ROOT, fingerprint, rank, regression_data, resolved, step_recorder, tiny_mlp, write_json

MICRO_BATCH, STEPS = 8, 8


def shampoo(params):
    return Shampoo(params, lr=0.02, precondition_frequency=2)


OPTIMIZERS = {  # name -> (model -> optimizer); Shampoo's is built in train() (its grouping cases)
    "soap": lambda model: SOAP(model.parameters(), lr=0.02, precondition_frequency=2),
    "muon": lambda model: Muon(muon_param_groups(model), lr=0.05),
}


def batch(step: int, dtype: torch.dtype):
    """This rank's own micro-batch (ranks see different data, so only averaged gradients keep them equal)."""
    x, y = regression_data()
    start = ((step * 2 + rank()) * MICRO_BATCH) % len(x)
    return x[start:start + MICRO_BATCH].to(dtype), y[start:start + MICRO_BATCH]


def train(config: dict, steps: int, vectors_first: bool = False, zero_init: bool = False, name: str = "shampoo") -> dict:
    if zero_init:  # parameters partitioned as they are created (HF from_pretrained / Accelerate under ZeRO-3)
        with deepspeed.zero.Init(config_dict_or_path=config):
            model = tiny_mlp()
    else:
        model = tiny_mlp()
    initial = [p.detach().clone() for p in model.parameters()]
    if name != "shampoo":
        optimizer = OPTIMIZERS[name](model)
    elif vectors_first:  # a common custom grouping: no-decay vectors first, then the matrices
        vectors = [p for p in model.parameters() if p.dim() == 1]
        matrices = [p for p in model.parameters() if p.dim() > 1]
        optimizer = shampoo([{"params": vectors}, {"params": matrices, "weight_decay": 0.01}])
    else:
        optimizer = shampoo(model.parameters())
    record = step_recorder(optimizer)
    engine, returned, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    dtype = next(engine.module.parameters()).dtype
    x_eval, y_eval = regression_data()
    losses, eval_losses = [], []
    for step in range(steps):
        with torch.no_grad():
            eval_losses.append(F.mse_loss(engine(x_eval.to(dtype)).float(), y_eval).item())
        x, y = batch(step, dtype)
        loss = F.mse_loss(engine(x).float(), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    with torch.no_grad():
        eval_losses.append(F.mse_loss(engine(x_eval.to(dtype)).float(), y_eval).item())
    module_params = list(engine.module.parameters())
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "world_size": engine.world_size,
        "wrapper": type(engine.optimizer).__name__,
        "returned_optimizer": type(returned).__name__,
        "basic_is_ours": engine.basic_optimizer is optimizer,
        "inner_is_ours": getattr(engine.optimizer, "optimizer", engine.optimizer) is optimizer,
        "steps_taken": record["steps"],
        "shapes_at_construction": [list(p.shape) for p in initial],
        "shapes_at_step": record["shapes_at_step"],
        "dtypes_at_step": record["dtypes_at_step"],
        "module_dtypes": [str(p.dtype) for p in module_params],
        "losses": losses,
        "eval_losses": eval_losses,
        "max_change": max(((p.detach().float() - q).abs().max().item()
                           for p, q in zip(module_params, initial) if q.numel()), default=0.0),
        "module_fingerprint": fingerprint(module_params),
        "master_fingerprint": fingerprint(stepped),
        "diagnostics": optimizer.diagnostics(),
    }


def zero0(out: Path) -> None:
    for precision in ("fp32", "bf16"):
        config = resolved(ROOT / f"configs/deepspeed/zero0_{precision}.json", MICRO_BATCH)
        write_json(out / f"{precision}_rank{rank()}.json", train(config, STEPS))
        for name in OPTIMIZERS:
            write_json(out / f"{name}_{precision}_rank{rank()}.json", train(config, STEPS, name=name))


ZERO_CASES = {
    "stage1": {"zero_optimization": {"stage": 1}},
    "stage2": {"zero_optimization": {"stage": 2}},
    "stage1_bf16": {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True},
                    "data_types": {"grad_accum_dtype": "fp32"}},
    "stage3": {"zero_optimization": {"stage": 3}},
    "stage3_zero_init": {"zero_optimization": {"stage": 3}, "zero_init": True},
    # Stages 1/2 call step() once per group with param_groups cut down to that one group
    # (deepspeed/runtime/zero/stage_1_and_2.py _optimizer_step); a vectors-only group comes first here.
    "stage1_vectors_first": {"zero_optimization": {"stage": 1}, "vectors_first": True},
}


def zero(out: Path) -> None:
    outcomes = {}
    for name, extra in ZERO_CASES.items():
        # Accelerate and HF Trainer add this flag themselves for a client optimizer; without it
        # DeepSpeed stops at initialize with an AssertionError before our optimizer ever runs.
        extra = dict(extra)
        vectors_first = extra.pop("vectors_first", False)
        zero_init = extra.pop("zero_init", False)
        config = {"train_micro_batch_size_per_gpu": MICRO_BATCH, "zero_allow_untested_optimizer": True,
                  "steps_per_print": 10**6, **extra}
        try:
            result = train(config, 2, vectors_first, zero_init)
            outcomes[name] = {"error": None, "wrapper": result["wrapper"], "shapes_at_step": result["shapes_at_step"]}
        except Exception as error:  # noqa: BLE001 - recorded and re-signalled through the exit code
            print(f"[case {name} rank {rank()}] {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            traceback.print_exc()
            outcomes[name] = {"error": type(error).__name__, "message": str(error)}
    write_json(out / f"zero_rank{rank()}.json", outcomes)
    return 1 if any(o["error"] for o in outcomes.values()) else 0


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    code = {"zero0": zero0, "zero": zero}[mode](out_dir)
    exit_rank(code or 0)
