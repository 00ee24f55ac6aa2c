"""Muon written from the math: Newton–Schulz against the SVD, the AdamW half against torch's AdamW,
and the parameter rule that decides between them."""

import pytest
import torch
from torch import nn

from basinlab.models.mlp import MLP
from basinlab.optim import Muon, adamw_parameter_names, muon_param_groups
from basinlab.optim.orthogonal import newton_schulz


def _with_spectrum(shape, spectrum, seed=0):
    generator = torch.Generator().manual_seed(seed)
    u, _, vh = torch.linalg.svd(torch.randn(shape, generator=generator), full_matrices=False)
    return u @ torch.diag_embed(spectrum) @ vh, u, vh


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 32, 96), (2, 96, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_keeps_the_singular_vectors_and_maps_singular_values_into_a_band(shape, dtype):
    """Singular values >= 3e-3 ||X||_F end in [0.68, 1.21] after 5 steps (measured 0.68-1.20 in float32
    and bfloat16); the singular vectors are kept (U^T NS(X) V diagonal), so NS(X) is U V^T up to the band."""
    k = min(shape[-2:])
    spectrum = torch.logspace(0, -4, k).expand(shape[0], k)
    x, u, vh = _with_spectrum(shape, spectrum)
    y = newton_schulz(x, dtype=dtype).float()
    core = u.mT @ y @ vh.mT
    mapped = core.diagonal(dim1=-2, dim2=-1)
    relative = spectrum / torch.linalg.vector_norm(x, dim=(-2, -1)).unsqueeze(-1)
    inside = relative >= 3e-3
    assert mapped[inside].min() >= 0.67 and mapped[inside].max() <= 1.22
    off_diagonal = (core - torch.diag_embed(mapped)).abs().max()
    assert off_diagonal < (1e-4 if dtype == torch.float32 else 0.08)


def test_zero_and_rank_one_blocks_stay_finite():
    zero = newton_schulz(torch.zeros(1, 8, 5))
    assert torch.equal(zero, torch.zeros(1, 8, 5))
    rank_one = torch.outer(torch.arange(1.0, 9.0), torch.ones(5)).unsqueeze(0) * 1e20
    y = newton_schulz(rank_one)
    assert torch.isfinite(y).all() and 0.67 <= torch.linalg.matrix_norm(y, ord=2).item() <= 1.22  # in the band


def test_the_adamw_half_is_torch_adamw():
    model, twin = MLP(seed=0), MLP(seed=0)
    ours = Muon([{"params": list(model.parameters()), "use_muon": False}], lr=1e-2, weight_decay=0.1, adamw_betas=(0.9, 0.99))
    reference = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 784, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    for _ in range(10):
        for net, optimizer in ((model, ours), (twin, reference)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    assert max((a - b).abs().max().item() for a, b in zip(model.parameters(), twin.parameters())) < 1e-6


def test_a_muon_step_is_the_scaled_orthogonalised_nesterov_momentum():
    weight = nn.Parameter(torch.zeros(6, 10))
    optimizer = Muon([{"params": [weight], "use_muon": True}], lr=0.1, momentum=0.9, weight_decay=0.0, ns_dtype="float32")
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(6, 10, generator=generator) for _ in range(3)]
    buffer = torch.zeros(6, 10)
    expected = torch.zeros(6, 10)
    for g in grads:
        weight.grad = g.clone()
        optimizer.step()
        buffer = 0.9 * buffer + 0.1 * g
        update = 0.1 * g + 0.9 * buffer
        expected -= 0.1 * 0.2 * 10**0.5 * newton_schulz(update.unsqueeze(0))[0]
    assert torch.allclose(weight.detach(), expected, atol=1e-6)
    rms = (newton_schulz(update.unsqueeze(0))[0] * 0.2 * 10**0.5).pow(2).mean().sqrt()
    assert 0.15 < rms < 0.25  # "rms" scale: an update RMS like AdamW's ~0.2


def test_groups_without_the_flag_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="muon_param_groups"):
        Muon(MLP().parameters())


def test_default_rule_gives_adamw_to_vectors_embeddings_and_the_head():
    assert adamw_parameter_names(MLP(hidden_sizes=[20, 30])) == {
        "hidden.0.bias", "hidden.1.bias", "head.weight", "head.bias"}
    assert adamw_parameter_names(MLP(hidden_sizes=[20]), "matrices") == {"hidden.0.bias", "head.bias"}
    assert "hidden.0.weight" in adamw_parameter_names(MLP(hidden_sizes=[20]), ["hidden.0.*"])
    from basinlab.models import build_bert_mlm

    bert = build_bert_mlm("tiny", vocab_size=100, max_length=16)
    names = adamw_parameter_names(bert)
    assert "bert.embeddings.word_embeddings.weight" in names and "bert.embeddings.position_embeddings.weight" in names
    muon = [n for n, p in bert.named_parameters() if n not in names]
    # the hidden matrices: the encoder's and the MLM head's hidden-size transform (its decoder is tied to the embeddings)
    assert muon and all(("encoder.layer" in n or "transform.dense" in n) and n.endswith("weight") for n in muon)
    assert all(p.dim() == 2 for n, p in bert.named_parameters() if n in muon)
    groups = muon_param_groups(bert, weight_decay=0.01)
    assert [(g["use_muon"], g["weight_decay"]) for g in groups] == [(True, 0.01), (False, 0.01), (False, 0.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))  # the tied head counted once


def test_bad_options_are_one_clear_error():
    group = [{"params": [nn.Parameter(torch.zeros(3, 3))], "use_muon": True}]
    for options, match in [({"scale": "max"}, "scale"), ({"ns_dtype": "half"}, "ns_dtype"), ({"momentum": 1.0}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            Muon(group, **options)
    with pytest.raises(ValueError, match="adamw_rule"):
        muon_param_groups(MLP(), adamw_rule="everything")
