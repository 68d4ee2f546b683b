"""DiscreteVPSDE: exact on a discrete schedule, a LinearSDE like any other."""
from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
from sdediff.sde import DiscreteVPSDE
from sdediff.sde.discrete import make_betas

F64 = torch.float64
SCHEDULES = {
    "linear": dict(beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_start=0.00085, beta_end=0.012),
    "cosine": dict(),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scale_squared_is_alphas_cumprod_at_every_knot(name):
    sde = DiscreteVPSDE.from_schedule(name, N=1000, **SCHEDULES[name])
    alpha_bar = torch.cumprod(1 - make_betas(name, 1000, **SCHEDULES[name]), 0)
    knots = torch.arange(1001, dtype=F64) / 1000  # t_n = n / N, as a user writes it
    a2 = sde.scale(knots) ** 2
    assert float(a2[0]) == 1.0 and float(sde.std(knots[:1])) == 0.0
    assert (a2[1:] - alpha_bar).abs().max() < 1e-12
    assert ((a2[1:] - alpha_bar) / alpha_bar).abs().max() < 1e-12  # relative, for the cosine tail too
    # variance preserving everywhere, knots and in between
    t = torch.cat([knots, torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=F64)])
    assert (sde.std(t) ** 2 + sde.scale(t) ** 2 - 1).abs().max() < 1e-14


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float_lookup_is_the_tensor_lookup(name):
    """``scale_and_std_at(t)`` (plain floats, the per-step look-up) equals the tensors' to a few ulp,
    at knots, one ulp either side of them, in between and at the ends."""
    sde = DiscreteVPSDE.from_schedule(name, N=1000, **SCHEDULES[name])
    knots = torch.arange(1001, dtype=F64) / 1000
    t = torch.cat([knots, torch.nextafter(knots, knots + 1).clamp(max=1), torch.nextafter(knots, knots - 1).clamp(min=0),
                   torch.rand(300, generator=torch.Generator().manual_seed(3), dtype=F64)])
    a, s = sde.scale_and_std(t)
    assert torch.equal(a, sde.scale(t)) and torch.equal(s, sde.std(t))
    got = torch.tensor([sde.scale_and_std_at(ti) for ti in t.tolist()], dtype=F64)
    assert ((got[:, 0] - a) / a).abs().max() < 4e-16
    inner = s > 0
    assert ((got[inner, 1] - s[inner]) / s[inner]).abs().max() < 1e-15
    assert sde.scale_and_std_at(0.0) == (1.0, 0.0)
    assert sde.scale_and_std_at(1.0 + 1e-9) == sde.scale_and_std_at(1.0)  # round-off beyond T: clamped
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
            sde.scale_and_std_at(bad)


def test_float_lookup_of_any_linear_sde():
    for sde in (sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.LinearSDE(f=lambda t: -t, g=lambda t: 1 + t)):
        t = torch.tensor([0.3], dtype=F64)
        a, s = sde.scale_and_std_at(0.3)
        assert a == pytest.approx(float(sde.scale(t)), rel=1e-15) and s == pytest.approx(float(sde.std(t)), rel=1e-15)


def test_given_betas_or_alphas_cumprod_agree():
    betas = make_betas("linear", 100, 1e-3, 0.1)
    a = DiscreteVPSDE(betas=betas)
    b = DiscreteVPSDE(alphas_cumprod=torch.cumprod(1 - betas, 0))
    t = torch.linspace(0, 1, 777, dtype=F64)
    assert torch.allclose(a.scale(t), b.scale(t), rtol=1e-14, atol=0)
    assert torch.allclose(a.betas, betas, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_f_g_are_the_derivatives_of_log_scale_inside_pieces(name):
    N = 1000
    sde = DiscreteVPSDE.from_schedule(name, N=N, **SCHEDULES[name])
    n = torch.arange(1, N + 1, dtype=F64)
    # points strictly inside each piece (t_{n-1}, t_n), central differences inside it
    t = (n - 0.5) / N
    h = 0.1 / N
    fd = (sde.log_scale(t + h) - sde.log_scale(t - h)) / (2 * h)  # exact for a linear function
    f = sde.f(t)
    assert torch.allclose(f, fd, rtol=1e-6, atol=0)
    assert torch.allclose(sde.g(t) ** 2, -2 * f, rtol=1e-14, atol=0)
    # f on the n-th piece is N log(1 - beta_n) / 2
    assert torch.allclose(f, N * torch.log1p(-sde.betas) / 2, rtol=1e-9, atol=0)
    # the variance equation d s^2/dt = 2 f s^2 + g^2 = -2 f (1 - s^2) with g^2 = -2 f:
    # d log(1 - s^2)/dt = 2 f, linear on each piece, so the central difference is exact
    fd2 = (torch.log1p(-sde.std(t + h) ** 2) - torch.log1p(-sde.std(t - h) ** 2)) / (2 * h)
    ok = sde.std(t) < 0.99  # where 1 - s^2 keeps its digits
    assert torch.allclose(fd2[ok], 2 * f[ok], rtol=1e-6, atol=0)


def test_a_knot_belongs_to_the_piece_on_its_left():
    sde = DiscreteVPSDE.from_schedule("linear", N=10, beta_start=0.01, beta_end=0.3)
    knots = sde.knots
    left = sde.f(knots[1:])  # t_n: piece n
    right = sde.f(torch.nextafter(knots[1:-1], torch.ones(9, dtype=F64)))  # just above: piece n + 1
    assert torch.equal(left, sde._f)
    assert torch.equal(right, sde._f[1:])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_t_from_log_snr_inverts_exactly(name):
    sde = DiscreteVPSDE.from_schedule(name, N=1000, **SCHEDULES[name])
    t = torch.cat([sde.knots[1:], torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=F64)])
    assert (sde.t_from_log_snr(sde.log_snr(t)) - t).abs().max() < 1e-12
    lam = sde.log_snr(t)
    assert (lam[1:1000] < lam[:999]).all()  # strictly decreasing along the knots
    assert float(sde.t_from_log_snr(torch.tensor(math.inf, dtype=F64))) == 0.0
    assert float(sde.t_from_log_snr(torch.tensor(-50.0, dtype=F64))) == 1.0


def test_continuum_limit_is_vp():
    # beta_n = b(n/N) / N: the discrete schedule approaches VPSDE(0.1, 20) as N grows
    for N, tol in [(1000, 2e-3), (10000, 2e-4)]:
        sde = DiscreteVPSDE.from_schedule("linear", N=N, beta_start=0.1 / N, beta_end=20.0 / N)
        t = torch.linspace(0.01, 1, 100, dtype=F64)
        assert (sde.std(t) - sd.VPSDE().std(t)).abs().max() < tol


def test_samplers_run_on_it():
    sde = sd.DiscreteVPSDE.from_schedule("cosine", N=1000)
    oracle = sd.GaussianMixture(*sd.ring_params())
    g = torch.Generator().manual_seed(0)
    for sampler in ("ddim", "dpm_solver", "heun", "euler", "ancestral"):
        x = sd.sample(oracle.score_fn(sde), sde, (500, 2), sampler=sampler, steps=40, generator=g, dtype=F64)
        ref = oracle.sample(500, generator=g, dtype=F64)
        assert float(sd.sliced_wasserstein(x, ref, generator=0)) < 0.3, sampler


def _ring_likelihood_error(sde, **kw) -> float:
    oracle = sd.GaussianMixture(*sd.ring_params())
    x = oracle.sample(100, generator=torch.Generator().manual_seed(2), dtype=F64)
    exact = oracle.marginal_log_prob(x, 1e-5, sde)
    res = sd.log_likelihood(oracle.score_fn(sde), sde, x, eps=1e-5, rtol=1e-5, atol=1e-5, **kw)
    p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
    return float((res.delta_logp + p_T - exact).abs().mean())


def test_likelihood_error_as_small_as_vp():
    # f and g jump at every knot; an adaptive solver in t is first order across the jumps unless it
    # stops there (torchdiffeq's jump_t). By default the likelihood solves a DiscreteVPSDE on the
    # log-SNR clock, smooth across them. Measured at rtol = atol = 1e-5, 100 ring points: VPSDE
    # 3.2e-5 nats; this 50-step schedule 5.5e-5 with jump_t; diffusers' 1000-step schedule 6.0e-5
    # by default (6.5e-3 on the time clock, tests/test_likelihood_clock.py).
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=50, beta_start=2e-3, beta_end=0.35)
    vp = _ring_likelihood_error(sd.VPSDE())
    disc = _ring_likelihood_error(sde, options={"jump_t": sde.breakpoints})
    default = _ring_likelihood_error(sd.DiscreteVPSDE.from_schedule("linear", N=1000))
    assert vp < 1e-4 and disc < 1e-4 and default < 1e-4, (vp, disc, default)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one"),
    (dict(betas=torch.ones(3) * 0.1, alphas_cumprod=torch.ones(3) * 0.5), "exactly one"),
    (dict(betas=torch.tensor([0.1, 1.0])), "betas must lie in"),
    (dict(betas=torch.zeros(2, 2) + 0.1), "1-D"),
    (dict(alphas_cumprod=torch.tensor([0.9, 0.95])), "strictly decreasing"),
    (dict(alphas_cumprod=torch.tensor([0.9, 0.0])), "zero terminal SNR"),
    (dict(betas=torch.tensor([0.1, float("nan")])), "NaN"),
])
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        DiscreteVPSDE(**kwargs)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="schedule must be one of"):
        DiscreteVPSDE.from_schedule("quadratic")
