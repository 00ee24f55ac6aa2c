"""The text recipe's domains: each read (built-in, a local corpus or a hub dataset), the tokenizer
trained on their train splits (or loaded), and each domain packed once into the cache, or
streamed.

The main process prepares everything first (the recipe wraps this in ``main_process_first``);
the other ranks then find the caches finished and memory-map them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from basinlab.data.cleaning import clean_batch, in_validation
from basinlab.data.corpus import cleaned_splits, corpus_fingerprint, streamed_documents, validation_fraction
from basinlab.data.mlm import DomainSequences, evaluation_sets, train_prefix
from basinlab.data.packing import packed_domain
from basinlab.data.text import MANIFEST, domain_dir, load_text_domain
from basinlab.data.text_stream import streamed_validation
from basinlab.data.tokenizer import load_tokenizer, train_wordpiece
from basinlab.launch.text_config import TextRunConfig

logger = logging.getLogger(__name__)

TOKENIZER_SAMPLE_DOCUMENTS = 20_000  # of a streamed domain, what the tokenizer is trained on


def _spec(entry: Any) -> dict[str, Any]:
    return {"name": entry} if isinstance(entry, str) else dict(entry)


def _is_builtin(spec: Mapping[str, Any]) -> bool:
    return "local_files" not in spec and "hf_dataset" not in spec


def num_proc(config: TextRunConfig) -> int:
    return config.data.num_proc or min(8, os.cpu_count() or 1)


def _texts(spec: Mapping[str, Any], config: TextRunConfig) -> tuple[dict[str, Any], str]:
    """({"train", "validation"} datasets of documents, the source fingerprint) of a cached domain."""
    cache_dir = config.data.cache_dir
    if _is_builtin(spec):
        splits = load_text_domain(spec["name"], cache_dir=cache_dir)
        manifest = json.loads((domain_dir(spec["name"], cache_dir) / MANIFEST).read_text())
        return {split: splits[split] for split in ("train", "validation")}, manifest["content_sha256"]
    return cleaned_splits(spec, cache_dir, num_proc(config)), corpus_fingerprint(spec, cache_dir)


def _stream_sample(spec: Mapping[str, Any], cache_dir) -> Any:
    """The first training documents of a stream (cleaned, split off validation), for the tokenizer
    (a stream is never read whole)."""
    import datasets

    code, fraction = bool(spec.get("code", False)), validation_fraction(spec)
    docs = []
    for batch in streamed_documents(spec, cache_dir).iter(batch_size=1000):
        kept, keys = clean_batch([text if isinstance(text, str) else "" for text in batch["text"]], code)
        docs.extend(text for text, key in zip(kept, keys) if not in_validation(key, fraction))
        if len(docs) >= TOKENIZER_SAMPLE_DOCUMENTS:
            break
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:TOKENIZER_SAMPLE_DOCUMENTS]})})


def load_domains(config: TextRunConfig, tokenizer: Any | None = None) -> tuple[Any, list[DomainSequences]]:
    """The tokenizer (trained on the union of train splits unless given) and every domain's sequences."""
    data = config.data
    specs = [_spec(entry) for entry in data.domains]
    texts, fingerprints = {}, {}
    for spec in specs:
        if spec.get("streaming"):
            fingerprints[spec["name"]] = f"stream:{corpus_fingerprint(spec, data.cache_dir)}:{TOKENIZER_SAMPLE_DOCUMENTS}"
        else:
            texts[spec["name"]], fingerprints[spec["name"]] = _texts(spec, config)
    if tokenizer is None and data.tokenizer:
        tokenizer = load_tokenizer(data.tokenizer)
    elif tokenizer is None:
        corpora = {name: texts.get(name) for name in fingerprints}
        for spec in specs:
            if spec.get("streaming"):
                corpora[spec["name"]] = _stream_sample(spec, data.cache_dir)
        tokenizer = train_wordpiece(corpora, data.vocab_size, data.cache_dir, fingerprints=list(fingerprints.values()))
    return tokenizer, [_domain(spec, texts.get(spec["name"]), fingerprints[spec["name"]], tokenizer, config) for spec in specs]


def _domain(spec: Mapping[str, Any], texts: Any, fingerprint: str, tokenizer: Any, config: TextRunConfig) -> DomainSequences:
    data, name = config.data, spec["name"]
    budget = None if spec.get("max_tokens") is None else max(1, spec["max_tokens"] // data.max_length)
    if data.max_train_sequences is not None:
        budget = data.max_train_sequences if budget is None else min(budget, data.max_train_sequences)
    if spec.get("streaming"):
        rows = streamed_validation(spec, tokenizer, data.max_length, data.eval_sequences, data.cache_dir)
        import datasets

        evaluation, probe = evaluation_sets(name, datasets.Dataset.from_dict({"input_ids": rows}), data.eval_sequences,
                                            data.probe_sequences)
        return DomainSequences(name, None, evaluation, probe, stream=spec, train_sequences=budget)
    packed = packed_domain(name, texts, fingerprint, tokenizer, data.max_length, data.cache_dir, num_proc(config))
    train = train_prefix(name, packed["train"], budget, data.max_length)
    evaluation, probe = evaluation_sets(name, packed["validation"], data.eval_sequences, data.probe_sequences)
    return DomainSequences(name, train, evaluation, probe, train_sequences=len(train), shuffle=spec.get("shuffle", True))
