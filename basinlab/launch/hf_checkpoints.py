"""HF Trainer checkpoints that keep every rank's share of a sharding optimizer's state.

Under DDP the Trainer saves ``optimizer.state_dict()`` from the main process only, which for
distributed Shampoo, SOAP and Muon is rank 0's buckets; resuming would stop on the other
ranks (missing buckets). Mixed into a Trainer, :class:`ShardedOptimizerCheckpoints` has every
rank write its shard next to the Trainer's files and load them all back, re-sharded to the
resuming world size. Optimizers that keep all their state on every rank, DeepSpeed and FSDP
(Accelerate saves those through its own, sharded path) go the Trainer's usual way.

    class MyTrainer(ShardedOptimizerCheckpoints, Trainer): ...
"""

from __future__ import annotations

import os

import torch
from transformers.trainer import SCHEDULER_NAME

from basinlab.optim.checkpoint import load_optimizer_state, save_optimizer_state, shards_state


class ShardedOptimizerCheckpoints:
    """A Trainer mixin (list it before ``Trainer``); see the module docstring."""

    def _ours(self) -> bool:
        return shards_state(self.optimizer) and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._ours():
            return super()._save_optimizer_and_scheduler(output_dir)
        save_optimizer_state(self.optimizer, output_dir, self.args.should_save)  # every rank calls this
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not self._ours():
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_optimizer_state(self.optimizer, checkpoint)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))
