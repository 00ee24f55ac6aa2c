"""What building a packed text cache costs, and that its memory does not grow with the corpus.

For each corpus size a synthetic JSONL corpus is written, then a fresh interpreter builds the
domain as the text recipe does (read into Arrow, clean, deduplicate, split, tokenize with
``datasets.map`` and ``--num-proc`` workers, pack into the on-disk cache) and reports its
build time and peak resident memory (its own and its workers'). Baselines measured in the
same run: the peak RSS of the smallest corpus (the ratio should stay near 1 as the corpus
grows), and the bare tokenizer's tokens/s on the same documents in one process (the build's
share of tokenizing speed).

    python benchmarks/text_cache.py [--megabytes 2 20] [--num-proc 2] [--max-length 128]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = 2000


def write_vocab(folder: Path) -> Path:
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(WORDS)]]))
    return folder


def write_corpus(path: Path, megabytes: float, words: tuple[int, int] = (50, 400), seed: int = 0) -> int:
    """JSONL documents of ``words`` made-up words until ``megabytes``; the number of documents."""
    rng, written, count = random.Random(seed), 0, 0
    with open(path, "w") as handle:
        while written < megabytes * 1e6:
            text = f"doc {count} " + " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(*words)))
            line = json.dumps({"text": text}) + "\n"
            handle.write(line)
            written, count = written + len(line), count + 1
    return count


class AnonymousPeak:
    """Peak anonymous resident memory (RssAnon: heap, not the memory-mapped Arrow files, whose pages
    the kernel drops under pressure) of this process, sampled every 20 ms by a thread."""

    def __init__(self):
        self.peak_kb, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.peak_kb / 1024


def build(corpus: str, vocab: str, cache: str, max_length: int, num_proc: int) -> dict:
    """In this (fresh) process: the recipe's cached-domain build, timed, with peak RSS (all pages,
    this process and its workers) and peak anonymous RSS (this process)."""
    from transformers import BertTokenizerFast

    from basinlab.data.corpus import cleaned_splits, corpus_fingerprint
    from basinlab.data.packing import packed_domain

    tokenizer = BertTokenizerFast.from_pretrained(vocab)
    spec = {"name": "synthetic", "local_files": corpus}
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    splits = cleaned_splits(spec, cache, num_proc)
    packed = packed_domain("synthetic", splits, corpus_fingerprint(spec, cache), tokenizer, max_length, cache, num_proc)
    seconds = time.perf_counter() - started
    sequences = sum(len(split) for split in packed.values())
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"seconds": seconds, "tokens": sequences * max_length, "peak_rss_mb": peak / 1024, "peak_anon_mb": anonymous.stop()}


def bare_tokenizer_rate(corpus: str, vocab: str) -> float:
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(vocab)
    texts = [json.loads(line)["text"] for line in open(corpus)][:20000]
    started = time.perf_counter()
    tokens = sum(len(ids) for i in range(0, len(texts), 1000)
                 for ids in tokenizer(texts[i:i + 1000], add_special_tokens=False)["input_ids"])
    return tokens / (time.perf_counter() - started)


def measure(megabytes: list[float], num_proc: int, max_length: int, bare: bool = True,
            words: tuple[int, int] = (50, 400)) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="basinlab-text-cache-") as tmp:
        vocab = str(write_vocab(Path(tmp)))
        for size in megabytes:
            corpus = Path(tmp) / f"corpus-{size}.jsonl"
            documents = write_corpus(corpus, size, words)
            result = subprocess.run(
                [sys.executable, __file__, "--build", str(corpus), vocab, str(Path(tmp) / f"cache-{size}"),
                 str(max_length), str(num_proc)], capture_output=True, text=True, check=True)
            rows.append({"megabytes": size, "documents": documents, **json.loads(result.stdout.strip().splitlines()[-1])})
        if bare:
            rows[0]["bare_tokens_per_second"] = bare_tokenizer_rate(
                str(Path(tmp) / f"corpus-{megabytes[0]}.jsonl"), vocab)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        corpus, vocab, cache, max_length, num_proc = sys.argv[2:7]
        print(json.dumps(build(corpus, vocab, cache, int(max_length), int(num_proc))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, nargs="+", default=[2, 20])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    rows = measure(args.megabytes, args.num_proc, args.max_length)
    base = rows[0]
    print(f"{'corpus MB':>10} {'documents':>10} {'tokens':>11} {'build s':>8} {'tokens/s':>10} {'peak RSS MB':>12} "
          f"{'RSS ratio':>10} {'anon MB':>8} {'anon ratio':>11}")
    for row in rows:
        print(f"{row['megabytes']:>10.1f} {row['documents']:>10,} {row['tokens']:>11,} {row['seconds']:>8.1f} "
              f"{row['tokens'] / row['seconds']:>10,.0f} {row['peak_rss_mb']:>12.0f} {row['peak_rss_mb'] / base['peak_rss_mb']:>9.2f}x "
              f"{row['peak_anon_mb']:>8.0f} {row['peak_anon_mb'] / base['peak_anon_mb']:>10.2f}x")
    print(f"bare tokenizer, one process: {base['bare_tokens_per_second']:,.0f} tokens/s; largest build / bare: "
          f"{rows[-1]['tokens'] / rows[-1]['seconds'] / base['bare_tokens_per_second']:.2f}x (num_proc {args.num_proc})")


if __name__ == "__main__":
    main()
