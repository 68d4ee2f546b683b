"""The Gaussian-mixture oracle against autograd, Monte Carlo and quadrature."""
import math

import pytest
import torch

import sdediff as sd
from conftest import random_mixture, ring_mixture

F64 = torch.float64


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.3, 1.0])
def test_score_is_gradient_of_log_density(any_sde, t):
    oracle = random_mixture(dim=3, num_modes=4, seed=1)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(32, 3, generator=g, dtype=F64)
    tt = torch.full((32,), t, dtype=F64)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.marginal_log_prob(x_req, tt, any_sde).sum(), x_req)
    score = oracle.score_fn(any_sde)(x, tt)
    assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9)


def test_score_of_image_shaped_input():
    oracle = random_mixture(dim=12, num_modes=3)
    sde = sd.VPSDE()
    x = torch.randn(5, 3, 2, 2, dtype=F64)
    t = torch.full((5,), 0.5, dtype=F64)
    flat = oracle.score_at(x.reshape(5, 12), t, sde)
    assert torch.equal(oracle.score_at(x, t, sde), flat.reshape(5, 3, 2, 2))


@pytest.mark.parametrize("name_t", [("vp", 0.2), ("ve", 0.5), ("subvp", 0.6)])
def test_denoise_matches_monte_carlo_posterior_mean(name_t):
    """E[x0 | x_t = x] by self-normalized importance sampling with x0 ~ p0."""
    from conftest import STANDARD_SDES
    name, t = name_t
    sde = STANDARD_SDES[name]()
    oracle = ring_mixture(num_modes=4, radius=2.0, std=0.5)
    g = torch.Generator().manual_seed(5)
    x0 = oracle.sample(400_000, generator=g, dtype=F64)
    tt = torch.tensor(t, dtype=F64)
    a, s = float(sde.scale(tt)), float(sde.std(tt))
    queries = a * torch.tensor([[1.0, 0.5], [-0.3, -1.2], [0.0, 0.0]], dtype=F64)
    for x in queries:
        logw = -((x - a * x0) ** 2).sum(1) / (2 * s ** 2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        # Standard error of a self-normalized estimate: sqrt(sum w^2 (x0 - mc)^2).
        se = torch.sqrt((w[:, None] ** 2 * (x0 - mc) ** 2).sum(0))
        exact = oracle.denoise(x[None], tt, sde)[0]
        assert torch.all((exact - mc).abs() < 5 * se + 1e-12), (exact, mc, se)


def test_log_prob_integrates_to_one():
    oracle = ring_mixture(num_modes=8, radius=2.0, std=0.3)
    h = 0.01
    axis = torch.arange(-4.0, 4.0 + h / 2, h, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    total = oracle.log_prob(pts).exp().sum() * h * h
    assert abs(float(total) - 1) < 1e-3


def test_marginals_integrate_to_one_and_match_noised(any_sde):
    """p_t is a density, and noised(t) is the same mixture."""
    oracle = ring_mixture(num_modes=4, radius=1.0, std=0.4)
    t = 0.05
    noised = oracle.noised(t, any_sde)
    x = torch.randn(64, 2, dtype=F64)
    assert torch.allclose(noised.log_prob(x), oracle.marginal_log_prob(x, t, any_sde))


def test_log_prob_at_time_zero_under_vp_is_the_mixture():
    oracle = random_mixture(dim=5, num_modes=3)
    x = torch.randn(10, 5, dtype=F64)
    assert torch.allclose(oracle.marginal_log_prob(x, 0.0, sd.VPSDE()), oracle.log_prob(x))


def test_sample_statistics_and_reproducibility():
    oracle = random_mixture(dim=2, num_modes=3, seed=4)
    x1, lab = oracle.sample(100_000, generator=torch.Generator().manual_seed(2), dtype=F64,
                            return_labels=True)
    x2 = oracle.sample(100_000, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.equal(x1, x2)
    freq = torch.bincount(lab, minlength=3).to(F64) / 100_000
    se = torch.sqrt(oracle.weights * (1 - oracle.weights) / 100_000)
    assert torch.all((freq - oracle.weights).abs() < 4 * se)
    mean = (oracle.weights[:, None] * oracle.means).sum(0)
    assert torch.all((x1.mean(0) - mean).abs() < 4 * x1.std(0) / math.sqrt(100_000))


def test_float64_stays_float64_and_float32_works():
    oracle = ring_mixture()
    sde = sd.VPSDE()
    x64 = torch.randn(3, 2, dtype=F64)
    assert oracle.score_fn(sde)(x64, torch.full((3,), 0.5, dtype=F64)).dtype == F64
    x32 = x64.float()
    out = oracle.score_fn(sde)(x32, torch.full((3,), 0.5))
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), oracle.score_fn(sde)(x64, torch.full((3,), 0.5, dtype=F64)), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(means=torch.zeros(3), stds=torch.ones(3)), "means must have shape"),
    (dict(means=torch.zeros(3, 2), stds=torch.ones(2)), "stds must have shape"),
    (dict(means=torch.zeros(3, 2), stds=torch.tensor([1.0, 0.0, 1.0])), "stds must be finite and > 0"),
    (dict(means=torch.zeros(3, 2), stds=-torch.ones(3)), "stds must be finite and > 0"),
    (dict(means=torch.zeros(3, 2), stds=torch.ones(3), weights=torch.tensor([1.0, -1.0, 1.0])), "weights"),
    (dict(means=torch.zeros(3, 2), stds=torch.ones(3), weights=torch.ones(2)), "weights must have shape"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(**kwargs)


def test_bad_calls():
    oracle = ring_mixture()
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        oracle.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="t must be a scalar or of shape"):
        oracle.score_at(torch.zeros(4, 2), torch.zeros(3), sde)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        oracle.score_at(torch.zeros(4, 2), 2.0, sde)
    with pytest.raises(ValueError, match="n must be a positive int"):
        oracle.sample(0)
