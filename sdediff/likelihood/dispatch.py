""":func:`log_likelihood`: check the arguments, then take the ODE path or a quadrature path."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from .._random import as_generator
from ..sde import SDE, LinearSDE
from .augmented_flow import CountedScore, ScoreFn
from .clock import solve_on
from .ode_path import log_likelihood_by_ode
from .quadrature_paths import log_likelihood_by_log_snr_nodes, log_likelihood_by_steps
from .results import LikelihoodResult
from .solvers import SolverOptions
from .trace_estimators import TRACE_ESTIMATORS

__all__ = ["log_likelihood"]

_SOLVER_FIELDS = tuple(f.name for f in dataclasses.fields(SolverOptions))


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: Tensor, eps: float = 1e-5, trace: str = "exact",
                   probes: int = 1, *, rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | int | None = None,
                   prior_logp: Callable[[Tensor], Tensor] | None = None,
                   quadrature: int | str | None = None, solver: SolverOptions | None = None,
                   **solver_options) -> LikelihoodResult:
    """Log-likelihood of every example of ``x`` at time ``eps`` through the probability-flow ODE.

    Integrates ``d/dt (x, delta) = (F, div F)`` with ``F = f - g^2 score / 2`` (the drift of
    ``sde.reverse(score_fn, probability_flow=True)``) from ``eps`` to ``T`` (Dormand-Prince 5(4)
    by default) and returns ``log p_eps(x) = log p_T(x(T)) + delta`` (Song et al. 2021, app. D.2).

    Args:
        score_fn: ``score_fn(x, t) -> tensor like x`` with ``t`` of shape ``(B,)``. A
            ``torch.nn.Module`` whose parameters have another dtype than ``x`` is evaluated in
            its own dtype (with a warning) and its output cast to ``x``'s dtype.
        sde: the forward SDE (any :class:`SDE`; its prior closes the flow).
        x: data ``(B, *dims)``, finite, float32 or float64 (float64 for accurate answers;
            half precision is refused: its round-off swamps the divergence).
        eps: the start time, in ``(0, T)``: the density is that of ``x_eps``.
        trace: ``"exact"`` (``d`` VJPs, vectorized and chunked), or the Hutchinson
            estimators ``"gaussian"`` / ``"rademacher"`` (unbiased, one VJP per probe).
        probes: Hutchinson probes per example (``>= 1``), averaged.
        rtol, atol: the solver's tolerances (on the augmented state; on ``x`` alone for the
            quadrature paths).
        generator: the source of the probes (Hutchinson only): a ``torch.Generator`` or an int seed.
        prior_logp: ``z -> (B,)`` to close the flow with another density at ``T``
            (default ``sde.prior_logp``), e.g. the exact ``p_T`` of an oracle.
        quadrature: ``None`` (default) integrates ``div F`` with the ODE. An int ``n >= 2``
            (linear SDEs only) solves ``x(t)`` alone (forward passes; the tolerances and the
            error norm apply to ``x``) and integrates the divergence along it with ``n``-point
            Gauss-Legendre in log-SNR, the node divergences in a few large batched passes. With
            Hutchinson probes every node draws its own ``probes``: on the test mixtures
            ``n = 48, probes = 4`` has a 3.4-3.8x smaller std than one probe held along an ODE
            solve, at 1.2-1.5x its time. The quadrature error falls geometrically with ``n``
            (exact trace, 64-D mixture: ~0.12 / 0.05 / 0.02 nats at ``n`` = 32 / 48 / 64): use it
            for Hutchinson, where it hides under the probe noise. ``nfe`` counts the
            trajectory's evaluations plus one per node.

            ``"steps"`` (linear SDEs, the lean ``dopri5`` only): the same decoupling with
            ``nodes_per_step``-point Gauss-Legendre in ``t`` on each accepted step of the
            trajectory's solve, ``int div F dt = d log(a(T) / a(eps)) - sum_j w_j g(t_j)^2 / 2
            tr(d score/dx)(t_j)``. A step costs 6 forward passes and ``nodes_per_step``
            divergences instead of 6 divergences. Measured with the exact trace at
            ``rtol = 1e-4``: 1.3e-4 nats on the 2-D ring and 1.46e-2 (the prior floor 1.44e-2)
            on the 64-D mixture, in about 1/2 and 1/3 the time of the ODE path. The step
            control sees ``x`` only, so at loose tolerances on small batches a few examples
            can carry larger quadrature errors; ``nodes_per_step=4`` or a tighter tolerance
            brings them down.
        solver: the expert options, grouped (:class:`SolverOptions`: ``method``, ``options``,
            ``error_norm``, ``max_steps``, ``control_variate``, ``fresh_probes``,
            ``nodes_per_step``, ``clock``). A :class:`~sdediff.sde.DiscreteVPSDE` (a model from
            a discrete schedule, e.g. :func:`~sdediff.from_diffusers`) is solved on the log-SNR
            clock by default, smooth across the schedule's knots.
        **solver_options: the same fields as keywords, e.g. ``error_norm="per_example"``
            (instead of ``solver``, not with it).

    Returns:
        A :class:`LikelihoodResult` with per-example ``logp`` (nats), ``prior_logp``,
        ``delta_logp``, the latent ``z`` and the ``nfe``; ``result.bpd(...)`` converts.

    Raises:
        TypeError: ``x`` not a float32/float64 tensor, or an unknown keyword.
        ValueError: ``eps`` outside ``(0, T)``, an unknown ``trace``, ``method`` or
            ``error_norm``, ``probes < 1``, bad tolerances, ``x`` of the wrong shape or with
            NaN/inf, or a ``score_fn`` output of the wrong shape.
        FloatingPointError: the score or the result is NaN/inf.
        RuntimeError: the solve needs more than ``max_steps`` steps.
    """
    solver = _solver_options(solver, solver_options)
    _check_inputs(score_fn, sde, x, eps, trace, probes, rtol, atol)
    generator = as_generator(generator)
    model = score_fn
    score_fn, sde, eps = solve_on(solver.clock, score_fn, sde, eps, solver.options)
    score = CountedScore(score_fn, x.dtype, model)
    prior_logp = prior_logp or sde.prior_logp
    if quadrature is None:
        if solver.nodes_per_step != 3:
            raise ValueError("nodes_per_step applies to quadrature='steps' only, got quadrature=None")
        if solver.fresh_probes and trace == "exact":
            raise ValueError("fresh_probes=True needs a Hutchinson trace ('gaussian' or 'rademacher'), "
                             "got trace='exact'")
        return log_likelihood_by_ode(score, sde, x, eps, trace, probes, generator, prior_logp, rtol, atol,
                                     solver)
    by_steps = quadrature == "steps"
    if not by_steps and (isinstance(quadrature, bool) or not isinstance(quadrature, int) or quadrature < 2):
        raise ValueError(f"quadrature must be None (integrate with the ODE), an int >= 2 (Gauss-Legendre "
                         f"nodes in log-SNR) or 'steps' (Gauss-Legendre on every solver step), got {quadrature!r}")
    if solver.nodes_per_step != 3 and not by_steps:
        raise ValueError(f"nodes_per_step applies to quadrature='steps' only, got quadrature={quadrature!r}")
    if not (isinstance(sde, LinearSDE) and sde.noise_type == "scalar"):
        raise ValueError("quadrature needs a LinearSDE with scalar noise (it integrates the divergence "
                         f"apart, with the exact d log(a(T) / a(eps)) term); got {type(sde).__name__}: "
                         "use quadrature=None")
    if solver.fresh_probes:
        raise ValueError("fresh_probes applies to the ODE path; quadrature=n already draws new probes "
                         "at every node")
    if not by_steps:
        return log_likelihood_by_log_snr_nodes(score, sde, x, eps, quadrature, trace, probes, generator,
                                               prior_logp, rtol, atol, solver)
    if not solver.lean:
        raise ValueError("quadrature='steps' runs the library's dopri5 loop: it needs method='dopri5' and "
                         f"no options, got method={solver.method!r}, options={solver.options!r}")
    return log_likelihood_by_steps(score, sde, x, eps, trace, probes, generator, prior_logp, rtol, atol, solver)


def _solver_options(solver: SolverOptions | None, flat: dict) -> SolverOptions:
    """``solver``, or a :class:`SolverOptions` from the flat keywords (one or the other)."""
    unknown = sorted(set(flat) - set(_SOLVER_FIELDS))
    if unknown:
        raise TypeError(f"log_likelihood() got unexpected keyword argument(s) {unknown}; the solver "
                        f"options are {_SOLVER_FIELDS}")
    if solver is None:
        return SolverOptions(**flat)
    if not isinstance(solver, SolverOptions):
        raise TypeError(f"solver must be a SolverOptions, got {type(solver).__name__}")
    if flat:
        raise TypeError(f"pass the solver options either as solver=SolverOptions(...) or as keywords, "
                        f"not both (got solver= and {sorted(flat)})")
    return solver


def _check_inputs(score_fn, sde, x, eps, trace, probes, rtol, atol) -> None:
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdediff SDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor (float64 for accurate likelihoods), got {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x is {x.dtype}: the likelihood needs float32 or float64 (float64 for accurate "
                        "answers; half-precision round-off swamps the divergence), e.g. x.double(). A "
                        "half-precision model still works: it is evaluated in its own dtype")
    if x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must have shape (B, *dims) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has NaN or inf entries; the likelihood of such points is undefined")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    if trace not in TRACE_ESTIMATORS:
        raise ValueError(f"trace must be one of {TRACE_ESTIMATORS}, got {trace!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an int >= 1, got {probes!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"{name} must be a float in (0, 1), got {tol!r}")
