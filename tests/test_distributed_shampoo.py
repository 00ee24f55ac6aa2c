"""Distributed Shampoo (and SOAP, Muon): block assignment, and 2 real gloo processes against one process.

The two-process run (tests/workers/distributed_shampoo.py under torch.distributed.run)
must give bitwise the single-process parameters with float32 communication, across
block layouts (also with newton roots, staggered), SOAP and Muon, dead layers and a skipped
non-finite gradient; its sharded checkpoints
must resume bit-identically at world size 2 and re-shard to 1 (and from 1 to 2).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from basinlab.optim import Shampoo
from basinlab.optim.balance import balance
from basinlab.optim.distribution import Comm, Distribution

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "workers" / "distributed_shampoo.py"


def _load_worker():
    spec = importlib.util.spec_from_file_location("distributed_shampoo_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_assignment_balances_cost_largest_first():
    costs = [100, 60, 50, 40, 10, 5]
    owners = balance(costs, 2)
    # LPT: 100 -> r0, 60 -> r1, 50 -> r1 (60 < 100), 40 -> r0 (100 < 110), 10 -> r1 (110 < 140), 5 -> r1
    assert owners == [0, 1, 1, 0, 1, 1]
    distribution = Distribution.build(Comm(None, 0, 2), [6] * 6, costs, None)
    assert distribution.loads(costs) == [140, 125]


def test_classes_are_balanced_each_on_their_own_and_ties_go_to_the_lighter_rank():
    # staggered roots: each step's buckets (a class) spread over the ranks, the total stays even
    assert balance([5, 5, 5, 5], 2, classes=[1, 1, 2, 2]) == [0, 1, 0, 1]
    assert balance([9, 1, 1], 2, classes=[1, 2, 2]) == [0, 1, 0]


def test_segments_hold_each_owned_bucket_in_order_padded_to_the_longest():
    distribution = Distribution.build(Comm(None, 1, 2), [6, 4, 1, 5], [9, 8, 7, 6], None)
    assert distribution.owners == (0, 1, 1, 0)
    # rank 0: unit 0 (6 values) then unit 3 (5); rank 1: unit 1 (4) then unit 2 (1)
    assert distribution.offsets == (0, 0, 4, 6) and distribution.segment_size == 11
    assert distribution.position(3) == 6 and distribution.position(2) == 11 + 4
    assert distribution.owns(1) and not distribution.owns(0)


def test_flat_partitions_are_refused_with_a_zero_stage_hint():
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = Shampoo([weight])
    flat = torch.nn.Parameter(torch.randn(12))  # what ZeRO >= 1 leaves in param_groups
    optimizer.param_groups[0]["params"] = [flat]
    flat.grad = torch.randn(12)
    with pytest.raises(RuntimeError, match="ZeRO stage 0"):
        optimizer.step()


def test_distributed_true_without_process_group_is_a_clear_error():
    weight = torch.nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="torch.distributed initialized"):
        Shampoo([weight], distributed=True).step()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_bitwise(tmp_path):
    worker = _load_worker()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers use one thread each; BLAS results may depend on it
    try:
        reference = {}
        for config in worker.CONFIGS:
            checkpoint = tmp_path / f"checkpoint-{config}-1"
            checkpoint.mkdir()
            reference[config], optimizer = worker.train(config, checkpoint=checkpoint)
            assert optimizer.sharding() is None and optimizer.diagnostics()["skipped_steps"] == 1
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path)],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        ranks = [torch.load(tmp_path / f"results-{r}.pt", weights_only=False) for r in (0, 1)]
        initial = worker.initial_params()
        for config, expected in reference.items():
            for got in ranks:
                runs = got[config]
                for name in ("full", "resumed", "resharded_from_1", "subgroups"):
                    assert all(torch.equal(a, b) for a, b in zip(runs[name], expected)), (config, name)
                displacement = max((e - i).abs().max().item() for e, i in zip(expected, initial))
                bf16_error = max((a - b).abs().max().item() for a, b in zip(runs["bf16"], expected))
                assert 0 < bf16_error < 0.01 * displacement, (config, bf16_error, displacement)
                assert "rank" in runs["refused_other_shard"] and "load_sharded_state" in runs["refused_other_shard"]
            assert all(torch.equal(a, b) for a, b in zip(ranks[0][config]["bf16"], ranks[1][config]["bf16"]))
            sharding = ranks[0][config]["sharding"]
            assert sharding["world_size"] == 2 and set(sharding["owners"]) == {0, 1}
            assert max(sharding["loads"]) <= 1.5 * sum(sharding["loads"]) / 2
            assert torch.equal(expected[worker.ALWAYS_DEAD], initial[worker.ALWAYS_DEAD])
            assert not torch.equal(expected[worker.SOMETIMES_DEAD], initial[worker.SOMETIMES_DEAD])
            # the 2-rank checkpoint re-sharded onto this single process continues identically
            resumed, _ = worker.train(config, resume_from=tmp_path / f"checkpoint-{config}-2")
            assert all(torch.equal(a, b) for a, b in zip(resumed, expected)), config
    finally:
        torch.set_num_threads(threads)
