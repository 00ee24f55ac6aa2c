"""When buckets recompute their roots: the default schedule, and staggering over the window."""

import torch

from basinlab.optim import Shampoo
from basinlab.optim.schedule import is_due, stagger_offsets


def test_default_schedule_is_start_then_every_frequency_steps():
    due = [t for t in range(1, 40) if is_due(t, start=5, frequency=10, offset=10)]
    assert due == [5, 15, 25, 35]


def test_staggered_offsets_spread_the_cost_and_each_bucket_refreshes_once_per_window():
    costs = [100, 90, 50, 40, 30, 5]
    offsets = stagger_offsets(costs, 4)
    assert all(1 <= o <= 4 for o in offsets)
    per_step = [sum(c for c, o in zip(costs, offsets) if o == slot) for slot in range(1, 5)]
    assert per_step == [100, 90, 55, 70]  # largest first onto the cheapest step: 100 | 90 | 50+5 | 40+30
    start, frequency = 3, 4
    for offset in offsets:
        due = [t for t in range(1, 60) if is_due(t, start, frequency, offset)]
        assert due[0] == start
        windows = [sum(1 for t in due if start + 1 + k * frequency <= t <= start + (k + 1) * frequency) for k in range(12)]
        assert windows == [1] * 12


def _refresh_log(stagger, steps=16, frequency=4):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(6, 5), (7, 3), (4, 4), (9, 2)]]
    optimizer = Shampoo(params, lr=0.01, precondition_frequency=frequency, start_preconditioning_step=2,
                        stagger_roots=stagger)
    log = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        before = {k: s["refreshes"][0] for k, s in optimizer.state.items() if k.startswith("bucket.")}
        optimizer.step()
        log.append({k for k, s in optimizer.state.items() if k.startswith("bucket.") and s["refreshes"][0] != before.get(k, 0)})
    return log, params


def test_staggered_optimizer_refreshes_every_bucket_once_per_window_but_not_all_on_one_step():
    log, _ = _refresh_log(stagger=True)
    buckets = log[1]
    assert len(buckets) == 4  # the first refresh, at start (step 2), is every bucket's
    for k in range(3):  # windows of steps 3-6, 7-10, 11-14
        window = log[2 + 4 * k : 6 + 4 * k]
        assert sorted(b for step in window for b in step) == sorted(buckets)
        assert max(len(step) for step in window) < len(buckets)


def test_unstaggered_refreshes_are_the_default_schedule():
    log, _ = _refresh_log(stagger=False)
    assert [i + 1 for i, step in enumerate(log) if step] == [2, 6, 10, 14]
    assert all(len(step) == 4 for step in log if step)
