"""One home for the reverse / probability-flow drift: ``ReverseSDE.drift``.

Wrapping :meth:`sdediff.sde.ReverseSDE.drift` to add a constant must change every consumer:
the ODE sampler, the Euler and Euler-Maruyama predictors, the torchsde sampler and the
likelihood. A consumer that re-derived ``f - w g^2 score`` on its own would not notice.
"""
from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
from conftest import GenericVP
from sdediff.sde import ReverseSDE

F64 = torch.float64
SHIFT = 0.25


def _shifted_drift(monkeypatch):
    original = ReverseSDE.drift

    def drift(self, x, t, score=None):
        return original(self, x, t, score=score) + SHIFT

    monkeypatch.setattr(ReverseSDE, "drift", drift)


def _problems():
    oracle = sd.GaussianMixture(*sd.ring_params())
    return oracle, oracle.score_fn(sd.VPSDE()), sd.VPSDE()


@pytest.mark.parametrize("sampler, kw", [("ode", dict(steps=10)), ("euler", dict(steps=20)),
                                         ("euler_maruyama", dict(steps=20)), ("sde", dict(steps=20))])
def test_every_sampler_goes_through_the_one_drift(monkeypatch, sampler, kw):
    _, score_fn, sde = _problems()

    def run():
        return sd.sample(score_fn, sde, (64, 2), sampler=sampler, generator=torch.Generator().manual_seed(0),
                         dtype=F64, denoise=False, **kw)

    before = run()
    _shifted_drift(monkeypatch)
    after = run()
    # Same noise, same grid: only the drift differs, and the samples move (by ~0.1-0.3 here).
    moved = (after - before).abs().mean()
    assert moved > 0.05, (sampler, moved)


@pytest.mark.parametrize("path", [dict(), dict(quadrature="steps"), dict(quadrature=32), dict(trace="rademacher")])
def test_the_likelihood_goes_through_the_one_drift(monkeypatch, path):
    oracle, score_fn, sde = _problems()
    x = oracle.sample(16, generator=torch.Generator().manual_seed(1), dtype=F64)
    kw = dict(rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(2), **path)
    before = sd.log_likelihood(score_fn, sde, x, **kw)
    _shifted_drift(monkeypatch)
    after = sd.log_likelihood(score_fn, sde, x, **kw)
    # Same data and probes: only the drift differs, and the latent and the density move.
    assert (after.z - before.z).abs().mean() > 0.05
    assert (after.logp - before.logp).abs().mean() > 1e-2


def test_a_nonlinear_sde_differentiates_the_whole_drift(monkeypatch):
    # A plain SDE (not linear_drift) takes the divergence of the whole flow.drift, so a drift
    # term that depends on x shows up in delta_logp: add c * x, divergence d * c.
    PlainVP = GenericVP

    oracle, score_fn, _ = _problems()
    x = oracle.sample(8, generator=torch.Generator().manual_seed(3), dtype=F64)
    closed = dict(rtol=1e-6, atol=1e-6, prior_logp=lambda z: torch.zeros(z.shape[0], dtype=F64))
    before = sd.log_likelihood(score_fn, PlainVP(), x, **closed)
    original = ReverseSDE.drift
    monkeypatch.setattr(ReverseSDE, "drift", lambda self, x, t, score=None: original(self, x, t, score) + 0.1 * x)
    after = sd.log_likelihood(score_fn, PlainVP(), x, **closed)
    # The divergence gains d * 0.1 = 0.2 along the (moved) trajectory: delta_logp grows.
    extra = after.delta_logp - before.delta_logp
    assert extra.mean() > 0.1, extra


def _heavy_tail_sde():
    """``dx = -x dt + sqrt(1 + x^2) dW`` (see tests/test_custom_sde.py): every marginal is
    ``p(x) ~ (1 + x^2)^-2`` with score ``-4x / (1 + x^2)``, so the probability flow stands
    still and ``log p_eps(x) = prior_logp(x)`` exactly."""

    class HeavyTail(sd.SDE):
        noise_type = "diagonal"

        def sde(self, x, t):
            return -x, torch.sqrt(1 + x ** 2)

        def prior_sampling(self, shape, generator=None, dtype=None, device=None):
            raise NotImplementedError

        def prior_logp(self, z):
            return (math.log(2 / math.pi) - 2 * torch.log1p(z ** 2)).flatten(1).sum(1)

    return HeavyTail()


def test_likelihood_of_state_dependent_noise():
    sde = _heavy_tail_sde()
    x = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    res = sd.log_likelihood(lambda y, t: -4 * y / (1 + y ** 2), sde, x)
    assert torch.allclose(res.logp, sde.prior_logp(x), atol=1e-6), res.logp - sde.prior_logp(x)
