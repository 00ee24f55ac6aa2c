"""One domain's training data for this rank, fed to the domain's Trainer, and its position in
the domain, as a checkpoint records it.

The recipe builds the loader itself (``DomainTrainer.get_train_dataloader``) rather than letting
HF/Accelerate shard a sampler, so the data position is ours: a cached domain is read by
position (``basinlab.data.positions``) and resumes from the number of sequences consumed, at
any world size; a streamed domain resumes each rank's stream from its saved state, at the
world size it was saved with. The Trainer's own data skipping is off (``ignore_data_skip``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from basinlab import ranks
from basinlab.atomic import atomic_write_json
from basinlab.data.mlm import DomainSequences, PositionMaskingCollator
from basinlab.data.positions import DomainOrder, PositionedSequences, RankBatches
from basinlab.data.text_stream import StreamedSequences
from basinlab.errors import UserError
from basinlab.launch.text_config import TextRunConfig


def stream_state_file(folder: Path, rank: int) -> Path:
    return folder / f"stream-rank{rank}.json"


class DomainData:
    """The loader of one domain for this rank, started at ``position`` (a checkpoint's record, or None)."""

    def __init__(self, domain: DomainSequences, config: TextRunConfig, seed: int, tokenizer: Any,
                 position: dict[str, Any] | None = None, first_step: int = 0):
        self.domain, self.config, self.seed, self.tokenizer = domain, config, seed, tokenizer
        self.rank, self.world_size = ranks.rank(), ranks.world_size()
        self.micro_batches = config.train.gradient_accumulation_steps
        self.batch_size = config.train.batch_size
        self.first_step = first_step
        position = position or {}
        self.start = int(position.get("sequences", 0))  # cached: global sequences consumed
        self.stream = None
        if domain.stream is not None:
            state = position.get("stream")
            if position and position.get("world_size") != self.world_size:
                raise UserError(
                    f"text domain {domain.name!r} is streamed and was checkpointed with {position.get('world_size')} "
                    f"processes; resume it with {position.get('world_size')} (a stream's position is per rank)"
                )
            self.stream = StreamedSequences(domain.stream, tokenizer, config.data.max_length, self.rank,
                                            self.world_size, config.data.cache_dir, state, domain.train_sequences)

    def collator(self) -> PositionMaskingCollator:
        return PositionMaskingCollator(self.tokenizer, self.config.train.mlm_probability, self.seed)

    def loader(self) -> DataLoader:
        """The loader, with its own generator: a DataLoader draws its workers' base seed when it starts,
        which from the global RNG would shift dropout in a resumed domain by one draw."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.stream is not None:
            return DataLoader(self.stream, batch_size=self.batch_size, collate_fn=self.collator(), generator=generator)
        steps = self.config.train.steps_per_domain
        sampler = RankBatches(DomainOrder(len(self.domain.train), self.seed, self.domain.shuffle), self.batch_size, self.rank,
                              self.world_size, self.start, steps * self.micro_batches)
        return DataLoader(PositionedSequences(self.domain.train), batch_sampler=sampler, collate_fn=self.collator(),
                          num_workers=self.config.train.dataloader_num_workers, generator=generator)

    def consumed(self, step: int) -> int:
        """Sequences this rank has trained on since the loader started, after optimizer step ``step``."""
        return (step - self.first_step) * self.micro_batches * self.batch_size

    def save(self, folder: Path, step: int) -> dict[str, Any]:
        """Write this rank's part of the position (streams) and return what progress.json records."""
        if self.stream is None:
            return {"sequences": self.start + self.consumed(step) * self.world_size}
        state = self.stream.state_at(self.stream.state["emitted"] + self.consumed(step))
        atomic_write_json(stream_state_file(folder, self.rank), state)
        return {"world_size": self.world_size, "stream": None}

    @staticmethod
    def load_position(folder: Path, saved: dict[str, Any] | None) -> dict[str, Any] | None:
        """A checkpoint's position with this rank's stream state read in (None: the domain's start)."""
        if not saved:
            return None
        if "stream" not in saved:
            return saved
        path = stream_state_file(folder, ranks.rank())
        if saved.get("world_size") != ranks.world_size() or not path.exists():
            return {**saved, "stream": None}
        return {**saved, "stream": json.loads(path.read_text())}
