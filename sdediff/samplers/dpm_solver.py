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
* ``adaptive``: DPM-Solver-12 / -23, see :mod:`sdediff.samplers.adaptive`.

UniPC (the multistep update with the UniC corrector) is :mod:`sdediff.samplers.unipc`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..sde import LinearSDE
from . import register_sampler
from ._common import step_range, tweedie
from ._exponential import (SOLVER_TYPES, _check_options, _combine, _times_at, _weights, exponential_weights,
                           midpoint_weights)
from .adaptive import dpm_solver_adaptive
from .ddim import schedule

__all__ = ["dpm_solver", "exponential_weights", "midpoint_weights"]



@register_sampler("dpm_solver", nfe_per_step=1, order=2, stochastic=False, linear_only=True,
                  grid="quadratic", steps=20, denoise=False)
def dpm_solver(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator=None, progress: bool = False,
               callback=None, order: int = 2, method: str = "multistep",
               max_step_ratio: float | None = 1.0, lower_order_final: bool = False,
               corrector: bool = False, prediction: str = "data", solver_type: str = "exact",
               **adaptive_options) -> Tensor:
    """DPM-Solver++ (Lu et al. 2022b): multistep (1 NFE/step) or singlestep (``order`` NFE/step).

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        order: 1, 2 or 3 (1 is DDIM with ``eta = 0``).
        method: ``"multistep"`` (Algorithm 2 of Lu et al. 2022b; the declared 1 NFE/step),
            ``"singlestep"`` (``order`` NFE per step) or ``"adaptive"`` (see
            :func:`dpm_solver_adaptive`; ``ts`` gives only the two ends).
        max_step_ratio: multistep only: lower the order of a step while its log-SNR
            length ``h`` exceeds ``max_step_ratio`` times the log-SNR span of the nodes it
            extrapolates from (``lambda_i - lambda_{i-p+1}`` for ``p`` nodes); ``None`` never
            lowers it. A polynomial through ``p`` nodes extrapolated past their span amplifies
            their errors, which is what happens where the grid's steps grow (on every named
            grid, towards ``eps``). The rule adapts to the grid and the step count, where
            ``lower_order_final``'s did not (with it, 2M on the uniform grid got *worse* from
            10 to 20 steps: sliced W2 0.072 to 0.132 on the 2-D ring).
        lower_order_final: multistep with fewer than 15 steps: also use order ``min(order,
            steps left)`` in the last steps (the older rule; off by default).
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
        solver_type: multistep without corrector only: how a two-node (second-order) update
            integrates the linear interpolant. ``"exact"`` (the default) integrates it exactly
            against ``exp(u - h)`` (:func:`exponential_weights`); ``"midpoint"`` is the
            paper's Algorithm 2, ``x_t = (s_t/s_s) x_s - a_t (e^{-h} - 1) [D_0 + (D_0 - D_1)
            / (2 r)]`` with ``r = h_prev / h`` (:func:`midpoint_weights`; diffusers'
            ``DPMSolverMultistepScheduler(solver_type="midpoint")``). Both are second order
            and differ by ``O(h^3)`` per step; three-node updates are the same for both.
            diffusers' scheduler, step for step: ``sample(model, model.sde, shape,
            sampler="dpm_solver", grid=<its timesteps as times, then 0>, solver_type="midpoint",
            max_step_ratio=None)`` (it keeps order 2 up to the final landing; the grid is
            ``torch.cat([model.time_of(scheduler.timesteps), torch.zeros(1)])`` for a
            :func:`~sdediff.from_diffusers` model).
        **adaptive_options: ``rtol``, ``atol``, ``h_init``, ``theta`` for ``method="adaptive"``.

    Returns:
        The state at ``ts[-1]``.

    Raises:
        ValueError: ``order`` not in {1, 2, 3}, an unknown ``method``, ``prediction`` or
            ``solver_type``, ``prediction="noise"`` with a method other than ``"multistep"``,
            or ``solver_type="midpoint"`` with another method or with the corrector.
    """
    _check_options(order, method, prediction)
    if max_step_ratio is not None and (isinstance(max_step_ratio, bool) or not isinstance(max_step_ratio, (int, float))
                                       or not max_step_ratio > 0 or max_step_ratio != max_step_ratio):
        raise ValueError(f"max_step_ratio must be a number > 0 or None, got {max_step_ratio!r}")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    if solver_type == "midpoint" and (method != "multistep" or corrector):
        raise ValueError("solver_type='midpoint' is the multistep predictor's option "
                         f"(method='multistep', corrector=False), got method={method!r}, "
                         f"corrector={corrector!r}")
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
    midpoint = solver_type == "midpoint"

    def update(x_from: Tensor, i: int, j: int, nodes: list[float], values: list[Tensor]) -> Tensor:
        # x at grid point j from grid point i, the interpolant through `values` at `nodes`.
        h = lam[j] - lam[i]
        if midpoint and len(nodes) == 2:  # Algorithm 2 of Lu et al. 2022b (either prediction)
            weights = midpoint_weights(nodes, h)
        elif noise:  # the nodes mirrored, see below
            weights = _weights([h - u for u in nodes], h)
        else:
            weights = _weights(nodes, h)
        if noise:  # (a_j / a_i) (x_i - s_i sum_k w_k eps_k)
            ratio = a[j] / a[i]
            return _combine(x_from, ratio, -ratio * s[i], weights, values)
        return _combine(x_from, s[j] / s[i], a[j], weights, values)

    history: list[tuple[float, Tensor]] = []  # (lambda, D or eps) of the latest steps, newest first
    x_prev, p = x, 0  # the last step's start and node count, for the corrector
    desc = (f"unipc-{order}" if corrector else f"dpm_solver{'' if noise else '++'} {order}M")
    for i in step_range(n, progress, desc):
        score.step = i
        v0 = score(x, t[i]).mul(-s[i]) if noise else tweedie(score, x, t[i], a[i], s[i])
        if corrector and i > 0:
            # Redo step i-1 with the value at its end point (u = h) added to the p nodes it used.
            nodes = [history[k][0] - lam[i - 1] for k in range(p)] + [lam[i] - lam[i - 1]]
            x = update(x_prev, i - 1, i, nodes, [history[k][1] for k in range(p)] + [v0])
        history = [(lam[i], v0)] + history[:order - 1]
        p = len(history)  # warm-up: lower order until the history holds `order` values
        if max_step_ratio is not None:
            h = lam[i + 1] - lam[i]
            # (a relative slack of 1e-9 so that round-off never lowers it on an even grid)
            while p > 1 and h > max_step_ratio * (1 + 1e-9) * (lam[i] - history[p - 1][0]):
                p -= 1
        if lower_order_final and n < 15:
            p = min(p, n - i)
        x_prev = x
        x = update(x, i, i + 1, [history[k][0] - lam[i] for k in range(p)],  # u_k <= 0
                   [history[k][1] for k in range(p)])
        if callback is not None:
            denoised = torch.add(x_prev, v0, alpha=-s[i]).div_(a[i]) if noise else v0
            callback(step=i, t=t[i + 1], x=x, denoised=denoised)
    return x



def _singlestep(score, sde, x, t, a, s, lam, order, progress, callback) -> Tensor:
    """Singlestep DPM-Solver++ of order 1-3 with intermediate points at ``lambda_r + r h``."""
    fractions = {1: [], 2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}[order]
    n = len(t) - 1
    mids = []  # per fraction r: (t, a, s) at lambda_i + r h_i for every step i
    for r in fractions:
        mids.append(_times_at(sde, [lam[i] + r * (lam[i + 1] - lam[i]) for i in range(n)], x))
    for i in step_range(n, progress, f"dpm_solver++ {order}S"):
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


