"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", data prediction) for any linear SDE.

In ``lambda = log(a / s)`` the probability-flow ODE has the exact solution
(Lu et al. 2022b, eq. 9)::

    x_t = (s_t / s_r) x_r + a_t int_0^h exp(u - h) D(lambda_r + u) du,   h = lambda_t - lambda_r,

with ``D = E[x0 | x]`` the denoiser. Every solver here replaces ``D`` by the polynomial
through some known values ``D(lambda_r + u_k)`` and integrates the polynomial exactly:
``int_0^h exp(u - h) L_k(u) du`` for the Lagrange basis ``L_k``, written with the moments
``I_j(h) = int_0^h u^j exp(u - h) du`` (:func:`_moments`). A polynomial of degree ``p - 1``
gives a method of order ``p``.

* ``multistep``: the nodes are the last ``order`` grid points (one NFE per step;
  lower orders while the history fills up). With ``prediction="noise"`` it is the
  multistep DPM-Solver of Lu et al. 2022a (the noise ``eps = -s score`` is the
  interpolated quantity; DEIS's log-rho multistep is the same method): in ``y = x / a``
  and ``sigma = s / a = exp(-lambda)`` the flow is ``dy/dsigma = eps``, so::

      x_t = (a_t / a_r) (x_r - s_r int_0^h exp(-u) eps(lambda_r + u) du),

  and ``int_0^h exp(-u) L_k(u) du`` is the same moment integral with the nodes
  mirrored, ``u -> h - u``.
* ``singlestep``: the nodes are intermediate points of the step at ``lambda_r + r h``,
  mapped back to time by ``sde.t_from_log_snr`` (``order`` NFE per step):
  order 2 uses ``r = 1/2``; order 3 is DPM-Solver-3 (``r = 1/3, 2/3``; the final
  update uses ``u = 0, 2h/3``, which is third order because the ``r = 2/3`` node makes
  the ``I_1`` weight absorb the quadratic term).
* ``adaptive``: DPM-Solver-12 / -23 (Lu et al. 2022a, section 3.4 and Algorithm 4):
  a singlestep pair of orders ``order - 1`` and ``order`` sharing their evaluations, an
  error controller on their difference, step sizes chosen in ``lambda``. With
  ``method="multistep"`` the pair is the multistep update of order ``p`` and ``p - 1``
  from the same stored denoisers: one NFE per accepted step, rejections free (measured on
  the oracle: the sample metrics reach their plateau in ~33 NFE instead of ~54).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..sde import LinearSDE
from . import register_sampler
from ._common import tweedie
from .ddim import schedule

__all__ = ["dpm_solver", "dpm_solver_adaptive", "unipc"]

METHODS = ("multistep", "singlestep", "adaptive")
ORDERS = (1, 2, 3)
PREDICTIONS = ("data", "noise")


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


@register_sampler("dpm_solver", nfe_per_step=1, order=2, stochastic=False, linear_only=True)
def dpm_solver(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator=None, progress: bool = False,
               callback=None, order: int = 2, method: str = "multistep",
               lower_order_final: bool = True, corrector: bool = False, prediction: str = "data",
               **adaptive_options) -> Tensor:
    """DPM-Solver++ (Lu et al. 2022b): multistep (1 NFE/step) or singlestep (``order`` NFE/step).

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        order: 1, 2 or 3 (1 is DDIM with ``eta = 0``).
        method: ``"multistep"`` (Algorithm 2 of Lu et al. 2022b; the declared 1 NFE/step),
            ``"singlestep"`` (``order`` NFE per step) or ``"adaptive"`` (see
            :func:`dpm_solver_adaptive`; ``ts`` gives only the two ends).
        lower_order_final: multistep with fewer than 15 steps: use order ``min(order,
            steps left)`` in the last steps, which is stabler at the large final
            log-SNR steps near ``eps``.
        corrector: multistep only: after each step, once the denoiser at the new point is
            known (it is needed for the next step anyway), redo the step with that value
            added as a node (an exponential Adams-Moulton corrector, the UniC of Zhao et
            al. 2023 with the exact integral of the interpolant): one order higher, no
            extra NFE. The next step starts from the corrected point but keeps the
            denoiser of the uncorrected one, as UniPC does. See the ``unipc`` sampler.
        prediction: multistep only: ``"data"`` (DPM-Solver++, the denoiser ``D`` is
            interpolated; the default) or ``"noise"`` (DPM-Solver, ``eps = -s score`` is;
            see the module notes). Same order, different error constants: data prediction
            is the steadier at very few steps with a log-SNR grid, noise prediction can be
            the more accurate on Karras grids (2-D ring, 10 NFE, UniPC-2 on Karras: per-mode
            Frechet 0.0037 against 0.20). Under VE, noise-prediction 3M is second order:
            the order-1 warm-up step's error ``h^2 eps''`` at ``T`` is not small there.
        **adaptive_options: ``rtol``, ``atol``, ``h_init``, ``theta`` for ``method="adaptive"``.

    Returns:
        The state at ``ts[-1]``.

    Raises:
        ValueError: ``order`` not in {1, 2, 3}, an unknown ``method`` or ``prediction``, or
            ``prediction="noise"`` with a method other than ``"multistep"``.
    """
    _check_options(order, method, prediction)
    if method == "adaptive":
        return dpm_solver_adaptive(score, sde, x, ts, progress=progress, callback=callback,
                                   order=order, **adaptive_options)
    if adaptive_options:
        raise TypeError(f"unexpected options for method={method!r}: {sorted(adaptive_options)}")
    if corrector and method != "multistep":
        raise ValueError(f"corrector=True needs method='multistep', got method={method!r}")
    a, s, lam = schedule(sde, ts)
    t = ts.tolist()
    n = len(t) - 1
    if method == "singlestep":
        return _singlestep(score, sde, x, t, a, s, lam, order, progress, callback)
    noise = prediction == "noise"

    def update(x_from: Tensor, i: int, j: int, nodes: list[float], values: list[Tensor]) -> Tensor:
        # x at grid point j from grid point i, the interpolant through `values` at `nodes`.
        h = lam[j] - lam[i]
        if noise:  # (a_j / a_i) (x_i - s_i sum_k w_k eps_k), the nodes mirrored
            ratio = a[j] / a[i]
            return _combine(x_from, ratio, -ratio * s[i], _weights([h - u for u in nodes], h), values)
        return _combine(x_from, s[j] / s[i], a[j], _weights(nodes, h), values)

    history: list[tuple[float, Tensor]] = []  # (lambda, D or eps) of the latest steps, newest first
    x_prev, p = x, 0  # the last step's start and node count, for the corrector
    desc = (f"unipc-{order}" if corrector else f"dpm_solver{'' if noise else '++'} {order}M")
    for i in tqdm(range(n), disable=not progress, desc=desc):
        score.step = i
        v0 = score(x, t[i]).mul(-s[i]) if noise else tweedie(score, x, t[i], a[i], s[i])
        if corrector and i > 0:
            # Redo step i-1 with the value at its end point (u = h) added to the p nodes it used.
            nodes = [history[k][0] - lam[i - 1] for k in range(p)] + [lam[i] - lam[i - 1]]
            x = update(x_prev, i - 1, i, nodes, [history[k][1] for k in range(p)] + [v0])
        history = [(lam[i], v0)] + history[:order - 1]
        p = len(history)  # warm-up: lower order until the history holds `order` values
        if lower_order_final and n < 15:
            p = min(p, n - i)
        x_prev = x
        x = update(x, i, i + 1, [history[k][0] - lam[i] for k in range(p)],  # u_k <= 0
                   [history[k][1] for k in range(p)])
        if callback is not None:
            denoised = torch.add(x_prev, v0, alpha=-s[i]).div_(a[i]) if noise else v0
            callback(step=i, t=t[i + 1], x=x, denoised=denoised)
    return x


@register_sampler("unipc", nfe_per_step=1, order=3, stochastic=False, linear_only=True)
def unipc(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator=None, progress: bool = False,
          callback=None, order: int = 2, lower_order_final: bool = True,
          prediction: str = "data") -> Tensor:
    """UniPC (Zhao et al. 2023): DPM-Solver++ multistep with the UniC corrector, 1 NFE/step.

    The predictor is the ``order``-node multistep update; the corrector redoes each step
    with the denoiser at its end point as one more node (integrated exactly against
    ``exp(u - h)``), reaching order ``order + 1`` without another evaluation. The final
    step is not corrected (that would cost one more NFE).

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        order: predictor order, 1-3 (``order=1``: a DDIM predictor with a trapezoid-like
            corrector, order 2).
        lower_order_final, prediction: as in :func:`dpm_solver` (``prediction="noise"``:
            UniPC with noise prediction, Zhao et al. 2023's ``predict_x0=False``).
    """
    return dpm_solver(score, sde, x, ts, progress=progress, callback=callback, order=order,
                      method="multistep", lower_order_final=lower_order_final, corrector=True,
                      prediction=prediction)


def _singlestep(score, sde, x, t, a, s, lam, order, progress, callback) -> Tensor:
    """Singlestep DPM-Solver++ of order 1-3 with intermediate points at ``lambda_r + r h``."""
    fractions = {1: [], 2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}[order]
    n = len(t) - 1
    mids = []  # per fraction r: (t, a, s) at lambda_i + r h_i for every step i
    for r in fractions:
        mids.append(_times_at(sde, [lam[i] + r * (lam[i + 1] - lam[i]) for i in range(n)], x))
    for i in tqdm(range(n), disable=not progress, desc=f"dpm_solver++ {order}S"):
        score.step = i
        h = lam[i + 1] - lam[i]
        d0 = tweedie(score, x, t[i], a[i], s[i])
        ds, nodes = [d0], [0.0]
        for j, r in enumerate(fractions):
            t_j, a_j, s_j = mids[j][0][i], mids[j][1][i], mids[j][2][i]
            # stage j: the order-(j+1) update from lambda_i to lambda_i + r h
            u = _combine(x, s_j / s[i], a_j, _weights(nodes, r * h), ds)
            ds.append(tweedie(score, u, t_j, a_j, s_j))
            nodes.append(r * h)
        if order == 3:  # DPM-Solver-3: final update through u = 0 and u = 2h/3 only
            ds, nodes = [ds[0], ds[2]], [0.0, nodes[2]]
        x = _combine(x, s[i + 1] / s[i], a[i + 1], _weights(nodes, h), ds)
        if callback is not None:
            callback(step=i, t=t[i + 1], x=x, denoised=d0)
    return x


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@register_sampler("dpm_solver_adaptive", nfe_per_step=None, order=3, stochastic=False, linear_only=True)
def dpm_solver_adaptive(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator=None,
                        progress: bool = False, callback=None, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9,
                        error_norm: str = "max", max_steps: int = 10_000,
                        method: str = "singlestep") -> Tensor:
    """Adaptive DPM-Solver-12/23 (Lu et al. 2022a, Algorithm 4), data prediction; NFE adaptive.

    With ``method="multistep"``, an adaptive DPM-Solver++ 2M/3M instead: see
    :func:`_adaptive_multistep` (one NFE per accepted step, rejections are free).

    Each attempted step from ``lambda_r`` with size ``h`` computes a lower-order
    (``order - 1``) and a higher-order (``order``) singlestep update that share their
    evaluations (order 3: ``r = 1/3`` then ``2/3``; order 2: ``r = 1/2``). The error
    ``E = max_batch RMS((x_high - x_low) / delta)`` with
    ``delta = max(atol, rtol max(|x_low|, |x|))`` (the largest per-example RMS, as Lu et al.
    do; ``error_norm="rms"`` takes the RMS over all entries instead, like torchdiffeq)
    accepts the step when ``E <= 1``;
    either way the next size is ``theta h E^(-1/order)``. The denoiser at the current
    point is reused across rejections, so an attempt costs ``order - 1`` NFE plus one
    per accepted step. ``ts`` supplies only its two ends.

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        order: 3 (DPM-Solver-23, default) or 2 (DPM-Solver-12).
        rtol, atol: relative and absolute tolerances of the error controller.
        h_init: the first step size in log-SNR.
        theta: the safety factor, in (0, 1].
        error_norm: ``"max"`` of the per-example RMS (default) or ``"rms"`` over the whole batch.
        max_steps: give up (RuntimeError) after this many attempted steps.
        method: ``"singlestep"`` (DPM-Solver-12/23, the published algorithm) or
            ``"multistep"`` (adaptive 2M/3M).

    Returns:
        The state at ``ts[-1]``.

    Raises:
        ValueError: bad ``order``, ``rtol``, ``atol``, ``h_init``, ``theta`` or ``method``.
        RuntimeError: the controller needed more than ``max_steps`` attempts.
    """
    _check_options(order, "adaptive")
    rtol, atol, h_init = (_check_positive(k, v) for k, v in (("rtol", rtol), ("atol", atol), ("h_init", h_init)))
    if not 0 < theta <= 1:
        raise ValueError(f"theta must lie in (0, 1], got {theta!r}")
    if error_norm not in ("rms", "max"):
        raise ValueError(f"error_norm must be one of ('rms', 'max'), got {error_norm!r}")
    if method not in ("singlestep", "multistep"):
        raise ValueError(f"method must be one of ('singlestep', 'multistep'), got {method!r}")
    if method == "multistep":
        return _adaptive_multistep(score, sde, x, ts, progress, callback, order, rtol, atol, h_init,
                                   theta, error_norm, max_steps)
    ends = torch.stack([ts[0], ts[-1]])
    (a_r, a_end), (s_r, s_end), (lam_r, lam_end) = schedule(sde, ends)
    t_r = float(ts[0])
    fractions = [1.0 / 3.0, 2.0 / 3.0] if order == 3 else [0.5]
    h = min(h_init, lam_end - lam_r)
    d0 = None  # denoiser at the current point, kept across rejected attempts
    accepted = 0
    bar = tqdm(total=lam_end - lam_r, disable=not progress, desc=f"dpm_solver-{order - 1}{order}")
    for attempt in range(max_steps):
        if lam_end - lam_r <= 1e-12 * max(1.0, abs(lam_end)):
            break
        score.step = accepted
        if d0 is None:
            d0 = tweedie(score, x, t_r, a_r, s_r)
        lam_next = lam_end if h >= lam_end - lam_r else lam_r + h
        h = lam_next - lam_r
        (t_mid, a_mid, s_mid) = _times_at(sde, [lam_r + r * h for r in fractions] + [lam_next], x)
        ds, nodes = [d0], [0.0]
        for j, r in enumerate(fractions):
            u = _combine(x, s_mid[j] / s_r, a_mid[j], _weights(nodes, r * h), ds)
            ds.append(tweedie(score, u, t_mid[j], a_mid[j], s_mid[j]))
            nodes.append(r * h)
        t_n, a_n, s_n = t_mid[-1], a_mid[-1], s_mid[-1]
        ratio = s_n / s_r
        if order == 3:  # lower: order 2 through u = 0, h/3; higher: DPM-Solver-3 through u = 0, 2h/3
            x_low = _combine(x, ratio, a_n, _weights(nodes[:2], h), ds[:2])
            x_high = _combine(x, ratio, a_n, _weights([0.0, nodes[2]], h), [ds[0], ds[2]])
        else:  # lower: DDIM; higher: order 2 through u = 0, h/2
            x_low = _combine(x, ratio, a_n, _weights(nodes[:1], h), ds[:1])
            x_high = _combine(x, ratio, a_n, _weights(nodes, h), ds)
        err = _scaled_error(x, x_low, x_high, rtol, atol, error_norm)
        if err <= 1.0:
            x, t_r, a_r, s_r = x_high, t_n, a_n, s_n
            bar.update(h)
            lam_r = lam_next
            if callback is not None:
                callback(step=accepted, t=t_r, x=x, denoised=d0)
            accepted += 1
            d0 = None
        h = theta * h * max(err, 1e-10) ** (-1.0 / order)
    else:
        bar.close()
        raise RuntimeError(f"dpm_solver_adaptive: no convergence after max_steps={max_steps} attempts "
                           f"(reached t = {t_r:.6g}); loosen rtol/atol")
    bar.close()
    return x


def _scaled_error(x: Tensor, x_low: Tensor, x_high: Tensor, rtol: float, atol: float, norm: str) -> float:
    """``|x_high - x_low| / max(atol, rtol max(|x_low|, |x|))``: largest per-example RMS or batch RMS."""
    delta = torch.maximum(x_low.abs(), x.abs()).mul_(rtol).clamp_min_(atol)
    sq = ((x_high - x_low) / delta).pow(2)
    err = float(sq.mean().sqrt() if norm == "rms" else sq.flatten(1).mean(1).sqrt().max())
    if not math.isfinite(err):  # NaN/inf reached the state: no step size can fix that
        raise FloatingPointError("the adaptive solver's error estimate is NaN/inf")
    return err


# Largest ratio of consecutive step sizes of the adaptive multistep solver.
_MAX_GROWTH = 2.0


def _adaptive_multistep(score, sde: LinearSDE, x: Tensor, ts: Tensor, progress: bool, callback,
                        order: int, rtol: float, atol: float, h_init: float, theta: float,
                        error_norm: str, max_steps: int) -> Tensor:
    """Adaptive DPM-Solver++ multistep: an embedded pair of consecutive multistep orders.

    With the denoisers ``D`` of the last ``p`` accepted points (``p = order`` once the
    history has filled), a step of size ``h`` in ``lambda`` is the ``p``-node update
    (order ``p``) and, from the same values, the ``(p-1)``-node update (order ``p - 1``,
    local error ``O(h^p)``). Their scaled difference ``E`` (as in
    :func:`dpm_solver_adaptive`) accepts the step when ``E <= 1``, keeping the
    higher-order value, and sets the next size ``theta h E^(-1/p)``. Both updates reuse
    stored denoisers, so an attempt costs no evaluation: a rejected step is free and
    every accepted step costs exactly one NFE (the denoiser at the new point). The
    first step (one node, no error estimate) has size ``h_init``.
    """
    ends = torch.stack([ts[0], ts[-1]])
    (a_r, _), (s_r, _), (lam_r, lam_end) = schedule(sde, ends)
    t_r = float(ts[0])
    history: list[tuple[float, Tensor]] = []  # (lambda, D), newest first
    h = min(h_init, lam_end - lam_r)
    accepted = attempts = 0
    bar = tqdm(total=lam_end - lam_r, disable=not progress, desc=f"dpm_solver++ adaptive {order}M")
    while lam_end - lam_r > 1e-12 * max(1.0, abs(lam_end)):
        score.step = accepted
        d0 = tweedie(score, x, t_r, a_r, s_r)
        history = [(lam_r, d0)] + history[:order - 1]
        p = len(history)
        nodes = [lam_k - lam_r for lam_k, _ in history]
        ds = [d for _, d in history]
        while True:
            attempts += 1
            if attempts > max_steps:
                bar.close()
                raise RuntimeError(f"dpm_solver_adaptive: no convergence after max_steps={max_steps} "
                                   f"attempts (reached t = {t_r:.6g}); loosen rtol/atol")
            lam_next = lam_end if h >= lam_end - lam_r else lam_r + h
            h = lam_next - lam_r
            (t_n,), (a_n,), (s_n,) = _times_at(sde, [lam_next], x)
            ratio = s_n / s_r
            x_high = _combine(x, ratio, a_n, _weights(nodes, h), ds)
            if p == 1:  # no pair yet: the first step is taken as given
                err = 1.0
                break
            x_low = _combine(x, ratio, a_n, _weights(nodes[:p - 1], h), ds[:p - 1])
            err = _scaled_error(x, x_low, x_high, rtol, atol, error_norm)
            if err <= 1.0:
                break
            h = theta * h * err ** (-1.0 / p)
        x, t_r, a_r, s_r = x_high, t_n, a_n, s_n
        bar.update(h)
        lam_r = lam_next
        if callback is not None:
            callback(step=accepted, t=t_r, x=x, denoised=d0)
        accepted += 1
        if p > 1:
            # Variable-step multistep: the interpolating polynomial through old nodes
            # extrapolates badly (and so does the error estimate) when a step is much
            # larger than the last, so growth is capped per step.
            h = min(theta * h * max(err, 1e-10) ** (-1.0 / p), _MAX_GROWTH * h)
    bar.close()
    return x
