"""Reading a user's corpus (local text/JSONL/Parquet shards or a Hugging Face dataset) as Arrow
datasets on disk, or as a stream, cleaned and split the same way.

Cached domains go through ``datasets``: each file is read into memory-mapped Arrow by its
builder, cleaned by a batched ``map`` (``num_proc`` workers), deduplicated and split by a hash
threshold (``basinlab.data.cleaning.in_validation``), so no step holds the corpus in memory.
Files are read one by one, so a file that cannot be read (missing, not UTF-8, records
without the text field) is named in the error. Streamed domains read the same sources
through ``streaming=True`` and are cleaned and split on the fly, without deduplication.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from basinlab.atomic import atomic_write_json
from basinlab.data.cache import cache_root
from basinlab.data.cleaning import clean_batch, in_validation
from basinlab.data.corpus_spec import check_domain_spec, file_format, local_files
from basinlab.errors import UserError

CLEANING_VERSION = 1  # bump when cleaning or splitting changes, so packed caches are rebuilt
_BATCH = 1000  # documents per map batch
READ_CHUNK = 1 << 20  # bytes a builder reads at a time (datasets' default, 10 MB, is held in memory per read)


def corpus_fingerprint(spec: Mapping[str, Any], cache_dir=None) -> str:
    """What a cached domain is keyed by: its options and the sha256 of each file's content, in order
    (or of every file in a local dataset folder; a hub dataset by its name, config and split)."""
    name = check_domain_spec(spec)
    options = {k: spec.get(k) for k in ("format", "text_field", "sample_by", "code", "hf_dataset", "config", "split")}
    options.update(dedupe=dedupes(spec), validation_fraction=validation_fraction(spec), version=CLEANING_VERSION)
    if "local_files" in spec:
        paths = local_files(name, spec)
    elif Path(spec["hf_dataset"]).expanduser().is_dir():
        options["hf_dataset"] = "local folder"
        folder = Path(spec["hf_dataset"]).expanduser()
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        paths = []
    files = [file_sha256(path, cache_dir) for path in paths]
    payload = json.dumps({"options": options, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def file_sha256(path: Path, cache_dir=None) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks; remembered under the cache by the file's
    path, size and mtime, so an unchanged corpus is not read again at every launch."""
    stat = path.stat()
    memo = cache_root(cache_dir) / "file-hashes" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]}.json"
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    try:
        atomic_write_json(memo, {**stamp, "sha256": digest.hexdigest()})
    except OSError:  # a read-only shared cache: hash again next time
        pass
    return digest.hexdigest()


def dedupes(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("dedupe", not spec.get("streaming", False)))


def validation_fraction(spec: Mapping[str, Any]) -> float:
    return float(spec.get("validation_fraction", 0.05))


def hf_cache(cache_dir: str | os.PathLike | None) -> str:
    """Where ``datasets`` keeps the Arrow files of user corpora (under basinlab's cache root)."""
    return str(cache_root(cache_dir) / "hf-datasets")


# --- cached: Arrow on disk ------------------------------------------------------------------


def cleaned_splits(spec: Mapping[str, Any], cache_dir=None, num_proc: int | None = None) -> dict[str, Any]:
    """{"train", "validation"}: memory-mapped ``datasets.Dataset`` of cleaned documents (column "text")."""
    import datasets

    name = check_domain_spec(spec)
    field, code = spec.get("text_field", "text"), bool(spec.get("code", False))
    if "local_files" in spec:
        parts = [_read_file(name, spec, path, cache_dir) for path in local_files(name, spec)]
        sources = [(part, str(path)) for part, path in zip(parts, local_files(name, spec))]
    else:
        sources = [(part, f"hub dataset {spec['hf_dataset']!r}") for part in _hub_parts(name, spec, cache_dir, streaming=False)]
    cleaned = []
    for part, where in sources:
        if field not in part.column_names:
            raise UserError(f"text domain {name!r}: {where} has no column {field!r} ({', '.join(part.column_names)}); set text_field")
        cleaned.append(part.map(
            _clean_rows, batched=True, batch_size=_BATCH, input_columns=field, remove_columns=part.column_names,
            fn_kwargs={"code": code, "where": f"text domain {name!r}: {where}", "field": field},
            num_proc=_workers(num_proc, len(part)), desc=f"cleaning {name}",
        ))
    corpus = datasets.concatenate_datasets(cleaned)
    if dedupes(spec):
        seen: set[int] = set()
        corpus = corpus.filter(_first_seen, input_columns="key", batched=True, batch_size=10 * _BATCH,
                               fn_kwargs={"seen": seen}, desc=f"deduplicating {name}")
    if len(corpus) < 2:
        raise UserError(f"text domain {name!r}: only {len(corpus)} usable document(s) (>= 4 words each); "
                        "add text or use sample_by: line/paragraph")
    fraction = validation_fraction(spec)
    return {
        split: corpus.filter(_in_split, input_columns="key", batched=True, batch_size=10 * _BATCH,
                             fn_kwargs={"fraction": fraction, "validation": split == "validation"},
                             num_proc=_workers(num_proc, len(corpus)), desc=f"splitting {name}").remove_columns("key")
        for split in ("train", "validation")
    }


def _workers(num_proc: int | None, rows: int) -> int | None:
    """map's num_proc, or None (in process) when the data is too small to be worth the workers."""
    return num_proc if num_proc and num_proc > 1 and rows >= 4 * _BATCH else None


def _clean_rows(texts: list[Any], code: bool, where: str, field: str) -> dict[str, list]:
    if any(not isinstance(text, str) for text in texts):
        raise UserError(f"{where}: a record has no string field {field!r}; set text_field or fix the file")
    kept, keys = clean_batch(texts, code)
    return {"text": kept, "key": keys}


def _first_seen(keys: list[int], seen: set[int]) -> list[bool]:
    """Exact duplicates dropped, the first kept (single process: ``seen`` is shared state)."""
    keep = []
    for key in keys:
        keep.append(key not in seen)
        seen.add(key)
    return keep


def _in_split(keys: list[int], fraction: float, validation: bool) -> list[bool]:
    return [in_validation(key, fraction) == validation for key in keys]


def _builder(spec: Mapping[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder for a file and its options: text and JSON read in chunks of
    ``READ_CHUNK`` bytes, Parquet in batches of ``_BATCH`` rows, whatever the file's size."""
    kind = file_format(spec, path)
    if kind == "text":
        return "text", {"sample_by": spec.get("sample_by", "line"), "chunksize": READ_CHUNK}
    if kind == "json":
        return "json", {"chunksize": READ_CHUNK}
    return kind, {"batch_size": _BATCH}


def _read_file(name: str, spec: Mapping[str, Any], path: Path, cache_dir) -> Any:
    """One local file as a memory-mapped Arrow dataset; an unreadable file is a one-line error naming it."""
    import datasets

    builder, options = _builder(spec, path)
    where = f"text domain {name!r}: local file {str(path)!r}"
    try:
        part = datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=hf_cache(cache_dir), **options)
    except Exception as exc:  # builders surface bad bytes and bad JSON as DatasetGenerationError chains
        raise UserError(f"{where} cannot be read ({_root_cause(exc)}); fix local_files") from None
    if len(part) == 0:
        raise UserError(f"{where} holds no documents; fix local_files")
    return part


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text at byte {exc.start}; save it as UTF-8"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _hub_parts(name: str, spec: Mapping[str, Any], cache_dir, streaming: bool) -> list[Any]:
    """The hub dataset's split (all splits when none is named) as datasets; a local folder of data
    files in a hub dataset's layout loads the same way."""
    import datasets

    try:
        loaded = datasets.load_dataset(spec["hf_dataset"], spec.get("config"), split=spec.get("split"),
                                       streaming=streaming, cache_dir=hf_cache(cache_dir))
    except Exception as exc:
        raise UserError(
            f"text domain {name!r}: cannot load dataset {spec['hf_dataset']!r} ({_root_cause(exc)}); check the "
            "name/config/split and the internet connection, or use local_files"
        ) from None
    return list(loaded.values()) if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)) else [loaded]


# --- streamed ----------------------------------------------------------------------------------


def streamed_documents(spec: Mapping[str, Any], cache_dir=None) -> Any:
    """The raw documents as one ``datasets.IterableDataset`` (one shard per file), column "text"."""
    import datasets

    name = check_domain_spec(spec)
    field = spec.get("text_field", "text")
    if "local_files" in spec:
        paths = local_files(name, spec)
        builder, options = _builder(spec, paths[0])
        stream = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train", streaming=True, **options)
    else:
        parts = _hub_parts(name, spec, cache_dir, streaming=True)
        stream = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return stream.select_columns([field]).rename_column(field, "text") if field != "text" else stream.select_columns(["text"])
