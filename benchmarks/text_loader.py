"""Is the text loader ever the bottleneck? Tokens/s it delivers vs tokens/s BERT-mini trains on.

In one process: a synthetic corpus is packed into the cache (as the recipe does) and also
streamed; the recipe's loaders (position-addressed sampler + position-seeded masking collator
for the cache, ``StreamedSequences`` tokenizing on the fly for the stream) are drained for
``--batches`` batches with ``num_workers`` 0 and 2; the baseline is BERT-mini's training step
(forward, backward, AdamW) on the same batch shape, measured in the same run. A ratio above 1
means the loader outpaces training by that factor.

    python benchmarks/text_loader.py [--megabytes 5] [--batch-size 32] [--max-length 128]
        [--batches 200] [--train-steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from text_cache import write_corpus, write_vocab  # noqa: E402

from basinlab.data.corpus import cleaned_splits, corpus_fingerprint  # noqa: E402
from basinlab.data.mlm import PositionMaskingCollator  # noqa: E402
from basinlab.data.packing import packed_domain  # noqa: E402
from basinlab.data.positions import DomainOrder, PositionedSequences, RankBatches  # noqa: E402
from basinlab.data.text_stream import StreamedSequences  # noqa: E402
from basinlab.models import build_bert_mlm  # noqa: E402


def drain(loader: DataLoader, batches: int, max_length: int) -> float:
    """Tokens/s of ``batches`` batches (after one warm-up batch, which starts any workers)."""
    iterator = iter(loader)
    first = next(iterator)
    started, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += next(iterator)["input_ids"].numel()
    assert first["input_ids"].shape[1] == max_length
    return tokens / (time.perf_counter() - started)


def training_rate(vocab: int, batch_size: int, max_length: int, steps: int) -> float:
    """Tokens/s of BERT-mini's training step on random ids (median over ``steps`` after two warm-ups)."""
    model = build_bert_mlm("mini", vocab, max_length, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, vocab, (batch_size, max_length))
    labels = torch.where(torch.rand(ids.shape) < 0.15, ids, torch.full_like(ids, -100))
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - started)
    return batch_size * max_length / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory(prefix="basinlab-text-loader-") as tmp:
        tokenizer = BertTokenizerFast.from_pretrained(str(write_vocab(Path(tmp))))
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, args.megabytes)
        spec = {"name": "synthetic", "local_files": str(corpus)}
        cache = Path(tmp) / "cache"
        train = packed_domain("synthetic", cleaned_splits(spec, cache), corpus_fingerprint(spec, cache), tokenizer,
                              args.max_length, cache)["train"]
        collator = PositionMaskingCollator(tokenizer, 0.15, seed=0)
        rates = {}
        for workers in (0, 2):
            sampler = RankBatches(DomainOrder(len(train), 0), args.batch_size, 0, 1, 0, args.batches + 1)
            loader = DataLoader(PositionedSequences(train), batch_sampler=sampler, collate_fn=collator, num_workers=workers)
            rates[f"cached, num_workers={workers}"] = drain(loader, args.batches, args.max_length)
        stream = StreamedSequences({**spec, "streaming": True}, tokenizer, args.max_length, 0, 1)
        rates["streamed (tokenizing), num_workers=0"] = drain(
            DataLoader(stream, batch_size=args.batch_size, collate_fn=collator), args.batches, args.max_length)
        consumed = training_rate(len(tokenizer), args.batch_size, args.max_length, args.train_steps)
    threads = torch.get_num_threads()
    print(f"BERT-mini training step (batch {args.batch_size} x {args.max_length}, {threads} threads): {consumed:,.0f} tokens/s")
    print(f"{'loader':<40} {'tokens/s':>12} {'loader / training':>18}")
    for name, rate in rates.items():
        print(f"{name:<40} {rate:>12,.0f} {rate / consumed:>17.1f}x")


if __name__ == "__main__":
    main()
