"""The quadrature paths: Gauss-Legendre nodes in log-SNR, and on the trajectory solver's steps."""
from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
from sdediff.likelihood import log_likelihood
from test_likelihood import EPS, _GenericVP, draw, exact_prior, mixture64, ring


# ------------------------------------------------------------------ quadrature path
def test_quadrature_exact_trace_converges_on_the_ring():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 300, seed=8)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    errs = {}
    for n in (48, 128):
        res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5,
                             quadrature=n, prior_logp=exact_prior(oracle, sde))
        errs[n] = float((res.logp - exact).abs().mean())
        assert res.nfe > n and torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    # Gauss-Legendre in log-SNR converges geometrically: measured 1.2e-2 at n = 48 and
    # 6e-5 at n = 128 (the trajectory at rtol 1e-5 adds ~4e-5).
    assert errs[128] <= 2e-4, errs
    assert errs[128] < errs[48] / 20, errs


@pytest.mark.parametrize("quadrature", [128, "steps"])
@pytest.mark.parametrize("name", ["subvp", "ve", "linear"])
def test_quadrature_on_every_linear_sde(name, quadrature):
    sde = {"subvp": sd.SubVPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=10.0),
           "linear": sd.LinearSDE(f=lambda t: -0.5 * (0.1 + 12 * t ** 2),
                                  g=lambda t: (0.1 + 12 * t ** 2).sqrt())}[name]
    oracle = ring()
    x = draw(oracle, 100, seed=2)
    ode = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5)
    quad = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5, quadrature=quadrature)
    # The exact d log(a(T)/a(eps)) term, and dt/dlambda = -2 s^2/g^2 for the log-SNR rule,
    # hold for any linear SDE: the two paths agree to the accuracy of each (measured <= 5e-4
    # mean on these SDEs).
    assert (quad.logp - ode.logp).abs().mean() <= 2e-3
    assert torch.allclose(quad.z, ode.z, atol=3e-3)


@pytest.mark.parametrize("quad", [dict(quadrature=48, probes=4),
                                  dict(quadrature="steps", probes=2, error_norm="per_example")],
                         ids=["log-snr-48-nodes", "steps"])
def test_quadrature_hutchinson_is_unbiased_and_less_noisy(quad):
    oracle, sde = ring(), sd.VPSDE()
    f = oracle.score_fn(sde)
    x = draw(oracle, 4, seed=4)
    reps = 50
    xr = x.repeat(reps, 1)
    kw = dict(eps=EPS, rtol=1e-4, atol=1e-4)
    nodes = {k: v for k, v in quad.items() if k != "probes"}
    # The nodes depend on x alone (the steps too), so the exact trace sees the same ones.
    exact_quad = log_likelihood(f, sde, x, **nodes, **kw).logp
    est = log_likelihood(f, sde, xr, trace="rademacher", generator=torch.Generator().manual_seed(5),
                         **quad, **kw).logp.reshape(reps, -1)
    fixed = log_likelihood(f, sde, xr, trace="rademacher", generator=torch.Generator().manual_seed(5),
                           **kw).logp.reshape(reps, -1)
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    # Unbiased for its quadrature: the 50-draw mean within 3 SE of the exact-trace quadrature.
    assert ((mean - exact_quad).abs() <= 3 * se + 1e-3).all(), (mean - exact_quad, se)
    # Probes drawn afresh at every node, vs one probe held along the ODE solve: measured
    # 3.4-3.7x lower std (48 nodes x 4 probes) and 4.7-5.2x (steps, ~40 nodes x 2 probes)
    # over 1,000 ring points; 2.5x asked of these 4.
    assert est.std(0).mean() < fixed.std(0).mean() / 2.5, (est.std(0), fixed.std(0))


def test_quadrature_is_reproducible_and_checks_its_arguments():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 10)
    run = lambda s: log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, trace="gaussian",  # noqa: E731
                                   quadrature=16, rtol=1e-3, atol=1e-3,
                                   generator=torch.Generator().manual_seed(s)).logp
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    for bad in (1, 0, True, 2.5, "48"):
        with pytest.raises(ValueError, match="quadrature"):
            log_likelihood(oracle.score_fn(sde), sde, x, quadrature=bad)
    with pytest.raises(ValueError, match="LinearSDE"):
        log_likelihood(oracle.score_fn(sde), _GenericVP(), x, quadrature=16)
    with pytest.raises(ValueError, match="fresh_probes"):
        log_likelihood(oracle.score_fn(sde), sde, x, trace="rademacher", quadrature=16, fresh_probes=True)


# ------------------------------------------------------- quadrature on the solver's steps
def test_steps_quadrature_meets_1e4_nats_on_the_ring_and_converges():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 400, seed=11)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    errs, solver_errs = {}, {}
    for tol in (1e-3, 3e-5):
        res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=tol, atol=tol,
                             error_norm="per_example", quadrature="steps")
        p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
        errs[tol] = float((res.logp - exact).abs().mean())
        solver_errs[tol] = float((res.delta_logp + p_T - exact).abs().mean())
        assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    # The 2-D bar, <= 1e-4 nats per example with the N(0, I) prior (measured 5e-5 on
    # 1,000 points at rtol 3e-5, of which 3e-5 is the prior mismatch).
    assert errs[3e-5] <= 1e-4, errs
    # 3-point Gauss-Legendre per 5th-order step: the error falls with the tolerance
    # (measured 30x for 33x tighter); ask for 5x.
    assert solver_errs[3e-5] < solver_errs[1e-3] / 5, solver_errs


def test_steps_quadrature_on_the_64d_mixture_reaches_the_prior_floor():
    oracle, sde = mixture64(), sd.VPSDE()
    x = draw(oracle, 12, seed=3)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5,
                         error_norm="per_example", quadrature="steps")
    p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
    floor = (res.prior_logp - p_T).abs().mean()
    # As for the ODE path at rtol = atol = 1e-5: the solver's share <= 1e-2 per
    # example (measured max 3e-3 here), the total within 10% of the prior-mismatch floor
    # plus that share.
    assert (res.delta_logp + p_T - exact).abs().max() <= 1e-2
    assert (res.logp - exact).abs().mean() <= 1.1 * floor + 3e-3


def test_steps_quadrature_checks_its_arguments():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 10)
    f = oracle.score_fn(sde)
    four = log_likelihood(f, sde, x, eps=EPS, quadrature="steps", nodes_per_step=4, rtol=1e-3, atol=1e-3)
    three = log_likelihood(f, sde, x, eps=EPS, quadrature="steps", rtol=1e-3, atol=1e-3)
    assert four.nfe > three.nfe  # one more node on every step
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="nodes_per_step"):
            log_likelihood(f, sde, x, quadrature="steps", nodes_per_step=bad)
    with pytest.raises(ValueError, match="nodes_per_step applies"):
        log_likelihood(f, sde, x, quadrature=16, nodes_per_step=4)
    with pytest.raises(ValueError, match="quadrature"):
        log_likelihood(f, sde, x, quadrature="step")
    with pytest.raises(ValueError, match="dopri5"):
        log_likelihood(f, sde, x, quadrature="steps", method="rk4", options={"step_size": 0.1})
    with pytest.raises(ValueError, match="dopri5"):
        log_likelihood(f, sde, x, quadrature="steps", options={"first_step": 1e-3})
    with pytest.raises(ValueError, match="LinearSDE"):
        log_likelihood(f, _GenericVP(), x, quadrature="steps")


def test_per_probe_estimates_measure_their_own_noise():
    """``probe_logp``: ``P`` independent estimates along one trajectory, whose mean is ``logp`` and
    whose spread is the one-probe noise: with fixed nodes (``quadrature=n``) the probes are the
    only randomness, so it must match the spread of ``logp`` over independent one-probe solves."""
    oracle, sde = mixture64(), sd.VPSDE()
    x = draw(oracle, 20, seed=5)
    kw = dict(eps=EPS, rtol=1e-4, atol=1e-4, quadrature=16, trace="gaussian")
    res = log_likelihood(oracle.score_fn(sde), sde, x, probes=32, generator=0, **kw)
    assert res.probe_logp.shape == (32, 20)
    assert torch.allclose(res.probe_logp.mean(0), res.logp, rtol=0, atol=1e-9)
    within = res.probe_logp.var(0)  # (B,): the one-probe variance, from one solve
    across = torch.stack([log_likelihood(oracle.score_fn(sde), sde, x, probes=1, generator=seed, **kw).logp
                          for seed in range(32)]).var(0)  # from 32 solves
    ratio = float(within.mean() / across.mean())
    assert 0.7 < ratio < 1.4, ratio  # measured 0.98; two estimates of one variance, 32 x 20 draws each
    # the same through evaluate, batched: in data order
    ev = sd.evaluate(oracle.score_fn(sde), sde, x, batch_size=7, probes=4, generator=1, progress=False, **kw)
    assert ev.probe_logp.shape == (4, 20) and torch.allclose(ev.probe_logp.mean(0), ev.logp, atol=1e-9)
    for path in (dict(trace="exact", quadrature=16), dict(trace="gaussian")):  # no per-probe split
        assert log_likelihood(oracle.score_fn(sde), sde, x[:3], eps=EPS, rtol=1e-3, atol=1e-3,
                              **path).probe_logp is None
