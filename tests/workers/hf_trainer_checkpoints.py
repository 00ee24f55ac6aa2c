"""The HF Trainer with distributed Shampoo: its checkpoints under DDP, with the
ShardedOptimizerCheckpoints mixin and (for comparison) without; run in one process or under torchrun.

Usage: python -m torch.distributed.run --nproc_per_node 2 hf_trainer_checkpoints.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import torch
from transformers import Trainer, TrainingArguments

from basinlab.launch.hf_checkpoints import ShardedOptimizerCheckpoints
from basinlab.optim import Shampoo
from basinlab.ranks import exit_rank

STEPS, SAVE_AT, GLOBAL_BATCH = 8, 4, 8


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}


class CheckpointingTrainer(ShardedOptimizerCheckpoints, Trainer):
    pass


def data() -> datasets.Dataset:
    g = torch.Generator().manual_seed(1)
    return datasets.Dataset.from_dict({"x": torch.randn(64, 6, generator=g).tolist(),
                                       "labels": torch.randn(64, 2, generator=g).tolist()}).with_format("torch")


def train(out: Path, world_size: int, resume: Path | None = None, trainer_class=CheckpointingTrainer) -> list[torch.Tensor]:
    """STEPS steps of global batch GLOBAL_BATCH (from ``resume``, a checkpoint folder, if given)."""
    model = Regression()
    args = TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world_size,
        save_strategy="steps", save_steps=SAVE_AT, logging_steps=1, report_to=[], use_cpu=True, seed=3, data_seed=3,
        dataloader_drop_last=True, average_tokens_across_devices=False, disable_tqdm=True,
    )
    options = {"lr": 0.05, "precondition_frequency": 2, "max_preconditioner_dim": 4}
    trainer = trainer_class(model=model, args=args, train_dataset=data(), optimizer_cls_and_kwargs=(Shampoo, options))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return [p.detach().clone() for p in model.parameters()]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    full = train(out / "full", 2)
    resumed = train(out / "resumed", 2, resume=out / "full" / f"checkpoint-{SAVE_AT}")
    train(out / "plain", 2, trainer_class=Trainer)  # the Trainer's own optimizer.pt: rank 0's buckets only
    rank = torch.distributed.get_rank()
    torch.save({"full": full, "resumed": resumed}, out / f"results-{rank}.pt")
    exit_rank(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
