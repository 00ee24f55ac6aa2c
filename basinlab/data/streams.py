"""MNIST task streams for continual learning: permuted MNIST and class-incremental MNIST.

A task is only index sets into the shared uint8 MNIST arrays plus an input transform
(a pixel permutation), so T tasks cost no extra memory. The arrays live on the
training device and batches are cut by indexing, with no per-sample Python loading.
Everything random (permutations, the validation split, probe sets) derives from the
run seed, so every optimizer of a seed sees exactly the same tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from basinlab.data.mnist import TRAIN_CLASS_COUNTS, MnistArrays
from basinlab.errors import UserError

NUM_PIXELS = 784
NUM_CLASSES = 10
# Mean and std of MNIST training pixels scaled to [0, 1].
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081
CLASS_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
STREAMS = ("permuted", "class_incremental")
NUM_TRAIN = sum(TRAIN_CLASS_COUNTS)  # the 60k training images, validation included


@dataclass(frozen=True)
class Task:
    """One task of a stream: which examples it uses and how its inputs are transformed."""

    name: str
    classes: tuple[int, ...]
    permutation: torch.Tensor | None  # pixel order for this task; None = identity
    train_index: torch.Tensor  # into the 60k training arrays
    val_index: torch.Tensor  # into the 60k training arrays (held out from training)
    test_index: torch.Tensor  # into the 10k test arrays
    probe_index: torch.Tensor  # fixed subset of test_index for representation metrics


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> standardised float32 inputs."""
    return images.float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)


def _split_train_validation(
    num_train: int, validation_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    order = _rng(seed, 1).permutation(num_train)
    return order[validation_size:], order[:validation_size]


def _select(index: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    return index[np.isin(labels[index], classes)]


def _make_task(
    name: str,
    classes: Sequence[int],
    permutation: np.ndarray | None,
    arrays: MnistArrays,
    train: np.ndarray,
    val: np.ndarray,
    probe_rng: np.random.Generator,
    probe_size: int,
    max_train_examples: int | None,
) -> Task:
    train = _select(train, arrays.y_train, classes)[:max_train_examples]
    val = _select(val, arrays.y_train, classes)
    if not len(train) or not len(val):
        raise UserError(
            f"MNIST task {name!r} gets {len(train)} training and {len(val)} validation images; "
            "data.validation_size must leave both non-empty for every task (lower it if training is empty, raise it if validation is)"
        )
    test = _select(np.arange(len(arrays.y_test)), arrays.y_test, classes)
    probe = np.sort(probe_rng.permutation(test)[:probe_size])
    as_long = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
    return Task(
        name=name,
        classes=tuple(int(c) for c in classes),
        permutation=None if permutation is None else as_long(permutation),
        train_index=as_long(train),
        val_index=as_long(val),
        test_index=as_long(test),
        probe_index=as_long(probe),
    )


def permuted_mnist(
    arrays: MnistArrays,
    num_tasks: int,
    seed: int,
    *,
    first_task_unpermuted: bool = True,
    validation_size: int = 5000,
    probe_size: int = 1000,
    max_train_examples: int | None = None,
) -> list[Task]:
    """``num_tasks`` tasks over all ten classes, each with its own seeded pixel permutation."""
    train, val = _split_train_validation(len(arrays.y_train), validation_size, seed)
    tasks = []
    for t in range(num_tasks):
        identity = t == 0 and first_task_unpermuted
        permutation = None if identity else _rng(seed, 2, t).permutation(NUM_PIXELS)
        tasks.append(
            _make_task(
                f"permutation {t}" if not identity else "unpermuted",
                range(NUM_CLASSES),
                permutation,
                arrays,
                train,
                val,
                _rng(seed, 3, t),
                probe_size,
                max_train_examples,
            )
        )
    return tasks


def class_incremental_mnist(
    arrays: MnistArrays,
    num_tasks: int,
    seed: int,
    *,
    validation_size: int = 5000,
    probe_size: int = 1000,
    max_train_examples: int | None = None,
) -> list[Task]:
    """Tasks (0,1), (2,3), ... learned in order by one shared 10-way head."""
    if not 1 <= num_tasks <= len(CLASS_PAIRS):
        raise ValueError(f"class-incremental MNIST has 1 to {len(CLASS_PAIRS)} tasks, not {num_tasks}")
    train, val = _split_train_validation(len(arrays.y_train), validation_size, seed)
    return [
        _make_task(
            f"classes {a},{b}",
            (a, b),
            None,
            arrays,
            train,
            val,
            _rng(seed, 3, t),
            probe_size,
            max_train_examples,
        )
        for t, (a, b) in enumerate(CLASS_PAIRS[:num_tasks])
    ]


def most_train_examples(stream: str, num_tasks: int, validation_size: int) -> list[int]:
    """Per task, the most training images it can get for any seed (before max_train_examples):
    exact for the permuted stream; a class pair cannot keep more than its images, nor more
    than the validation split leaves. Lets a config with an empty task fail when it loads."""
    tasks = [range(NUM_CLASSES)] * num_tasks if stream == "permuted" else CLASS_PAIRS[:num_tasks]
    return [min(sum(TRAIN_CLASS_COUNTS[c] for c in classes), NUM_TRAIN - validation_size) for classes in tasks]


class TaskStream:
    """The MNIST arrays on one device, a list of tasks, and batching over them."""

    def __init__(self, arrays: MnistArrays, tasks: list[Task], device: torch.device | str = "cpu"):
        self.tasks = tasks
        self.device = torch.device(device)
        to = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        self._images = {"train": to(arrays.x_train, torch.uint8), "test": to(arrays.x_test, torch.uint8)}
        self._labels = {"train": to(arrays.y_train, torch.long), "test": to(arrays.y_test, torch.long)}
        self._permutations = [
            None if t.permutation is None else t.permutation.to(self.device) for t in tasks
        ]
        self._indices = [
            {split: getattr(t, f"{split}_index").to(self.device) for split in ("train", "val", "test", "probe")}
            for t in tasks
        ]

    def __len__(self) -> int:
        return len(self.tasks)

    def num_examples(self, task: int, split: str) -> int:
        return len(self._indices[task][split])

    def _gather(self, task: int, split: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = "test" if split in ("test", "probe") else "train"
        images = self._images[source][rows]
        permutation = self._permutations[task]
        if permutation is not None:
            images = images[:, permutation]
        return _normalize(images), self._labels[source][rows]

    def epoch_order(self, task: int, seed: int, epoch: int) -> torch.Tensor:
        """Training rows of ``task`` in the shuffled order of ``epoch``; depends only on (seed, task, epoch)."""
        index = self._indices[task]["train"]
        generator = torch.Generator().manual_seed(int(_rng(seed, 4, task, epoch).integers(2**62)))
        return index[torch.randperm(len(index), generator=generator).to(self.device)]

    def train_batches(
        self,
        task: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of ``task`` (the last partial one is dropped).

        The order depends only on (seed, task, epoch). With ``world_size`` > 1 every rank
        draws the same global batch and keeps its contiguous 1/world share, so averaging
        the ranks' gradients reproduces the single-process gradient of that batch.
        """
        for _, x, y in stacked_train_batches(
            [self], task, batch_size, seeds=[seed], epoch=epoch, rank=rank, world_size=world_size
        ):
            yield x[0], y[0]

    def eval_batches(
        self, task: int, split: str, batch_size: int = 10_000
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole ``split`` ("val", "test" or "probe") of ``task`` in fixed order."""
        index = self._indices[task][split]
        for start in range(0, len(index), batch_size):
            yield self._gather(task, split, index[start : start + batch_size])


def stacked_train_batches(
    streams: Sequence[TaskStream],
    task: int,
    batch_size: int,
    *,
    seeds: Sequence[int],
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``streams[i].train_batches(task, seed=seeds[i], epoch=epoch)`` for every i, advanced together.

    Yields ``(members, x, y)``: the positions of the streams that still have a full batch,
    their inputs stacked [A, batch, 784] and labels [A, batch]. A stream's batches do not
    depend on which others it is stacked with (``train_batches`` is this with one stream);
    gathering them in one indexing op per batch (instead of one per stream) is the point.
    The streams must share one set of MNIST arrays.
    """
    if len(streams) != len(seeds):
        raise ValueError(f"{len(streams)} streams for {len(seeds)} seeds")
    images, labels = streams[0]._images["train"], streams[0]._labels["train"]
    if any(s._images["train"].data_ptr() != images.data_ptr() for s in streams):
        raise ValueError("stacked_train_batches needs streams built from the same MNIST arrays")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by world size {world_size}")
    share = batch_size // world_size
    orders = [stream.epoch_order(task, seed, epoch) for stream, seed in zip(streams, seeds)]
    identity = torch.arange(NUM_PIXELS, device=images.device)
    for start in range(0, max(len(order) for order in orders) - batch_size + 1, batch_size):
        members = [i for i, order in enumerate(orders) if start + batch_size <= len(order)]
        rows = torch.stack([orders[i][start + rank * share : start + (rank + 1) * share] for i in members])
        x = images[rows]
        permutations = [streams[i]._permutations[task] for i in members]
        if any(p is not None for p in permutations):
            order = torch.stack([identity if p is None else p for p in permutations])
            x = torch.gather(x, 2, order.unsqueeze(1).expand(-1, x.shape[1], -1))
        yield members, _normalize(x), labels[rows]


def build_tasks(
    stream: str,
    arrays: MnistArrays,
    num_tasks: int,
    seed: int,
    *,
    first_task_unpermuted: bool = True,
    **split_options,
) -> list[Task]:
    """The task list of ``stream`` (one of STREAMS) for ``seed``.

    ``split_options`` (validation_size, probe_size, max_train_examples) apply to both
    streams; ``first_task_unpermuted`` only to the permuted one.
    """
    if stream == "permuted":
        return permuted_mnist(
            arrays, num_tasks, seed, first_task_unpermuted=first_task_unpermuted, **split_options
        )
    if stream == "class_incremental":
        return class_incremental_mnist(arrays, num_tasks, seed, **split_options)
    raise ValueError(f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}")
