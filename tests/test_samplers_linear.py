"""DDIM, DPM-Solver++ and Heun/EDM against the Gaussian-mixture oracle.

Every accuracy claim is measured against closed-form ground truth: convergence orders
against a tight dopri5 solution of the same probability-flow ODE from the same noise,
sample quality against fresh exact samples (sliced W2 and its two-sample noise floor),
DDIM against the discrete DDIM update, and the stochastic DDIM on a Gaussian target.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

import sdediff as sd
from conftest import ring_mixture
from sdediff.metrics import sliced_wasserstein
from sdediff.samplers._common import GuardedScore
from sdediff.samplers.ddim import ddim

EPS = 1e-3
SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=10.0),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ring64():
    return ring_mixture()


def _reference(gm: sd.GaussianMixture, sde, x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from ``T`` to ``EPS`` by dopri5 at rtol = atol = 1e-10 (float64).

    Integrated in ``t`` with the SDE's own reverse drift, independent of the samplers' algebra.
    ``step_t`` makes the last step end exactly at ``EPS`` (no stage beyond it).
    """
    rev = sde.reverse(gm.score_fn(sde), probability_flow=True)
    ts = torch.tensor([sde.T, EPS], dtype=torch.float64)
    return odeint(lambda t, x: rev.sde(x, t)[0], x_T, ts, rtol=1e-10, atol=1e-10, method="dopri5",
                  options=dict(first_step=1e-4, step_t=torch.tensor([EPS], dtype=torch.float64)))[-1]


_REFS: dict = {}


def _problem(name: str, gm):
    """``(sde, x_T, reference)`` for one SDE, cached for the module (the reference costs ~1 s)."""
    if name not in _REFS:
        sde = SDES[name]()
        x_T = sde.prior_sampling((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        _REFS[name] = (sde, x_T, _reference(gm, sde, x_T))
    return _REFS[name]


# (sampler, options, grid, theoretical order, step counts in the asymptotic regime)
ORDER_CASES = {
    "ddim": ("ddim", {}, "logsnr", 1, [8, 16, 32, 64]),
    "dpm2M": ("dpm_solver", {"order": 2}, "logsnr", 2, [16, 32, 64, 128]),
    # The first two multistep steps are of order 1 and 2 (warm-up): their errors scale
    # like D''s variation at T (small, ~exp(lambda_T)) but only as h^2, so past ~100 steps
    # they, not the order-3 steps, dominate. 16-64 steps is the order-3 regime.
    "dpm3M": ("dpm_solver", {"order": 3}, "logsnr", 3, [16, 32, 64]),
    "dpm2S": ("dpm_solver", {"order": 2, "method": "singlestep"}, "logsnr", 2, [32, 64, 128]),
    "dpm3S": ("dpm_solver", {"order": 3, "method": "singlestep"}, "logsnr", 3, [32, 64, 128]),
    "heun": ("heun", {}, "karras", 2, [16, 32, 64, 128]),
    # UniPC: the corrector adds one order to the predictor's (measured slopes 1.89 and 2.90).
    "unipc1": ("unipc", {"order": 1}, "logsnr", 2, [16, 32, 64, 128]),
    "unipc2": ("unipc", {"order": 2}, "logsnr", 3, [16, 32, 64, 128]),
    # Noise prediction (DPM-Solver, Lu et al. 2022a): the same orders, but for 3M the
    # order-1 warm-up step now matters. Its local error is h^2 eps'' at T: ~0 under VP and
    # sub-VP (eps ~ x there), O(1) under VE (eps ~ (x - mean) / sigma, so eps' ~ eps). So
    # under VE the global error is second order (measured local slopes 2.2, 2.1, 2.0 from
    # 128 to 1024 steps) and under VP third order past ~64 steps (2.6, 2.9, 3.0).
    "dpm2M_noise": ("dpm_solver", {"order": 2, "prediction": "noise"}, "logsnr", 2, [16, 32, 64, 128]),
    "dpm3M_noise": ("dpm_solver", {"order": 3, "prediction": "noise"}, "logsnr",
                    {"vp": 3, "subvp": 3, "ve": 2},
                    {"vp": [64, 128, 256], "subvp": [64, 128, 256], "ve": [128, 256, 512]}),
    "unipc2_noise": ("unipc", {"order": 2, "prediction": "noise"}, "logsnr", 3, [16, 32, 64, 128]),
}


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_convergence_order(case, sde_name, ring64):
    """Global error vs a dopri5 reference shrinks like steps^-order (fitted slope within 0.3)."""
    name, options, grid, order, steps_list = ORDER_CASES[case]
    order = order[sde_name] if isinstance(order, dict) else order
    steps_list = steps_list[sde_name] if isinstance(steps_list, dict) else steps_list
    sde, x_T, ref = _problem(sde_name, ring64)
    errors = []
    for steps in steps_list:
        x = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler=name, steps=steps, x_T=x_T,
                      denoise=False, grid=grid, eps=EPS, **options)
        errors.append(float((x - ref).pow(2).sum(1).mean().sqrt()))  # RMS over the batch
    # The reference is accurate to ~1e-9, far below the smallest error measured here (~1e-5).
    assert min(errors) > 1e-7
    slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.3, f"{case} on {sde_name}: slope {slope:.2f}, errors {errors}"


@pytest.mark.parametrize("method", ["singlestep", "multistep"])
def test_adaptive_converges_with_tolerance(ring64, method):
    """DPM-Solver-12/23 and adaptive 2M/3M: tighter tolerances cost more NFE and land closer
    to the reference."""
    sde, x_T, ref = _problem("vp", ring64)
    results = {}
    for order in (2, 3):
        nfes, errors = [], []
        for rtol in (0.05, 0.005, 0.0005):
            x, nfe = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver_adaptive",
                               steps=1, x_T=x_T, denoise=False, eps=EPS, return_nfe=True,
                               order=order, rtol=rtol, atol=rtol / 5, method=method)
            nfes.append(nfe)
            errors.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
        results[order] = nfes, errors
        assert nfes[0] < nfes[1] < nfes[2]
        # A 10x tighter tolerance must buy a smaller global error; over two decades at least
        # 9x (an order-p controller gives ~10x per decade; the multistep 3M measured 2.5x then
        # 6.6x, its first decade damped by the fixed-size first step).
        assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 9, (order, nfes, errors)
        if method == "singlestep":  # and >= 3x in each decade (measured 5-10x)
            assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3, (order, nfes, errors)
    if method == "multistep":
        # One NFE per accepted step and free rejections: at rtol 5e-4 the adaptive 3M takes
        # fewer evaluations than the singlestep DPM-Solver-23 (measured ~2x fewer).
        _, nfe23 = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver_adaptive",
                             steps=1, x_T=x_T, denoise=False, eps=EPS, return_nfe=True,
                             order=3, rtol=0.0005, atol=0.0001)
        assert results[3][0][2] < nfe23, (results[3], nfe23)
    # The same solver through dpm_solver(method="adaptive"):
    y = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver", steps=1, x_T=x_T,
                  denoise=False, eps=EPS, method="adaptive", order=3, rtol=0.05, atol=0.01)
    z = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver_adaptive", steps=1,
                  x_T=x_T, denoise=False, eps=EPS, rtol=0.05, atol=0.01)
    assert torch.equal(y, z)


def test_multistep_order1_is_ddim(ring64):
    """DPM-Solver++ of order 1 and DDIM(eta=0) are the same exponential-integrator Euler step."""
    sde, x_T, _ = _problem("ve", ring64)
    kw = dict(x_T=x_T, denoise=False, eps=EPS, grid="logsnr", steps=7)
    a = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="ddim", **kw)
    b = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver", order=1, **kw)
    c = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver", order=1,
                  method="singlestep", **kw)
    d = sd.sample(ring64.score_fn(sde), sde, x_T.shape, sampler="dpm_solver", order=1,
                  prediction="noise", **kw)
    # Same arithmetic up to the order of float64 additions; with noise prediction the same
    # step too (int_0^h exp(-u) du eps = (1 - e^-h) eps is DDIM's eps coefficient).
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and torch.allclose(a, c, rtol=0, atol=1e-12)
    assert torch.allclose(a, d, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ DDIM and DDPM
def _discrete_ddim(score_fn, x, indices, alpha_bar, num_steps):
    """DDIM eq. 12 with eta = 0 on a DDPM chain: eps from the score, x0 from eps."""
    for n, m in zip(indices[:-1], indices[1:]):
        ab, ab_prev = alpha_bar(n), alpha_bar(m)
        t = torch.full((x.shape[0],), n / num_steps, dtype=x.dtype)
        eps = -math.sqrt(1 - ab) * score_fn(x, t)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def test_ddim_matches_discrete_ddim_on_ddpm(ring64):
    ddpm = sd.DDPM(1000)
    sde = ddpm.to_sde()
    score_fn = ring64.score_fn(sde)
    indices = [1000, 800, 600, 400, 200, 50, 1]
    ts = torch.tensor(indices, dtype=torch.float64) / ddpm.num_steps  # t = n / N
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddim(GuardedScore(score_fn), sde, x, ts)

    # (a) With alpha_bar(t) = scale(t)^2 the two are the same algebra: equal to round-off.
    scale2 = lambda n: float(sde.scale(torch.tensor(n / ddpm.num_steps, dtype=torch.float64))) ** 2
    exact = _discrete_ddim(score_fn, x, indices, scale2, ddpm.num_steps)
    assert (out - exact).abs().max() < 1e-12

    # (b) On DDPM's own alpha_bars the coefficients differ by the chain's discretization
    # error; measured in log-SNR that is delta = max_n |lambda_DDPM(n) - lambda(n/N)|
    # (0.047, at n = 1). To first order a step moves by at most |x0_hat| * delta, so the
    # six steps stay within 6 * delta * max|x0| with max|x0| <= 6 on this ring.
    on_ddpm = _discrete_ddim(score_fn, x, indices, lambda n: float(ddpm.alpha_bar(n)), ddpm.num_steps)
    ab = ddpm.alpha_bars
    lam_ddpm = 0.5 * torch.log(ab / (1 - ab))
    lam_sde = sde.log_snr(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    delta = float((lam_ddpm - lam_sde).abs().max())
    assert (out - on_ddpm).abs().max() < 6 * delta * 6.0


def _gaussian_target():
    mean = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    return sd.GaussianMixture(mean, torch.tensor([0.5], dtype=torch.float64))


def test_ddim_eta1_stochastic_and_weakly_correct():
    """eta = 1 on N(mu, 0.25 I): mean exact, variance bias of weak order 1 in the steps."""
    gm, sde, n = _gaussian_target(), sd.VPSDE(), 20000
    mu = gm.means[0]
    a, s = float(sde.scale(torch.tensor(EPS))), float(sde.std(torch.tensor(EPS)))
    var_exact = a ** 2 * 0.25 + s ** 2  # the marginal at EPS (denoise=False)

    def weak_error(steps, seed):
        x = sd.sample(gm.score_fn(sde), sde, (n, 2), sampler="ddim", eta=1.0, steps=steps,
                      generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                      denoise=False, eps=EPS, grid="logsnr")
        return float((x.mean(0) - a * mu).norm()), float(x.var(0).mean()) - var_exact, x

    m20, v20, x20 = weak_error(20, 0)
    m80, v80, _ = weak_error(80, 0)
    _, _, x20b = weak_error(20, 1)
    assert not torch.allclose(x20, x20b)  # stochastic: other seed, other samples
    # Monte-Carlo standard errors: |mean error| (2-D) ~ sqrt(2 var / n); the variance (2
    # coordinates pooled) ~ var * sqrt(2 / (2 n)). 4 SE bounds a correct value w.p. > 0.999.
    se_mean = math.sqrt(2 * var_exact / n)
    se_var = var_exact * math.sqrt(1.0 / n)
    # With the exact denoiser each step maps the right mean to the right mean (E[x0_hat] = E[x0]).
    assert m20 < 4 * se_mean and m80 < 4 * se_mean
    # The variance misses the posterior variance of x0 (the ancestral step uses only
    # E[x0 | x_t]): a negative bias of weak order 1, so 4x the steps -> ~4x smaller.
    # Both biases are > 10 SE here; the ratio must be 4^(1 +- 0.3) = 2.6 ... 6.1.
    assert v20 < -10 * se_var and v80 < -10 * se_var, (v20, v80, se_var)
    assert 4 ** 0.7 < v20 / v80 < 4 ** 1.3, (v20, v80)


# ------------------------------------------------------ samples of the ring mixture
SAMPLE_CASES = {
    "ddim": ("ddim", {}, "logsnr", 100),
    "ddim_eta1": ("ddim", {"eta": 1.0}, "logsnr", 200),
    "dpm2M": ("dpm_solver", {"order": 2}, "logsnr", 40),
    "dpm3M": ("dpm_solver", {"order": 3}, "logsnr", 25),
    "dpm3S": ("dpm_solver", {"order": 3, "method": "singlestep"}, "logsnr", 10),
    "dpm23_adaptive": ("dpm_solver_adaptive", {"rtol": 0.005, "atol": 0.001}, "uniform", 1),
    "dpm3M_adaptive": ("dpm_solver_adaptive", {"rtol": 0.005, "atol": 0.001, "method": "multistep"},
                       "uniform", 1),
    "heun": ("heun", {}, "karras", 25),
    "unipc": ("unipc", {"order": 2}, "logsnr", 25),
    "unipc_noise_karras": ("unipc", {"order": 2, "prediction": "noise"}, "karras", 25),
    "heun_churn": ("heun", {"S_churn": 20.0, "S_noise": 1.0}, "karras", 100),
}
N_SAMPLES, N_SETS = 2000, 4
# SW2 between two sets of 2000 ring samples is dominated by the random mode counts and
# fluctuates by a factor ~2 from draw to draw (0.08-0.19 over 12 draws); averaging N_SETS
# independent sets each side makes "within 1.5x the noise floor" a statement about the
# sampler rather than about one draw.


def _fresh_sets(gm, seed):
    g = torch.Generator().manual_seed(seed)
    return [gm.sample(N_SAMPLES, generator=g, dtype=torch.float64) for _ in range(N_SETS)]


@pytest.fixture(scope="module")
def ring_noise_floor(ring64):
    """Mean sliced W2 between independent exact sample sets of size N_SAMPLES."""
    pairs = zip(_fresh_sets(ring64, 7), _fresh_sets(ring64, 8))
    return sum(float(sliced_wasserstein(x, y, generator=11)) for x, y in pairs) / N_SETS


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_ring_sliced_w2_within_noise_floor(case, ring64, ring_noise_floor):
    name, options, grid, steps = SAMPLE_CASES[case]
    sde = sd.VPSDE()
    x = sd.sample(ring64.score_fn(sde), sde, (N_SAMPLES * N_SETS, 2), sampler=name, steps=steps,
                  grid=grid, generator=torch.Generator().manual_seed(3), dtype=torch.float64, **options)
    pairs = zip(x.split(N_SAMPLES), _fresh_sets(ring64, 99))
    sw = sum(float(sliced_wasserstein(xs, y, generator=11)) for xs, y in pairs) / N_SETS
    assert sw < 1.5 * ring_noise_floor, f"{case}: SW2 {sw:.4f} vs noise floor {ring_noise_floor:.4f}"


# ------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("name,options", [("ddim", {"eta": 0.7}), ("heun", {"S_churn": 5.0}),
                                          ("dpm_solver", {"order": 3})])
def test_same_generator_same_samples(name, options, ring64):
    sde = sd.VESDE(0.01, 10.0)

    def run(seed):
        return sd.sample(ring64.score_fn(sde), sde, (50, 2), sampler=name, steps=8, grid="karras",
                         generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


@pytest.mark.parametrize("name,options,match", [
    ("ddim", {"eta": 1.5}, r"eta must lie in \[0, 1\]"),
    ("ddim", {"eta": -0.1}, r"eta must lie in \[0, 1\]"),
    ("dpm_solver", {"order": 4}, r"order must be one of \(1, 2, 3\)"),
    ("dpm_solver", {"order": 0}, r"order must be one of \(1, 2, 3\)"),
    ("dpm_solver", {"method": "rk4"}, r"method must be one of \('multistep', 'singlestep', 'adaptive'\)"),
    ("dpm_solver_adaptive", {"order": 1}, r"order must be 2 .* or 3"),
    ("dpm_solver_adaptive", {"rtol": 0.0}, r"rtol must be a finite number > 0"),
    ("dpm_solver_adaptive", {"method": "rk45"}, r"method must be one of \('singlestep', 'multistep'\)"),
    ("dpm_solver", {"method": "singlestep", "corrector": True}, r"corrector=True needs method='multistep'"),
    ("dpm_solver", {"prediction": "x0"}, r"prediction must be one of \('data', 'noise'\)"),
    ("dpm_solver", {"prediction": "noise", "method": "singlestep"}, r"prediction='noise' is implemented for"),
    ("unipc", {"prediction": "eps"}, r"prediction must be one of"),
    ("heun", {"S_churn": -1.0}, r"S_churn must be a number >= 0"),
    ("heun", {"S_tmin": 2.0, "S_tmax": 1.0}, r"S_tmin <= S_tmax"),
])
def test_bad_options(name, options, match, ring64):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=match):
        sd.sample(ring64.score_fn(sde), sde, (4, 2), sampler=name, steps=3, **options)


@pytest.mark.parametrize("name,options,nfe_of_steps", [
    ("ddim", {}, lambda n: n), ("dpm_solver", {"order": 3}, lambda n: n),
    ("dpm_solver", {"order": 3, "method": "singlestep"}, lambda n: 3 * n),
    ("unipc", {"order": 2, "prediction": "noise"}, lambda n: n),
    ("heun", {}, lambda n: 2 * n - 1), ("heun", {"final_euler": False}, lambda n: 2 * n),
])
def test_nfe_callback_dtype(name, options, nfe_of_steps, ring64):
    """Documented NFE counts, one callback per step with a denoised estimate, float32 in -> float32 out."""
    sde = sd.SubVPSDE()
    calls = []
    x, nfe = sd.sample(ring64.score_fn(sde), sde, (16, 2), sampler=name, steps=6, denoise=False,
                       generator=torch.Generator().manual_seed(0), return_nfe=True, dtype=torch.float32,
                       callback=lambda **kw: calls.append(kw), **options)
    assert nfe == nfe_of_steps(6) and x.dtype == torch.float32
    assert [c["step"] for c in calls] == list(range(6))
    assert all(c["denoised"].shape == x.shape and c["x"].dtype == torch.float32 for c in calls)
    assert calls[-1]["t"] == pytest.approx(EPS)


@pytest.mark.slow
def test_steps_benchmark_smoke(tmp_path):
    """``benchmarks.steps.run`` on two samplers writes JSON, markdown and PNG."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.steps import run
    res = run(quick=True, out_dir=tmp_path, samplers=["ddim", "dpm_solver_adaptive"],
              measure_overhead=False, log=lambda *a: None)
    assert {p.name for p in tmp_path.iterdir()} >= {"steps.json", "steps.md", "steps.png"}
    runs = res["problems"]["ring2d"]["runs"]
    assert runs and all("error" not in r for r in runs)


def test_steps_benchmark_to_zero_variants():
    """The ``*_to0`` benchmark variants: ``nfe - 1`` steps on the uniform grid of ``nfe``
    intervals of ``[0, T]`` (so ``eps = T / nfe``), then the Tweedie step, all in budget."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.steps import run_problem
    gm = ring_mixture()
    res = run_problem("ring2d", gm, 200, nfes=[5, 10], tolerances=(), names=["unipc"], log=lambda *a: None)
    rows = [r for r in res["runs"] if r["sampler"] == "unipc_3_to0"]
    assert [r["budget"] for r in rows] == [5, 10]
    for r in rows:
        assert r["nfe"] == r["budget"] and r["options"]["eps"] == pytest.approx(1.0 / r["budget"])
    sde = sd.VPSDE()
    x = sd.sample(gm.score_fn(sde), sde, (200, 2), sampler="unipc", order=3, steps=4, grid="uniform",
                  eps=0.2, denoise=True, lower_order_final=False, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(0))
    fresh = gm.sample(200, generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    assert rows[0]["sw2"] == pytest.approx(float(sliced_wasserstein(x, fresh, num_projections=256,
                                                                    generator=17)))
