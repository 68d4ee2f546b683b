"""The ODE path: integrate ``(x, delta_logp)`` together from ``eps`` to ``T``.

``d/dt (x, delta) = (F, div F)`` (:class:`~sdediff.likelihood.augmented_flow.AugmentedFlow`)
is solved by Dormand-Prince 5(4) or any torchdiffeq method, and
``log p_eps(x) = log p_T(x(T)) + delta(T)`` (Song et al. 2021, app. D.2). Hutchinson probes are
drawn once per solve and held fixed (or, with ``fresh_probes``, drawn at every evaluation,
the step control then watching ``x`` alone).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..sde import SDE
from .augmented_flow import AugmentedFlow, CountedScore
from .results import LikelihoodResult, close_flow
from .solvers import SolverOptions, error_norm, ode_solve
from .trace_estimators import draw_probes

__all__ = ["log_likelihood_by_ode"]


def log_likelihood_by_ode(score: CountedScore, sde: SDE, x: Tensor, eps: float, trace: str, probes: int,
                          generator: torch.Generator | None, prior_logp: Callable[[Tensor], Tensor],
                          rtol: float, atol: float, solver: SolverOptions) -> LikelihoodResult:
    """``quadrature=None`` of :func:`~sdediff.likelihood.log_likelihood` (arguments checked there)."""
    batch, d = x.shape[0], x[0].numel()
    v = None if trace == "exact" else draw_probes(trace, (probes, batch, d), x, generator)
    flow = AugmentedFlow(score, sde, tuple(x.shape), trace, v, solver.control_variate,
                         fresh_generator=generator, fresh=solver.fresh_probes)
    if solver.control_variate and not flow.linear:
        raise ValueError("control_variate=True needs a linear SDE with scalar noise (its guess of "
                         f"the Jacobian's diagonal uses f(t), g(t) and the score); got {type(sde).__name__}")
    y0 = torch.cat([x.reshape(batch, d), x.new_zeros(batch, 1)], 1)  # (x, delta_logp = 0)
    with torch.no_grad():
        y1, _ = ode_solve(flow, y0, eps, sde.T, solver, rtol, atol,
                          error_norm(solver.error_norm, d, include_delta=not solver.fresh_probes))
    return close_flow(y1[:, :d].reshape(x.shape), y1[:, d], prior_logp, score.nfe, trace, probes)
