"""FSDP2 (``fully_shard``) with the matrix optimizers: 2 real gloo ranks against one process,
and torch.distributed.checkpoint resumes at 2 ranks, 2 -> 1 and 1 -> 2."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "workers" / "fsdp2_optimizers.py"


def _load_worker(path: Path = WORKER):
    spec = importlib.util.spec_from_file_location(f"{path.stem}_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fully_sharded_training_equals_one_process_bitwise(tmp_path):
    worker = _load_worker()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: BLAS results may depend on the thread count
    try:
        reference = {name: worker.train(name, checkpoint=tmp_path / f"dcp-{name}-1", distributed=False)
                     for name in worker.CONFIGS}
    finally:
        torch.set_num_threads(threads)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"results-{r}.pt", weights_only=True) for r in (0, 1)]
    initial = list(worker.model().parameters())
    for name, (net, optimizer) in reference.items():
        expected = [p.detach() for p in net.parameters()]
        assert any(not torch.equal(e, i) for e, i in zip(expected, initial)), name  # it trained
        for got in ranks:
            for run in ("params", "resumed", "resharded_from_1"):
                assert all(torch.equal(a, b) for a, b in zip(got[name][run], expected)), (name, run)
            assert got[name]["shards"] == 2
        # the 2-rank checkpoint loaded by one process continues identically
        resumed, _ = worker.train(name, resume=tmp_path / f"dcp-{name}-2", distributed=False)
        assert all(torch.equal(a, b.detach()) for a, b in zip(expected, resumed.parameters())), name
        # the preconditioner state is split over the ranks, not repeated
        per_rank = [got[name]["state_numel"] for got in ranks]
        assert sum(per_rank) == worker.state_numel(optimizer) and max(per_rank) < worker.state_numel(optimizer), name
    message = ranks[0]["refused"]
    assert "placed (Shard(dim=1),)" in message and "only FSDP2's dim-0 sharding" in message


def test_one_interface_says_whose_state_is_sharded_and_saves_it(tmp_path):
    from accelerate import Accelerator

    from basinlab.optim import Shampoo
    from basinlab.optim.checkpoint import load_optimizer_state, save_optimizer_state, shards_state, state_shards

    for make, sharding in ((lambda p: torch.optim.AdamW(p, lr=0.1), False), (lambda p: Shampoo(p, lr=0.1), True)):
        net = torch.nn.Linear(4, 3)
        optimizer = make(net.parameters())
        net(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        wrapped = Accelerator(cpu=True).prepare_optimizer(optimizer)  # AcceleratedOptimizer
        assert shards_state(wrapped) is sharding and state_shards(wrapped) == 1  # one process: all of it here
        folder = tmp_path / type(optimizer).__name__
        save_optimizer_state(wrapped, folder, main_process=True)
        fresh = make(torch.nn.Linear(4, 3).parameters())
        load_optimizer_state(fresh, folder)
        saved, loaded = optimizer.state_dict()["state"], fresh.state_dict()["state"]
        assert saved.keys() == loaded.keys() and all(
            torch.equal(a, b) if torch.is_tensor(a) else a == b
            for key in saved for a, b in zip(saved[key].values(), loaded[key].values())
        )


def load_optimizer_state_of_a_two_rank_owner(model, state_dict):
    """Load ``state_dict`` into a Shampoo of ``model`` as one process, which owns every bucket."""
    from basinlab.optim import Shampoo

    named = list(model.named_parameters())
    groups = [[p for n, p in named if not n.endswith("bias")], [p for n, p in named if n.endswith("bias")]]  # as the Trainer's
    optimizer = Shampoo([{"params": g} for g in groups], lr=0.05, precondition_frequency=2, max_preconditioner_dim=4)
    optimizer.load_state_dict(state_dict)


@pytest.mark.slow
def test_hf_trainer_checkpoints_keep_every_ranks_shampoo_state(tmp_path):
    """Under DDP the Trainer saves the optimizer from rank 0 only; with ShardedOptimizerCheckpoints every
    rank saves its buckets, a 2-rank resume is bitwise, and one process resumes the 2-rank checkpoint."""
    worker_path = ROOT / "tests" / "workers" / "hf_trainer_checkpoints.py"
    worker = _load_worker(worker_path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker_path), str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"results-{r}.pt", weights_only=True) for r in (0, 1)]
    for got in ranks:
        assert all(torch.equal(a, b) for a, b in zip(got["full"], got["resumed"]))
    plain = torch.load(tmp_path / "plain" / f"checkpoint-{worker.SAVE_AT}" / "optimizer.pt", weights_only=True)
    fresh = worker.Regression()
    with pytest.raises(ValueError, match="lacks bucket.*save_sharded_state"):  # what the plain Trainer's resume meets
        load_optimizer_state_of_a_two_rank_owner(fresh, plain)
    shards = sorted(p.name for p in (tmp_path / "full" / f"checkpoint-{worker.SAVE_AT}").glob("shampoo-shard-*"))
    assert shards == ["shampoo-shard-00000-of-00002.pt", "shampoo-shard-00001-of-00002.pt"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one process, the same global batch: re-sharded state, the same steps up to rounding of the mean
        one = worker.train(tmp_path / "one", 1, resume=tmp_path / "full" / f"checkpoint-{worker.SAVE_AT}")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one, ranks[0]["full"]))
