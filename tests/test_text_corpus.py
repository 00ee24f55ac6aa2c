"""User corpora at scale: formats and bad sources, the packed on-disk cache, streaming, positions
and position-seeded masks (real ``datasets`` builders, Arrow files and tokenizers)."""

import json
import random

import numpy as np
import pytest
import torch

from basinlab.data.corpus import cleaned_splits, corpus_fingerprint
from basinlab.data.corpus_spec import check_domain_spec
from basinlab.data.mlm import PositionMaskingCollator
from basinlab.data.packing import INFO, Packer, pack_documents, packed_domain
from basinlab.data.positions import DomainOrder, RankBatches
from basinlab.data.text_stream import StreamedSequences, streamed_validation
from basinlab.errors import UserError

WORDS = 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(WORDS)]]))
    return BertTokenizerFast.from_pretrained(str(folder))


def documents(count, seed=0):
    rng = random.Random(seed)
    return [f"doc{seed} {i} " + " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(5, 40))) for i in range(count)]


def write_lines(path, docs):
    path.write_text("\n".join(docs) + "\n")
    return str(path)


def test_packer_carries_across_batches_and_resumes_at_every_sequence(tokenizer):
    docs = documents(60)
    whole = [s.tolist() for s in pack_documents([docs], tokenizer, max_length=16)]
    batches = [docs[i:i + 7] for i in range(0, len(docs), 7)]
    assert [s.tolist() for s in pack_documents(batches, tokenizer, max_length=16)] == whole
    ids = [tokenizer(batch, add_special_tokens=False)["input_ids"] for batch in batches]
    packer, points = Packer(tokenizer.cls_token_id, tokenizer.sep_token_id, 16), []
    for index, batch in enumerate(ids):
        points.extend(point for _, point in packer.add(batch, origin=index))
    for k in (0, 5, len(whole) - 2):  # restart from the point after sequence k: the rest follows exactly
        origin, skip = points[k]
        again, rest = Packer(tokenizer.cls_token_id, tokenizer.sep_token_id, 16), []
        for index in range(origin, len(ids)):
            rest.extend(s.tolist() for s, _ in again.add(ids[index], origin=index, skip=skip if index == origin else 0))
        assert rest == whole[k + 1:]


def test_local_formats_globs_and_hub_layout_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(200)
    for i in range(4):  # four text shards
        write_lines(tmp_path / f"shard-{i}.txt", docs[i * 50:(i + 1) * 50])
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    (tmp_path / "array.json").write_text(json.dumps([{"body": d} for d in docs]))
    pq.write_table(pa.table({"body": docs}), tmp_path / "all.parquet")
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.table({"text": docs[:100]}), hub / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": docs[100:]}), hub / "train-00001-of-00002.parquet")
    specs = [
        {"name": "txt", "local_files": str(tmp_path / "shard-*.txt")},
        {"name": "jsonl", "local_files": [str(tmp_path / "all.jsonl")], "text_field": "body"},
        {"name": "array", "local_files": str(tmp_path / "array.json"), "text_field": "body"},
        {"name": "parquet", "local_files": str(tmp_path / "all.parquet"), "text_field": "body"},
        {"name": "hub", "hf_dataset": str(tmp_path / "hub"), "split": "train"},
    ]
    cache = tmp_path / "cache"
    results = []
    for spec in specs:
        check_domain_spec(spec)
        splits = cleaned_splits(spec, cache)
        results.append((list(splits["train"]["text"]), list(splits["validation"]["text"])))
    assert all(result == results[0] for result in results)
    train, validation = results[0]
    assert sorted(train + validation) == sorted(docs) and 0 < len(validation) < 30
    before = corpus_fingerprint(specs[0], cache)
    write_lines(tmp_path / "shard-0.txt", docs[:50])  # rewritten, same bytes: the same source
    assert corpus_fingerprint(specs[0], cache) == before
    write_lines(tmp_path / "shard-0.txt", docs[:49])
    assert corpus_fingerprint(specs[0], cache) != before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: {"local_files": str(d / "missing-*.txt")}, "matches no file"),
        (lambda d: {"local_files": [str(d / "good.txt"), str(d / "gone.txt")]}, "gone.txt' does not exist"),
        (lambda d: {"local_files": write_lines(d / "empty.txt", [""])}, "empty.txt' is empty"),
        (lambda d: {"local_files": str(d / "rows.jsonl"), "text_field": "content"}, "rows.jsonl' record 0 has no string field 'content'"),
        (lambda d: {"local_files": str(d / "rows.parquet"), "text_field": "content"}, "rows.parquet' has no column 'content'"),
        (lambda d: {"local_files": [str(d / "good.txt"), str(d / "rows.jsonl")]}, "mixes formats"),
        (lambda d: {"local_files": str(d / "good.txt"), "streaming": True, "dedupe": True}, "dedupe needs the whole corpus"),
    ],
)
def test_bad_sources_fail_at_config_load_naming_the_file(tmp_path, make, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_lines(tmp_path / "good.txt", documents(5))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "x y z w"}) + "\n")
    pq.write_table(pa.table({"text": ["a b c d e"]}), tmp_path / "rows.parquet")
    with pytest.raises(UserError, match=message) as info:
        check_domain_spec({"name": "mine", **make(tmp_path)})
    assert "\n" not in str(info.value)


def test_bad_bytes_and_records_past_the_checked_head_name_the_file(tmp_path):
    big = "\n".join(documents(3000)) + "\n"  # more than the 64 KiB head that config loading reads
    (tmp_path / "latin1.txt").write_bytes(big.encode() + "caf\xe9 au lait and more words\n".encode("latin-1"))
    spec = {"name": "mine", "local_files": str(tmp_path / "latin1.txt")}
    check_domain_spec(spec)
    with pytest.raises(UserError, match="latin1.txt' cannot be read \\(not UTF-8 text"):
        cleaned_splits(spec, tmp_path / "cache")
    rows = [json.dumps({"text": d}) for d in documents(3000)] + [json.dumps({"body": "no text field here at all"})]
    (tmp_path / "late.jsonl").write_text("\n".join(rows) + "\n")
    spec = {"name": "mine", "local_files": str(tmp_path / "late.jsonl")}
    check_domain_spec(spec)
    with pytest.raises(UserError, match="late.jsonl.*no string field 'text'"):
        cleaned_splits(spec, tmp_path / "cache")


def test_packed_cache_is_built_once_and_an_interrupted_build_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    from basinlab.data import packing

    spec = {"name": "mine", "local_files": write_lines(tmp_path / "a.txt", documents(300))}
    splits = cleaned_splits(spec, tmp_path / "cache")
    fingerprint = corpus_fingerprint(spec, tmp_path / "cache")
    real = packing._pack_split

    def crash_on_validation(name, split, *args):
        if split == "validation":
            raise KeyboardInterrupt
        return real(name, split, *args)

    monkeypatch.setattr(packing, "_pack_split", crash_on_validation)
    with pytest.raises(KeyboardInterrupt):
        packed_domain("mine", splits, fingerprint, tokenizer, 16, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "packed").iterdir())  # no folder, finished or not
    monkeypatch.setattr(packing, "_pack_split", real)
    packed = packed_domain("mine", splits, fingerprint, tokenizer, 16, tmp_path / "cache")
    (folder,) = (tmp_path / "cache" / "packed").iterdir()
    assert (folder / INFO).is_file() and not list(folder.glob(".*"))
    expected = [s.tolist() for s in pack_documents([splits["train"]["text"]], tokenizer, 16)]
    assert [list(row) for row in packed["train"]["input_ids"]] == expected
    monkeypatch.setattr(packing, "_pack_split", None)  # a second use reads the cache, builds nothing
    again = packed_domain("mine", splits, fingerprint, tokenizer, 16, tmp_path / "cache")
    assert again["train"]["input_ids"] == packed["train"]["input_ids"]


def test_streamed_domain_packs_the_cached_sequences_and_resumes_from_its_state(tmp_path, tokenizer):
    spec = {"name": "mine", "local_files": [write_lines(tmp_path / f"s{i}.txt", documents(150, seed=i)) for i in range(2)],
            "dedupe": False}
    cached = packed_domain("mine", cleaned_splits(spec, tmp_path / "cache"), corpus_fingerprint(spec), tokenizer, 16,
                           tmp_path / "cache")
    streamed_spec = {**spec, "streaming": True}
    del streamed_spec["dedupe"]
    one = StreamedSequences(streamed_spec, tokenizer, 16, rank=0, world_size=1)
    rows = [next(it)["input_ids"].tolist() for it in [iter(one)] for _ in range(len(cached["train"]))]
    assert rows == [list(r) for r in cached["train"]["input_ids"]]  # same sequences, same order at one process
    validation = streamed_validation(streamed_spec, tokenizer, 16, 5)
    assert validation == [list(r) for r in cached["validation"]["input_ids"][:5]]

    rank1 = StreamedSequences(streamed_spec, tokenizer, 16, rank=1, world_size=2)
    stream = iter(rank1)
    first = [next(stream) for _ in range(30)]
    assert all(item["position"] % 2 == 1 for item in first)
    resumed = iter(StreamedSequences(streamed_spec, tokenizer, 16, rank=1, world_size=2, state=rank1.state_at(12)))
    assert [next(resumed)["input_ids"].tolist() for _ in range(18)] == [item["input_ids"].tolist() for item in first[12:]]


def test_budgeted_stream_starts_over_after_max_tokens(tmp_path, tokenizer):
    spec = {"name": "mine", "local_files": write_lines(tmp_path / "s.txt", documents(200)), "streaming": True}
    stream = iter(StreamedSequences(spec, tokenizer, 16, rank=0, world_size=1, budget=10))
    rows = [next(stream)["input_ids"].tolist() for _ in range(25)]
    assert rows[10:20] == rows[:10] and rows[20:] == rows[:5]  # 10 sequences per pass


def test_rank_batches_cover_the_same_positions_at_any_world_size():
    order = DomainOrder(50, seed=3)
    assert sorted(order[p] for p in range(50)) == list(range(50)) and [order[p] for p in range(50)] != list(range(50))
    one = [b for b in RankBatches(order, 4, 0, 1, start=0, batches=6)]
    two = [RankBatches(order, 2, r, 2, start=0, batches=6) for r in range(2)]
    assert sum(one, []) == [pair for batches in zip(*two) for batch in batches for pair in batch]
    saved = 3 * 2 * 2  # a 2-rank run checkpointed after 3 steps of 2 sequences per rank
    resumed = list(RankBatches(order, 4, 0, 1, start=saved, batches=2))
    assert [p for batch in resumed for p, _ in batch] == list(range(12, 20))  # the next unseen positions
    assert [p for p, _ in sum(list(RankBatches(order, 4, 0, 1, start=48, batches=1)), [])] == [48, 49, 50, 51]


def test_masks_depend_on_the_position_only(tokenizer):
    collate = PositionMaskingCollator(tokenizer, 0.15, seed=7)
    rows = [torch.randint(5, 5 + WORDS, (64,)) for _ in range(3)]
    for row in rows:
        row[0], row[-1], row[20] = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id
    batch = collate([{"input_ids": r, "position": p} for r, p in zip(rows, (10, 11, 12))])
    alone = collate([{"input_ids": rows[1], "position": 11}])
    assert torch.equal(batch["labels"][1], alone["labels"][0]) and torch.equal(batch["input_ids"][1], alone["input_ids"][0])
    other = collate([{"input_ids": rows[1], "position": 13}])
    assert not torch.equal(other["labels"][0], alone["labels"][0])
    chosen = batch["labels"] != -100
    assert not chosen[:, [0, 20, 63]].any()
    many = collate([{"input_ids": rows[0], "position": p} for p in range(200)])
    rate = (many["labels"] != -100).float().mean().item()
    masked = (many["input_ids"] == tokenizer.mask_token_id).sum().item() / (many["labels"] != -100).sum().item()
    assert 0.13 < rate < 0.16 and 0.77 < masked < 0.83


def test_document_keys_split_like_a_fraction():
    from basinlab.data.cleaning import document_key, in_validation

    keys = [document_key(doc) for doc in documents(4000)]
    share = np.mean([in_validation(k, 0.05) for k in keys])
    assert 0.04 < share < 0.06 and all(0 <= k < 2**63 for k in keys)


def test_building_memory_stays_flat_as_the_corpus_grows_tenfold():
    """benchmarks/text_cache.py builds a 0.5 MB and a 5 MB corpus in fresh interpreters: holding the corpus
    in memory (the old in-memory packing grew ~14 bytes per corpus byte) would add >= 60 MB."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "text_cache.py"
    spec = importlib.util.spec_from_file_location("text_cache_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small, large = module.measure([0.5, 5], num_proc=1, max_length=128, bare=False, words=(5, 40))
    assert large["tokens"] > 8 * small["tokens"]
    assert large["peak_anon_mb"] < small["peak_anon_mb"] + 25, (small, large)  # measured: +9 MB
    assert large["peak_rss_mb"] < small["peak_rss_mb"] + 30, (small, large)  # measured: +14 MB
