"""DDPM as the discrete VP chain: posterior, schedule, conversions, time convention."""
import math

import pytest
import torch

import sdediff as sd

F64 = torch.float64


def _normal_logpdf(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("n", [2, 10, 500, 1000])
def test_posterior_matches_brute_force_bayes(schedule, n):
    """q(x_{n-1} | x_n, x0) ~ q(x_n | x_{n-1}) q(x_{n-1} | x0), normalized on a fine 1-D grid."""
    ddpm = sd.DDPM(num_steps=1000, schedule=schedule)
    x0, x_n = 0.7, -0.4
    beta = float(ddpm.betas[n - 1])
    abar_prev = float(ddpm.alpha_bar(n - 1))
    prior_mean, prior_var = math.sqrt(abar_prev) * x0, 1 - abar_prev
    # The posterior is narrow (its std is <= sqrt(beta)): integrate over +-12 of its stds.
    mean_ref, var_ref = ddpm.q_posterior(torch.tensor([[x0]], dtype=F64),
                                         torch.tensor([[x_n]], dtype=F64), n)
    center, width = float(mean_ref), 12 * math.sqrt(float(var_ref))
    grid = torch.linspace(center - width, center + width, 200_001, dtype=F64)
    log_dens = _normal_logpdf(torch.tensor(x_n, dtype=F64), math.sqrt(1 - beta) * grid, beta) \
        + _normal_logpdf(grid, prior_mean, prior_var)
    w = torch.softmax(log_dens, 0)
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()
    # A 200k-point Riemann sum of a smooth Gaussian is exact to ~1e-12 relative.
    assert abs(float(mean) - float(mean_ref)) < 1e-9 * (1 + abs(float(mean)))
    assert abs(float(var) / float(var_ref) - 1) < 1e-7


def test_posterior_at_first_step_is_the_data():
    ddpm = sd.DDPM(num_steps=50)
    x0 = torch.randn(3, 2, dtype=F64)
    x1 = ddpm.q_sample(x0, 1, generator=torch.Generator().manual_seed(0))
    mean, var = ddpm.q_posterior(x0, x1, 1)
    assert torch.allclose(mean, x0) and torch.all(var == 0)


def test_alpha_bars_match_vp_sde():
    """alpha_bar_n = prod (1 - beta_i) against VPSDE.scale(n/N)^2 = exp(-B(n/N)).

    Tolerance, derived: log abar_n = sum log(1 - beta_i) and
    -log(1 - b) - b lies in [b^2/2, b^2/(2(1 - b))], so
    |log abar_n + B(n/N)| <= |sum_i beta_i - B(n/N)| + sum_i beta_i^2 / (2 (1 - beta_i)),
    where sum_i beta_i - B(n/N) is the Riemann-sum error of the linear schedule,
    exact in closed form. Hence |abar_n - a(n/N)^2| <= a(n/N)^2 (exp(bound_n) - 1).
    For N = 1000 (1e-4 .. 0.02) the bound reaches 0.07 in log at n = N, where
    abar is 4e-5; the largest absolute gap is 8e-4 (asserted < 1e-3).
    """
    for num_steps in (100, 1000):
        ddpm = sd.DDPM(num_steps=num_steps)
        vp = sd.VPSDE(beta_min=num_steps * ddpm.beta_start, beta_max=num_steps * ddpm.beta_end)
        n = torch.arange(1, num_steps + 1)
        t = n.to(F64) / num_steps
        log_gap = (ddpm.alpha_bars.log() + vp.integrated_beta(t)).abs()
        betas = ddpm.betas
        riemann = (torch.cumsum(betas, 0) - vp.integrated_beta(t)).abs()
        taylor = torch.cumsum(betas ** 2 / (2 * (1 - betas)), 0)
        assert torch.all(log_gap <= riemann + taylor + 1e-12)
        abs_gap = (ddpm.alpha_bars - vp.scale(t) ** 2).abs()
        assert torch.all(abs_gap <= vp.scale(t) ** 2 * torch.expm1(riemann + taylor) + 1e-15)
        if num_steps == 1000:
            assert abs_gap.max() < 1e-3, float(abs_gap.max())
        # and to_sde() is that VP SDE
        assert torch.allclose(ddpm.to_sde().scale(t), vp.scale(t))


def test_alpha_bar_gap_shrinks_with_N():
    """The continuum limit: the mismatch is O(1/N) when beta_n = b(n/N)/N."""
    gaps = []
    for num_steps in (100, 1000, 10_000):
        ddpm = sd.DDPM(num_steps=num_steps, beta_start=0.1 / num_steps, beta_end=20.0 / num_steps)
        t = torch.arange(1, num_steps + 1, dtype=F64) / num_steps
        gaps.append(float((ddpm.alpha_bars - ddpm.to_sde().scale(t) ** 2).abs().max()))
    assert gaps[1] < gaps[0] / 5 and gaps[2] < gaps[1] / 5


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_conversions_round_trip(schedule):
    ddpm = sd.DDPM(num_steps=1000, schedule=schedule)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(16, 4, generator=g, dtype=F64)
    n = torch.randint(2, 1001, (16,), generator=g)
    noise = torch.randn(16, 4, generator=g, dtype=F64)
    x_n = ddpm.q_sample(x0, n, noise=noise)
    assert torch.allclose(ddpm.eps_from_x0(x_n, n, x0), noise, atol=1e-8)
    assert torch.allclose(ddpm.x0_from_eps(x_n, n, noise), x0, atol=1e-6)
    mean = ddpm.mean_from_eps(x_n, n, noise)
    assert torch.allclose(mean, ddpm.q_posterior(x0, x_n, n)[0], atol=1e-8)
    assert torch.allclose(ddpm.eps_from_mean(x_n, n, mean), noise, atol=1e-6)
    assert torch.allclose(ddpm.x0_from_mean(x_n, n, mean), x0, atol=1e-6)
    for src, val in (("eps", noise), ("x0", x0), ("mean", mean)):
        for dst, ref in (("eps", noise), ("x0", x0), ("mean", mean)):
            assert torch.allclose(ddpm.convert(x_n, n, val, src, dst), ref, atol=1e-6), (src, dst)


def test_time_convention_round_trip():
    ddpm = sd.DDPM(num_steps=1000)
    n = torch.arange(0, 1001)
    assert torch.equal(ddpm.index(ddpm.time(n.clamp_min(1))), n.clamp_min(1))
    assert float(ddpm.time(1000)) == 1.0 and float(ddpm.time(1)) == 1e-3
    t = torch.rand(100, dtype=F64)
    assert torch.all((ddpm.time(ddpm.index(t).clamp_min(1)) - t).abs() <= 0.5 / 1000 + 1e-3 * (t < 5e-4))


def test_ancestral_step_samples_the_posterior():
    """With the true eps, x_{n-1} ~ N(mu~, beta~): check moments over many draws."""
    ddpm = sd.DDPM(num_steps=100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1), 0.5, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    x_n = ddpm.q_sample(x0, 30, noise=noise)
    x_prev = ddpm.ancestral_step(x_n, 30, noise, generator=g)
    mean, var = ddpm.q_posterior(x0, x_n, 30)
    resid = (x_prev - mean) / var.sqrt()[:, None]
    assert abs(float(resid.mean())) < 4 / math.sqrt(200_000)
    assert abs(float(resid.var()) - 1) < 4 * math.sqrt(2 / 200_000)
    # no noise at n = 1
    x_last = ddpm.ancestral_step(x_n[:5], 1, noise[:5], generator=g)
    assert torch.allclose(x_last, ddpm.mean_from_eps(x_n[:5], 1, noise[:5]))


def test_same_generator_same_numbers():
    ddpm = sd.DDPM(num_steps=10)
    x0 = torch.zeros(4, 3)
    a = ddpm.q_sample(x0, 5, generator=torch.Generator().manual_seed(9))
    b = ddpm.q_sample(x0, 5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_steps=0), "num_steps"),
    (dict(beta_start=-1e-4), "beta_start"),
    (dict(beta_start=0.02, beta_end=1e-4), "beta_start <= beta_end"),
    (dict(schedule="quadratic"), "schedule"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.DDPM(**kwargs)


def test_bad_calls():
    ddpm = sd.DDPM(num_steps=10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="n must lie in 1..10"):
        ddpm.q_sample(x, 11)
    with pytest.raises(ValueError, match="n must lie in 1..10"):
        ddpm.q_sample(x, 0)
    with pytest.raises(ValueError, match="shape"):
        ddpm.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise must have shape"):
        ddpm.q_sample(x, 1, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="variance"):
        ddpm.ancestral_step(x, 2, x, variance="fixed")
    with pytest.raises(ValueError, match="target"):
        ddpm.convert(x, 2, x, "eps", "score")
    with pytest.raises(ValueError, match="t must lie"):
        ddpm.index(1.5)
    with pytest.raises(ValueError, match="schedule='linear'"):
        sd.DDPM(schedule="cosine").to_sde()
