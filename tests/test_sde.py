"""The SDE interface, checked against simulation and closed forms."""
import math

import pytest
import torch
import torchsde
from hypothesis import given, settings
from hypothesis import strategies as st

import sdediff as sd
from conftest import STANDARD_SDES

F64 = torch.float64


class _ForwardTorchsde(torch.nn.Module):
    """A forward sdediff SDE as a torchsde problem (Ito, diagonal noise)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def f(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[0]

    def g(self, t, y):
        g = self.sde.sde(y, t.expand(y.shape[0]))[1]
        return g[:, None].expand_as(y) if g.shape != y.shape else g


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginal_prob_matches_simulation(name):
    """Mean and variance of simulated x_t agree with marginal_prob within 4 standard errors."""
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}[name]
    n, x0 = 5_000, torch.tensor([1.5, -0.5], dtype=F64)
    y0 = x0.expand(n, 2).clone()
    ts = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(n, 2), dtype=F64, entropy=7)
    # Euler-Maruyama's weak error for these linear SDEs is ~ dt/8 int_0^t b^2
    # relative to the mean (VP, sub-VP): at dt = 2e-3 that is 0.4% of a mean of
    # 0.2 at t = 0.5 and 3% of a mean of 0.01 at t = 1, under 1e-3 absolute,
    # far below the standard errors (std/70) the check is made at.
    path = torchsde.sdeint(_ForwardTorchsde(sde), y0, ts, bm=bm, method="euler", dt=2e-3)
    for i, t in enumerate(ts[1:].tolist(), start=1):
        mean, std = sde.marginal_prob(x0[None], t)
        xt = path[i]
        se_mean = std / math.sqrt(n)
        assert torch.all((xt.mean(0) - mean[0]).abs() < 4 * se_mean), (t, xt.mean(0), mean)
        var = std ** 2
        se_var = var * math.sqrt(2 / (n - 1))  # Gaussian sample variance
        assert torch.all((xt.var(0) - var).abs() < 4 * se_var), (t, xt.var(0), var)


def test_linear_sde_reproduces_vp():
    vp = sd.VPSDE()
    lin = sd.LinearSDE(f=lambda t: -0.5 * vp.beta(t), g=lambda t: vp.beta(t).sqrt())
    t = torch.cat([torch.tensor([1e-5, 1e-4, 1e-3]), torch.linspace(0.01, 1, 200)]).to(F64)
    assert torch.allclose(lin.scale(t), vp.scale(t), rtol=1e-6, atol=0)
    assert torch.allclose(lin.std(t), vp.std(t), rtol=1e-6, atol=0)
    # The drift and diffusion it reports are the ones it was given.
    x = torch.randn(4, 3, dtype=F64)
    tt = torch.full((4,), 0.3, dtype=F64)
    for a, b in zip(lin.sde(x, tt), vp.sde(x, tt)):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("name", ["subvp", "ve"])
def test_linear_sde_reproduces_closed_forms(name):
    ref = STANDARD_SDES[name]()
    lin = sd.LinearSDE(f=ref.f, g=ref.g)
    t = torch.linspace(1e-4, 1, 101, dtype=F64)
    assert torch.allclose(lin.scale(t), ref.scale(t), rtol=1e-6, atol=0)
    assert torch.allclose(lin.std(t), ref.std(t), rtol=1e-6, atol=0)


def test_prior_logp_is_the_prior_density(any_sde):
    g = torch.Generator().manual_seed(0)
    z = any_sde.prior_sampling((5, 3, 2), generator=g, dtype=F64)
    normal = torch.distributions.Normal(0.0, any_sde.prior_std)
    expected = normal.log_prob(z).sum(dim=(1, 2))
    assert torch.allclose(any_sde.prior_logp(z), expected)
    # Sampling draws from the stated prior (std within 3 standard errors).
    big = any_sde.prior_sampling((50_000, 2), generator=g, dtype=F64)
    assert abs(big.std() / any_sde.prior_std - 1) < 3 * math.sqrt(1 / (2 * 100_000))


def test_discretize_is_the_exact_kernel(any_sde):
    """Two exact half steps compose to the kernel over the whole interval."""
    x = torch.randn(6, 2, dtype=F64)
    t0, dt = 0.2, 0.3
    f, G = any_sde.discretize(x, t0 + dt, dt)
    a0, s0 = any_sde.scale(torch.tensor(t0, dtype=F64)), any_sde.std(torch.tensor(t0, dtype=F64))
    a1, s1 = any_sde.scale(torch.tensor(t0 + dt, dtype=F64)), any_sde.std(torch.tensor(t0 + dt, dtype=F64))
    assert torch.allclose(x + f, a1 / a0 * x)
    assert torch.allclose(G ** 2, (s1 ** 2 - (a1 / a0) ** 2 * s0 ** 2).expand(6))


def test_vp_discretize_is_ddpm_step():
    ddpm = sd.DDPM(num_steps=100)
    vp = ddpm.to_sde()
    x = torch.randn(3, 2, dtype=F64)
    n = 40
    f, G = vp.discretize(x, n / 100, 1 / 100)
    beta_eff = 1 - (vp.scale(torch.tensor(n / 100, dtype=F64)) / vp.scale(torch.tensor((n - 1) / 100, dtype=F64))) ** 2
    assert torch.allclose(x + f, (1 - beta_eff).sqrt() * x)
    assert torch.allclose(G, beta_eff.sqrt().expand(3))
    # The effective beta is DDPM's beta_n to first order in 1/N.
    assert abs(float(beta_eff) - float(ddpm.betas[n - 1])) < 1e-4


def test_reverse_drifts(ring):
    sde = sd.VPSDE()
    score = ring.score_fn(sde)
    x = torch.randn(5, 2, dtype=F64)
    t = torch.full((5,), 0.4, dtype=F64)
    f, g = sde.sde(x, t)
    rev_drift, rev_g = sde.reverse(score).sde(x, t)
    ode_drift, ode_g = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(rev_drift, f - g[:, None] ** 2 * score(x, t))
    assert torch.allclose(ode_drift, f - 0.5 * g[:, None] ** 2 * score(x, t))
    assert torch.equal(rev_g, g) and torch.all(ode_g == 0)


class _StateNoise(sd.SDE):
    """dx = -x dt + sqrt(1 + x^2) dW: diagonal, state-dependent noise."""

    noise_type = "diagonal"

    def sde(self, x, t):
        return -x, torch.sqrt(1 + x ** 2)

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)


def test_reverse_adds_divergence_for_state_dependent_noise():
    sde = _StateNoise()
    x = torch.randn(4, 3, dtype=F64)
    t = torch.full((4,), 0.5, dtype=F64)

    def zero_score(x, t):
        return torch.zeros_like(x)

    drift, g = sde.reverse(zero_score).sde(x, t)
    assert torch.allclose(drift, -x - 2 * x)  # d(g^2)/dx = d(1 + x^2)/dx = 2x
    assert torch.allclose(g, torch.sqrt(1 + x ** 2))
    ode_drift, _ = sde.reverse(zero_score, probability_flow=True).sde(x, t)
    assert torch.allclose(ode_drift, -x - x)
    # and its discretization carries the same term, times dt
    rev_f, rev_G = sde.reverse(zero_score).discretize(x, t, 0.01)
    assert torch.allclose(rev_f, 0.01 * (-x - 2 * x))
    assert torch.allclose(rev_G, 0.1 * torch.sqrt(1 + x ** 2))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: sd.VPSDE(beta_min=-0.1), "beta_min"),
    (lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), "beta_min <= beta_max"),
    (lambda: sd.SubVPSDE(beta_max=float("nan")), "beta_max"),
    (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
    (lambda: sd.VESDE(sigma_min=-1.0), "sigma_min"),
    (lambda: sd.VESDE(sigma_min=5.0, sigma_max=5.0), "sigma_min < sigma_max"),
    (lambda: sd.VESDE(sigma_min=50.0, sigma_max=5.0), "sigma_min < sigma_max"),
    (lambda: sd.VPSDE(T=0.0), "T"),
    (lambda: sd.LinearSDE(f=lambda t: -t, g=lambda t: 1.0, num_intervals=2), "num_intervals"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types():
    with pytest.raises(TypeError, match="f"):
        sd.LinearSDE(f=None, g=lambda t: t)
    with pytest.raises(TypeError, match="g must be a callable"):
        sd.LinearSDE(f=lambda t: t, g=3.0)
    with pytest.raises(TypeError, match="beta_min"):
        sd.VPSDE(beta_min="0.1")
    with pytest.raises(TypeError, match="score_fn"):
        sd.VPSDE().reverse(None)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_range(any_sde, t):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        any_sde.marginal_prob(x, t)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        any_sde.sde(x, torch.full((2,), t))


def test_prior_sampling_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        sd.VPSDE().prior_sampling((0, 2))
    with pytest.raises(TypeError, match="shape"):
        sd.VPSDE().prior_sampling("2x2")


def test_linear_sde_rejects_negative_g():
    sde = sd.LinearSDE(f=lambda t: -t, g=lambda t: t - 0.5)
    with pytest.raises(ValueError, match="g"):
        sde.std(0.5)


# ------------------------------------------------------------ properties
def _variance_ode_residual(sde, t: float) -> float:
    """Relative residual of the kernel's variance ODE ``d s^2/dt = 2 f s^2 + g^2``."""
    h = 1e-5 * sde.T
    tt = torch.tensor([t - h, t, t + h], dtype=F64)
    s2 = sde.std(tt) ** 2
    ds2 = (s2[2] - s2[0]) / (2 * h)
    drift_term, noise_term = 2 * sde.f(tt[1]) * s2[1], sde.g(tt[1]) ** 2
    # Relative to the size of the two terms: they cancel where s^2 saturates.
    return float((ds2 - drift_term - noise_term).abs() / (drift_term.abs() + noise_term))


def _log_scale_residual(sde, t: float) -> float:
    """Residual of ``d log a/dt = f`` (absolute, as f may vanish)."""
    h = 1e-5 * sde.T
    tt = torch.tensor([t - h, t + h], dtype=F64)
    la = sde.scale(tt).log()
    return float(((la[1] - la[0]) / (2 * h) - sde.f(torch.tensor(t, dtype=F64))).abs())


@settings(max_examples=40, deadline=None)
@given(beta_min=st.floats(0.01, 5.0), spread=st.floats(0.0, 30.0), T=st.floats(0.2, 3.0),
       u=st.floats(0.05, 0.95), kind=st.sampled_from(["vp", "subvp"]))
def test_property_beta_sdes(beta_min, spread, T, u, kind):
    cls = sd.VPSDE if kind == "vp" else sd.SubVPSDE
    sde = cls(beta_min=beta_min, beta_max=beta_min + spread, T=T)
    t = u * T
    # Central differences in float64 with h = 1e-5 T: truncation ~h^2, round-off
    # ~1e-16/h, so 1e-5 relative leaves a wide margin for a correct formula.
    assert _variance_ode_residual(sde, t) < 1e-5
    assert _log_scale_residual(sde, t) < 1e-5 * (1 + beta_min + spread)
    tt = torch.tensor(t, dtype=F64)
    a, s = sde.scale(tt), sde.std(tt)
    if kind == "vp":
        assert abs(float(a ** 2 + s ** 2) - 1) < 1e-12
    assert 0 < float(s) <= 1 and 0 < float(a) <= 1  # s rounds to 1 in float64 once B(t) > ~37
    # log-SNR inverts.
    assert abs(float(sde.t_from_log_snr(sde.log_snr(tt))) - t) < 1e-6 * T


@settings(max_examples=40, deadline=None)
@given(log_sigma_min=st.floats(-4.0, 0.0), log_ratio=st.floats(0.5, 8.0), u=st.floats(0.05, 0.95))
def test_property_ve(log_sigma_min, log_ratio, u):
    sde = sd.VESDE(sigma_min=math.exp(log_sigma_min), sigma_max=math.exp(log_sigma_min + log_ratio))
    assert _variance_ode_residual(sde, u) < 1e-5
    tt = torch.tensor(u, dtype=F64)
    assert abs(float(sde.t_from_log_snr(sde.log_snr(tt))) - u) < 1e-9


@settings(max_examples=15, deadline=None)
@given(c=st.floats(-3.0, 1.0), g0=st.floats(0.1, 3.0), g1=st.floats(0.0, 5.0), u=st.floats(0.05, 0.95))
def test_property_linear_sde_quadrature(c, g0, g1, u):
    """A user LinearSDE with f = c t, g = g0 + g1 t against its closed-form scale."""
    sde = sd.LinearSDE(f=lambda t: c * t, g=lambda t: g0 + g1 * t)
    tt = torch.tensor(u, dtype=F64)
    assert abs(float(sde.scale(tt)) - math.exp(0.5 * c * u ** 2)) < 1e-10
    assert _variance_ode_residual(sde, u) < 1e-5
