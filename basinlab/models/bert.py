"""BERT masked-language models in a few fixed sizes, randomly initialised from a seed alone.

The text experiments start every optimizer from the same weights, so initialisation must
depend only on ``seed``: the model is built inside ``torch.random.fork_rng`` with the CPU
generator seeded from ``seed``. The same seed therefore gives bit-identical weights in any
process, whatever the global RNG held before, and the caller's global RNG is left untouched.
"""

from __future__ import annotations

from typing import Any

import torch

# name -> (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size)
BERT_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
}


def bert_config(preset: str, vocab_size: int, max_length: int = 128, **overrides: Any):
    """The ``BertConfig`` of ``preset``; ``overrides`` set any further config field (e.g. ``pad_token_id``)."""
    from transformers import BertConfig

    if preset not in BERT_PRESETS:
        raise ValueError(f"unknown BERT preset {preset!r}; valid presets: {', '.join(BERT_PRESETS)}")
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if int(max_length) < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    layers, hidden, heads, intermediate = BERT_PRESETS[preset]
    fields = dict(
        vocab_size=int(vocab_size),
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=int(max_length),
    )
    fields.update(overrides)
    return BertConfig(**fields)


def build_bert_mlm(preset: str, vocab_size: int, max_length: int = 128, seed: int = 0, **overrides: Any):
    """A randomly initialised ``BertForMaskedLM`` of size ``preset`` whose weights depend only on ``seed``.

    ``max_length`` is the longest sequence the model accepts (its position embeddings).
    ``overrides`` are passed to the config (e.g. ``pad_token_id=tokenizer.pad_token_id``).
    The model is built on the CPU; the global RNG is neither read nor advanced.
    """
    from transformers import BertForMaskedLM

    config = bert_config(preset, vocab_size, max_length, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = BertForMaskedLM(config)
    return model
