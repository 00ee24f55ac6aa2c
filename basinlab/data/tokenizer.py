"""A BERT WordPiece tokenizer trained on the train splits of the text domains, cached by content.

The cache key covers every domain's content hash, the vocabulary size and the recipe, so the
same data always reuses the same tokenizer and changed data never does. Any local pretrained
tokenizer directory can be used instead through :func:`load_tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from basinlab.data.cache import cache_root
from basinlab.data.text import content_sha256
from basinlab.errors import UserError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
RECIPE_VERSION = 1  # bump when the training recipe changes, so cached tokenizers are not reused
_DONE = "basinlab-tokenizer.json"
_SAVED_FILES = ("tokenizer_config.json", "tokenizer.json")  # save_pretrained writes both


def _train_texts(domains_datasets: Any) -> list[Any]:
    """The train split of each DatasetDict (a mapping name -> DatasetDict, or a sequence of them)."""
    items = domains_datasets.values() if isinstance(domains_datasets, Mapping) else domains_datasets
    trains = []
    for item in items:
        if "train" not in item:
            raise UserError("train_wordpiece needs DatasetDicts with a 'train' split (column 'text')")
        trains.append(item)
    if not trains:
        raise UserError("train_wordpiece got no domains; pass at least one DatasetDict")
    return trains


def tokenizer_key(domains_datasets: Any, vocab_size: int, lowercase: bool = True, fingerprints: Iterable[str] | None = None) -> str:
    """Hex key of (each domain's fingerprint, vocab size, casing, recipe), independent of domain order.

    ``fingerprints`` name the domains' sources without reading them (large corpora); without them
    each domain's content is hashed, which reads it into memory (small domains only)."""
    if fingerprints is None:
        fingerprints = [
            content_sha256({split: list(dd[split]["text"]) if split in dd else [] for split in ("train", "validation")})
            for dd in _train_texts(domains_datasets)
        ]
    hashes = sorted(fingerprints)
    payload = json.dumps({"domains": hashes, "vocab_size": vocab_size, "lowercase": lowercase,
                          "special_tokens": SPECIAL_TOKENS, "recipe": RECIPE_VERSION})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def train_wordpiece(
    domains_datasets: Any,
    vocab_size: int = 8192,
    cache_dir: str | os.PathLike | None = None,
    lowercase: bool = True,
    batch_size: int = 1000,
    fingerprints: Iterable[str] | None = None,
):
    """Train (or reuse from ``<cache>/tokenizers/<key>/``) a WordPiece ``BertTokenizerFast`` on the
    domains' train splits, read batch by batch (see ``tokenizer_key`` for ``fingerprints``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise UserError(f"vocab_size {vocab_size} is too small; use at least a few thousand (e.g. 8192)")
    root = cache_root(cache_dir) / "tokenizers"
    folder = root / tokenizer_key(domains_datasets, vocab_size, lowercase, fingerprints)
    if (folder / _DONE).exists():
        logger.info("reusing the tokenizer in %s", folder)
        return load_tokenizer(folder)

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    trains = _train_texts(domains_datasets)
    total = sum(len(dd["train"]) for dd in trains)

    def batches() -> Iterator[list[str]]:
        for dd in trains:
            split = dd["train"]
            for start in range(0, len(split), batch_size):
                yield split[start:start + batch_size]["text"]

    logger.info("training a WordPiece tokenizer (vocab %d) on %d documents ...", vocab_size, total)
    tokenizer.train_from_iterator(batches(), trainer=trainer, length=total)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    from transformers import BertTokenizerFast

    fast = BertTokenizerFast(
        tokenizer_object=tokenizer, do_lower_case=lowercase, unk_token="[UNK]", sep_token="[SEP]",
        pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
    )
    _save_atomically(fast, folder, {"vocab_size": vocab_size, "lowercase": lowercase, "documents": total})
    logger.info("tokenizer saved to %s", folder)
    return load_tokenizer(folder)


def _save_atomically(fast: Any, folder: Path, info: dict) -> None:
    """Save into a temporary sibling, mark it complete, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fast.save_pretrained(str(tmp))
        (tmp / _DONE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_tokenizer_dir(path: str | os.PathLike) -> Path:
    """The folder, if it can hold a saved tokenizer (checked when a config loads, without loading it)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"tokenizer directory {folder} does not exist; pass a folder saved with save_pretrained "
                        "or train one with train_wordpiece")
    if not any((folder / name).is_file() for name in _SAVED_FILES):
        raise UserError(f"cannot load a tokenizer from {folder}: it holds neither {' nor '.join(_SAVED_FILES)}; "
                        "pass a folder saved with save_pretrained")
    return folder


def load_tokenizer(path: str | os.PathLike):
    """A pretrained fast tokenizer from a local directory (ours or any Hugging Face one)."""
    from transformers import AutoTokenizer

    folder = check_tokenizer_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {folder} ({first}); it must hold tokenizer.json or "
                        "vocab.txt with its tokenizer_config.json") from None
    if tokenizer.mask_token is None:
        raise UserError(f"tokenizer in {folder} has no mask token; masked-language modelling needs one")
    return tokenizer


def unk_rate(tokenizer: Any, texts: Iterable[str]) -> float:
    """Fraction of produced tokens (specials excluded) that are the unknown token."""
    unk, total = 0, 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        total += len(ids)
        unk += sum(1 for i in ids if i == tokenizer.unk_token_id)
    return unk / max(total, 1)
