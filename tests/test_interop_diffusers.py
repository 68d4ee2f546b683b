"""from_diffusers: the time convention, parameterizations, folders, and parity with diffusers' samplers."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import sdediff as sd
from _interop_helpers import OracleUNet, relative_error, tiny_unet

F64 = torch.float64


def fake_scheduler(alphas_cumprod, prediction_type="epsilon"):
    """Anything with ``alphas_cumprod`` and ``config.prediction_type`` is a scheduler here."""
    return types.SimpleNamespace(alphas_cumprod=alphas_cumprod,
                                 config=types.SimpleNamespace(prediction_type=prediction_type))


def linear_alphas_cumprod(N=1000):
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, N, dtype=F64), 0)


# ------------------------------------------------------------- conventions
class _Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, timesteps):
        self.seen = timesteps.clone()
        return types.SimpleNamespace(sample=torch.zeros_like(x))


def test_time_convention_and_quantize():
    ac = linear_alphas_cumprod()
    spy = _Spy()
    model = sd.from_diffusers(spy, fake_scheduler(ac))
    assert isinstance(model.sde, sd.DiscreteVPSDE)
    k = torch.tensor([0, 1, 499, 999])
    t = model.time_of(k)
    assert torch.equal(t, (k.double() + 1) / 1000)
    assert (model.sde.scale(t) ** 2 - ac[k]).abs().max() < 1e-12  # timestep k has alpha_bar[k]
    x = torch.zeros(4, 1, 2, 2, dtype=F64)
    model(x, t)
    assert (spy.seen - k.double()).abs().max() < 1e-9  # the network sees N t - 1
    model(x, torch.full((4,), 0.5004, dtype=F64))
    assert torch.allclose(spy.seen, torch.full((4,), 499.4, dtype=F64))  # continuous, not rounded
    sd.from_diffusers(spy, fake_scheduler(ac), quantize=True)(x, torch.full((4,), 0.5004, dtype=F64))
    assert torch.equal(spy.seen, torch.full((4,), 499.0, dtype=F64))


@pytest.mark.parametrize("times", ["per example", "one for the batch"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_every_prediction_type_gives_the_oracle_score(prediction_type, times):
    oracle = sd.GaussianMixture(*sd.ring_params())
    sde = sd.DiscreteVPSDE(alphas_cumprod=linear_alphas_cumprod())
    eps_unet = OracleUNet(oracle, sde)

    class Converted(torch.nn.Module):  # the same network, trained for another target
        def forward(self, x, k):
            eps = eps_unet(x, k).sample
            t = (k + 1) / 1000
            a, s = sde.scale(t)[:, None], sde.std(t)[:, None]
            x0 = (x - s * eps) / a
            out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]
            return types.SimpleNamespace(sample=out)

    model = sd.from_diffusers(Converted(), fake_scheduler(sde.alphas_cumprod, prediction_type))
    x = oracle.sample(64, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.98 + 0.01
    if times == "one for the batch":  # the samplers' case: a float look-up of a(t), s(t)
        t = torch.full((64,), 0.3717, dtype=F64)
    assert torch.allclose(model(x, t), oracle.score_fn(sde)(x, t), rtol=1e-9, atol=1e-9)
    assert torch.allclose(model.denoise(x, t), oracle.denoise(x, t, sde), rtol=1e-8, atol=1e-8)


@torch.no_grad()
def test_one_time_for_the_batch_equals_per_example_times():
    """The float look-up (every example at one time) and the tensor look-up give one score."""
    model = sd.from_diffusers(tiny_unet(), fake_scheduler(linear_alphas_cumprod()))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    mixed_t = torch.tensor([0.61, 0.2, 0.9], dtype=F64)
    for method in (model, model.eps, model.denoise):
        shared, mixed = method(x, 0.61), method(x, mixed_t)
        assert relative_error(mixed[0], shared[0]) < 1e-14
        assert relative_error(mixed[1], shared[1]) > 1e-3  # the times do differ


def test_the_network_dtype_follows_the_model():
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, k):
            seen.append((x.dtype, k.dtype))
            return types.SimpleNamespace(sample=x * self.w)

    model = sd.from_diffusers(Net(), fake_scheduler(linear_alphas_cumprod()))
    x = torch.zeros(2, 1, 2, 2, dtype=F64)
    assert model(x, 0.5).dtype == F64 and seen[-1] == (torch.float32, torch.float32)  # cast to the net's
    model.double()
    model(x, 0.5)
    assert seen[-1] == (F64, F64)


def test_learned_variance_keeps_the_first_channels():
    class TwoC(torch.nn.Module):
        def forward(self, x, k):
            return types.SimpleNamespace(sample=torch.cat([torch.ones_like(x), 7 * torch.ones_like(x)], 1))

    model = sd.from_diffusers(TwoC(), fake_scheduler(linear_alphas_cumprod()))
    x = torch.zeros(2, 3, 4, 4, dtype=F64)
    assert torch.equal(model.eps(x, torch.full((2,), 0.5, dtype=F64)), torch.ones_like(x))


# ---------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    ac = linear_alphas_cumprod()
    spy = _Spy()
    with pytest.raises(TypeError, match="scheduler must have alphas_cumprod"):
        sd.from_diffusers(spy, types.SimpleNamespace(config=types.SimpleNamespace(prediction_type="epsilon")))
    with pytest.raises(TypeError, match="needs a scheduler"):
        sd.from_diffusers(spy)
    with pytest.raises(ValueError, match="prediction_type.*'flow'"):
        sd.from_diffusers(spy, fake_scheduler(ac, "flow"))

    class Wrong(torch.nn.Module):
        def forward(self, x, k):
            return types.SimpleNamespace(sample=torch.zeros(x.shape[0], 3, 4, 4, dtype=x.dtype))

    model = sd.from_diffusers(Wrong(), fake_scheduler(ac))
    with pytest.raises(ValueError, match=r"unet returned shape \(2, 3, 4, 4\)"):
        model(torch.zeros(2, 1, 4, 4, dtype=F64), torch.full((2,), 0.5, dtype=F64))
    with pytest.raises(TypeError, match="unet must return a tensor"):
        sd.from_diffusers(lambda x, k: "nope", fake_scheduler(ac))(torch.zeros(2, 1), torch.full((2,), 0.5))


def test_folder_without_diffusers_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ImportError, match="pip install"):
        sd.from_diffusers(tmp_path)


def test_folder_errors(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        sd.from_diffusers(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no diffusers model"):
        sd.from_diffusers(tmp_path)
    tiny_unet().save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        sd.from_diffusers(tmp_path / "m")


# ------------------------------------------------------- save -> load -> same
@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_save_pretrained_load_identical_outputs(tmp_path, layout):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet(seed=3)
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    if layout == "model":
        unet.save_pretrained(tmp_path)
        scheduler.save_pretrained(tmp_path)
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    loaded = sd.from_diffusers(tmp_path, torch_dtype=F64)
    original = sd.from_diffusers(unet, scheduler)
    assert loaded.prediction_type == "v_prediction"
    assert torch.equal(loaded.sde.alphas_cumprod, original.sde.alphas_cumprod)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.01, 0.5, 0.97], dtype=F64)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), original(x, t))


# ---------------------------------------------------------- sampler parity
STEPS = 10


def _diffusers_run(unet, scheduler, x_T):
    x = x_T.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
    return x


def _grid(model, scheduler):
    """diffusers' timesteps as sdediff times, then the final step onto t = 0 (alpha_bar = 1)."""
    return torch.cat([model.time_of(scheduler.timesteps), torch.zeros(1, dtype=F64)])


@pytest.fixture(scope="module")
def unet():
    pytest.importorskip("diffusers")
    return tiny_unet()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)


def test_ddim_matches_diffusers(unet, x_T):
    from diffusers import DDIMScheduler

    # DDIM steps k -> k - N/steps on alphas_cumprod; the last one, from k = 0, goes to
    # alpha = 1 (set_alpha_to_one): Tweedie's denoiser at t = 1/N.
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(STEPS)
    ref = _diffusers_run(unet, scheduler, x_T)
    model = sd.from_diffusers(unet, scheduler)
    with torch.no_grad():
        x, nfe = sd.sample(model, model.sde, x_T.shape, sampler="ddim", grid=_grid(model, scheduler), x_T=x_T,
                           return_nfe=True)
    # measured 5.5e-8: diffusers computes the schedule's coefficients in float32
    assert relative_error(x, ref) < 1e-6
    assert nfe == STEPS


def _dpm(unet, x_T, solver_type, steps=STEPS):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type=solver_type)
    scheduler.set_timesteps(steps)
    return scheduler, _diffusers_run(unet, scheduler, x_T)


def _sdediff_2m(unet, scheduler, x_T, **options):
    model = sd.from_diffusers(unet, scheduler)
    # diffusers' last step (onto sigma = 0) is first order: the Tweedie landing; the steps
    # before it are all second order, so sdediff's order-lowering rule is switched off (the
    # recipe in dpm_solver's docstring; with it, 1.8e-5 at 10 steps).
    with torch.no_grad():
        return sd.sample(model, model.sde, x_T.shape, sampler="dpm_solver", grid=_grid(model, scheduler),
                         x_T=x_T, max_step_ratio=None, **options)


@pytest.mark.parametrize("steps", [STEPS, 50])
def test_dpm_solver_2m_midpoint_matches_diffusers(unet, x_T, steps):
    scheduler, ref = _dpm(unet, x_T, "midpoint", steps)
    x = _sdediff_2m(unet, scheduler, x_T, solver_type="midpoint")
    assert relative_error(x, ref) < 1e-6  # measured 6.6e-8, 2.3e-7 (float32 sigmas in diffusers)


def test_dpm_solver_2m_exact_integral_is_diffusers_heun_form(unet, x_T):
    # The exact integral of the linear interpolant is diffusers' solver_type="heun" update.
    scheduler, ref = _dpm(unet, x_T, "heun")
    x = _sdediff_2m(unet, scheduler, x_T)
    assert relative_error(x, ref) < 1e-6  # measured 7.4e-8


def test_dpm_solver_2m_exact_integral_agrees_with_midpoint_to_third_order_per_step(unet, x_T):
    # The two 2M forms differ by O(h^3) per step, O(h^2) over the run: doubling the steps
    # cuts the difference towards 4x (measured 4.9e-3, 2.1e-3, 6.4e-4, 1.8e-4 at 10, 20,
    # 40, 80 steps: ratios 2.3, 3.3, 3.6).
    diffs = []
    for steps in (10, 20, 40):
        scheduler, ref = _dpm(unet, x_T, "midpoint", steps)
        diffs.append(relative_error(_sdediff_2m(unet, scheduler, x_T), ref))
    assert diffs[0] < 1e-2 and diffs[2] < diffs[1] / 2.5, diffs


# --------------------------------------------------- the oracle through it
def _oracle_model(oracle):
    # diffusers' default 1000-step linear schedule; the likelihood solves it on the log-SNR clock
    # by default, smooth across the 999 knots where f and g jump.
    sde = sd.DiscreteVPSDE(alphas_cumprod=linear_alphas_cumprod())
    model = sd.from_diffusers(OracleUNet(oracle, sde), fake_scheduler(sde.alphas_cumprod))
    return model, model.sde


def test_oracle_eps_model_gives_the_exact_log_likelihood():
    oracle = sd.GaussianMixture(*sd.ring_params())
    model, sde = _oracle_model(oracle)
    x = oracle.sample(100, generator=torch.Generator().manual_seed(2), dtype=F64)
    res = sd.log_likelihood(model, sde, x, eps=1e-5, rtol=1e-5, atol=1e-5)
    exact = oracle.marginal_log_prob(x, 1e-5, sde)
    # the N(0, I) prior's mismatch (alpha_bar_N = 4e-5) included; measured 6.0e-5 nats in 122 NFE
    # (on the time clock, clock="t": 6.5e-3 in 434)
    assert float((res.logp - exact).abs().mean()) < 1e-3


def test_oracle_eps_model_bits_per_dim_on_8x8_images():
    g = torch.Generator().manual_seed(0)
    means = 0.5 * torch.rand(5, 64, generator=g, dtype=F64) - 0.25
    oracle = sd.GaussianMixture(means, torch.full((5,), 0.3, dtype=F64), torch.ones(5, dtype=F64))
    model, sde = _oracle_model(oracle)
    x = oracle.sample(6, generator=g, dtype=F64).reshape(6, 1, 8, 8)
    res = sd.log_likelihood(model, sde, x, eps=1e-5, rtol=1e-5, atol=1e-5,
                            prior_logp=lambda z: oracle.marginal_log_prob(z.reshape(z.shape[0], -1), sde.T, sde))
    exact = oracle.marginal_log_prob(x.reshape(6, -1), 1e-5, sde)
    # exact p_T closing; measured 6.0e-4 in 116 NFE (3.4e-6 at rtol = atol = 1e-7; the time clock
    # 1.4e-2 in 722 NFE, or 8e-13 in 7001 NFE stopping at every knot)
    assert float((res.logp - exact).abs().max()) < 1e-3
    bpd, exact_bpd = (sd.bits_per_dim(v, 64, num_levels=256) for v in (res.logp, exact))
    assert float((bpd - exact_bpd).abs().max()) < 1e-4


def test_a_float32_network_needs_no_cast_by_the_likelihood(recwarn):
    """An adapter casts to its network's dtype itself: float64 data, no warning, the float32 answer."""
    unet = tiny_unet().float()
    model = sd.from_diffusers(unet, fake_scheduler(linear_alphas_cumprod()))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64).clamp(-1, 1)
    res = sd.log_likelihood(model, model.sde, x, trace="gaussian", rtol=1e-3, atol=1e-3, generator=0)
    assert res.logp.dtype == F64 and bool(torch.isfinite(res.logp).all())
    assert not [w for w in recwarn if "parameters are" in str(w.message)]
