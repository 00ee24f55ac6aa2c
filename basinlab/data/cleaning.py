"""Cleaning, deduplication and the train/validation split shared by every text domain.

Built-in domains are split by rank of their documents' hashes (a fixed share, at least a few
documents); corpora too large to hold split by a hash threshold (``in_validation``), which
needs no pass over the whole corpus and gives a document the same split on every machine.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Iterable

VALIDATION_FRACTION = 0.05
MIN_VALIDATION_DOCS = 3
MIN_WORDS = 4
MIN_CHARS = 20


def clean_prose(text: str) -> str:
    """NFC, whitespace collapsed inside each paragraph, one newline between paragraphs."""
    text = unicodedata.normalize("NFC", text)
    paragraphs = (" ".join(part.split()) for part in re.split(r"\n\s*\n", text))
    return "\n".join(part for part in paragraphs if part)


def clean_code(text: str) -> str:
    """Unix newlines, trailing spaces dropped, indentation and line structure kept."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def dedup_key(text: str) -> str:
    """Documents that differ only in whitespace count as duplicates."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def clean_documents(raw: Iterable[str], code: bool = False) -> tuple[list[str], dict[str, int]]:
    """Clean, drop too-short documents and exact duplicates (first one kept), in input order."""
    seen: set[str] = set()
    docs, short, duplicates = [], 0, 0
    for text in raw:
        text = clean_code(text) if code else clean_prose(text)
        if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS:
            short += 1
            continue
        key = dedup_key(text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        docs.append(text)
    return docs, {"short": short, "duplicates": duplicates}


def split_documents(docs: list[str], fraction: float = VALIDATION_FRACTION) -> dict[str, list[str]]:
    """Validation = the documents with the smallest content hashes (at least a few), order kept.

    It depends only on the documents themselves, so the same document always lands in the
    same split whatever order or machine produced it.
    """
    n = len(docs)
    k = min(max(MIN_VALIDATION_DOCS, math.ceil(fraction * n)), n // 2)
    ranked = sorted(range(n), key=lambda i: (hashlib.sha256(docs[i].encode("utf-8")).hexdigest(), i))
    validation = set(ranked[:k])
    return {
        "train": [doc for i, doc in enumerate(docs) if i not in validation],
        "validation": [doc for i, doc in enumerate(docs) if i in validation],
    }


def document_key(text: str) -> int:
    """A cleaned document's 63-bit key (an Arrow int64): equal for documents that differ only in
    whitespace, and uniform, so ``in_validation`` splits by it without seeing the rest of the corpus."""
    return int.from_bytes(bytes.fromhex(dedup_key(text)[:16]), "big") >> 1


def in_validation(key: int, fraction: float) -> bool:
    return key < fraction * 2**63


def clean_batch(texts: Iterable[str | None], code: bool) -> tuple[list[str], list[int]]:
    """The usable documents of a batch (cleaned, long enough) and their keys, in order."""
    kept, keys = [], []
    for text in texts:
        text = clean_code(text) if code else clean_prose(text)
        if len(text) >= MIN_CHARS and len(text.split()) >= MIN_WORDS:
            kept.append(text)
            keys.append(document_key(text))
    return kept, keys
