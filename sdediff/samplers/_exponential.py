"""The exponential-integrator pieces the DPM-Solver family shares (multistep, singlestep, adaptive).

In the log-SNR ``lambda`` a step of the probability-flow ODE of a linear SDE integrates the
denoiser against ``exp(u - h)``; with the denoiser replaced by a polynomial through known
values, that integral is a weighted sum: :func:`exponential_weights` (exact moments of the
Lagrange basis) or :func:`midpoint_weights` (Lu et al. 2022b, Algorithm 2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sde import LinearSDE

__all__ = ["exponential_weights", "midpoint_weights"]

METHODS = ("multistep", "singlestep", "adaptive")
ORDERS = (1, 2, 3)
PREDICTIONS = ("data", "noise")
SOLVER_TYPES = ("exact", "midpoint")


def _moments(h: float, n: int = 3) -> list[float]:
    """``I_j(h) = int_0^h u^j exp(u - h) du`` for ``j = 0 .. n-1``.

    Integration by parts gives ``I_0 = 1 - e^{-h}`` and ``I_j = h^j - j I_{j-1}``; for
    small ``h`` these cancel, so there the series ``I_j = j! sum_m (-1)^m h^(j+1+m) / (j+1+m)!``
    is used instead (16 terms: truncation below 1e-17 relative for ``h < 0.1``).
    """
    if h >= 0.1:
        out = [-math.expm1(-h)]
        for j in range(1, n):
            out.append(h ** j - j * out[-1])
        return out
    out = []
    for j in range(n):
        term = h ** (j + 1) / (j + 1)  # m = 0: j! h^(j+1) / (j+1)!
        total = 0.0
        for m in range(16):
            total += term
            term *= -h / (j + 2 + m)
            if abs(term) < 1e-18 * abs(total):
                break
        out.append(total)
    return out


def _weights(nodes: list[float], h: float) -> list[float]:
    """``w_k = int_0^h exp(u - h) L_k(u) du`` for the Lagrange basis ``L_k`` on ``nodes``.

    The polynomial ``sum_k D_k L_k(u)`` interpolates the denoiser values ``D_k`` at
    ``lambda_r + u_k`` (``u = 0`` is the current point; older points have ``u < 0``,
    a corrector's new point ``u = h``); its integral against ``exp(u - h)`` is
    ``sum_k w_k D_k``. ``L_k`` is expanded in powers of ``u`` and integrated with the
    moments ``I_j(h)``.
    """
    n = len(nodes)
    moments = _moments(h, n)
    if n == 1:
        return moments[:1]
    i0, i1 = moments[0], moments[1]
    if n == 2:  # the closed forms of the common cases, then the general expansion
        u0, u1 = nodes
        return [(i1 - u1 * i0) / (u0 - u1), (i1 - u0 * i0) / (u1 - u0)]
    if n == 3:
        u0, u1, u2 = nodes
        i2 = moments[2]
        return [(i2 - (u1 + u2) * i1 + u1 * u2 * i0) / ((u0 - u1) * (u0 - u2)),
                (i2 - (u0 + u2) * i1 + u0 * u2 * i0) / ((u1 - u0) * (u1 - u2)),
                (i2 - (u0 + u1) * i1 + u0 * u1 * i0) / ((u2 - u0) * (u2 - u1))]
    out = []
    for k, u_k in enumerate(nodes):
        coeffs, denom = [1.0], 1.0  # ascending powers of u of prod_{m != k} (u - u_m)
        for m, u_m in enumerate(nodes):
            if m == k:
                continue
            coeffs = [(coeffs[j - 1] if j > 0 else 0.0) - u_m * (coeffs[j] if j < len(coeffs) else 0.0)
                      for j in range(len(coeffs) + 1)]
            denom *= u_k - u_m
        out.append(sum(c * i for c, i in zip(coeffs, moments)) / denom)
    return out


def _combine(x: Tensor, ratio: float, a_next: float, weights: list[float], ds: list[Tensor]) -> Tensor:
    """``ratio * x + a_next * sum_k w_k D_k`` with one allocation."""
    out = x.mul(ratio)
    for w, d in zip(weights, ds):
        out.add_(d, alpha=a_next * w)
    return out


def _check_options(order, method, prediction: str = "data") -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "noise" and method != "multistep":
        raise ValueError(f"prediction='noise' is implemented for method='multistep', got {method!r}")
    if isinstance(order, bool) or order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if method == "adaptive" and order not in (2, 3):
        raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23) with "
                         f"method='adaptive', got {order!r}")


def _times_at(sde: LinearSDE, lam: list[float], like: Tensor) -> tuple[list[float], list[float], list[float]]:
    """Times, ``a`` and ``s`` at the log-SNRs ``lam`` (``sde.t_from_log_snr``, vectorized)."""
    t = sde.t_from_log_snr(torch.tensor(lam, dtype=torch.float64, device=like.device))
    t = t.clamp(0.0, sde.T)
    return t.tolist(), sde.scale(t).tolist(), sde.std(t).tolist()


def midpoint_weights(nodes: list[float], h: float) -> list[float]:
    """The 2M weights of Lu et al. 2022b, Algorithm 2 (diffusers' ``solver_type="midpoint"``).

    With the current point at ``u = 0`` and the previous one at ``u = -h_prev``
    (``r = h_prev / h``) the update is
    ``x_t = (s_t / s_s) x_s - a_t (e^{-h} - 1) [D_0 + (D_0 - D_1) / (2 r)]``: the weights
    ``(1 - e^{-h}) (1 + 1 / (2 r))`` and ``-(1 - e^{-h}) / (2 r)``. They replace the exact
    moment ``I_1(h) = int_0^h u e^{u - h} du`` of :func:`exponential_weights` by
    ``h I_0(h) / 2``: an ``O(h^3)`` change per step, so the method stays second order.
    The same weights serve the noise-prediction update (DPM-Solver's midpoint 2M).
    """
    u0, u1 = nodes
    if u0 != 0.0 or not u1 < 0.0:
        raise ValueError(f"midpoint weights need nodes (0, -h_prev), got {nodes}")
    i0 = -math.expm1(-h)
    half_inv_r = 0.5 * h / -u1
    return [i0 * (1.0 + half_inv_r), -i0 * half_inv_r]


#: The public name of :func:`_weights`.
exponential_weights = _weights
