"""Custom time grids (``sample(grid=<decreasing times>)``) and DPM-Solver++ 2M's two weightings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.samplers._common import GuardedScore
from sdediff.samplers.dpm_solver import dpm_solver

from _sampler_problems import ring

VP = sd.VPSDE()


pytestmark = pytest.mark.usefixtures("one_thread")


def _x_T(n=16, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", ["ddim", "dpm_solver", "heun", "pc", "unipc"])
def test_a_grid_tensor_equals_the_named_grid(name):
    ts = sd.time_grid(VP, 7, eps=1e-3, kind="logsnr")
    score, x_T = ring().score_fn(VP), _x_T()
    kw = dict(sampler=name, x_T=x_T, generator=torch.Generator().manual_seed(1))
    a = sd.sample(score, VP, x_T.shape, steps=7, grid="logsnr", **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    b = sd.sample(score, VP, x_T.shape, grid=ts.tolist(), **kw)
    assert torch.equal(a, b)


def test_grid_ending_at_zero_lands_through_the_denoiser():
    """DDIM with diffusers' set_alpha_to_one=True: the last step returns x0_hat at grid[-2];
    denoise is not applied again, and the NFE is one per interval."""
    gm, x_T = ring(), _x_T()
    ddpm = sd.DDPM(1000)
    sde = ddpm.to_sde()
    # diffusers' DDIM, 10 "leading" steps of 1000: timesteps 900, 800, ..., 0 -> t = (k + 1) / N.
    ks = list(range(900, -1, -100))
    grid = [(k + 1) / 1000 for k in ks] + [0.0]
    x, nfe = sd.sample(gm.score_fn(sde), sde, x_T.shape, sampler="ddim", grid=grid, x_T=x_T,
                       return_nfe=True)
    assert nfe == len(grid) - 1
    # By hand: DDIM eq. 12 on the grid, then x0_hat at the last positive time.
    y = x_T.clone()
    for t, t_next in zip(grid[:-1], grid[1:]):
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = float(sde.scale(tt)), float(sde.std(tt))
        eps = -s * gm.score_fn(sde)(y, tt.expand(y.shape[0]))
        x0 = (y - s * eps) / a
        if t_next == 0.0:
            y = x0
            break
        tn = torch.tensor([t_next], dtype=torch.float64)
        y = float(sde.scale(tn)) * x0 + float(sde.std(tn)) * eps
    torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    # The same with denoise=False: the landing is the grid's, not the optional denoising.
    x2 = sd.sample(gm.score_fn(sde), sde, x_T.shape, sampler="ddim", grid=grid, x_T=x_T, denoise=False)
    assert torch.equal(x, x2)


def test_grid_starting_below_T_places_the_prior_there():
    gm = ring()
    grid = torch.tensor([0.981, 0.5, 0.1, 0.0], dtype=torch.float64)
    seen = []
    x = sd.sample(lambda x, t: (seen.append(float(t[0])), gm.score_fn(VP)(x, t))[1], VP, (8, 2),
                  sampler="ddim", grid=grid, generator=0, dtype=torch.float64)
    assert seen == pytest.approx([0.981, 0.5, 0.1]) and x.shape == (8, 2)
    # A two-point grid ending at 0 is one denoiser step.
    _, nfe = sd.sample(gm.score_fn(VP), VP, (8, 2), sampler="ddim", grid=[0.5, 0.0], generator=0,
                       return_nfe=True)
    assert nfe == 1


@pytest.mark.parametrize("grid,match", [
    ([1.0, 0.5, 0.7, 0.1], "decreasing"), ([1.0, 1.0, 0.1], "decreasing"),
    ([1.5, 0.5, 0.1], r"\[0, T\]"), ([1.0, 0.5, -0.1], r"\[0, T\]"),
    ([1.0, float("nan"), 0.1], "finite"), ([0.5], "at least 2"), (torch.ones(2, 2), "1-D"),
    ("cosine", "grid must be one of"),
])
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match="grid") as info:
        sd.sample(ring().score_fn(VP), VP, (4, 2), sampler="ddim", grid=grid, generator=0)
    assert info.match(match)


def test_steps_and_eps_must_agree_with_a_grid():
    score = ring().score_fn(VP)
    with pytest.raises(ValueError, match="steps=3 disagrees"):
        sd.sample(score, VP, (4, 2), sampler="ddim", grid=[1.0, 0.5, 0.1], steps=3)
    with pytest.raises(ValueError, match="eps=0.001 disagrees"):
        sd.sample(score, VP, (4, 2), sampler="ddim", grid=[1.0, 0.5, 0.1], eps=1e-3)
    sd.sample(score, VP, (4, 2), sampler="ddim", grid=[1.0, 0.5, 0.1], steps=2, eps=0.1)
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.sample(lambda x, t: -x, _NonLinear(), (4, 2), sampler="euler", grid=[1.0, 0.5, 0.0],
                  denoise=False)


class _NonLinear(sd.SDE):
    def sde(self, x, t):
        return -x, torch.ones(x.shape[0], dtype=x.dtype)

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z):
        return -0.5 * z.pow(2).flatten(1).sum(1)


# ----------------------------------------------------------- DPM-Solver++ 2M: exact vs midpoint
def _reference(gm, sde, x_T, eps):
    from torchdiffeq import odeint
    rev = sde.reverse(gm.score_fn(sde), probability_flow=True)
    ts = torch.tensor([sde.T, eps], dtype=torch.float64)
    return odeint(lambda t, x: rev.sde(x, t)[0], x_T, ts, rtol=1e-10, atol=1e-10, method="dopri5",
                  options=dict(first_step=1e-4, step_t=ts[-1:]))[-1]


@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_2m_midpoint_and_exact_are_both_second_order(prediction):
    gm, sde, eps = ring(), VP, 1e-3
    x_T = sde.prior_sampling((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _reference(gm, sde, x_T, eps)
    steps = [16, 32, 64, 128]
    for solver_type in ("exact", "midpoint"):
        errs = []
        for n in steps:
            x = sd.sample(gm.score_fn(sde), sde, x_T.shape, sampler="dpm_solver", order=2, steps=n,
                          x_T=x_T, denoise=False, grid="logsnr", eps=eps, prediction=prediction,
                          solver_type=solver_type)
            errs.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
        slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
        assert abs(slope - 2) <= 0.3, (solver_type, prediction, slope, errs)


def test_2m_midpoint_differs_from_exact_by_h_cubed_per_step():
    """One two-node step after a first-order one, in log-SNR steps h, h: the two weightings
    differ by O(h^3) (fitted slope 3 +- 0.3), starting from the same state and history."""
    gm, sde = ring(), VP
    x0 = _x_T(32, 5) * 0.5
    lam0 = float(sde.log_snr(torch.tensor(0.5, dtype=torch.float64)))
    hs = [0.2, 0.1, 0.05, 0.025]
    diffs = []
    for h in hs:
        ts = sde.t_from_log_snr(torch.tensor([lam0, lam0 + h, lam0 + 2 * h], dtype=torch.float64))
        out = [dpm_solver(GuardedScore(gm.score_fn(sde)), sde, x0, ts, order=2, lower_order_final=False,
                          solver_type=st) for st in ("exact", "midpoint")]
        diffs.append(float((out[0] - out[1]).abs().max()))
    slope = np.polyfit(np.log(hs), np.log(diffs), 1)[0]
    assert abs(slope - 3) <= 0.3, (slope, diffs)


def test_midpoint_weights_are_the_paper_formula():
    from sdediff.samplers.dpm_solver import midpoint_weights
    h, h_prev = 0.3, 0.2
    w = midpoint_weights([0.0, -h_prev], h)
    r = h_prev / h
    c = -math.expm1(-h)
    assert w == pytest.approx([c * (1 + 1 / (2 * r)), -c / (2 * r)], rel=1e-15)


@pytest.mark.parametrize("options", [{"solver_type": "heun"}, {"solver_type": "midpoint", "method": "singlestep"},
                                     {"solver_type": "midpoint", "corrector": True}])
def test_bad_solver_type(options):
    with pytest.raises(ValueError, match="solver_type"):
        sd.sample(ring().score_fn(VP), VP, (4, 2), sampler="dpm_solver", steps=3, **options)
