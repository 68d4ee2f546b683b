"""Metrics against closed forms: sliced W2 of shifted Gaussians, Frechet distance, MMD, mode statistics."""

from __future__ import annotations

import math

import pytest
import torch

from sdediff.datasets import ring, ring_params
from sdediff.metrics import (
    frechet_distance,
    frechet_to_gaussian,
    gaussian_frechet,
    mmd,
    mode_statistics,
    sliced_wasserstein,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- sliced W2


@pytest.mark.parametrize("d", [2, 5])
def test_sliced_w2_of_shifted_gaussians_matches_closed_form(d: int) -> None:
    # N(0, I) vs N(mu, I): every projection is N(0, 1) vs N(theta.mu, 1), so W2^2 = (theta.mu)^2
    # and SW2^2 = E_theta[(theta.mu)^2] = ||mu||^2 / d.
    g = _gen(0)
    mu = torch.zeros(d, dtype=F64)
    mu[0] = 1.5
    x = torch.randn(1000, d, generator=g, dtype=F64)
    y = torch.randn(800, d, generator=g, dtype=F64)  # n != m on purpose
    # Centre both sets exactly: the sampling error of the mean difference (~6% of ||mu||^2 here)
    # would otherwise dominate the comparison.
    x, y = x - x.mean(0), y - y.mean(0) + mu
    sw2 = sliced_wasserstein(x, y, num_projections=2000, generator=1).item() ** 2
    expected = mu.pow(2).sum().item() / d
    # Remaining error: Monte-Carlo over theta plus covariance fluctuations, ~2% (std) here.
    assert sw2 == pytest.approx(expected, rel=0.08)
    same = sliced_wasserstein(x, torch.randn(800, d, generator=g, dtype=F64), 500, generator=1).item() ** 2
    assert same < 0.01


def test_sliced_wasserstein_unequal_sizes_is_exact() -> None:
    # Empirical measures are unchanged by repeating every sample: 30 vs 20 points equals 60 vs 60.
    g = _gen(3)
    a, b = torch.randn(30, 3, generator=g, dtype=F64), torch.randn(20, 3, generator=g, dtype=F64)
    for p in (1, 2):
        lhs = sliced_wasserstein(a, b, 64, generator=5, p=p)
        rhs = sliced_wasserstein(a.repeat(2, 1), b.repeat(3, 1), 64, generator=5, p=p)
        assert torch.allclose(lhs, rhs, rtol=1e-10)


def test_sliced_wasserstein_reproducible_and_validated() -> None:
    g = _gen(0)
    x, y = torch.randn(100, 2, generator=g), torch.randn(80, 2, generator=g)
    assert torch.equal(sliced_wasserstein(x, y, generator=7), sliced_wasserstein(x, y, generator=_gen(7)))
    assert sliced_wasserstein(x, y, generator=7).dtype == F64
    assert sliced_wasserstein(x, x, generator=7).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        sliced_wasserstein(torch.randn(10), y)
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(x, y, num_projections=0)


# ---------------------------------------------------------------------------------- Frechet


def test_frechet_distance_closed_form_and_identities() -> None:
    # Commuting (diagonal) covariances: tr term is sum (sqrt(a) - sqrt(b))^2.
    m1, m2 = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([3.0, -1.0], dtype=F64)
    c1, c2 = torch.diag(torch.tensor([4.0, 1.0], dtype=F64)), torch.diag(torch.tensor([1.0, 9.0], dtype=F64))
    expected = 9 + 4 + (2 - 1) ** 2 + (1 - 3) ** 2
    assert frechet_distance(m1, c1, m2, c2).item() == pytest.approx(expected, rel=1e-12)
    # Symmetric, zero on identical inputs, fine with singular covariances.
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=F64)
    c3 = rot @ torch.diag(torch.tensor([2.0, 0.0], dtype=F64)) @ rot.T
    assert frechet_distance(m1, c1, m2, c3).item() == pytest.approx(frechet_distance(m2, c3, m1, c1).item())
    assert frechet_distance(m1, c3, m1, c3).item() == pytest.approx(0.0, abs=1e-12)


def test_gaussian_frechet_large_n_matches_closed_form() -> None:
    g = _gen(0)
    d, n = 3, 200_000
    m1, m2 = torch.zeros(d, dtype=F64), torch.tensor([1.0, -0.5, 0.0], dtype=F64)
    a1 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.7]], dtype=F64)
    a2 = torch.diag(torch.tensor([0.5, 2.0, 1.0], dtype=F64))
    x = m1 + torch.randn(n, d, generator=g, dtype=F64) @ a1.T
    y = m2 + torch.randn(n, d, generator=g, dtype=F64) @ a2.T
    exact = frechet_distance(m1, a1 @ a1.T, m2, a2 @ a2.T).item()
    assert gaussian_frechet(x, y).item() == pytest.approx(exact, abs=0.03)
    assert frechet_to_gaussian(x, m1, a1 @ a1.T).item() < 1e-3
    assert frechet_to_gaussian(y, m2, torch.tensor([0.25, 4.0, 1.0])).item() < 1e-3  # diagonal form
    assert frechet_to_gaussian(torch.randn(n, d, generator=g, dtype=F64), torch.zeros(d), 1.0).item() < 1e-3


def test_frechet_accepts_float32_and_returns_float64() -> None:
    x = torch.randn(500, 2, generator=_gen(1))
    assert gaussian_frechet(x, x + 1).dtype == F64
    assert gaussian_frechet(x, x + 1).item() == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------------------------- MMD


def test_mmd_separates_and_is_unbiased() -> None:
    g = _gen(0)
    x = torch.randn(400, 2, generator=g, dtype=F64)
    y = torch.randn(400, 2, generator=g, dtype=F64)
    z = torch.randn(400, 2, generator=g, dtype=F64) + torch.tensor([1.0, 0.0], dtype=F64)
    same, diff = mmd(x, y).item(), mmd(x, z).item()
    assert abs(same) < 0.01 < diff
    assert mmd(x, z, bandwidths=1.0).item() > 0.05
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, z, bandwidths=[0.0])


# ---------------------------------------------------------------------------------- mode statistics


def test_mode_statistics_on_exact_samples() -> None:
    means, stds, weights = ring_params()
    x = ring(16000, generator=0, dtype=F64)
    stats = mode_statistics(x, means, stds, weights)
    assert stats["num_empty"] == 0
    assert sum(stats["counts"]) == 16000
    assert stats["weights_tv"] < 0.02
    assert stats["spread_ratio"] == pytest.approx(1.0, abs=0.03)
    assert stats["mean_error"] < 4 / math.sqrt(2000)  # ~1/sqrt(n_k) for exact samples
    assert stats["frechet"] < 1e-3


def test_mode_statistics_detects_a_missing_and_a_collapsed_mode() -> None:
    means, stds, weights = ring_params()
    x = ring(16000, generator=0, dtype=F64)
    k = torch.cdist(x, means).argmin(dim=1)

    # Missing mode: move mode 0's samples into mode 1.
    missing = x.clone()
    missing[k == 0] = means[1] + (x[k == 0] - means[0])
    stats = mode_statistics(missing, means, stds, weights)
    assert stats["num_empty"] == 1 and stats["counts"][0] == 0
    assert stats["weights_tv"] == pytest.approx(1 / 8, abs=0.02)
    assert all(math.isfinite(stats[key]) for key in ("mean_error", "spread_ratio", "frechet"))

    # Collapsed mode: every sample of mode 2 sits at its mean.
    collapsed = x.clone()
    collapsed[k == 2] = means[2]
    stats = mode_statistics(collapsed, means, stds, weights)
    assert stats["num_empty"] == 0 and stats["weights_tv"] < 0.02
    assert stats["spread_ratio"] == pytest.approx(7 / 8, abs=0.03)
    # Its Frechet distance is d * std^2 = 0.02; weighted by 1/8.
    assert stats["frechet"] == pytest.approx(0.02 / 8, rel=0.2)


def test_mode_statistics_single_sample_and_validation() -> None:
    means, stds, weights = ring_params()
    stats = mode_statistics(means[:1].clone(), means, stds, weights)
    assert stats["num_empty"] == 7 and stats["weights_tv"] == pytest.approx(7 / 8)
    assert stats["spread_ratio"] == 0.0 and stats["mean_error"] == 0.0
    with pytest.raises(ValueError, match="means must have shape"):
        mode_statistics(torch.randn(5, 3), means, stds, weights)
    with pytest.raises(ValueError, match="stds"):
        mode_statistics(torch.randn(5, 2), means, -stds, weights)
