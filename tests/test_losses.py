"""Denoising score matching: minimized by the true score, equal to explicit score matching up to a
constant, and the likelihood weighting's importance sampling is the right density.

All comparisons use common random numbers (the same x0, t, z for every score function) and
judge a difference against its own Monte-Carlo standard error (SE) computed from the per-example
values: "4 SE" means a chance failure probability below 1e-4 for a correct implementation.
"""
import math

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.losses import (ddpm_loss, dsm_loss, explicit_score_matching_loss, likelihood_normalizer,
                            loss_weight, sample_time)
from sdediff.parameterization import ScoreModel
from sdediff.sde import broadcast_like

from conftest import STANDARD_SDES, ring_mixture

N = 20_000  # examples per Monte-Carlo estimate


def _perturbations(gm, sde, amp=1.0):
    """Score functions that are not the true score: the oracle's, moved in eps-space by amp * delta / s."""
    true = gm.score_fn(sde)
    wrong_gm = sd.GaussianMixture(gm.means, gm.stds * 1.15, gm.weights)

    def shifted(delta_fn):
        def score(x, t):
            return true(x, t) + amp * delta_fn(x, t) / broadcast_like(sde.std(t), x)
        return score

    return {
        "constant": shifted(lambda x, t: torch.tensor([0.05, -0.03], dtype=x.dtype).expand_as(x)),
        "scaled": shifted(lambda x, t: 0.03 * x),
        "nonlinear": shifted(lambda x, t: 0.05 * torch.sin(3 * x)),
        "wrong_mixture": wrong_gm.score_fn(sde),
        "late_time": lambda x, t: true(x, (t * 1.05).clamp(max=sde.T)),
    }


def _common_draws(gm, sde, weighting_is=False, eps=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = gm.sample(N, generator=g, dtype=torch.float64)
    t = sample_time(sde, N, eps=eps, importance_sampling=weighting_is, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, t, z


# weighting "none" (lambda = 1) has weights 1/s^2: its estimator is far noisier at small t, so it
# is checked on [0.1, T].
@pytest.mark.parametrize("weighting,importance_sampling,eps", [("score", False, 1e-3), ("likelihood", True, 1e-3),
                                                               ("none", False, 0.1)])
def test_dsm_is_minimized_by_the_true_score(weighting, importance_sampling, eps):
    gm, sde = ring_mixture(), sd.VPSDE()
    x0, t, z = _common_draws(gm, sde, importance_sampling, eps=eps)
    kw = dict(weighting=weighting, importance_sampling=importance_sampling, eps=eps, reduction="none",
              t=t, noise=z)
    best = dsm_loss(gm.score_fn(sde), sde, x0, **kw)
    # The "none" estimator is noisier: larger perturbations keep the effect above 4 SE.
    for name, score in _perturbations(gm, sde, amp=3.0 if weighting == "none" else 1.0).items():
        diff = dsm_loss(score, sde, x0, **kw) - best
        mean, se = float(diff.mean()), float(diff.std() / math.sqrt(N))
        assert mean > 4 * se, f"{name}: DSM(perturbed) - DSM(true) = {mean:.3g} +- {se:.2g}"


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_dsm_and_explicit_score_matching_differ_by_a_constant(sde_name):
    gm, sde = ring_mixture(), STANDARD_SDES[sde_name]()
    x0, t, z = _common_draws(gm, sde, seed=1)
    true = gm.score_fn(sde)
    kw = dict(weighting="score", eps=1e-3, reduction="none", t=t, noise=z)
    gaps = {}
    for name, score in {"true": true, **_perturbations(gm, sde)}.items():
        dsm = dsm_loss(score, sde, x0, **kw)
        esm = explicit_score_matching_loss(score, true, sde, x0, **kw)
        gaps[name] = dsm - esm
    assert float(explicit_score_matching_loss(true, true, sde, x0, **kw).abs().max()) == 0.0
    for name, gap in gaps.items():
        if name == "true":
            continue
        # Per example the gap difference is 2 <delta, eps* - z> with mean zero (Vincent 2011).
        d = gap - gaps["true"]
        mean, se = float(d.mean()), float(d.std() / math.sqrt(N))
        assert abs(mean) < 4 * se, f"{name}: (DSM - ESM) moved by {mean:.3g} +- {se:.2g}"
        # And the constant itself is not trivially small compared to the spread it survives:
        assert float(gaps["true"].mean()) > 10 * se


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "linear"])
def test_importance_sampling_draws_t_proportional_to_g2_over_s2(sde_name):
    sde = STANDARD_SDES[sde_name]()
    eps = 1e-4
    n = 4_000 if sde_name == "linear" else 20_000  # the tabulated SDE inverts the log-SNR by bisection
    t = sample_time(sde, n, eps=eps, importance_sampling=True, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    assert float(t.min()) >= eps and float(t.max()) <= sde.T

    def cumulative(upper):
        # int_eps^upper g^2/s^2 dt by 8-point Gauss-Legendre on 400 log-spaced intervals (error < 1e-8),
        # independent of the log-SNR identity the sampler uses.
        knots = torch.logspace(math.log10(eps), math.log10(upper), 401, dtype=torch.float64)
        nodes, weights = (torch.as_tensor(v) for v in np.polynomial.legendre.leggauss(8))
        lo, hi = knots[:-1, None], knots[1:, None]
        u = (0.5 * (lo + hi) + 0.5 * (hi - lo) * nodes).reshape(-1)
        vals = (sde.g(u) ** 2 / sde.std(u) ** 2).reshape(-1, 8)
        return float((0.5 * (hi - lo) * weights * vals).sum())

    z_ref = cumulative(sde.T)
    assert likelihood_normalizer(sde, eps) == pytest.approx(z_ref, rel=1e-6)
    probes = [1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8]
    for p in probes:
        cdf = cumulative(p) / z_ref
        ecdf = float((t <= p).double().mean())
        # 1.95 / sqrt(n): the Kolmogorov-Smirnov 0.1% critical value, over-covering a few fixed points.
        assert abs(ecdf - cdf) < 1.95 / math.sqrt(n), f"t={p}: ECDF {ecdf:.4f} vs CDF {cdf:.4f}"


def test_likelihood_importance_sampling_is_unbiased_and_reduces_variance():
    gm, sde = ring_mixture(), sd.VPSDE()
    score = gm.score_fn(sde)
    x0 = gm.sample(N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = {}
    for is_ in (False, True):
        g = torch.Generator().manual_seed(5)
        out[is_] = dsm_loss(score, sde, x0, "likelihood", is_, eps=1e-3, generator=g, reduction="none")
    se = math.sqrt(out[False].var() / N + out[True].var() / N)
    assert abs(float(out[False].mean() - out[True].mean())) < 4 * se
    # Measured variance ratio ~12 for this problem; require a clear (> 4x) reduction.
    assert float(out[False].var() / out[True].var()) > 4


def test_loss_weights_match_the_stated_lambdas():
    sde = sd.VPSDE()
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    s2 = sde.std(t) ** 2
    assert torch.equal(loss_weight(sde, t, "score"), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(loss_weight(sde, t, "none"), 1 / s2, rtol=1e-14)
    assert torch.allclose(loss_weight(sde, t, "likelihood"), sde.beta(t) / s2, rtol=1e-14)
    assert float(loss_weight(sde, t, "likelihood", max_weight=50.0).max()) == 50.0
    z = likelihood_normalizer(sde, 1e-3) / (1 - 1e-3)
    assert torch.allclose(loss_weight(sde, t, "likelihood", eps=1e-3, importance_sampling=True),
                          torch.full((3,), z, dtype=torch.float64))


def test_ddpm_loss_is_the_eps_error_on_the_discrete_chain():
    ddpm = sd.DDPM(num_steps=50)
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    n = torch.randint(1, 51, (8,), generator=g)
    z = torch.randn(8, 3, generator=g, dtype=torch.float64)

    def score(x, t):  # eps_hat = 0.5 x, i.e. score = -0.5 x / s_n with DDPM's s_n
        s = (1 - ddpm.alpha_bar(ddpm.index(t))).sqrt().to(x)
        return -0.5 * x / s[:, None]

    got = ddpm_loss(score, ddpm, x0, reduction="none", n=n, noise=z)
    x_n = ddpm.q_sample(x0, n, noise=z)
    want = (0.5 * x_n - z).pow(2).sum(1)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    assert float(ddpm_loss(score, ddpm, x0, n=n, noise=z)) == pytest.approx(float(want.mean()), rel=1e-12)


def test_gradients_flow_through_a_score_model():
    from sdediff.nets import build_net
    torch.manual_seed(0)
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), sd.VPSDE(), "eps")
    x0 = torch.randn(32, 2)
    loss = dsm_loss(model, sd.VPSDE(), x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.net.output.weight.grad is not None and float(model.net.output.weight.grad.abs().sum()) > 0
    # A fresh net outputs eps_hat = 0 (zero-initialized output layer): loss = E||z||^2 = d = 2.
    assert float(loss.detach()) == pytest.approx(2.0, abs=4 * math.sqrt(2 * 2 / 32))


def test_bad_arguments_name_the_allowed_values():
    gm, sde = ring_mixture(), sd.VPSDE()
    x0 = torch.zeros(4, 2)
    score = gm.score_fn(sde)
    with pytest.raises(ValueError, match=r"weighting must be one of \('score', 'likelihood', 'none'\)"):
        dsm_loss(score, sde, x0, weighting="elbo")
    with pytest.raises(ValueError, match="reduction must be one of"):
        dsm_loss(score, sde, x0, reduction="max")
    with pytest.raises(ValueError, match="eps must lie in"):
        dsm_loss(score, sde, x0, eps=0.0)
    with pytest.raises(ValueError, match="importance_sampling=True is only defined"):
        dsm_loss(score, sde, x0, weighting="score", importance_sampling=True)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\) = \(4,\)"):
        dsm_loss(score, sde, x0, t=torch.zeros(3))
    with pytest.raises(TypeError, match="LinearSDE"):
        dsm_loss(score, object(), x0)


# ------------------------------------------------------------------ labels (classifier-free guidance)

class LabelSpy:
    """A conditional score function that records the labels it sees (null class 5) and returns 0."""

    null_label = 5

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, y=None):
        self.seen.append(y)
        return torch.zeros_like(x)


def _labels(n, seed=0):
    return torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss", ["dsm", "ddpm"])
def test_p_uncond_zero_and_one(loss):
    x0, y = torch.randn(64, 2), _labels(64)

    def run(spy, **kw):
        g = torch.Generator().manual_seed(0)
        if loss == "dsm":
            return dsm_loss(spy, sd.VPSDE(), x0, generator=g, **kw)
        return ddpm_loss(spy, sd.DDPM(num_steps=100), x0, generator=g, **kw)

    spy = LabelSpy()
    run(spy, y=y)  # p_uncond = 0 by default: the model sees exactly y
    assert torch.equal(spy.seen[-1], y)
    run(spy, y=y, p_uncond=0.0)
    assert torch.equal(spy.seen[-1], y)
    run(spy, y=y, p_uncond=1.0)  # only the null class
    assert torch.equal(spy.seen[-1], torch.full_like(y, 5))
    run(spy)  # no labels: called as model(x, t)
    assert spy.seen[-1] is None
    run(spy, y=y, p_uncond=1.0, num_classes=7)  # an explicit null class wins
    assert torch.equal(spy.seen[-1], torch.full_like(y, 7))


def test_drop_rate_matches_p_uncond_and_is_deterministic():
    n, p = 20_000, 0.3
    x0, y = torch.zeros(n, 2), _labels(n)
    spy = LabelSpy()
    dsm_loss(spy, sd.VPSDE(), x0, generator=torch.Generator().manual_seed(1), y=y, p_uncond=p)
    seen = spy.seen[-1]
    dropped = seen == 5
    assert torch.equal(seen[~dropped], y[~dropped])  # kept labels are untouched
    rate = float(dropped.double().mean())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), rate
    # Same generator seed: same labels; another seed: different ones.
    dsm_loss(spy, sd.VPSDE(), x0, generator=torch.Generator().manual_seed(1), y=y, p_uncond=p)
    assert torch.equal(spy.seen[-1], seen)
    dsm_loss(spy, sd.VPSDE(), x0, generator=torch.Generator().manual_seed(2), y=y, p_uncond=p)
    assert not torch.equal(spy.seen[-1], seen)


def test_labels_do_not_change_the_draws_of_t_and_noise():
    # The label drops come from the generator after t and z: the loss terms keep their t and z.
    gm, sde = ring_mixture(), sd.VPSDE()
    x0 = gm.sample(256, generator=torch.Generator().manual_seed(0))
    cond = gm.score_fn(sde)
    plain = dsm_loss(cond, sde, x0, generator=torch.Generator().manual_seed(3), reduction="none")
    labelled = dsm_loss(lambda x, t, y: cond(x, t), sde, x0, generator=torch.Generator().manual_seed(3),
                        reduction="none", y=_labels(256), p_uncond=0.5, num_classes=5)
    assert torch.equal(plain, labelled)


def test_drop_labels_helper():
    y = _labels(1000)
    assert sd.losses.drop_labels(y, 5, 0.0) is y
    assert torch.equal(sd.losses.drop_labels(y, 5, 1.0), torch.full_like(y, 5))
    a = sd.losses.drop_labels(y, 5, 0.5, torch.Generator().manual_seed(0))
    b = sd.losses.drop_labels(y, 5, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 0 < int((a == 5).sum()) < 1000
    with pytest.raises(ValueError, match="p_uncond"):
        sd.losses.drop_labels(y, 5, 1.5)


def test_label_training_reaches_the_class_embedding():
    from sdediff.nets import build_net
    torch.manual_seed(0)
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, num_classes=3), sd.VPSDE(), "eps")
    x0, y = torch.randn(32, 2), torch.tensor([0, 1, 2, 3] * 8)
    with torch.no_grad():
        model.net.output.weight.normal_(std=0.1)  # let gradients reach the trunk
    dsm_loss(model, sd.VPSDE(), x0, generator=torch.Generator().manual_seed(0), y=y, p_uncond=0.2).backward()
    grad = model.net.class_embed.embedding.weight.grad
    assert grad is not None and bool((grad.abs().sum(1) > 0).all())  # every class, null included


def test_bad_label_arguments():
    sde, x0 = sd.VPSDE(), torch.zeros(4, 2)
    spy = LabelSpy()
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        dsm_loss(spy, sde, x0, y=torch.zeros(4))
    with pytest.raises(ValueError, match=r"y must have shape \(B,\) = \(4,\)"):
        dsm_loss(spy, sde, x0, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="p_uncond must be a probability"):
        dsm_loss(spy, sde, x0, y=torch.zeros(4, dtype=torch.long), p_uncond=-0.1)
    with pytest.raises(ValueError, match="needs labels y"):
        dsm_loss(spy, sde, x0, p_uncond=0.1)
    with pytest.raises(ValueError, match="pass num_classes"):
        dsm_loss(lambda x, t, y: x, sde, x0, y=torch.zeros(4, dtype=torch.long), p_uncond=0.1)
