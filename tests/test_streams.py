"""Task streams: what each task contains, and that batching is deterministic and shardable."""

import torch

from basinlab.data.streams import PIXEL_MEAN, PIXEL_STD, TaskStream, build_tasks

SPLITS = dict(validation_size=5000, probe_size=100)


def test_permuted_tasks_share_data_with_distinct_permutations(mnist_arrays):
    tasks = build_tasks("permuted", mnist_arrays, 3, seed=0, **SPLITS)
    assert tasks[0].permutation is None and tasks[0].name == "unpermuted"
    p1, p2 = tasks[1].permutation, tasks[2].permutation
    assert sorted(p1.tolist()) == list(range(784)) and not torch.equal(p1, p2)
    assert all(torch.equal(t.train_index, tasks[0].train_index) for t in tasks)
    assert len(tasks[0].train_index) == 55_000 and len(tasks[0].val_index) == 5000
    assert not set(tasks[0].train_index.tolist()) & set(tasks[0].val_index.tolist())
    assert len(tasks[0].test_index) == 10_000 and len(tasks[0].probe_index) == 100


def test_tasks_depend_on_seed_only(mnist_arrays):
    a = build_tasks("permuted", mnist_arrays, 2, seed=3, first_task_unpermuted=False, **SPLITS)
    b = build_tasks("permuted", mnist_arrays, 2, seed=3, first_task_unpermuted=False, **SPLITS)
    c = build_tasks("permuted", mnist_arrays, 2, seed=4, first_task_unpermuted=False, **SPLITS)
    assert a[0].permutation is not None
    assert torch.equal(a[0].permutation, b[0].permutation) and torch.equal(a[1].val_index, b[1].val_index)
    assert not torch.equal(a[0].permutation, c[0].permutation)


def test_class_incremental_tasks_hold_only_their_pair(mnist_arrays):
    tasks = build_tasks("class_incremental", mnist_arrays, 5, seed=0, **SPLITS)
    labels = torch.as_tensor(mnist_arrays.y_train, dtype=torch.long)
    test_labels = torch.as_tensor(mnist_arrays.y_test, dtype=torch.long)
    for task, pair in zip(tasks, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]):
        assert task.classes == pair
        for index, source in ((task.train_index, labels), (task.val_index, labels), (task.test_index, test_labels)):
            assert set(source[index].unique().tolist()) == set(pair)
    assert sum(len(t.test_index) for t in tasks) == 10_000


def test_inputs_are_normalized_and_permuted(mnist_arrays):
    tasks = build_tasks("permuted", mnist_arrays, 2, seed=0, **SPLITS)
    stream = TaskStream(mnist_arrays, tasks)
    (x0, y0), (x1, y1) = next(stream.eval_batches(0, "test", 8)), next(stream.eval_batches(1, "test", 8))
    raw = torch.as_tensor(mnist_arrays.x_test[:8]).float() / 255
    assert torch.allclose(x0, (raw - PIXEL_MEAN) / PIXEL_STD)
    assert torch.allclose(x1, x0[:, tasks[1].permutation]) and torch.equal(y0, y1)


def test_train_batches_are_full_shuffled_and_reproducible(mnist_arrays):
    tasks = build_tasks("permuted", mnist_arrays, 1, seed=0, max_train_examples=1000, **SPLITS)
    stream = TaskStream(mnist_arrays, tasks)
    epoch0 = [y for _, y in stream.train_batches(0, 64, seed=0, epoch=0)]
    again = [y for _, y in stream.train_batches(0, 64, seed=0, epoch=0)]
    epoch1 = [y for _, y in stream.train_batches(0, 64, seed=0, epoch=1)]
    assert len(epoch0) == 1000 // 64 and stream.num_examples(0, "train") == 1000
    assert all(len(y) == 64 for y in epoch0)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again))
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1))


def test_rank_shares_reassemble_the_single_process_batch(mnist_arrays):
    tasks = build_tasks("permuted", mnist_arrays, 2, seed=0, max_train_examples=500, **SPLITS)
    stream = TaskStream(mnist_arrays, tasks)
    whole = list(stream.train_batches(1, 32, seed=1, epoch=2))
    shares = [list(stream.train_batches(1, 32, seed=1, epoch=2, rank=r, world_size=2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shares):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
