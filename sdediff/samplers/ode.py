"""The probability-flow ODE ``dx/dt = f(x, t) - g^2 score(x, t) / 2`` solved by torchdiffeq.

Integrated in the forward time variable from ``T`` down to ``eps`` (torchdiffeq accepts a
decreasing time grid). Adaptive methods (``dopri5``, ``bosh3``, ``dopri8``, ...) are asked
for the state at ``[T, eps]`` only and choose their own steps under ``rtol``/``atol``;
fixed-grid methods (``euler``, ``midpoint``, ``rk4``, ``heun3``, ...) step on the given grid.
The NFE reported by ``sample(..., return_nfe=True)`` is the count of score evaluations.
Works for any :class:`~sdediff.sde.SDE`, state-dependent diagonal noise included
(the drift then carries ``- div(g g^T) / 2``, see :class:`~sdediff.sde.ReverseSDE`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from .._dopri5 import dopri5, runs_lean
from . import register_sampler
from ._common import ScoreNotFiniteError

__all__ = ["ode_sampler", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")


class _FlowDrift(torch.nn.Module):
    """torchdiffeq's ``F(t, x)``: the probability-flow drift of :meth:`ReverseSDE.drift`."""

    def __init__(self, score, sde, ts: Tensor, pbar):
        super().__init__()
        self.flow = sde.reverse(score, probability_flow=True)
        self.score, self.pbar, self.ts = score, pbar, ts
        self.last_t = float(ts[0])  # the latest time evaluated, named in solver failures

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if self.pbar is not None:
            self.pbar.update(1)
        # name the grid interval containing t in NaN reports
        t64 = t.detach().to(self.ts)
        self.score.step = int(torch.searchsorted(-self.ts, -t64, right=True).clamp(1, len(self.ts) - 1)) - 1
        self.last_t = float(t64)
        return self.flow.drift(x, t)


@register_sampler("ode", nfe_per_step=None, order=5, stochastic=False)
@torch.no_grad()
def ode_sampler(score, sde, x: Tensor, ts: Tensor, *, generator=None, progress=False, callback=None,
                method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                options: dict | None = None) -> Tensor:
    """Probability-flow ODE through torchdiffeq: adaptive (dopri5, rtol/atol) or fixed-grid (euler, rk4, ...).

    Options: ``method`` (adaptive: dopri5 (default), dopri8, bosh3, fehlberg2, adaptive_heun;
    fixed-grid on the sampler's time grid: euler, midpoint, heun2, heun3, rk4, explicit_adams,
    implicit_adams), ``rtol``/``atol`` (adaptive only, default 1e-5), ``options`` (passed to
    ``torchdiffeq.odeint``). The declared order is dopri5's; NFE per step varies with the method.
    ``dopri5`` without ``options`` runs the library's own Dormand-Prince loop
    (:mod:`sdediff._dopri5`), which takes torchdiffeq's steps to round-off.
    """
    if method not in ADAPTIVE_METHODS + FIXED_GRID_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; allowed: adaptive {', '.join(ADAPTIVE_METHODS)}; "
                         f"fixed-grid {', '.join(FIXED_GRID_METHODS)}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    adaptive = method in ADAPTIVE_METHODS
    lean = runs_lean(method, options)
    t_eval = ts[[0, -1]] if adaptive else ts
    # torchdiffeq steps in the state's dtype; keep the time grid in float64 when the state is.
    t_eval = t_eval.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else x.dtype)
    pbar = tqdm(desc=f"ode ({method})", unit="nfe", leave=False) if progress else None
    try:
        func = _FlowDrift(score, sde, ts.to(x.device, torch.float64), pbar)
        kwargs = {"rtol": rtol, "atol": atol} if adaptive else {}
        if adaptive:
            # Make the last step land on eps: by default an adaptive step may overshoot past
            # the final time (then interpolate back), which would evaluate the score at t < 0;
            # likewise torchdiffeq's initial-step heuristic probes an unbounded t0 + h0.
            span = float(t_eval[0] - t_eval[-1])
            options = {"step_t": t_eval[-1:], "first_step": 0.01 * span, **(options or {})}
        if lean:
            # The lean loop (torchdiffeq's dopri5 steps, less bookkeeping), run forward in
            # s = -t; the grid's ends are all this needs.
            try:
                x_eps, _ = dopri5(lambda s, y: -func(-s, y), x, -float(t_eval[0]), -float(t_eval[-1]),
                                  rtol, atol, first_step=options["first_step"])
            except ScoreNotFiniteError:
                raise
            except (FloatingPointError, RuntimeError) as err:
                # The loop's own message names its variable s = -t; name the time instead.
                kind = "the ODE solve did not finish" if isinstance(err, RuntimeError) else \
                    "the ODE solver's error estimate or step size failed (NaN/inf or underflow)"
                raise type(err)(f"{kind} near t = {_clamp(func.last_t, ts):.6g} (dopri5, rtol={rtol}, "
                                f"atol={atol})") from err
            sol = torch.stack([x, x_eps])
        else:
            try:
                sol = odeint(func, x, t_eval, method=method, options=options, **kwargs)
            except AssertionError as err:  # torchdiffeq's "underflow in dt": NaN/inf or stiffness
                raise FloatingPointError(f"the ODE solver failed ({err}) near t = "
                                         f"{_clamp(func.last_t, ts):.6g}: NaN/inf in the score, "
                                         "or a step size that underflowed") from err
    finally:
        if pbar is not None:
            pbar.close()
    if callback is not None:
        for i in range(1, sol.shape[0]):
            callback(step=i - 1, t=float(t_eval[i]), x=sol[i], denoised=None)
    return sol[-1]


def _clamp(t: float, ts: Tensor) -> float:
    """``t`` clamped into the grid's span (a failing step may probe just past its end)."""
    lo, hi = float(ts[-1]), float(ts[0])
    return min(max(t, lo), hi)
