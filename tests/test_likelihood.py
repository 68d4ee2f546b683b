"""Log-likelihoods through the probability-flow ODE, checked against the exact oracle.

The oracle (a Gaussian mixture pushed through a linear SDE) knows ``log p_eps(x)``
and ``log p_T(z)`` in closed form, so the error of the solve splits into the
prior mismatch ``log N(z) - log p_T(z)`` (no solver can remove it) and the
solver/estimator error, measured by closing the flow with the exact ``p_T``.
"""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch

import sdediff as sd
from sdediff.datasets import ring_params
from sdediff.likelihood import bits_per_dim, dequantize, evaluate, log_likelihood

EPS = 1e-5
F64 = torch.float64


def ring() -> sd.GaussianMixture:
    """The ``ring`` toy set: 8 modes on a circle of radius 2, std 0.1 (an exact mixture)."""
    return sd.GaussianMixture(*ring_params())


def mixture64(seed: int = 0) -> sd.GaussianMixture:
    """A 64-D mixture of 10 isotropic Gaussians with random means, stds and weights."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(10, 64, generator=g, dtype=F64)
    stds = 0.2 + 0.3 * torch.rand(10, generator=g, dtype=F64)
    weights = 0.5 + torch.rand(10, generator=g, dtype=F64)
    return sd.GaussianMixture(means, stds, weights)


def draw(oracle, n, seed=0, dtype=F64):
    return oracle.sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def exact_prior(oracle, sde):
    """``log p_T`` of the oracle, to close the flow without prior mismatch."""
    return lambda z: oracle.marginal_log_prob(z, sde.T, sde)


# ------------------------------------------------------------------ accuracy
def test_ring_vp_exact_trace_meets_one_millinat():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 500)
    res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, trace="exact", rtol=1e-5, atol=1e-5)
    err = (res.logp - oracle.marginal_log_prob(x, EPS, sde)).abs().mean()
    # Issue 4: mean abs error <= 1e-3 nats at rtol = atol = 1e-5 (measured ~8e-5, of which
    # ~3e-5 is the prior mismatch of N(0, I) at T).
    assert err <= 1e-3
    assert res.logp.shape == (500,) and res.logp.dtype == F64
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert res.z.shape == x.shape and res.nfe > 0


def test_mixture64_exact_trace_error_per_example():
    oracle, sde = mixture64(), sd.VPSDE()
    x = draw(oracle, 8)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, trace="exact", rtol=1e-5, atol=1e-5)
    p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
    solver_err = (res.delta_logp + p_T - exact).abs()
    floor = (res.prior_logp - p_T).abs().mean()
    # Issue 4: <= 1e-2 nats per example for the solver (measured ~2e-3); with the N(0, I)
    # prior the total error cannot go below the prior-mismatch floor (~1.5e-2 here), so the
    # total is held to the goal "within 10% of the floor" (plus the solver's 2e-3 share).
    assert solver_err.max() <= 1e-2
    assert (res.logp - exact).abs().mean() <= 1.1 * floor + 3e-3


def test_error_falls_as_tolerance_tightens():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 300, seed=1)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    errs = []
    for tol in (1e-3, 1e-5):
        res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=tol, atol=tol,
                             prior_logp=exact_prior(oracle, sde))
        errs.append(float((res.logp - exact).abs().mean()))
    # dopri5 is 5th order; 100x tighter tolerance measured ~100x smaller error (6e-3 -> 6e-5);
    # ask for at least 10x.
    assert errs[1] < errs[0] / 10, errs


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "linear"])
def test_every_sde_with_its_own_prior(name):
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=10.0),
           "linear": sd.LinearSDE(f=lambda t: -0.5 * (0.1 + 12 * t ** 2),
                                  g=lambda t: (0.1 + 12 * t ** 2).sqrt())}[name]
    oracle = ring()
    x = draw(oracle, 100, seed=2)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5)
    p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
    # The solver's share of the error (exact p_T closing): the 1e-3 bar of issue 4.
    assert (res.delta_logp + p_T - exact).abs().mean() <= 1e-3
    # With the SDE's own prior, the error is that plus the prior mismatch, measured separately.
    floor = (res.prior_logp - p_T).abs().mean()
    assert (res.logp - exact).abs().mean() <= floor + 1e-3


class _GenericVP(sd.SDE):
    """VP written as a plain SDE (no LinearSDE): exercises the reverse-drift path."""

    def __init__(self):
        super().__init__(1.0)
        self.vp = sd.VPSDE()

    def sde(self, x, t):
        return self.vp.sde(x, t)

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return self.vp.prior_sampling(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z):
        return self.vp.prior_logp(z)


def test_user_sde_through_the_reverse_drift_matches_linear_path():
    oracle, vp = ring(), sd.VPSDE()
    x = draw(oracle, 50, seed=3)
    a = log_likelihood(oracle.score_fn(vp), vp, x, eps=EPS)
    b = log_likelihood(oracle.score_fn(vp), _GenericVP(), x, eps=EPS)
    # Same ODE, differentiated two ways: agree to the solver tolerance.
    assert (a.logp - b.logp).abs().max() < 1e-4


def test_float32_follows_input_dtype():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 100, dtype=torch.float32)
    res = log_likelihood(oracle.score_fn(sde), sde, x, eps=1e-3, rtol=1e-4, atol=1e-4)
    assert res.logp.dtype == torch.float32 and res.z.dtype == torch.float32
    exact = oracle.marginal_log_prob(x.double(), 1e-3, sde)
    # float32 round-off (~1e-7 relative on O(10) nats per step, ~100 steps) plus rtol 1e-4.
    assert (res.logp.double() - exact).abs().mean() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_cuda():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 50).cuda()
    means, stds, w = ring_params()
    gm = sd.GaussianMixture(means, stds, w)
    res = log_likelihood(gm.score_fn(sde), sde, x, eps=EPS, trace="rademacher",
                         generator=torch.Generator(device="cuda").manual_seed(0))
    assert res.logp.device.type == "cuda"


# ------------------------------------------------------------------ Hutchinson
@pytest.mark.parametrize("trace", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_over_50_seeds(trace):
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 4, seed=4)
    reps = 50  # 50 copies of each point: 50 independent probe draws in one solve
    xr = x.repeat(reps, 1)
    exact_trace = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS).logp
    res = log_likelihood(oracle.score_fn(sde), sde, xr, eps=EPS, trace=trace,
                         generator=torch.Generator().manual_seed(5))
    est = res.logp.reshape(reps, -1)
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    # Unbiased: the 50-draw mean lies within 3 standard errors of the exact-trace value.
    assert ((mean - exact_trace).abs() <= 3 * se).all(), (mean - exact_trace, se)
    assert (est.std(0) > 0).all()


@pytest.mark.slow
def test_probes_average_and_control_variate_cut_variance():
    oracle, sde = mixture64(), sd.VPSDE()
    x = draw(oracle, 2, seed=6)
    reps = 30
    xr = x.repeat(reps, 1)
    stds = {}
    for label, kw in {"gaussian": dict(trace="gaussian"), "gaussian+cv": dict(trace="gaussian", control_variate=True),
                      "gaussian x4": dict(trace="gaussian", probes=4), "rademacher": dict(trace="rademacher")}.items():
        res = log_likelihood(oracle.score_fn(sde), sde, xr, eps=EPS, rtol=1e-3, atol=1e-3,
                             generator=torch.Generator().manual_seed(7), **kw)
        stds[label] = float(res.logp.reshape(reps, -1).std(0).mean())
    # 4 probes: std / 2 in theory; the control variate measured ~6x on this problem; Rademacher
    # (no |v|^2 noise) ~40x. Bars well inside the measured values.
    assert stds["gaussian x4"] < 0.7 * stds["gaussian"], stds
    assert stds["gaussian+cv"] < stds["gaussian"] / 3, stds
    assert stds["rademacher"] < stds["gaussian"] / 3, stds


def test_probes_are_reproducible_from_the_generator():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 10)
    run = lambda s: log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, trace="gaussian", rtol=1e-3,  # noqa: E731
                                   atol=1e-3, generator=torch.Generator().manual_seed(s)).logp
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=-1e-3), "eps"), (dict(eps=1.0), "eps"), (dict(eps=2.0), "eps"),
    (dict(trace="hutch"), "trace"), (dict(trace="gaussian", probes=0), "probes"),
    (dict(method="nope"), "method"), (dict(rtol=0.0), "rtol"), (dict(atol=-1.0), "atol"),
])
def test_bad_arguments_raise(kwargs, match):
    oracle, sde = ring(), sd.VPSDE()
    with pytest.raises(ValueError, match=match):
        log_likelihood(oracle.score_fn(sde), sde, draw(oracle, 4), **kwargs)


def test_bad_data_raise():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 4)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(oracle.score_fn(sde), sde, x)
    x[1, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        log_likelihood(oracle.score_fn(sde), sde, x)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(oracle.score_fn(sde), sde, torch.zeros(4, dtype=F64))
    with pytest.raises(TypeError, match="floating"):
        log_likelihood(oracle.score_fn(sde), sde, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="control_variate"):
        log_likelihood(oracle.score_fn(sde), _GenericVP(), draw(oracle, 4), trace="gaussian",
                       control_variate=True)


def test_bad_score_raises_instead_of_nan():
    sde = sd.VPSDE()
    x = draw(ring(), 4)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(lambda y, t: y[:, :1], sde, x)
    with pytest.raises(FloatingPointError, match="NaN"):
        log_likelihood(lambda y, t: y * float("nan"), sde, x)


# ------------------------------------------------------------ bits per dim
def test_bpd_of_uniform_data_is_log2_levels():
    # x uniform on [low, high]^d has log p = -d log(high - low); the K-level data it
    # dequantizes has probability K^-d, i.e. log2(K) bits per dimension exactly.
    for K, low, high in [(256, -1.0, 1.0), (256, 0.0, 1.0), (17, -1.0, 1.0), (4, -3.0, 5.0)]:
        d = 7
        logp = torch.full((3,), -d * math.log(high - low), dtype=F64)
        assert torch.allclose(bits_per_dim(logp, d, num_levels=K, low=low, high=high),
                              torch.full((3,), math.log2(K), dtype=F64), atol=1e-12)
    # The documented offsets: 7 bits for 256 levels on [-1, 1], 8 on [0, 1].
    zero = torch.zeros(1, dtype=F64)
    assert float(bits_per_dim(zero, 1, 256, -1.0, 1.0)) == pytest.approx(7.0, abs=1e-12)
    assert float(bits_per_dim(zero, 1, 256, 0.0, 1.0)) == pytest.approx(8.0, abs=1e-12)


def test_bpd_of_quantized_gaussian_matches_the_discrete_probability():
    # N(0, s^2) per dimension, quantized to K bins on [-1, 1]: the exact discrete probability
    # of a bin is Phi(b+) - Phi(b-); the density at the bin centre times delta agrees with it
    # to O(delta^2 / s^2) (midpoint rule), here < 1e-4 bits.
    K, low, high, s, d = 256, -1.0, 1.0, 0.25, 3
    levels = torch.randint(96, 160, (500, d), generator=torch.Generator().manual_seed(0))
    delta = (high - low) / K
    centres = low + (levels + 0.5) * delta
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(s, dtype=F64))
    logp = normal.log_prob(centres).sum(1)
    edges_lo, edges_hi = low + levels * delta, low + (levels + 1) * delta
    exact_bits = -torch.log(normal.cdf(edges_hi) - normal.cdf(edges_lo)).sum(1) / (d * math.log(2))
    assert (bits_per_dim(logp, d, K, low, high) - exact_bits).abs().max() < 1e-4


def test_bpd_of_continuous_gaussian_is_its_entropy():
    # For continuous N(0, I) data, E[bpd] = h / ln 2 = log2(2 pi e) / 2 bits per dimension.
    d = 4
    x = torch.randn(20000, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    logp = -0.5 * x.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    bits = bits_per_dim(logp, d, num_levels=None)
    # std of bpd = sqrt(d/2)/(d ln2) ~ 0.51; 4 standard errors of the mean ~ 0.015.
    assert abs(float(bits.mean()) - 0.5 * math.log2(2 * math.pi * math.e)) < 0.015


def test_result_bpd_and_dequantize_pair_up():
    levels = torch.randint(0, 256, (1000, 5), generator=torch.Generator().manual_seed(2))
    x = dequantize(levels, 256, -1.0, 1.0, generator=torch.Generator().manual_seed(3), dtype=F64)
    delta = 2.0 / 256
    lo = -1.0 + levels * delta
    assert ((x >= lo) & (x < lo + delta)).all()
    # Uniform within bins: the offsets (x - lo) / delta have mean 1/2 (std 0.29/sqrt(5000)).
    assert abs(float(((x - lo) / delta).mean()) - 0.5) < 0.02
    oracle, sde = ring(), sd.VPSDE()
    res = log_likelihood(oracle.score_fn(sde), sde, draw(oracle, 8), eps=EPS, rtol=1e-4, atol=1e-4)
    assert torch.allclose(res.bpd(256, -1.0, 1.0), -res.logp / (2 * math.log(2)) + 7.0)


def test_bpd_bad_input():
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="num_levels"):
        bits_per_dim(torch.zeros(2), 2, num_levels=1)
    with pytest.raises(ValueError, match="low"):
        bits_per_dim(torch.zeros(2), 2, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(torch.tensor([float("nan")]), 2)


# ------------------------------------------------------------------ evaluate
def test_evaluate_batches_tensors_and_iterables():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 16, seed=8)
    kw = dict(eps=EPS, rtol=1e-5, atol=1e-5)
    ev = evaluate(oracle.score_fn(sde), sde, x, batch_size=8, progress=False, bpd=True, num_levels=None, **kw)
    assert ev.logp.shape == (16,)
    assert ev.mean_logp == pytest.approx(float(ev.logp.mean()))
    assert ev.mean_nll == pytest.approx(-ev.mean_logp)
    assert ev.stderr == pytest.approx(float(ev.logp.std()) / math.sqrt(16))
    assert ev.mean_bpd == pytest.approx(float(-ev.logp.mean() / (2 * math.log(2))))
    # Each batch is an independent solve, held to the 1e-3-nat bar of issue 4 on the mean.
    assert (ev.logp - oracle.marginal_log_prob(x, EPS, sde)).abs().mean() < 1e-3
    ev2 = evaluate(oracle.score_fn(sde), sde, list(x.split(5)), batch_size=8, progress=False, **kw)
    assert torch.equal(ev.logp, ev2.logp)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(oracle.score_fn(sde), sde, x, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(oracle.score_fn(sde), sde, [], batch_size=4)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        oracle, sde = ring(), sd.VPSDE()
        x = draw(oracle, 24, seed=9)
        hutch = evaluate(oracle.score_fn(sde), sde, x, batch_size=8, progress=False, eps=EPS,
                         trace="rademacher", generator=torch.Generator().manual_seed(1))
        torch.save({"hutch": hutch.logp, "nfe": hutch.nfe}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_evaluate_two_processes_match_one(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "res")
    mp.spawn(_dist_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 24, seed=9)
    hutch = evaluate(oracle.score_fn(sde), sde, x, batch_size=8, progress=False, eps=EPS,
                     trace="rademacher", generator=torch.Generator().manual_seed(1))
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        # Same batches, same per-batch probe seeds: the same numbers (to round-off), on every rank.
        assert got["hutch"].shape == (24,)
        assert torch.allclose(got["hutch"], hutch.logp, rtol=0, atol=1e-10)
        assert got["nfe"] == hutch.nfe
    assert os.path.exists(f"{out}.1")


# ------------------------------------------------ solver options: error norm, fresh probes
def test_per_example_norm_bounds_the_worst_example():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 300, seed=1)
    exact = oracle.marginal_log_prob(x, EPS, sde)
    errs = {}
    for norm in ("batch", "per_example"):
        res = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-4, atol=1e-4,
                             error_norm=norm, prior_logp=exact_prior(oracle, sde))
        errs[norm] = (res.logp - exact).abs()
    # The batch RMS norm lets the hardest examples carry errors far above the tolerance
    # (measured worst case ~1e-1 nats at rtol 1e-4 on 1,000 ring points); holding every
    # example to it cuts the worst case (measured ~1e-2) and the mean. Ask for 3x on the max.
    assert errs["per_example"].max() < errs["batch"].max() / 3, (errs["per_example"].max(), errs["batch"].max())
    assert errs["per_example"].mean() < errs["batch"].mean()
    with pytest.raises(ValueError, match="error_norm"):
        log_likelihood(oracle.score_fn(sde), sde, x[:4], error_norm="max")


def test_small_d_loop_and_vectorized_exact_trace_agree(monkeypatch):
    import sdediff.likelihood as lk
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 50, seed=3)
    a = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(lk, "_EXACT_LOOP_MAX_DIM", 0)  # force the vmapped path
    b = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-4, atol=1e-4)
    # The same d VJPs computed two ways: equal to round-off, so the solver takes the same steps.
    assert a.nfe == b.nfe
    assert torch.allclose(a.logp, b.logp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(trace="exact"), dict(trace="exact", error_norm="per_example"),
                                dict(trace="rademacher", fresh_probes=True),
                                dict(trace="rademacher", probes=2, quadrature=16, error_norm="per_example")])
def test_lean_dopri5_takes_torchdiffeqs_steps(kw):
    # method="dopri5" without options runs the library's own loop; any option hands the solve
    # to torchdiffeq. Same method, same controller: the same evaluations and the same numbers.
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 40, seed=6)
    lean = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-4, atol=1e-4,
                          generator=torch.Generator().manual_seed(0), **kw)
    tdq = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS, rtol=1e-4, atol=1e-4,
                         generator=torch.Generator().manual_seed(0), options={"max_num_steps": 10 ** 6}, **kw)
    assert lean.nfe == tdq.nfe
    assert torch.allclose(lean.logp, tdq.logp, rtol=0, atol=1e-9)
    assert torch.allclose(lean.z, tdq.z, rtol=0, atol=1e-9)


def test_fresh_probes_are_unbiased_and_cut_the_variance():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 4, seed=4)
    reps = 50  # 50 copies of each point: 50 independent probe sequences in one solve
    xr = x.repeat(reps, 1)
    exact_trace = log_likelihood(oracle.score_fn(sde), sde, x, eps=EPS).logp
    est = {}
    for fresh in (False, True):
        res = log_likelihood(oracle.score_fn(sde), sde, xr, eps=EPS, trace="rademacher",
                             fresh_probes=fresh, generator=torch.Generator().manual_seed(5))
        est[fresh] = res.logp.reshape(reps, -1)
    mean, se = est[True].mean(0), est[True].std(0) / math.sqrt(reps)
    # Unbiased: the 50-draw mean lies within 3 standard errors of the exact-trace value.
    assert ((mean - exact_trace).abs() <= 3 * se).all(), (mean - exact_trace, se)
    # Variance: one fixed probe vs a new probe at every evaluation (~100 evaluations).
    # Measured ~2x lower std on the ring at rtol 1e-5 averaged over points; a single point
    # can gain less, so ask only that the average std drops by 1.3x.
    assert est[True].std(0).mean() < est[False].std(0).mean() / 1.3, (est[True].std(0), est[False].std(0))
    with pytest.raises(ValueError, match="fresh_probes"):
        log_likelihood(oracle.score_fn(sde), sde, x, fresh_probes=True)


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
    # Issue 4's 2-D bar, <= 1e-4 nats per example with the N(0, I) prior (measured 5e-5 on
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
    # As for the ODE path at issue 4's rtol = atol = 1e-5: the solver's share <= 1e-2 per
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
