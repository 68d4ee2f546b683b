"""DDIM (Song, Meng, Ermon 2021) for any linear SDE ``x_t = a(t) x0 + s(t) z``.

With ``x0_hat = E[x0 | x_t]`` (Tweedie, one NFE) and ``eps_hat = (x_t - a x0_hat) / s``,
one step from ``t`` to ``t'`` (DDIM eq. 12, with ``sqrt(alpha_bar) -> a``,
``sqrt(1 - alpha_bar) -> s``) is::

    x_t' = a' x0_hat + sqrt(s'^2 - c^2) eps_hat + c z,   c = eta s' sqrt(1 - exp(-2 h)),

where ``h = lambda(t') - lambda(t)`` and ``lambda = log(a / s)`` (the log-SNR). ``c^2`` is
``eta^2`` times the variance of the Gaussian posterior ``q(x_t' | x_t, x0)``; for VP it is
DDIM's ``sigma_t(eta)^2 = (1 - abar') / (1 - abar) (1 - abar / abar')``.
``eta = 0`` gives ``x_t' = (s'/s) x_t + a' (1 - e^{-h}) x0_hat``: the exponential-integrator
Euler step of the probability-flow ODE in the variables ``(x / a, s / a)`` (first order,
identical to DPM-Solver++ of order 1). ``eta = 1`` samples the posterior with ``x0``
replaced by ``x0_hat``: DDPM-like ancestral sampling.

Also home of the helpers the other linear-SDE samplers share: :func:`schedule` (the
coefficients of a time grid as Python floats, computed once per call) and
:func:`tweedie` (the denoiser from one score evaluation).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sde import LinearSDE
from . import register_sampler
from .._random import as_noise
from ._common import step_range, tweedie

__all__ = ["ddim", "schedule", "tweedie"]


def schedule(sde: LinearSDE, ts: Tensor) -> tuple[list[float], list[float], list[float]]:
    """``a(t)``, ``s(t)`` and ``lambda(t) = log(a(t) / s(t))`` at every time of ``ts``.

    Every example shares the step's time, so the coefficients are scalars: they are
    computed once, vectorized over the grid in float64, and returned as Python floats.

    Args:
        sde: a linear SDE (``scale``, ``std``, ``log_snr``).
        ts: a 1-D tensor of times in ``(0, T]``.

    Returns:
        Three lists of floats: ``scale``, ``std`` and ``log_snr`` at ``ts``.

    Raises:
        ValueError: if ``scale`` or ``std`` is not finite and positive at some time of ``ts``
            (``lambda`` would be infinite or undefined); the message names the time and the
            likely cause.
    """
    ts64 = ts.detach().to(dtype=torch.float64)
    a, s = (c.tolist() for c in sde.scale_and_std(ts64))
    for name, values in (("scale", a), ("std", s)):
        k = next((k for k, v in enumerate(values) if not (math.isfinite(v) and v > 0.0)), None)
        if k is not None:
            raise ValueError(_schedule_failure(sde, name, float(ts64[k]), values[k]))
    lam = [math.log(ai / si) for ai, si in zip(a, s)]
    return a, s, lam


def _schedule_failure(sde: LinearSDE, name: str, t: float, value: float) -> str:
    """Why ``scale`` or ``std`` is unusable at ``t``, in words."""
    where = f"{name}(t) = {value:.6g} at t = {t:.6g} for {sde!r}"
    if name == "std" and value == 0.0 and t == 0.0:
        return f"{where}: the grid must stay above t = 0 (use eps > 0)"
    if name == "std" and value == 0.0:
        return (f"{where}: the SDE injects no noise up to this time (g(t) = 0?), so the "
                "log-SNR log(scale/std) is infinite; a linear-SDE sampler needs std(t) > 0 for t > 0")
    if name == "scale" and value == 0.0:
        return (f"{where}: the signal scale underflowed to 0 (exp(int_0^t f) is below the "
                "smallest float64, e.g. a VPSDE with a huge beta_max), so the log-SNR is -inf; "
                "use a smaller beta_max, a shorter T, or sampler='sde' / 'ode'")
    return f"{where}: it must be finite and > 0 (check the SDE's f(t) and g(t))"


def _check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (0: deterministic DDIM, 1: ancestral), got {value!r}")
    return float(value)


@register_sampler("ddim", nfe_per_step=1, order=1, stochastic=False, linear_only=True)
def ddim(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
         progress: bool = False, callback=None, eta: float = 0.0) -> Tensor:
    """DDIM (Song, Meng, Ermon 2021, eq. 12) for any linear SDE; ``eta`` in [0, 1], 1 NFE/step.

    Args:
        score: the guarded score function ``score(x, t)``.
        sde: the linear SDE the score belongs to.
        x: the state at ``ts[0]``.
        ts: decreasing times, ``ts[0]`` to ``ts[-1]``.
        generator: source of the noise when ``eta > 0``: a ``torch.Generator``, an int seed,
            ``None`` (torch's global generator) or a noise source (``sample(seeds=...)``).
        progress: show a tqdm bar.
        callback: ``callback(step=i, t=t, x=x, denoised=x0_hat)`` after each step.
        eta: ``0`` deterministic (first-order probability-flow solver), ``1`` ancestral;
            values between interpolate the injected noise (DDIM eq. 16).

    Returns:
        The state at ``ts[-1]``.

    Raises:
        ValueError: ``eta`` outside ``[0, 1]``.
    """
    eta = _check_unit_interval("eta", eta)
    noise = as_noise(generator)
    a, s, lam = schedule(sde, ts)
    t = ts.tolist()
    for i in step_range(len(t) - 1, progress, "ddim"):
        score.step = i
        x0_hat = tweedie(score, x, t[i], a[i], s[i])
        h = lam[i + 1] - lam[i]
        if eta == 0.0:
            # x' = (s'/s) x + a' (1 - e^{-h}) x0_hat  (exponential-integrator Euler step)
            x = x.mul(s[i + 1] / s[i]).add_(x0_hat, alpha=-a[i + 1] * math.expm1(-h))
        else:
            c = eta * s[i + 1] * math.sqrt(-math.expm1(-2.0 * h))  # eta * posterior std
            eps_hat = (x - a[i] * x0_hat).div_(s[i])
            x = torch.add(eps_hat.mul_(math.sqrt(max(s[i + 1] ** 2 - c * c, 0.0))),
                          x0_hat, alpha=a[i + 1])
            x.add_(noise.randn_like(x), alpha=c)
        if callback is not None:
            callback(step=i, t=t[i + 1], x=x, denoised=x0_hat)
    return x
