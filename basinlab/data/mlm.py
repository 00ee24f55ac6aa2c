"""A text domain's sequences for masked-language-model training and evaluation, and the masking
collator whose masks are a function of each sequence's position in the domain.

Training sequences are a packed cache (``basinlab.data.packing``: memory-mapped, read in a
seeded order by position, ``basinlab.data.positions``) or a stream packed on the fly
(``basinlab.data.text_stream``). Evaluation and probe sets are the first validation sequences,
small enough to hold in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from basinlab.errors import UserError

RANDOM_SHARE = 0.5  # of the chosen tokens not turned into [MASK] (20 %), half become a random token


@dataclass
class DomainSequences:
    """One domain's training sequences (a packed ``datasets.Dataset``, or the spec of a stream),
    its evaluation sequences and its probe sequences (a prefix of them)."""

    name: str
    train: Any
    eval: Any
    probe: Any
    stream: Mapping[str, Any] | None = None  # the domain spec when train is streamed
    train_sequences: int | None = None  # training sequences available (None: an unbounded stream)
    shuffle: bool = True  # cached: read in a seeded order per epoch (else in file order)


def evaluation_sets(name: str, validation: Any, eval_sequences: int, probe_sequences: int) -> tuple[Any, Any]:
    """(eval, probe): the first ``eval_sequences`` validation sequences (fewer if the split is smaller) and
    the first ``probe_sequences`` of those, as small in-memory datasets."""
    import datasets

    rows = [list(map(int, row)) for row in validation[: min(eval_sequences, len(validation))]["input_ids"]]
    if len(rows) < probe_sequences:
        raise UserError(
            f"text domain {name!r}: its validation split gives {len(rows)} sequences, fewer than "
            f"data.probe_sequences={probe_sequences}; lower data.probe_sequences or data.max_length, raise the domain's validation_fraction or add text"
        )
    return datasets.Dataset.from_dict({"input_ids": rows}), datasets.Dataset.from_dict({"input_ids": rows[:probe_sequences]})


def train_prefix(name: str, train: Any, max_sequences: int | None, max_length: int) -> Any:
    """The training sequences, cut to ``max_sequences``; an error if the domain fills none."""
    if max_sequences is not None and max_sequences < len(train):
        train = train.select(range(max_sequences))
    if len(train) == 0:
        raise UserError(f"text domain {name!r}: its train split fills no sequence of {max_length} tokens; "
                        "add text or lower data.max_length")
    return train


class PositionMaskingCollator:
    """BERT masking (chosen with ``mlm_probability``: 80 % [MASK], 10 % random token, 10 % kept; special
    tokens never) whose draws for a sequence come from a generator seeded by (seed, its position).

    The masks are then a function of the data position alone: the same whatever the world size, the
    number of loader workers, or where a run was interrupted and resumed (a running generator would
    not be: the Trainer collates a batch ahead of the step it trains, so a checkpoint's RNG state
    already holds the next batch's masks).
    """

    def __init__(self, tokenizer: Any, mlm_probability: float, seed: int):
        self.mask_id, self.vocab = tokenizer.mask_token_id, len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.probability, self.seed = float(mlm_probability), int(seed)

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(example["input_ids"], dtype=torch.long) for example in examples])
        draws, replacements = [], []
        for example in examples:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + int(example["position"])) % 2**63)
            draws.append(torch.rand(3, input_ids.shape[1], generator=generator))
            replacements.append(torch.randint(self.vocab, (input_ids.shape[1],), generator=generator))
        draw, random_ids = torch.stack(draws, dim=1), torch.stack(replacements)
        chosen = (draw[0] < self.probability) & ~torch.isin(input_ids, self.special)
        masked = chosen & (draw[1] < 0.8)
        randomized = chosen & ~masked & (draw[2] < RANDOM_SHARE)
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        inputs = torch.where(masked, torch.full_like(input_ids, self.mask_id), input_ids)
        inputs = torch.where(randomized, random_ids, inputs)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}
