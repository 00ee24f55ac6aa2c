"""Shampoo, SOAP and Muon on an MLP wrapped with FSDP2 (``fully_shard``), against the same MLP
unsharded in one process.

The test imports ``train`` for the single-process reference and launches this file with
``torch.distributed.run --nproc_per_node 2``; every rank gets the same batches, so FSDP2's
averaged gradients equal the single process's bit for bit, and so must the parameters. Both
sides save a torch.distributed.checkpoint midway; each resumes from its own and from the
other's (2 ranks -> 1 and 1 -> 2), and must continue bitwise as if never interrupted.

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp2_optimizers.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from basinlab.optim import SOAP, Muon, Shampoo
from basinlab.ranks import exit_rank

STEPS, CHECKPOINT_STEP = 6, 3
# 7 and 13 rows split unevenly over 2 ranks; max_preconditioner_dim 5 blocks the matrices
CONFIGS = {
    "shampoo": dict(lr=0.02, momentum=0.5, weight_decay=0.01, max_preconditioner_dim=5, precondition_frequency=2),
    "soap": dict(lr=0.01, max_preconditioner_dim=5, precondition_frequency=2, weight_decay=0.01),
    "muon": dict(lr=0.02, weight_decay=0.01, max_preconditioner_dim=6),
}


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(10, 7), torch.nn.Tanh(), torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)
    )


def build(name: str, net: torch.nn.Module, **options) -> torch.optim.Optimizer:
    options = {**CONFIGS[name], **options}
    if name == "muon":
        matrices = [p for p in net.parameters() if p.dim() == 2]
        others = [p for p in net.parameters() if p.dim() != 2]
        return Muon([{"params": matrices, "use_muon": True}, {"params": others, "use_muon": False}], **options)
    return (SOAP if name == "soap" else Shampoo)(net.parameters(), **options)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 10, generator=generator), torch.randn(16, 3, generator=generator)


def train(
    name: str, net: torch.nn.Module | None = None, checkpoint: Path | None = None, resume: Path | None = None, **options
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """STEPS steps, saving a DCP checkpoint after CHECKPOINT_STEP (``checkpoint``), or the steps after
    it from one (``resume``)."""
    net = model() if net is None else net
    optimizer = build(name, net, **options)
    first = 0
    if resume is not None:
        load_checkpoint(net, optimizer, resume)
        first = CHECKPOINT_STEP
    for step in range(first, STEPS):
        x, y = batch(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
        if checkpoint is not None and step + 1 == CHECKPOINT_STEP:
            save_checkpoint(net, optimizer, checkpoint)
    return net, optimizer


def save_checkpoint(net: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Model and optimizer through torch.distributed.checkpoint, every rank writing its own part."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(net, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_checkpoint(net: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(net, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(net, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def state_numel(optimizer: torch.optim.Optimizer) -> int:
    """Elements of this rank's per-bucket state (the part distribution shards)."""
    return sum(v.numel() for k, s in optimizer.state.items() if not str(k).startswith("group.")
               for v in s.values() if torch.is_tensor(v))


def sharded_model() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = model()
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(net)


def refused_layout() -> str:
    """A tensor-parallel (dim-1 sharded) parameter must be refused, not preconditioned in pieces."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    weight = torch.nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)]))
    weight.grad = distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)])
    try:
        Shampoo([weight]).step()
    except ValueError as error:
        return str(error)
    return ""


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {"refused": refused_layout()}
    for name in CONFIGS:
        net, optimizer = train(name, sharded_model(), checkpoint=out / f"dcp-{name}-2")
        results[name] = {
            "params": [p.full_tensor() for p in net.parameters()],
            "state_numel": state_numel(optimizer),
            "shards": optimizer.sharding()["world_size"],
            "resumed": [p.full_tensor() for p in train(name, sharded_model(), resume=out / f"dcp-{name}-2")[0].parameters()],
            "resharded_from_1": [
                p.full_tensor() for p in train(name, sharded_model(), resume=out / f"dcp-{name}-1")[0].parameters()
            ],
        }
    torch.save(results, out / f"results-{dist.get_rank()}.pt")
    exit_rank(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
