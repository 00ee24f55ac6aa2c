"""Text domains as packed token sequences for masked-language-model training and evaluation.

Documents are tokenized, joined with [SEP] between them and cut into sequences of exactly
``max_length`` tokens, each ``[CLS] ... [SEP]`` (BERT pre-training style: no padding, every
position trains). The tail that does not fill a sequence is dropped. Packing runs in memory
on every process (a few seconds for the built-in domains), so no rank ever waits on a
cache file another rank is writing. ``ResumableMaskingCollator`` masks each batch from its
position, so a domain resumed mid-way masks as if never interrupted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling

from basinlab.errors import UserError

TOKENIZE_BATCH = 1000  # documents per tokenizer call


def pack_sequences(texts: list[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token ids of ``texts`` packed into ``[CLS] body [SEP]`` sequences of ``max_length`` tokens."""
    body = max_length - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise UserError("the tokenizer needs [CLS] and [SEP] tokens to pack BERT sequences; use a BERT-style tokenizer")
    stream: list[int] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        for ids in tokenizer(texts[start:start + TOKENIZE_BATCH], add_special_tokens=False)["input_ids"]:
            if ids:
                stream.extend(ids)
                stream.append(sep)
    return [[cls, *stream[i:i + body], sep] for i in range(0, len(stream) - body + 1, body)]


@dataclass
class DomainSequences:
    """One domain's training sequences, evaluation sequences and probe sequences (a prefix of them)."""

    name: str
    train: Any  # datasets.Dataset with input_ids
    eval: Any
    probe: Any


def domain_sequences(
    name: str,
    splits: Any,
    tokenizer: Any,
    max_length: int,
    eval_sequences: int,
    probe_sequences: int,
    max_train_sequences: int | None = None,
) -> DomainSequences:
    """Pack a domain's train and validation splits; evaluation takes the first ``eval_sequences``
    validation sequences (fewer if the split is smaller) and the probes the first ``probe_sequences``."""
    import datasets

    train = pack_sequences(list(splits["train"]["text"]), tokenizer, max_length)
    validation = pack_sequences(list(splits["validation"]["text"]), tokenizer, max_length)
    if max_train_sequences is not None:
        train = train[:max_train_sequences]
    if not train:
        raise UserError(f"text domain {name!r}: its train split fills no sequence of {max_length} tokens; "
                        "add text or lower data.max_length")
    if len(validation) < probe_sequences:
        raise UserError(
            f"text domain {name!r}: its validation split gives {len(validation)} sequences of {max_length} tokens, "
            f"fewer than data.probe_sequences={probe_sequences}; lower data.probe_sequences or data.max_length"
        )
    evaluation = validation[:eval_sequences]

    def as_dataset(rows: list[list[int]]):
        return datasets.Dataset.from_dict({"input_ids": rows})

    return DomainSequences(name, as_dataset(train), as_dataset(evaluation), as_dataset(evaluation[:probe_sequences]))


class ResumableMaskingCollator(DataCollatorForLanguageModeling):
    """BERT masking whose random draws for batch i come from a generator seeded by (seed, i).

    The usual collator draws from one running generator, and the Trainer's data loader collates
    a batch ahead of the step it trains, so a checkpoint's RNG state already includes the next
    batch's masks: a resumed run masks differently. Seeding each batch by its index makes the
    masks a function of the position alone; ``first_batch`` is where a resumed domain starts.
    Batches are counted per loader worker (each worker collates every ``num_workers``-th batch).
    """

    def __init__(self, tokenizer: Any, mlm_probability: float, seed: int, first_batch: int = 0):
        super().__init__(tokenizer, mlm_probability=mlm_probability, seed=seed)
        self.first_batch = first_batch
        self.collated = 0

    def torch_call(self, examples: list) -> dict[str, Any]:
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        index = self.first_batch + self.collated * workers + worker_id
        self.collated += 1
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        self._generator_pid = os.getpid()
        return super().torch_call(examples)
