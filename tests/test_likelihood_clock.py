"""The log-SNR clock: the same likelihood, solved smoothly across a discrete schedule's knots."""
from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.likelihood.clock import LogSNRClockSDE, log_snr_clock

F64 = torch.float64


def _ring(sde, n=100):
    oracle = sd.GaussianMixture(*sd.ring_params())
    x = oracle.sample(n, generator=torch.Generator().manual_seed(2), dtype=F64)
    p_T = lambda z: oracle.marginal_log_prob(z, sde.T, sde)  # noqa: E731 - the exact closing density
    return oracle, x, oracle.marginal_log_prob(x, 1e-5, sde), p_T


def _error(score_fn, sde, x, exact, eps=1e-5, **kw) -> tuple[float, int]:
    res = sd.log_likelihood(score_fn, sde, x, eps=eps, rtol=1e-5, atol=1e-5, **kw)
    return float((res.logp - exact).abs().mean()), res.nfe


def test_the_default_clock_removes_the_knot_error_of_a_discrete_schedule():
    # f and g jump at each of the 1000 knots; in t the adaptive solver is first order across each
    # jump. On the log-SNR clock (the default for a DiscreteVPSDE) the same flow is smooth.
    # Measured, 100 ring points, exact score: t clock 6.5e-3 nats in 434 NFE, log-SNR clock
    # 6.6e-5 in 122 NFE (VPSDE: 3.2e-5 in 104).
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
    oracle, x, exact, p_T = _ring(sde)
    default, nfe_default = _error(oracle.score_fn(sde), sde, x, exact, prior_logp=p_T)
    in_t, nfe_t = _error(oracle.score_fn(sde), sde, x, exact, prior_logp=p_T, clock="t")
    assert default < 2e-4 and in_t > 3e-3, (default, in_t)
    assert nfe_default < nfe_t
    # the default is log_snr_clock's flow, and the same for every path
    score_u, clock, eps_u = log_snr_clock(oracle.score_fn(sde), sde, 1e-5)
    by_hand, _ = _error(score_u, clock, x, exact, eps_u, prior_logp=p_T)
    assert by_hand == default
    steps, _ = _error(oracle.score_fn(sde), sde, x, exact, prior_logp=p_T, quadrature="steps")
    assert steps < 5e-3, steps


def test_the_clock_changes_the_solver_error_only():
    vp = sd.VPSDE()
    oracle, x, exact, p_T = _ring(vp, 50)
    t_clock, _ = _error(oracle.score_fn(vp), vp, x, exact, prior_logp=p_T)  # auto: t for a VPSDE
    snr_clock, _ = _error(oracle.score_fn(vp), vp, x, exact, prior_logp=p_T, clock="log_snr")
    assert t_clock < 1e-4 and snr_clock < 1e-4, (t_clock, snr_clock)
    with pytest.raises(ValueError, match="variance-preserving"):
        sd.log_likelihood(lambda x, t: -x, sd.VESDE(), x, clock="log_snr")
    with pytest.raises(ValueError, match="clock must be one of"):
        sd.log_likelihood(lambda x, t: -x, vp, x, clock="lambda")


def test_jump_t_keeps_the_time_clock():
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=20, beta_start=5e-3, beta_end=0.6)
    oracle, x, exact, p_T = _ring(sde, 30)
    stops = {"jump_t": sde.breakpoints}  # times on the SDE's own clock: the solver stops at the jumps
    jumps, _ = _error(oracle.score_fn(sde), sde, x, exact, prior_logp=p_T, options=stops)
    assert jumps == _error(oracle.score_fn(sde), sde, x, exact, prior_logp=p_T, options=stops, clock="t")[0]
    assert jumps < 3e-4, jumps  # measured 1.4e-4


def test_log_snr_clock_sde_matches_the_discrete_marginals_at_its_ends():
    sde = sd.DiscreteVPSDE.from_schedule("linear", N=1000)
    _, clock, eps = log_snr_clock(lambda x, t: x, sde, 1e-3)
    ends = torch.tensor([1e-3, 1.0], dtype=F64)
    assert torch.allclose(clock.scale(ends), sde.scale(ends), rtol=1e-12)
    assert torch.allclose(clock.std(ends), sde.std(ends), rtol=1e-10)
    u = torch.linspace(0.01, 1.0, 7, dtype=F64)
    # g^2 = -2 f and s^2 = 1 - a^2 (variance preserving); lambda is linear in u
    assert torch.allclose(clock.g(u) ** 2, -2 * clock.f(u))
    assert torch.allclose(clock.scale(u) ** 2 + clock.std(u) ** 2, torch.ones_like(u))
    assert torch.allclose(clock.t_from_log_snr(clock.log_snr(u)), u)
    with pytest.raises(ValueError, match="lam_1 < lam_0"):
        LogSNRClockSDE(1.0, 2.0)
    with pytest.raises(ValueError, match="variance-preserving"):
        log_snr_clock(lambda x, t: x, sd.VESDE(), 1e-3)
