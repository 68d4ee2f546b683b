"""Inpainting against the oracle's exact posterior (float64).

Metric: the squared Frechet distance between Gaussians fitted to the unobserved coordinates of
the samples and to exact posterior samples of the same size (``sd.gaussian_frechet``); its noise
floor is the same statistic between two independent exact sample sets.
"""
import pytest
import torch

import sdediff as sd

from conftest import random_mixture, ring_mixture

F64 = torch.float64


def ring_problem():
    """The ring, ``x_1 = 1`` observed: the posterior of ``x_2`` is bimodal (about +-4, 0.495 each)."""
    return ring_mixture(), torch.tensor([True, False]), torch.tensor([1.0, float("nan")], dtype=F64)


def mixture64_problem():
    """The 64-D mixture, the first 32 coordinates of one of its draws observed."""
    mix = random_mixture()
    x0 = mix.sample(1, generator=torch.Generator().manual_seed(7), dtype=F64)[0]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:32] = True
    return mix, mask, x0


def errors(mix, mask, observed, n, configs, seed=0):
    """Frechet distance of each config's samples to exact posterior samples, and the noise floor."""
    post = mix.condition(mask, observed)
    g = torch.Generator().manual_seed(seed)
    ref = post.sample(n, generator=g, dtype=F64)
    floor = float(sd.gaussian_frechet(post.sample(n, generator=g, dtype=F64), ref))
    sde = sd.VPSDE()
    out = {}
    for name, kw in configs.items():
        x, nfe = sd.inpaint(mix.score_fn(sde), sde, observed, mask, shape=(n, mix.dim), dtype=F64,
                            generator=torch.Generator().manual_seed(1), return_nfe=True, **kw)
        assert torch.equal(x[:, mask], observed[mask].expand(n, -1))
        out[name] = (float(sd.gaussian_frechet(x[:, ~mask], ref)), nfe)
    return out, floor


def at_nfe(nfe: int) -> dict:
    """Replacement, the default RePaint (resample 4, quadratic grid) and PiGDM at about ``nfe`` NFE."""
    return {"replacement": dict(method="replacement", steps=nfe - 1),
            "repaint": dict(method="repaint", resample=4, grid="quadratic", steps=round((nfe - 1) / 4)),
            "pigdm": dict(steps=nfe - 1)}  # the default method


# ------------------------------------------------------------------ accuracy
def test_default_is_pigdm_and_beats_replacement_on_the_ring():
    """At 25 NFE (n = 1500) the default (PiGDM) is far closer to the exact posterior than
    replacement is not (measured with n = 4000: 0.003 vs 0.28 excess over the floor)."""
    mix, mask, obs = ring_problem()
    res, floor = errors(mix, mask, obs, 1500, {k: v for k, v in at_nfe(25).items() if k != "repaint"})
    (rep, rep_nfe), (pg, pg_nfe) = res["replacement"], res["pigdm"]
    assert pg_nfe == rep_nfe == 25
    # common reference set; the floor itself is noisy at n = 1500 (0.0003-0.056 over seeds 0-2)
    assert pg - floor <= (rep - floor) / 3 and pg + 0.15 < rep, (res, floor)


def test_default_beats_replacement_on_mixture64():
    """The 64-D mixture, half observed, 25 NFE, n = 600: PiGDM's excess error is well below
    replacement's (measured with n = 2000: 0.038 vs 0.26 excess)."""
    mix, mask, obs = mixture64_problem()
    res, floor = errors(mix, mask, obs, 600, {k: v for k, v in at_nfe(25).items() if k != "repaint"})
    (rep, _), (pg, _) = res["replacement"], res["pigdm"]
    # the difference is what n = 600 resolves (seeds 0-2: 0.056-0.062 with a common reference)
    assert pg + 0.03 < rep, (res, floor)


def test_repaint_beats_replacement_on_the_ring():
    """At ~50 NFE (n = 1500): RePaint's excess error over the noise floor <= 1/3 of replacement's
    (measured with n = 4000: 0.015 vs 0.20 excess, floor 0.011)."""
    mix, mask, obs = ring_problem()
    res, floor = errors(mix, mask, obs, 1500, {k: v for k, v in at_nfe(50).items() if k != "pigdm"})
    (rep, rep_nfe), (rp, rp_nfe) = res["replacement"], res["repaint"]
    assert rp_nfe <= rep_nfe
    assert rp - floor <= (rep - floor) / 3, (res, floor)
    assert rp < 8 * floor + 0.03, (res, floor)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["ring", "mixture64"])
def test_pigdm_goal_at_50_nfe(problem):
    """The goal at 50 NFE with the benchmark's sample sizes (ring n = 4000, 64-D n = 2000): the
    default's excess error is at most 1/3 of replacement's on both data sets."""
    mix, mask, obs = ring_problem() if problem == "ring" else mixture64_problem()
    n = 4000 if problem == "ring" else 2000
    res, floor = errors(mix, mask, obs, n, {k: v for k, v in at_nfe(50).items() if k != "repaint"})
    assert res["pigdm"][1] == res["replacement"][1] == 50
    assert res["pigdm"][0] - floor <= (res["replacement"][0] - floor) / 3, (res, floor)


@pytest.mark.slow
def test_ring_error_vs_nfe():
    mix, mask, obs = ring_problem()
    rp = []
    for nfe in (25, 50, 100):
        res, floor = errors(mix, mask, obs, 2000, at_nfe(nfe))
        rp.append(res["repaint"][0])
        assert res["repaint"][0] < res["replacement"][0] / 2, (nfe, res)
        assert res["pigdm"][0] < res["replacement"][0] / 2, (nfe, res)
    assert rp[0] > rp[1] > rp[2], rp


@pytest.mark.slow
def test_mixture64_all_methods_near_the_posterior():
    """Half of the 64 coordinates observed. Measured (n = 2000, quadratic grid, floor 0.056): at
    ~50 NFE replacement 0.11, RePaint 0.33, PiGDM 0.024 excess -- RePaint does NOT win here (it
    spends its NFE on resampling, not steps). Asserted: all within 0.5 of the floor at ~100 NFE
    and replacement's error falls with NFE."""
    mix, mask, obs = mixture64_problem()
    res50, floor = errors(mix, mask, obs, 1000, at_nfe(50))
    res100, _ = errors(mix, mask, obs, 1000, at_nfe(100))
    assert res100["replacement"][0] < res50["replacement"][0]
    for name in ("replacement", "repaint", "pigdm"):
        assert res100[name][0] < floor + 0.5, (name, res100, floor)


# ------------------------------------------------------------------ shapes and the path
def test_shapes_and_exact_observations():
    sde = sd.VPSDE()
    mix, mask, obs = ring_problem()
    score = mix.score_fn(sde)
    kw = dict(method="repaint", steps=4, resample=2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = sd.inpaint(score, sde, obs, mask, shape=(5, 2), **kw)
    assert x.shape == (5, 2) and bool((x[:, 0] == 1.0).all()) and bool(torch.isfinite(x).all())
    batch_obs = torch.randn(5, 2, dtype=F64)
    batch_mask = torch.rand(5, 2) < 0.5
    x = sd.inpaint(score, sde, batch_obs, batch_mask, **kw)  # shape from observed
    assert torch.equal(x[batch_mask], batch_obs[batch_mask])
    x = sd.inpaint(score, sde, batch_obs, mask, **kw)  # an example-shaped mask with batched observations
    assert torch.equal(x[:, 0], batch_obs[:, 0])
    for sampler in ("heun", "dpm_solver", "pc", "reverse_diffusion"):
        x, nfe = sd.inpaint(score, sde, obs, mask, shape=(5, 2), sampler=sampler, method="replacement",
                            steps=3, dtype=F64, return_nfe=True)
        assert bool(torch.isfinite(x).all()) and bool((x[:, 0] == 1.0).all())
        per_step = sd.available_samplers()[sampler].nfe_per_step
        assert nfe == (2 * 3 - 1 if sampler == "heun" else per_step * 3) + 1, (sampler, nfe)


def test_pigdm_api():
    """The default is PiGDM with its own SDE-DPM-Solver++(2M): steps + 1 NFE, exact observations,
    a callback per step; with a named sampler it guides that sampler's steps."""
    import inspect
    assert inspect.signature(sd.inpaint).parameters["method"].default == "pigdm"
    assert "pigdm" in sd.guidance.INPAINT_METHODS
    sde = sd.VPSDE()
    mix, mask, obs = ring_problem()
    score = mix.score_fn(sde)
    seen = []
    x, nfe = sd.inpaint(score, sde, obs, mask, shape=(6, 2), steps=5, dtype=F64, return_nfe=True,
                        generator=torch.Generator().manual_seed(0), callback=lambda **k: seen.append(k["t"]))
    assert nfe == 6 and len(seen) == 5 and seen == sorted(seen, reverse=True)
    assert bool(torch.isfinite(x).all()) and bool((x[:, 0] == 1.0).all())
    again = sd.inpaint(score, sde, obs, mask, shape=(6, 2), steps=5, dtype=F64,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    batch_obs = torch.randn(6, 2, dtype=F64)
    batch_mask = torch.rand(6, 2, generator=torch.Generator().manual_seed(3)) < 0.5
    x = sd.inpaint(score, sde, batch_obs, batch_mask, steps=3)
    assert x.dtype == F64 and torch.equal(x[batch_mask], batch_obs[batch_mask])
    for sampler in ("ancestral", "ddim", "heun"):
        x, nfe = sd.inpaint(score, sde, obs, mask, shape=(6, 2), sampler=sampler, steps=3, dtype=F64,
                            return_nfe=True)
        assert bool(torch.isfinite(x).all()) and bool((x[:, 0] == 1.0).all())
        assert nfe == (5 if sampler == "heun" else 3) + 1, (sampler, nfe)


def test_pigdm_bad_input():
    sde = sd.VPSDE()
    mix, mask, obs = ring_problem()
    score = mix.score_fn(sde)
    with pytest.raises(ValueError, match="resample"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), resample=2)
    with pytest.raises(ValueError, match="takes no options"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), eta=1.0)

    def detached(x, t):
        with torch.no_grad():
            return score(x, t)

    with pytest.raises(TypeError, match="differentiates score_fn"):
        sd.inpaint(detached, sde, obs, mask, shape=(4, 2), steps=2, dtype=F64)
    x = sd.inpaint(detached, sde, obs, mask, shape=(4, 2), steps=2, dtype=F64, method="replacement")
    assert bool(torch.isfinite(x).all())


def test_repaint_path():
    assert sd.guidance.repaint_path(5) == [0, 1, 2, 3, 4, 5]
    path = sd.guidance.repaint_path(4, jump_length=1, resample=3)
    assert path[0] == 0 and path[-1] == 4
    assert all(abs(b - a) == 1 for a, b in zip(path, path[1:]))
    down = sum(b > a for a, b in zip(path, path[1:]))
    assert down == 4 + 2 * 3  # jump points 4, 3, 2 (index > jump_length), resample - 1 = 2 each
    path = sd.guidance.repaint_path(10, jump_length=5, resample=2)
    assert path == list(range(11)) + [9, 8, 7, 6, 5, 6, 7, 8, 9, 10]


def test_bad_input():
    sde = sd.VPSDE()
    mix, mask, obs = ring_problem()
    score = mix.score_fn(sde)
    with pytest.raises(ValueError, match="observed must have the example shape"):
        sd.inpaint(score, sde, torch.zeros(3, dtype=F64), mask, shape=(4, 2))
    with pytest.raises(ValueError, match="mask must have the example shape"):
        sd.inpaint(score, sde, obs, torch.ones(3, dtype=torch.bool), shape=(4, 2))
    with pytest.raises(ValueError, match="mask must have"):
        sd.inpaint(score, sde, torch.zeros(4, 2, dtype=F64), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        sd.inpaint(score, sde, obs, torch.tensor([1, 0]), shape=(4, 2))
    with pytest.raises(ValueError, match="pass shape"):
        sd.inpaint(score, sde, obs, mask)
    with pytest.raises(ValueError, match="observed must be finite"):
        sd.inpaint(score, sde, torch.tensor([float("nan"), 0.0]), mask, shape=(4, 2))
    with pytest.raises(ValueError, match="unknown method"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), method="magic")
    with pytest.raises(ValueError, match="unknown sampler"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), sampler="magic")
    with pytest.raises(ValueError, match="resample"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), method="replacement", resample=3)
    with pytest.raises(ValueError, match="jump_length"):
        sd.inpaint(score, sde, obs, mask, shape=(4, 2), jump_length=0)
