"""Predictor-corrector sampling (Song et al. 2021, Algorithm 1) and its special cases.

Order of operations at each grid time ``t_i``, ``i = 0 .. N-1`` (as in the reference
code): first ``n_corrector_steps`` corrector steps at ``t_i`` (Langevin moves towards
``p_{t_i}``), then one predictor step from ``t_i`` to ``t_{i+1}``. The corrector never
runs at the final time ``eps``; the state returned is the predictor's at ``t_N = eps``.

Registered here:

* ``pc``: any predictor with any corrector (``2`` NFE/step with the default one corrector step);
* ``euler_maruyama``, ``reverse_diffusion``, ``ancestral``, ``euler``: a predictor alone;
* ``langevin``, ``ald``: a corrector alone, annealed over the grid: at step ``i`` it runs
  ``n_corrector_steps`` steps at ``t_{i+1}``, so the last ones run at ``eps``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._random import as_noise
from . import register_sampler
from .correctors import CORRECTORS, LANGEVIN_NORMS
from ._common import step_range
from .predictors import PREDICTORS, Grid

__all__ = ["pc_sampler", "run_pc"]


def _check_options(predictor, corrector, n_corrector_steps, snr, step_size, norm):
    if predictor is not None and predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; allowed: {', '.join(PREDICTORS)} or None")
    if corrector is not None and corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; allowed: {', '.join(CORRECTORS)} or None")
    if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be an int >= 0, got {n_corrector_steps!r}")
    for name, value in (("snr", snr), ("step_size", step_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if norm not in LANGEVIN_NORMS:
        raise ValueError(f"norm must be one of {LANGEVIN_NORMS}, got {norm!r}")


def _none(name):
    return None if name in (None, "none") else name


def _denoised(grid: Grid, x: Tensor, sc: Tensor | None, i: int) -> Tensor | None:
    """Tweedie's ``E[x0 | x_{t_i}] = (x + s^2 score) / a`` from a score already computed."""
    if sc is None or not grid.linear:
        return None
    return (x + grid.std[i] ** 2 * sc) / grid.scale[i]


@torch.no_grad()
def run_pc(score, sde, x: Tensor, ts: Tensor, *, predictor: str | None, corrector: str | None,
           n_corrector_steps: int = 1, snr: float = 0.16, step_size: float = 0.1, norm: str = "batch",
           generator: torch.Generator | None = None, progress: bool = False,
           callback: Callable | None = None, desc: str = "pc") -> Tensor:
    """The predictor-corrector loop shared by every sampler of this module.

    Args:
        score: the (guarded) score function.
        sde: the forward SDE.
        x: the state at ``ts[0]``.
        ts: the decreasing time grid.
        predictor: a name from ``PREDICTORS`` or ``None`` (corrector only, annealed).
        corrector: a name from ``CORRECTORS`` or ``None``.
        n_corrector_steps: corrector steps per grid time, ``>= 0``.
        snr: the ``langevin`` signal-to-noise ratio, ``> 0``.
        step_size: the ``ald`` step size relative to ``s(t)^2``, ``> 0``.
        norm: ``"example"`` or ``"batch"``: how ``langevin`` measures the norms.
        generator: the source of the noise: a ``torch.Generator``, an int seed, ``None``
            (torch's global generator) or a noise source (``sample(seeds=...)``).
        progress: show a tqdm bar.
        callback: called as ``callback(step=i, t=t_{i+1}, x=x, denoised=...)`` after each step;
            ``denoised`` is Tweedie's estimate from the last score at ``t_i`` (linear SDEs), or None.
        desc: the progress bar's label.

    Returns:
        The state at ``ts[-1]``.
    """
    predictor, corrector = _none(predictor), _none(corrector)
    _check_options(predictor, corrector, n_corrector_steps, snr, step_size, norm)
    if predictor is None and (corrector is None or n_corrector_steps == 0):
        raise ValueError("need a predictor, or a corrector with n_corrector_steps >= 1")
    noise = as_noise(generator)
    if noise.per_example and corrector == "langevin" and norm == "batch":
        raise ValueError("seeds= promises results independent of the batch, but the langevin "
                         "corrector's step size with norm='batch' averages over the batch: pass "
                         "norm='example' or corrector='ald' (or None)")
    grid = Grid.build(sde, ts, score)
    predict = PREDICTORS[predictor] if predictor is not None else None
    correct = CORRECTORS[corrector] if corrector is not None else None
    c_opts = {"langevin": {"snr": snr, "norm": norm}, "ald": {"step_size": step_size}}.get(corrector, {})
    n_steps = len(grid.t) - 1
    for i in step_range(n_steps, progress, desc):
        score.step = i
        sc, x_prev, i_sc = None, x, i
        if predict is None:
            # Corrector only: anneal to t_{i+1}.
            for _ in range(n_corrector_steps):
                x = correct(score, sde, x, i + 1, grid, noise, **c_opts)
            x_prev, i_sc = x, i + 1
        else:
            for _ in range(n_corrector_steps if correct is not None else 0):
                x = correct(score, sde, x, i, grid, noise, **c_opts)  # corrector first, at t_i
            x_prev = x
            x, sc = predict(score, sde, x, i, grid, noise)  # then predictor t_i -> t_{i+1}
        if callback is not None:
            callback(step=i, t=grid.t[i + 1], x=x, denoised=_denoised(grid, x_prev, sc, i_sc))
    return x


@register_sampler("pc", nfe_per_step=2, order=1, stochastic=True)
def pc_sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None,
               predictor: str = "reverse_diffusion", corrector: str = "langevin", n_corrector_steps: int = 1,
               snr: float = 0.16, step_size: float = 0.1, norm: str = "batch") -> Tensor:
    """Predictor-corrector sampler (Song et al. 2021, Alg. 1): corrector steps at t_i, then a predictor step.

    Options: ``predictor`` (``euler_maruyama``, ``reverse_diffusion``, ``ancestral``, ``euler``),
    ``corrector`` (``langevin``, ``ald`` or None), ``n_corrector_steps`` (default 1; NFE per
    step is ``1 + n_corrector_steps``), ``snr`` (langevin, default 0.16), ``step_size`` (ald,
    default 0.1), ``norm`` (langevin: ``"example"`` or ``"batch"``).
    """
    return run_pc(score, sde, x, ts, predictor=predictor, corrector=corrector,
                  n_corrector_steps=n_corrector_steps, snr=snr, step_size=step_size, norm=norm,
                  generator=generator, progress=progress, callback=callback, desc="pc")


def _register_predictor(name: str, order: float, stochastic: bool, linear_only: bool, doc: str):
    def sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None) -> Tensor:
        return run_pc(score, sde, x, ts, predictor=name, corrector=None, n_corrector_steps=0,
                      generator=generator, progress=progress, callback=callback, desc=name)

    sampler.__name__ = sampler.__qualname__ = f"{name}_sampler"
    sampler.__doc__ = doc
    register_sampler(name, nfe_per_step=1, order=order, stochastic=stochastic,
                     linear_only=linear_only)(sampler)
    return sampler


euler_maruyama_sampler = _register_predictor(
    "euler_maruyama", 1, True, False,
    "Euler-Maruyama on the reverse SDE (weak order 1), 1 NFE/step; any SDE.")
reverse_diffusion_sampler = _register_predictor(
    "reverse_diffusion", 1, True, False,
    "Reverse-diffusion predictor (Song et al. 2021): inverts the forward discretization, 1 NFE/step.")
ancestral_sampler = _register_predictor(
    "ancestral", 1, True, True,
    "Ancestral sampling from the exact Gaussian posterior (DDPM for VP, SMLD for VE), 1 NFE/step.")
euler_sampler = _register_predictor(
    "euler", 1, False, False,
    "Euler on the probability-flow ODE (order 1, deterministic), 1 NFE/step; any SDE.")


@register_sampler("langevin", nfe_per_step=1, order=1, stochastic=True)
def langevin_sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None,
                     n_corrector_steps: int = 1, snr: float = 0.16, norm: str = "batch") -> Tensor:
    """Langevin corrector alone (signal-to-noise rule), annealed over the grid; n_corrector_steps NFE/step."""
    return run_pc(score, sde, x, ts, predictor=None, corrector="langevin",
                  n_corrector_steps=n_corrector_steps, snr=snr, norm=norm, generator=generator,
                  progress=progress, callback=callback, desc="langevin")


@register_sampler("ald", nfe_per_step=1, order=1, stochastic=True, linear_only=True)
def ald_sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None,
                n_corrector_steps: int = 1, step_size: float = 0.1) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019), step size step_size * s(t)^2; n_corrector_steps NFE/step."""
    return run_pc(score, sde, x, ts, predictor=None, corrector="ald",
                  n_corrector_steps=n_corrector_steps, step_size=step_size, generator=generator,
                  progress=progress, callback=callback, desc="ald")
