"""Representation metrics against hand-computed values and their invariances."""

import math

import pytest
import torch

from basinlab.eval import (
    class_mean_cosine,
    covariance_spectrum,
    effective_rank,
    effective_rank_from_spectrum,
    linear_cka,
    mean_off_diagonal,
)


def _orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q


def test_covariance_spectrum_hand_2x2():
    # Points (3,1), (1,3), (-3,-1), (-1,-3) shifted by (5,-2): centred sums
    # xx = yy = 20, xy = 12; covariance /(N-1=3) = [[20/3, 4], [4, 20/3]],
    # eigenvalues 20/3 +- 4 = 32/3, 8/3.
    h = torch.tensor([[3.0, 1.0], [1.0, 3.0], [-3.0, -1.0], [-1.0, -3.0]]) + torch.tensor([5.0, -2.0])
    s = covariance_spectrum(h)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.tensor([32 / 3, 8 / 3], dtype=torch.float64))


def test_covariance_spectrum_is_descending_and_non_negative():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 1, generator=g) * torch.randn(1, 20, generator=g)  # rank 1
    s = covariance_spectrum(h)
    assert s.shape == (20,)
    assert bool((s >= 0).all()) and bool((s[:-1] >= s[1:]).all())


def test_effective_rank_of_known_spectrum():
    # p = [.5, .25, .25]: entropy = .5 ln 2 + .5 ln 4 = 1.5 ln 2, erank = 2 ** 1.5.
    assert effective_rank_from_spectrum(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(2**1.5)
    # 0 log 0 = 0: zero eigenvalues do not count.
    assert effective_rank_from_spectrum(torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert math.isnan(effective_rank_from_spectrum(torch.zeros(3)))
    with pytest.raises(ValueError, match="non-negative"):
        effective_rank_from_spectrum(torch.tensor([1.0, -1.0]))


def test_effective_rank_exactly_isotropic_in_k_dims():
    # The 2k points +-e_i (i < k) have covariance proportional to I_k, rotated into D = 10.
    k, D = 4, 10
    eye = torch.eye(D, dtype=torch.float64)[:k]
    h = torch.cat([eye, -eye]) @ _orthogonal(D, seed=1)
    assert effective_rank(h) == pytest.approx(k, abs=1e-9)


def test_effective_rank_gaussian_isotropic_in_k_dims():
    # Sample covariance of 4000 points: eigenvalues within a few % of each other,
    # which moves erank by well under 0.05.
    g = torch.Generator().manual_seed(2)
    k, D = 5, 12
    h = torch.randn(4000, k, generator=g, dtype=torch.float64) @ _orthogonal(D, seed=3)[:k]
    assert effective_rank(h.float()) == pytest.approx(k, abs=0.05)


def test_effective_rank_of_rank_one_data_is_one():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(100, 1, generator=g) * torch.randn(1, 16, generator=g) + 3.0
    assert effective_rank(h) == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_accepts_half_precision():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float16)
    assert effective_rank(h) == pytest.approx(2.0)


def test_class_mean_cosine_orthogonal_means_give_identity():
    # Class c has samples 1*e_c and 3*e_c: mean 2*e_c.
    e = torch.eye(3)
    h = torch.cat([e, 3 * e])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    cos = class_mean_cosine(h, labels, 3)
    torch.testing.assert_close(cos, torch.eye(3, dtype=torch.float64))
    assert mean_off_diagonal(cos) == 0.0


def test_class_mean_cosine_identical_means_give_ones():
    v = torch.tensor([1.0, -2.0, 0.5])
    h = torch.stack([v, 2 * v, 3 * v, v, 3 * v])  # class 0 mean 2v, class 1 mean 2v
    cos = class_mean_cosine(h, torch.tensor([0, 0, 0, 1, 1]), 2)
    torch.testing.assert_close(cos, torch.ones(2, 2, dtype=torch.float64))


def test_class_mean_cosine_absent_and_zero_mean_classes():
    # Class 0 mean e0; class 1 has +e1 and -e1 (zero mean); class 2 absent;
    # class 3 mean (e0 + e1)/sqrt(2) direction -> cosine 1/sqrt(2) with class 0.
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    cos = class_mean_cosine(h, torch.tensor([0, 1, 1, 3]), 4)
    nan = math.nan
    r = 1 / math.sqrt(2)
    expected = torch.tensor(
        [[1.0, 0.0, nan, r], [0.0, 0.0, nan, 0.0], [nan, nan, nan, nan], [r, 0.0, nan, 1.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cos, expected, equal_nan=True)
    # Off-diagonal, non-NaN: r twice and four zeros -> 2r / 6.
    assert mean_off_diagonal(cos) == pytest.approx(2 * r / 6)


def test_class_mean_cosine_rejects_bad_labels():
    h = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_mean_cosine(h, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="one entry per row"):
        class_mean_cosine(h, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="integers"):
        class_mean_cosine(h, torch.tensor([0.0, 1.0, 1.0]), 2)


def test_mean_off_diagonal_hand_cases():
    nan = math.nan
    M = torch.tensor([[9.0, 0.2, nan], [0.4, 9.0, nan], [nan, nan, nan]])
    assert mean_off_diagonal(M) == pytest.approx(0.3)
    assert math.isnan(mean_off_diagonal(torch.ones(1, 1)))
    with pytest.raises(ValueError, match="square"):
        mean_off_diagonal(torch.ones(2, 3))


def test_linear_cka_hand_one_dimensional():
    # x = [1,2,3], y = [1,3,2]; centred [-1,0,1], [-1,1,0]: (x.y)^2 / (|x|^2 |y|^2) = 1 / 4.
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25)


def test_linear_cka_self_and_invariances():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :6] @ torch.randn(6, 5, generator=g, dtype=torch.float64)) + 0.3
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 2.5 * x @ _orthogonal(8, seed=6)) == pytest.approx(1.0)
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert linear_cka(x @ _orthogonal(8, seed=7) * 0.01, y) == pytest.approx(base)
    assert linear_cka(x, y * 40.0 + 7.0) == pytest.approx(base)
    assert linear_cka(y, x) == pytest.approx(base)


def test_linear_cka_independent_features_near_zero():
    # For independent unit-variance features E[CKA] ~ sqrt(D1 * D2) / N = 1e-3 here.
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5000, 5, generator=g)
    y = torch.randn(5000, 5, generator=g)
    assert linear_cka(x, y) < 0.01


def test_linear_cka_shape_errors_and_constant_input():
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(torch.randn(4, 2), torch.randn(5, 2))
    assert math.isnan(linear_cka(torch.ones(4, 2), torch.randn(4, 2)))


def test_a_diverged_representation_gives_nan_metrics_not_errors():
    h = torch.full((40, 6), float("nan"))
    labels = torch.arange(40) % 4
    spectrum = covariance_spectrum(h)
    assert spectrum.shape == (6,) and spectrum.isnan().all()
    assert math.isnan(effective_rank_from_spectrum(spectrum))
    assert math.isnan(mean_off_diagonal(class_mean_cosine(h, labels, 4)))
