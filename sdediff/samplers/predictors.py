"""Predictors: one step of a reverse-time integrator from ``t_i`` down to ``t_{i+1}``.

A predictor is ``step(score, sde, x, i, grid, noise) -> (x_next, score_at_x)``, ``noise``
a noise source (``noise.randn_like(x)``, see :mod:`sdediff._random`);
``grid`` is a :class:`Grid` holding the time grid and, for linear SDEs, the schedule
coefficients at every grid time as Python floats (computed once per run, so the
hot path does scalar arithmetic only). Time runs backwards: ``dt = t_i - t_{i+1} > 0``.

Each predictor is also registered as a standalone sampler (a predictor-corrector
loop with no corrector) in :mod:`sdediff.samplers.pc`.

Predictors: ``euler_maruyama`` (reverse SDE), ``reverse_diffusion`` (the reverse of
the forward discretization, Song et al. 2021), ``ancestral`` (the exact Gaussian
posterior step: DDPM for VP, SMLD for VE) and ``euler`` (probability-flow ODE).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor

from ..sde import SDE, LinearSDE, ReverseSDE, broadcast_like

__all__ = ["Grid", "PREDICTORS", "euler_maruyama_step", "reverse_diffusion_step", "ancestral_step",
           "euler_step"]


@dataclasses.dataclass
class Grid:
    """A decreasing time grid and the schedule at each of its times.

    Attributes:
        t: the ``steps + 1`` times, ``t[0] = T`` down to ``t[-1] = eps``.
        scale, std, g: ``a(t)``, ``s(t)``, ``g(t)`` at each time (linear SDEs;
            ``None`` otherwise).
        reverse: the reverse SDE, whose :meth:`~sdediff.sde.ReverseSDE.drift` is the step's drift.
        flow: the probability-flow ODE.
    """

    t: list[float]
    scale: list[float] | None = None
    std: list[float] | None = None
    g: list[float] | None = None
    reverse: ReverseSDE | None = None
    flow: ReverseSDE | None = None

    @property
    def linear(self) -> bool:
        return self.scale is not None

    @classmethod
    def build(cls, sde: SDE, ts: Tensor, score: Callable) -> "Grid":
        """Tabulate the schedule on ``ts`` (one vectorized call per coefficient)."""
        t64 = ts.detach().to(device="cpu", dtype=torch.float64)
        grid = cls(t=t64.tolist(), reverse=sde.reverse(score), flow=sde.reverse(score, probability_flow=True))
        if isinstance(sde, LinearSDE):
            grid.scale = sde.scale(t64).tolist()
            grid.std = sde.std(t64).tolist()
            grid.g = sde.g(t64).tolist()
        if grid.reverse.linear:
            grid.reverse.tabulate(t64)
            grid.flow.tabulate(t64)
        return grid

    def require_linear(self, what: str) -> None:
        if not self.linear:
            raise ValueError(f"{what} needs a LinearSDE (scale/std); use sampler='sde' or "
                             "sampler='ode' for a general SDE")


def _add_noise(x: Tensor, diffusion: Tensor, noise) -> Tensor:
    """``x + diffusion * z`` for a diffusion of shape ``(B,)`` or ``x``'s shape."""
    z = noise.randn_like(x)
    if diffusion.shape != x.shape:
        diffusion = broadcast_like(diffusion, x)
    return x.addcmul_(diffusion, z)


def euler_maruyama_step(score, sde: SDE, x: Tensor, i: int, grid: Grid, noise):
    """Euler-Maruyama on the reverse SDE ``dx = [f - g^2 score] dt + g dW_bar`` (weak order 1).

    ``x_{i+1} = x_i - [f(x_i, t_i) - g(t_i)^2 score(x_i, t_i)] dt + g(t_i) sqrt(dt) z``.
    """
    t, dt = grid.t[i], grid.t[i] - grid.t[i + 1]
    if grid.reverse.linear:
        sc = score(x, t)
        x_next = torch.add(x, grid.reverse.drift(x, t, sc), alpha=-dt)
        return x_next.add_(noise.randn_like(x), alpha=grid.g[i] * math.sqrt(dt)), sc
    drift, diffusion = grid.reverse.sde(x, t)  # the reverse drift in forward time
    x_next = x - drift * dt
    return _add_noise(x_next, diffusion * math.sqrt(dt), noise), None


def reverse_diffusion_step(score, sde: SDE, x: Tensor, i: int, grid: Grid, noise):
    """Reverse-diffusion predictor (Song et al. 2021, eq. 46): undo one forward discretization step.

    With the forward step ``x_t = x_{t-dt} + f + G z`` (``sde.discretize``; exact Gaussian
    for linear SDEs: ``f = (r - 1) x``, ``r = a(t)/a(t-dt)``, ``G^2 = s(t)^2 - r^2 s(t-dt)^2``)
    the reverse step is ``x_{t-dt} = x_t - f + G^2 score(x_t, t) + G z``.
    """
    t, dt = grid.t[i], grid.t[i] - grid.t[i + 1]
    if grid.linear:
        r = grid.scale[i] / grid.scale[i + 1]
        G2 = max(grid.std[i] ** 2 - (r * grid.std[i + 1]) ** 2, 0.0)
        sc = score(x, t)
        x_next = x * (2.0 - r)  # x - f = x - (r - 1) x
        x_next.add_(sc, alpha=G2)
        return x_next.add_(noise.randn_like(x), alpha=math.sqrt(G2)), sc
    rev_f, G = grid.reverse.discretize(x, t, dt)
    return _add_noise(x - rev_f, G, noise), None


def ancestral_step(score, sde: SDE, x: Tensor, i: int, grid: Grid, noise):
    """Ancestral sampling: draw from ``q(x_{t'} | x_t, x0 = x0_hat)``, ``x0_hat`` from Tweedie.

    For a linear SDE with ``t' < t``, ``r = a(t)/a(t')`` and ``v = s(t)^2 - r^2 s(t')^2``
    (the variance of ``x_t | x_{t'}``), the Gaussian posterior is
    ``mean = (v a(t') / s(t)^2) x0_hat + (r s(t')^2 / s(t)^2) x_t``,
    ``var = s(t')^2 v / s(t)^2``. For VP this is DDPM's ancestral step with
    ``beta_n = v`` and ``sigma_n^2 = beta~_n`` (Ho et al. 2020, eqs. 6-7); for VE (``r = 1``)
    SMLD's ``x + (sigma^2 - sigma'^2) score`` with variance ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2``.
    Substituting Tweedie's ``x0_hat = (x + s(t)^2 score) / a(t)`` simplifies the mean to
    ``(x + v score) / r``. Noise is added at every step, the last one included: the state
    then follows the marginal at ``eps``, and ``sample(denoise=True)`` does the final Tweedie step.
    """
    grid.require_linear("the ancestral predictor")
    t = grid.t[i]
    a, s = grid.scale[i], grid.std[i]
    a_next, s_next = grid.scale[i + 1], grid.std[i + 1]
    r = a / a_next
    v = max(s ** 2 - (r * s_next) ** 2, 0.0)
    sc = score(x, t)
    x_next = x * (1.0 / r)  # posterior mean (x + v score) / r
    x_next.add_(sc, alpha=v / r)
    sigma = s_next * math.sqrt(v) / s  # posterior std
    return x_next.add_(noise.randn_like(x), alpha=sigma), sc


def euler_step(score, sde: SDE, x: Tensor, i: int, grid: Grid, noise):
    """Euler on the probability-flow ODE ``dx/dt = f - g^2 score / 2`` (deterministic, order 1)."""
    t, dt = grid.t[i], grid.t[i] - grid.t[i + 1]
    sc = score(x, t)
    return torch.add(x, grid.flow.drift(x, t, sc), alpha=-dt), sc


#: name -> predictor step function.
PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
    "euler": euler_step,
}
