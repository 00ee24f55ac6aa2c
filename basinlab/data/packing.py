"""Tokenize and pack a domain once, on disk: fixed-length ``[CLS] ... [SEP]`` sequences in Arrow
files under ``<cache>/packed/<key>/``, memory-mapped by every rank.

Documents are joined with [SEP] between them into one token stream, cut into sequences of
``max_length`` tokens (no padding: every position trains); the tail that fills no sequence is
dropped. Tokenizing runs as a batched ``datasets.map`` (``num_proc`` workers); packing is one
sequential pass that carries the remainder from batch to batch, writing sequences as it goes,
so neither step holds the domain in memory. The key covers the source's fingerprint, the
tokenizer and ``max_length``; the folder is built beside its final place and renamed into it
with ``info.json`` inside, so an interrupted build is never mistaken for a finished cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from basinlab.data.cache import cache_root
from basinlab.errors import UserError

logger = logging.getLogger(__name__)

PACK_VERSION = 1  # bump when packing changes, so cached sequences are rebuilt
INFO = "info.json"
_TOKENIZE_BATCH = 1000  # documents per tokenizer call
_WRITE_BATCH = 4096  # sequences per Arrow record batch


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's full definition (vocabulary, normalizer, specials) hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{text}|{tokenizer.cls_token_id}|{tokenizer.sep_token_id}".encode()).hexdigest()[:24]


def special_ids(tokenizer: Any) -> tuple[int, int]:
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise UserError("the tokenizer needs [CLS] and [SEP] tokens to pack BERT sequences; use a BERT-style tokenizer")
    return cls, sep


class Packer:
    """Cuts a stream of documents' token ids into ``[CLS] body [SEP]`` sequences of ``max_length``.

    ``add(ids, origin)`` takes one batch of documents' ids and returns the sequences it completes;
    each comes with the resume point after it: (the ``origin`` of the batch holding the next
    sequence's first token, how many of that batch's tokens precede it). A stream restarted from
    that origin with ``skip`` that many tokens packs exactly the sequences that followed.
    """

    def __init__(self, cls: int, sep: int, max_length: int):
        self.cls, self.sep, self.body = cls, sep, max_length - 2
        self.buffer = np.empty(0, dtype=np.int32)
        self.origins: deque[list[Any]] = deque()  # [origin, tokens of that batch still in the buffer, tokens already used]
        self.last: tuple[Any, int] = (None, 0)  # the latest batch's origin and token count

    def add(self, documents: Iterable[list[int]], origin: Any = None, skip: int = 0) -> list[tuple[np.ndarray, tuple[Any, int]]]:
        pieces = [np.asarray([*ids, self.sep], dtype=np.int32) for ids in documents if len(ids)]
        tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int32)
        self.last = (origin, len(tokens))
        tokens = tokens[skip:]
        if len(tokens):
            self.buffer = np.concatenate([self.buffer, tokens])
            self.origins.append([origin, len(tokens), skip])
        sequences = []
        while len(self.buffer) >= self.body:
            body, self.buffer = self.buffer[: self.body], self.buffer[self.body:]
            self._consume(self.body)
            sequence = np.empty(self.body + 2, dtype=np.int32)
            sequence[0], sequence[1:-1], sequence[-1] = self.cls, body, self.sep
            sequences.append((sequence, self.resume_point()))
        return sequences

    def _consume(self, count: int) -> None:
        while count:
            entry = self.origins[0]
            used = min(count, entry[1])
            entry[1] -= used
            entry[2] += used
            count -= used
            if entry[1] == 0:
                self.origins.popleft()

    def resume_point(self) -> tuple[Any, int]:
        """Where the next sequence begins: (a batch's origin, tokens of that batch before it)."""
        if self.origins:
            return self.origins[0][0], self.origins[0][2]
        return self.last


def pack_documents(texts: Iterable[list[str]], tokenizer: Any, max_length: int) -> Iterator[np.ndarray]:
    """The packed sequences of batches of documents, in order (for small, in-memory inputs)."""
    packer = Packer(*special_ids(tokenizer), max_length)
    for batch in texts:
        ids = tokenizer(list(batch), add_special_tokens=False)["input_ids"]
        for sequence, _ in packer.add(ids):
            yield sequence


def packed_key(source_fingerprint: str, tokenizer: Any, max_length: int) -> str:
    payload = f"{source_fingerprint}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{PACK_VERSION}"
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def packed_domain(
    name: str, splits: dict[str, Any], source_fingerprint: str, tokenizer: Any, max_length: int,
    cache_dir=None, num_proc: int | None = None,
) -> dict[str, Any]:
    """{split: memory-mapped ``datasets.Dataset`` of packed ``input_ids``}, built on first use."""
    folder = cache_root(cache_dir) / "packed" / packed_key(source_fingerprint, tokenizer, max_length)
    if not (folder / INFO).is_file():
        _build(name, splits, tokenizer, max_length, folder, num_proc)
    return load_packed(folder)


def load_packed(folder: Path) -> dict[str, Any]:
    import datasets

    info = json.loads((folder / INFO).read_text())
    return {split: datasets.Dataset.from_file(str(folder / f"{split}.arrow")) for split in info["splits"]}


def _build(name: str, splits: dict[str, Any], tokenizer: Any, max_length: int, folder: Path, num_proc: int | None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    started, counts = time.perf_counter(), {}
    try:
        for split, documents in splits.items():
            counts[split] = _pack_split(name, split, documents, tokenizer, max_length, tmp, num_proc)
        seconds = time.perf_counter() - started
        info = {"domain": name, "max_length": max_length, "splits": counts, "build_seconds": round(seconds, 2)}
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():  # another build finished first (the same key is the same content)
            shutil.rmtree(tmp)
            return
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tokens = sum(counts.values()) * max_length
    logger.info("packed %s: %s sequences of %d tokens in %.1f s (%.0f tokens/s) -> %s",
                name, counts, max_length, seconds, tokens / max(seconds, 1e-9), folder)


def _pack_split(name: str, split: str, documents: Any, tokenizer: Any, max_length: int, tmp: Path, num_proc) -> int:
    """Tokenize a split's documents (map, num_proc) and write its packed sequences; their count."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    special_ids(tokenizer)
    tokenized = documents.map(
        _tokenize, batched=True, batch_size=_TOKENIZE_BATCH, input_columns="text", remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer}, num_proc=num_proc if num_proc and len(documents) >= 4 * _TOKENIZE_BATCH else None,
        cache_file_name=str(tmp / f".{split}-tokens.arrow"), desc=f"tokenizing {name}/{split}",
    )
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"), length=max_length)})
    packer, written = Packer(*special_ids(tokenizer), max_length), 0
    with ArrowWriter(features=features, path=str(tmp / f"{split}.arrow")) as writer:
        pending: list[np.ndarray] = []
        for batch in tokenized.iter(batch_size=_TOKENIZE_BATCH):
            pending.extend(sequence for sequence, _ in packer.add(batch["ids"]))
            if len(pending) >= _WRITE_BATCH:
                writer.write_batch({"input_ids": pending})
                written, pending = written + len(pending), []
        if pending:
            writer.write_batch({"input_ids": pending})
            written += len(pending)
        writer.finalize()
    del tokenized
    for leftover in tmp.glob(f".{split}-tokens*.arrow"):  # the token lists were only a step
        leftover.unlink()
    return written


def _tokenize(texts: list[str], tokenizer: Any) -> dict[str, list[list[int]]]:
    return {"ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}
