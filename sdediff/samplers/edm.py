"""Heun's second-order sampler of Karras et al. 2022 ("EDM", Algorithm 2) for any linear SDE.

Karras et al. (section 4, eq. 4) write a linear SDE as ``x = a(t) y`` with ``y`` the data
plus noise of level ``sigma(t) = s(t) / a(t)``. In ``(y, sigma)`` the probability-flow ODE
is the same for every schedule (their recommended ``s = 1, sigma(t) = t``)::

    dy / dsigma = (y - D(y; sigma)) / sigma = -s(t) score(a(t) y, t),

with ``D = E[x0 | x_t]`` the denoiser. Heun's method is applied to this ODE with
``sigma`` as the integration variable; ``a(t)`` only converts ``y`` back to ``x`` for the
score. Stochastic churn (Algorithm 2, lines 4-6) first raises the noise level from
``sigma`` to ``sigma_hat = (1 + gamma) sigma`` by adding fresh noise, which moves the
state to the larger time ``t_hat = sde.t_from_log_snr(-log sigma_hat)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import as_noise
from ..sde import LinearSDE
from . import register_sampler
from ._common import step_range
from .ddim import schedule

__all__ = ["heun"]


def _check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@register_sampler("heun", nfe_per_step=2, order=2, stochastic=False, linear_only=True)
def heun(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
         progress: bool = False, callback=None, S_churn: float = 0.0, S_tmin: float = 0.0,
         S_tmax: float = float("inf"), S_noise: float = 1.0, final_euler: bool = True) -> Tensor:
    """Heun / EDM sampler (Karras et al. 2022, Algorithm 2) in ``(x / a, s / a)``; 2 NFE/step.

    The declared cost is 2 NFE per step; with ``final_euler=True`` (EDM's choice) the last
    step is a plain Euler step, so a run costs ``2 steps - 1`` NFE. ``S_churn = 0`` (the
    default) is deterministic; with churn the sampler is stochastic.

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        S_churn: total churn; each step in ``[S_tmin, S_tmax]`` uses
            ``gamma = min(S_churn / steps, sqrt(2) - 1)``.
        S_tmin, S_tmax: the noise-level range ``sigma = s / a`` where churn applies.
        S_noise: std multiplier of the added noise (slightly above 1 offsets the
            denoiser's tendency to remove too much noise).
        final_euler: take the last step with Euler (first order, one NFE).

    Returns:
        The state at ``ts[-1]``.

    Raises:
        ValueError: negative ``S_churn``/``S_noise``/``S_tmin``, or ``S_tmin > S_tmax``.
    """
    S_churn = _check_nonnegative("S_churn", S_churn)
    S_noise = _check_nonnegative("S_noise", S_noise)
    S_tmin = _check_nonnegative("S_tmin", S_tmin)
    if not S_tmin <= S_tmax:
        raise ValueError(f"need S_tmin <= S_tmax, got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")
    noise = as_noise(generator)
    a, s, _ = schedule(sde, ts)
    t = ts.tolist()
    n = len(t) - 1
    sigma = [si / ai for ai, si in zip(a, s)]
    sigma_T = None  # noise level at T, the ceiling for churn (computed on first use)
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)
    y = x / a[0]
    for i in step_range(n, progress, "heun"):
        score.step = i
        t_cur, a_cur, s_cur, sig = t[i], a[i], s[i], sigma[i]
        if gamma_max > 0 and S_tmin <= sig <= S_tmax:
            # Increase noise temporarily: sigma -> sigma_hat, t -> t_hat (Alg. 2, lines 4-6).
            if sigma_T is None:
                t_end = torch.tensor([sde.T], dtype=torch.float64, device=x.device)
                sigma_T = float(sde.std(t_end) / sde.scale(t_end))
            sig_hat = min(sig * (1.0 + gamma_max), sigma_T)
            if sig_hat > sig:
                lam_hat = torch.tensor([-math.log(sig_hat)], dtype=torch.float64, device=x.device)
                t_hat = sde.t_from_log_snr(lam_hat).clamp(0.0, sde.T)
                t_cur, a_cur, s_cur = float(t_hat), float(sde.scale(t_hat)), float(sde.std(t_hat))
                y = y.add(noise.randn_like(y), alpha=S_noise * math.sqrt(sig_hat ** 2 - sig ** 2))
                sig = s_cur / a_cur
        # Euler step: d = dy/dsigma = -s score(a y, t)  (Alg. 2, lines 7-8)
        d = score(y * a_cur, t_cur).mul(-s_cur)
        denoised = None if callback is None else y - sig * d  # only the callback reads it
        y_next = torch.add(y, d, alpha=sigma[i + 1] - sig)
        if not (final_euler and i == n - 1):
            # Second-order correction: average the slopes at both ends (lines 9-11).
            d_next = score(y_next * a[i + 1], t[i + 1]).mul(-s[i + 1])
            y_next = torch.add(y, d.add_(d_next), alpha=0.5 * (sigma[i + 1] - sig))
        y = y_next
        if callback is not None:
            callback(step=i, t=t[i + 1], x=y * a[i + 1], denoised=denoised)
    return y * a[n]
