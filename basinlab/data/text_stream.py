"""A streamed domain: documents read from their files (or the hub) as they are needed, cleaned,
split, tokenized and packed on the fly, never materialised.

Each rank reads its own part of the stream (``datasets.distributed.split_dataset_by_node``:
whole files when there are at least as many as ranks, else every ``world``-th document) and
packs it into ``[CLS] ... [SEP]`` sequences exactly as the cache does. ``budget`` (sequences,
from ``max_tokens`` or ``data.max_train_sequences``) caps a pass over the domain (split evenly
over the ranks); the stream then starts over.
Its position is the source's ``state_dict()`` at the start of a batch of documents plus how
many of that batch's tokens were already packed, kept for the last few thousand sequences, so
a checkpoint can name the exact resume point of the sequences training has consumed (the
loader reads ahead). It is read in the training process: ``num_workers`` must be 0.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import torch

from basinlab.data.cleaning import clean_batch, in_validation
from basinlab.data.corpus import streamed_documents, validation_fraction
from basinlab.data.packing import Packer, special_ids

_DOCUMENTS = 256  # documents per batch read from the source
_HISTORY = 8192  # resume points kept (sequences the loader may have read ahead of training)


def _documents(texts: list[str], code: bool, fraction: float, validation: bool) -> list[str]:
    kept, keys = clean_batch(texts, code)
    return [text for text, key in zip(kept, keys) if in_validation(key, fraction) == validation]


def streamed_validation(spec: Mapping[str, Any], tokenizer: Any, max_length: int, count: int, cache_dir=None) -> list[list[int]]:
    """The first ``count`` packed validation sequences of the (whole, unsplit) stream: the same on every rank."""
    packer, rows = Packer(*special_ids(tokenizer), max_length), []
    code, fraction = bool(spec.get("code", False)), validation_fraction(spec)
    for batch in streamed_documents(spec, cache_dir).iter(batch_size=_DOCUMENTS):
        docs = _documents(batch["text"], code, fraction, validation=True)
        rows.extend(sequence.tolist() for sequence, _ in packer.add(tokenizer(docs, add_special_tokens=False)["input_ids"]))
        if len(rows) >= count:
            break
    return rows[:count]


class StreamedSequences(torch.utils.data.IterableDataset):
    """This rank's packed training sequences of a streamed domain, each tagged with its position
    (``local index · world + rank``: unique across ranks), resumable from ``state_at``."""

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, max_length: int, rank: int, world_size: int,
                 cache_dir=None, state: Mapping[str, Any] | None = None, budget: int | None = None):
        self.spec, self.tokenizer, self.max_length = spec, tokenizer, max_length
        self.rank, self.world_size, self.cache_dir = rank, world_size, cache_dir
        self.per_pass = None if budget is None else max(1, budget // world_size)
        self.state = dict(state) if state else {"pass": 0, "source": None, "skip": 0, "emitted": 0, "in_pass": 0}
        self.history: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def state_at(self, emitted: int) -> dict[str, Any]:
        """The resume point after ``emitted`` sequences of this rank (one the loader has produced)."""
        if emitted == self.state["emitted"]:
            return dict(self.state)
        if emitted not in self.history:
            raise RuntimeError(f"no resume point for sequence {emitted} of the stream (kept: the last {_HISTORY})")
        return dict(self.history[emitted])

    def _source(self, state: Any) -> Any:
        from datasets.distributed import split_dataset_by_node

        source = split_dataset_by_node(streamed_documents(self.spec, self.cache_dir), rank=self.rank, world_size=self.world_size)
        if state is not None:
            source.load_state_dict(copy.deepcopy(state))
        return source

    def __iter__(self) -> Iterator[dict[str, Any]]:
        code, fraction = bool(self.spec.get("code", False)), validation_fraction(self.spec)
        state = self.state
        while True:  # passes over the stream
            source, skip = self._source(state["source"]), state["skip"]
            packer = Packer(*special_ids(self.tokenizer), self.max_length)
            emitted, in_pass, origin = state["emitted"], state["in_pass"], state["source"]
            started = emitted
            for batch in source.iter(batch_size=_DOCUMENTS):
                docs = _documents(batch["text"], code, fraction, validation=False)
                ids = self.tokenizer(docs, add_special_tokens=False)["input_ids"]
                for sequence, (at, tokens) in packer.add(ids, origin, skip):
                    emitted, in_pass = emitted + 1, in_pass + 1
                    done = self.per_pass is not None and in_pass >= self.per_pass
                    self._remember(emitted, {"pass": state["pass"] + done, "source": None if done else at,
                                             "skip": 0 if done else tokens, "emitted": emitted, "in_pass": 0 if done else in_pass})
                    yield {"input_ids": torch.from_numpy(sequence.astype("int64")), "position": (emitted - 1) * self.world_size + self.rank}
                    if done:
                        break
                else:
                    skip, origin = 0, source.state_dict()
                    continue
                break
            if emitted == started:
                raise RuntimeError(f"streamed domain {self.spec.get('name')!r} gives rank {self.rank} no training sequence")
            state = {"pass": state["pass"] + 1, "source": None, "skip": 0, "emitted": emitted, "in_pass": 0}

    def _remember(self, emitted: int, state: dict[str, Any]) -> None:
        self.history[emitted] = state
        while len(self.history) > _HISTORY:
            self.history.popitem(last=False)
