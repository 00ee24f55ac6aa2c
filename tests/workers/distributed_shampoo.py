"""Shampoo, SOAP and Muon on a fixed stream of synthetic gradients, in one process or under torchrun.

The test imports ``train`` for the single-process reference and launches this file with
``torch.distributed.run --nproc_per_node 2`` for the distributed runs; both see the same
parameters and gradients, so their results must agree bit for bit.

Usage: python -m torch.distributed.run --nproc_per_node 2 distributed_shampoo.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from basinlab.optim import SOAP, Muon, Shampoo, load_sharded_state, save_sharded_state
from basinlab.ranks import exit_rank

# A blocked matrix, a conv kernel, a bias, a scalar, a matrix with a size-1 dim, a 1x1
# matrix, a layer that gets no gradient every third step, and one that never gets one.
SHAPES = [(12, 7), (3, 4, 2, 2), (7,), (), (6, 1, 9), (1, 1), (5, 8), (4, 4)]
SOMETIMES_DEAD, ALWAYS_DEAD, NAN_PARAM, NAN_STEP = 6, 7, 1, 9
STEPS, CHECKPOINT_STEP = 24, 12
CONFIGS = {
    "adam_blocked": dict(
        lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.01, max_preconditioner_dim=5, precondition_frequency=3
    ),
    "sgd_eigenbasis": dict(
        lr=0.02, betas=(0.0, 1.0), grafting="sgd", root_method="eigenbasis", max_vector_preconditioner_dim=8,
        factor_dtype="float64", precondition_frequency=2, start_preconditioning_step=3,
    ),
    "rmsprop_whole": dict(lr=0.01, grafting="rmsprop", max_preconditioner_dim=100, precondition_frequency=4),
    "newton_staggered": dict(
        lr=0.02, root_method="newton", stagger_roots=True, max_preconditioner_dim=4, precondition_frequency=3,
        epsilon=1e-6,
    ),
    "soap_blocked": dict(optimizer="soap", lr=0.01, max_preconditioner_dim=5, one_sided_dim=10, precondition_frequency=3),
    "muon_blocked": dict(optimizer="muon", lr=0.02, weight_decay=0.01, max_preconditioner_dim=6),
}


def build(params: list[torch.Tensor], options: dict):
    """The config's optimizer (Shampoo unless it names another); Muon orthogonalises every matrix here."""
    options = dict(options)
    kind = options.pop("optimizer", "shampoo")
    if kind == "soap":
        return SOAP(params, **options)
    if kind == "muon":
        return Muon([{"params": params, "use_muon": True}], **options)
    return Shampoo(params, **options)


def initial_params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in SHAPES]


def set_gradients(params: list[torch.Tensor], step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    for index, param in enumerate(params):
        grad = torch.randn(param.shape, generator=generator)
        dead = index == ALWAYS_DEAD or (index == SOMETIMES_DEAD and step % 3 == 0)
        if index == NAN_PARAM and step == NAN_STEP:
            grad.view(-1)[0] = float("nan")
        param.grad = None if dead else grad


def train(config: str, checkpoint: Path | None = None, resume_from: Path | None = None, **options):
    """Run STEPS steps (from CHECKPOINT_STEP when resuming); optionally save a checkpoint midway."""
    params = initial_params()
    optimizer = build(params, {**CONFIGS[config], **options})
    first = 0
    if resume_from is not None:
        saved = torch.load(resume_from / "params.pt", weights_only=True)
        with torch.no_grad():
            for param, value in zip(params, saved):
                param.copy_(value)
        load_sharded_state(optimizer, resume_from)
        first = CHECKPOINT_STEP
    for step in range(first, STEPS):
        set_gradients(params, step)
        optimizer.step()
        if checkpoint is not None and step + 1 == CHECKPOINT_STEP:
            save_sharded_state(optimizer, checkpoint)
            torch.save([p.detach() for p in params], checkpoint / f"params.{rank()}.tmp")
            Path(checkpoint / f"params.{rank()}.tmp").replace(checkpoint / "params.pt")
    return [p.detach().clone() for p in params], optimizer


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    for config in CONFIGS:
        checkpoint = out / f"checkpoint-{config}-2"
        checkpoint.mkdir(parents=True, exist_ok=True)
        full, optimizer = train(config, checkpoint=checkpoint)
        dist.barrier()
        torch.save(optimizer.state_dict(), out / f"state-{config}-{rank()}.pt")
        dist.barrier()
        other = torch.load(out / f"state-{config}-{1 - rank()}.pt", weights_only=True)
        try:
            optimizer.load_state_dict(other)
            refused = ""
        except ValueError as error:
            refused = str(error)
        results[config] = {
            "full": full,
            "resumed": train(config, resume_from=checkpoint)[0],
            "resharded_from_1": train(config, resume_from=out / f"checkpoint-{config}-1")[0],
            "bf16": train(config, communication_dtype="bfloat16")[0],
            "subgroups": train(config, distributed_group_size=2)[0],
            "sharding": optimizer.sharding(),
            "diagnostics": optimizer.diagnostics(),
            "refused_other_shard": refused,
        }
    torch.save(results, out / f"results-{rank()}.pt")
    exit_rank(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
