"""What a Shampoo step dispatches and how often it reads the device, counted on the CPU.

On a GPU every dispatched op is a kernel launch and every host read of a tensor value a
synchronisation; both are deterministic, so they are asserted here (timings never are).
Goals on BERT-mini (4 layers, hidden 256, vocab 8192; 74 parameter tensors): a step that
refreshes no root dispatches <= 300 aten ops and reads nothing; a refresh step <= 800 ops
(eigh, the CPU default) and one read, two when a failed root is retried.
"""

import pytest
import torch

from basinlab.models import build_bert_mlm
from basinlab.optim import Shampoo
from basinlab.optim.census import StepCensus


@pytest.fixture(scope="module")
def bert_mini():
    model = build_bert_mlm("mini", 8192, max_length=64, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8192, (2, 16), generator=g)
    return model, ids


def _census(model, ids, steps, **options):
    """(ops, reads) of each of ``steps`` optimizer steps on fresh Shampoo state."""
    optimizer = Shampoo(model.parameters(), lr=1e-4, **options)
    counts = []
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        with StepCensus() as census:
            optimizer.step()
        counts.append((census.ops, census.reads))
    return optimizer, counts


def test_bert_mini_steps_stay_within_the_op_and_read_budget(bert_mini):
    # roots at steps 2 and 5; steps 3, 4 and 6 precondition without refreshing
    _, counts = _census(*bert_mini, 6, precondition_frequency=3, start_preconditioning_step=2)
    root_steps = [counts[1], counts[4]]
    plain_steps = [counts[2], counts[3], counts[5]]
    assert all(ops <= 300 and reads == 0 for ops, reads in plain_steps), counts
    assert all(ops <= 800 and reads == 1 for ops, reads in root_steps), counts


def test_a_retried_root_costs_a_second_read_and_nothing_more(bert_mini):
    optimizer, _ = _census(*bert_mini, 2, precondition_frequency=1, start_preconditioning_step=1)
    optimizer.state["bucket.0.0"]["left"][0].fill_(float("nan"))  # one block's statistics corrupted
    model, ids = bert_mini
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    with StepCensus() as census:
        optimizer.step()
    assert census.reads == 2
    assert optimizer.diagnostics()["root_failures"] == 1  # only the corrupted block; its bucket-mates refreshed


@pytest.mark.parametrize("root_method", ["newton", "eigenbasis"])
def test_other_root_methods_read_only_on_refresh_steps(bert_mini, root_method):
    # blocks of 256: newton's 80 products per 1024-factor take seconds on a CPU (why eigh is its default there)
    _, counts = _census(*bert_mini, 4, precondition_frequency=2, start_preconditioning_step=2, root_method=root_method,
                        max_preconditioner_dim=256)
    assert [reads for _, reads in counts] == [0, 1, 0, 1]


def test_staggered_roots_read_once_on_the_steps_that_refresh(bert_mini):
    _, counts = _census(*bert_mini, 6, precondition_frequency=3, start_preconditioning_step=2, stagger_roots=True)
    assert all(reads <= 1 for _, reads in counts) and counts[0][1] == 0
    assert max(ops for ops, _ in counts[2:]) < counts[1][0]  # no later step pays for all roots again


def test_a_nonfinite_gradient_is_masked_without_a_read(bert_mini):
    model, ids = bert_mini
    optimizer = Shampoo(model.parameters(), lr=1e-4, precondition_frequency=100)
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    weight.grad[0, 0] = float("inf")
    before = weight.detach().clone()
    with StepCensus() as census:
        optimizer.step()
    assert census.reads == 0 and torch.equal(weight, before)
    assert optimizer.diagnostics()["skipped_steps"] == 1
