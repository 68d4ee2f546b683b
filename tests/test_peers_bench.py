"""The peer benchmark's oracle mapping: diffusers schedulers driven by the exact score."""

import sys

import pytest
import torch

import sdediff as sd

pytest.importorskip("diffusers")
peers = pytest.importorskip("sdediff.bench.peer_samplers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


def _ring():
    return sd.GaussianMixture(*sd.ring_params(8, radius=4.0, std=0.5))


def test_exact_eps_is_the_tweedie_noise():
    """``x = alpha x0_hat + sigma eps`` with ``x0_hat`` the oracle's own denoiser."""
    gm, s = _ring(), 0.7
    alpha = 1.0 / (1.0 + s * s) ** 0.5
    sigma = s * alpha
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    x0 = gm.denoise(x, torch.zeros(64, dtype=torch.float64), peers.NoiseLevel(alpha, sigma))
    torch.testing.assert_close(alpha * x0 + sigma * peers.exact_eps(gm, x, s), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("label", ["dpmpp_3M", "heun_karras", "unipc_2_bh2"])
def test_peer_lands_on_the_converged_ode_solution(label):
    """A deterministic peer at 100 steps reproduces the exact probability-flow map, sample by sample."""
    gm, n = _ring(), 200
    peer = {p.label: p for p in peers.peer_variants()}[label]
    z, g = peers.prior(n, 2)
    x, nfe, _ = peer.run(gm, z, g, num_steps=100)
    sde = sd.VPSDE()
    ref = sd.sample(gm.score_fn(sde), sde, (n, 2), sampler="dpm_solver", order=3, steps=400, grid="logsnr",
                    eps=1e-3, x_T=z, denoise=False)
    assert float((x - ref).pow(2).sum(1).mean().sqrt()) < 0.02
    assert nfe == (199 if label.startswith("heun") else 100)


def test_budget_counts_model_calls():
    """Heun calls the model twice per step but once on the last: 5 steps fit 9 calls."""
    gm = _ring()
    heun = {p.label: p for p in peers.peer_variants()}["heun"]
    z, g = peers.prior(50, 2)
    _, nfe, num_steps = heun.run(gm, z, g, budget=10)
    assert (nfe, num_steps) == (9, 5)


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"\.\[peers\]"):
        peers.require_diffusers()
