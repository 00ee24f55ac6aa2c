"""Where every dataset's cache lives, how its content is hashed, and whether a cache folder is usable.

One place for all three, so MNIST, the text domains and the tokenizers share one cache root
and one hashing scheme, and a config naming an unusable folder fails when it is loaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from basinlab.errors import UserError


def default_cache_dir() -> Path:
    """$BASINLAB_CACHE, else ~/.cache/basinlab: one place shared by every run on the machine."""
    return Path(os.environ.get("BASINLAB_CACHE") or Path.home() / ".cache" / "basinlab").expanduser()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` as given, or the default when None."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def sha256_of(chunks: Iterable[bytes | memoryview]) -> str:
    """Hex sha256 over ``chunks`` in order; each dataset supplies chunks that frame its own content
    (names, dtypes, lengths), so two different contents never feed the same byte stream."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def check_cache_dir(path: str | os.PathLike) -> None:
    """A cache folder must be a folder, or be creatable: its nearest existing ancestor a writable folder.

    An existing folder is accepted even if read-only: a prepared shared cache is only read.
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"cache folder {str(path)!r} is a file, not a folder; name a folder")
        return
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"cache folder {str(path)!r} cannot be created: {str(ancestor)!r} is a file; name another folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cache folder {str(path)!r} cannot be created: {str(ancestor)!r} is not writable; name another folder")
