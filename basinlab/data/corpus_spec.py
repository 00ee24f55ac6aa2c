"""What a ``data.domains`` entry may say about a user's corpus, checked when the config loads.

A domain is a built-in name, or a mapping: ``{name, local_files: path | glob | [paths and globs],
format: text | json | parquet, text_field, sample_by: line | paragraph | document, code}`` or
``{name, hf_dataset: owner/name (or a local dataset folder), config, split, text_field, code}``,
either with ``streaming``, ``max_tokens``, ``dedupe``, ``shuffle`` and ``validation_fraction``. The checks
read only each file's head (and a Parquet file's schema), so they cost nothing on big corpora;
a bad byte further in is reported, with its file, when the domain is read.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
from pathlib import Path
from typing import Any, Mapping

from basinlab.data.text_sources import TEXT_DOMAINS
from basinlab.errors import UserError

SPEC_KEYS = ("name", "local_files", "format", "text_field", "sample_by", "code", "hf_dataset", "config", "split",
             "streaming", "max_tokens", "dedupe", "shuffle", "validation_fraction")
FORMATS = ("text", "json", "parquet")
SAMPLE_BY = ("line", "paragraph", "document")
HEAD_BYTES = 64 * 1024  # how much of each local file is read to check a spec when a config loads
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_utf8(path: str | os.PathLike, what: str, fix: str, limit: int | None = None) -> tuple[str, bool]:
    """(the text of ``path``, or of its first ``limit`` bytes; whether that is all of it), or a one-line
    UserError saying why the file cannot be text: missing, a folder, not a regular file, not UTF-8."""
    path = Path(path).expanduser()
    where = f"{what} {str(path)!r}"
    try:
        if path.is_dir():
            raise UserError(f"{where} is a directory; {fix}")
        if path.exists() and not path.is_file():
            raise UserError(f"{where} is not a regular file; {fix}")
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; {fix}") from None
    except OSError as exc:
        raise UserError(f"{where} cannot be read ({exc.strerror or exc}); {fix}") from None
    complete = limit is None or len(data) <= limit
    try:  # a cut-off head may end inside a character: the incremental decoder holds it back
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:limit], final=complete)
    except UnicodeDecodeError as exc:
        raise UserError(f"{where} is not UTF-8 text at byte {exc.start} (save it as UTF-8); {fix}") from None
    return text, complete


def domain_name(entry: Any) -> str:
    """The name of a ``data.domains`` entry: a built-in domain's name, or a spec mapping's ``name``."""
    name = entry.get("name") if isinstance(entry, Mapping) else entry
    if not isinstance(name, str) or not name:
        raise UserError(f"text domain {entry!r} must be a built-in domain ({', '.join(TEXT_DOMAINS)}) or a mapping with a name")
    if not isinstance(entry, Mapping) and name not in TEXT_DOMAINS:
        raise UserError(f"text domain {name!r} is not one of {', '.join(TEXT_DOMAINS)}; "
                        "describe other domains as {name: ..., local_files: [...]} or {name: ..., hf_dataset: ...}")
    return name


def file_format(spec: Mapping[str, Any], path: Path) -> str:
    """The spec's ``format``, else json for .json/.jsonl, parquet for .parquet and text for any other file."""
    return spec.get("format") or _SUFFIX_FORMATS.get(path.suffix.lower(), "text")


def local_files(name: str, spec: Mapping[str, Any]) -> list[Path]:
    """The files ``local_files`` names, globs expanded (sorted); a pattern that matches nothing or a
    missing file is an error naming it."""
    entries = spec["local_files"]
    entries = [entries] if isinstance(entries, (str, os.PathLike)) else entries
    paths: list[Path] = []
    for entry in entries:
        pattern = os.path.expanduser(str(entry))
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"text domain {name!r}: local_files pattern {pattern!r} matches no file; fix local_files")
            paths.extend(matches)
        else:
            paths.append(Path(pattern))
    return paths


def check_domain_spec(entry: Any) -> str:
    """Check a ``data.domains`` entry as far as possible without reading its data; return its name."""
    name = domain_name(entry)
    if not isinstance(entry, Mapping):
        return name
    spec = entry

    def require(ok: bool, problem: str) -> None:
        if not ok:
            raise UserError(f"text domain {name!r}: {problem}")

    unknown = sorted(set(spec) - set(SPEC_KEYS))
    require(not unknown, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    require(not ("local_files" in spec and "hf_dataset" in spec), "give either local_files or hf_dataset, not both")
    source = "local_files" in spec or "hf_dataset" in spec
    require(source or name in TEXT_DOMAINS, f"give local_files or hf_dataset, or use a built-in domain ({', '.join(TEXT_DOMAINS)})")
    require(source or set(spec) == {"name"}, "built-in domains take no options; describe your own corpus with local_files")
    require(spec.get("format") in (None, *FORMATS), f"format {spec.get('format')!r} is not supported; use {', '.join(FORMATS)}")
    require(spec.get("sample_by", "line") in SAMPLE_BY,
            f"sample_by {spec.get('sample_by')!r} is not supported; use {', '.join(SAMPLE_BY)}")
    require(isinstance(spec.get("text_field", "text"), str), f"text_field must be a column name, got {spec.get('text_field')!r}")
    for flag in ("code", "streaming", "dedupe", "shuffle"):
        require(isinstance(spec.get(flag, False), bool), f"{flag} must be true or false, got {spec.get(flag)!r}")
    require(not (spec.get("streaming") and spec.get("dedupe")),
            "dedupe needs the whole corpus at once; streamed domains are not deduplicated (drop dedupe or streaming)")
    require(not (spec.get("streaming") and spec.get("shuffle")),
            "streamed domains are read in the order of their files; drop shuffle or streaming")
    budget = spec.get("max_tokens")
    require(budget is None or (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1),
            f"max_tokens must be a positive number of training tokens, got {budget!r}")
    fraction = spec.get("validation_fraction", 0.05)
    require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 0.5,
            f"validation_fraction must lie in (0, 0.5), got {fraction!r}")
    if "hf_dataset" in spec:
        require(isinstance(spec["hf_dataset"], str) and bool(spec["hf_dataset"]),
                f"hf_dataset must name a hub dataset such as owner/name, got {spec['hf_dataset']!r}")
    if "local_files" in spec:
        files = spec["local_files"]
        require(isinstance(files, (str, os.PathLike)) or (isinstance(files, list) and all(isinstance(f, (str, os.PathLike)) for f in files)),
                f"local_files must be a path, a glob or a list of them, got {files!r}")
        require(bool(files), "local_files is empty; list the files to read")
        paths = local_files(name, spec)
        formats = {file_format(spec, path) for path in paths}
        require(len(formats) == 1, f"local_files mixes formats ({', '.join(sorted(formats))}); give one domain per format")
        for path in paths:
            check_local_file(name, spec, path)
    return name


def check_local_file(name: str, spec: Mapping[str, Any], path: Path) -> None:
    """The file exists and is not empty; text and JSON heads are UTF-8 (JSON records in the head carry
    the text field); a Parquet file's schema has the text field."""
    where = f"text domain {name!r}: local file {str(path)!r}"
    field = spec.get("text_field", "text")
    if file_format(spec, path) == "parquet":
        _check_parquet(where, path, field)
        return
    head, complete = read_utf8(path, f"text domain {name!r}: local file", "fix local_files", limit=HEAD_BYTES)
    if not head.strip():
        raise UserError(f"{where} is empty; fix local_files")
    if file_format(spec, path) != "json":
        return
    if complete:
        json_texts(where, head, field)
    elif not head.lstrip().startswith("["):  # JSON Lines: the lines the head holds in full
        json_texts(where, head[: head.rfind("\n") + 1], field)


def _check_parquet(where: str, path: Path, field: str) -> None:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{where} does not exist; fix local_files")
    try:
        metadata = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a damaged or non-Parquet file
        raise UserError(f"{where} is not a readable Parquet file ({str(exc).splitlines()[0]}); fix local_files") from None
    names = metadata.schema.to_arrow_schema().names
    if field not in names:
        raise UserError(f"{where} has no column {field!r} ({', '.join(names)}); set text_field")
    if metadata.num_rows == 0:
        raise UserError(f"{where} is empty (0 rows); fix local_files")


def json_texts(where: str, content: str, field: str) -> list[str]:
    """The ``field`` strings of JSON Lines or of a JSON array of objects; an error names the record."""
    stripped = content.lstrip()
    try:
        records = json.loads(content) if stripped.startswith("[") else [json.loads(line) for line in content.splitlines() if line.strip()]
    except ValueError as exc:
        raise UserError(f"{where} is neither JSON Lines nor a JSON array ({exc})") from None
    texts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise UserError(f"{where} record {i} has no string field {field!r}; set text_field")
        texts.append(record[field])
    return texts
