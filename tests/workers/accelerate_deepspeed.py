"""Worker: our Shampoo through Accelerate's DeepSpeed plugin on 2 CPU ranks.

    accelerate launch --config_file configs/accelerate/deepspeed_cpu_2proc.yaml \
        [--deepspeed_config_file configs/deepspeed/zero0_bf16.json] \
        tests/workers/accelerate_deepspeed.py OUT_DIR
writes OUT_DIR/accelerate_rank<r>.json per rank.
"""

import os
import sys
from pathlib import Path

import ds_common  # noqa: F401  (first: disables the shm comm JIT build)
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from deepspeed import DeepSpeedEngine

from basinlab.optim import Shampoo
from basinlab.ranks import exit_rank
from ds_common import fingerprint, regression_data, step_recorder, tiny_mlp, write_json

EPOCHS, BATCH = 3, 8


def main(out: Path) -> None:
    # Without backend="gloo", Accelerate's state on a CPU-only machine silently says 1 process and
    # process_index 0 on BOTH ranks (accelerate/state.py: backend None => "no distributed training"),
    # although DeepSpeed runs 2 ranks: no data sharding, every rank acts as the main process.
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    plugin = accelerator.state.deepspeed_plugin
    model = tiny_mlp()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = Shampoo(model.parameters(), lr=0.02, precondition_frequency=2)
    record = step_recorder(optimizer)
    x, y = regression_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    engine, prepared_optimizer, loader = accelerator.prepare(model, optimizer, loader)

    dtype = next(engine.module.parameters()).dtype  # bfloat16 under zero0_bf16.json
    losses, batch_sums = [], []
    for _ in range(EPOCHS):
        for xb, yb in loader:
            loss = F.mse_loss(engine(xb.to(dtype)).float(), yb)
            accelerator.backward(loss)
            prepared_optimizer.step()
            prepared_optimizer.zero_grad()
            losses.append(loss.item())
            batch_sums.append(xb.sum().item())
    with torch.no_grad():
        eval_loss = F.mse_loss(engine(x.to(dtype)).float(), y).item()
    with torch.no_grad():
        eval_initial = F.mse_loss(tiny_mlp()(x), y).item()
    wrapped = prepared_optimizer
    chain = [type(wrapped).__name__]
    while hasattr(wrapped, "optimizer"):
        wrapped = wrapped.optimizer
        chain.append(type(wrapped).__name__)
    params = list(engine.module.parameters())
    write_json(out / f"accelerate_rank{accelerator.process_index}.json", {
        "distributed_type": str(accelerator.distributed_type),
        "is_deepspeed": accelerator.distributed_type == DistributedType.DEEPSPEED,
        "num_processes": accelerator.num_processes,
        "zero_stage": plugin.zero_stage if plugin else None,
        "config_file": os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"),
        "bf16": engine.bfloat16_enabled(),
        "micro_batch": engine.train_micro_batch_size_per_gpu(),  # "auto" in the JSON, filled by accelerate
        "gradient_clipping": engine.gradient_clipping(),
        "engine_is_deepspeed": isinstance(engine, DeepSpeedEngine),
        "engine_basic_is_ours": getattr(engine, "basic_optimizer", None) is optimizer,
        "innermost_is_ours": wrapped is optimizer,
        "optimizer_chain": chain,
        "steps_taken": record["steps"],
        "shapes_at_step": record["shapes_at_step"],
        "losses": losses,
        "batch_sums": batch_sums,
        "eval_initial": eval_initial,
        "eval_final": eval_loss,
        "module_dtypes": [str(p.dtype) for p in params],
        "dtypes_at_step": record["dtypes_at_step"],
        "max_change": max((p.detach().float() - q).abs().max().item() for p, q in zip(params, initial)),
        "fingerprint": fingerprint(params),
        "diagnostics": optimizer.diagnostics(),
    })
    exit_rank(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
