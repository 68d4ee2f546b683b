"""The likelihood's ODE solves: the solver options, error norms, step cap and the solve itself.

``method="dopri5"`` without torchdiffeq ``options`` runs the library's lean Dormand-Prince
loop (:mod:`sdediff._dopri5`, the steps of torchdiffeq's ``dopri5`` to round-off); any other
method, or any ``options``, goes to ``torchdiffeq.odeint``. Adaptive steps never evaluate the
right-hand side past ``T``, where the SDE is undefined. Every solve is capped at
``max_steps`` steps (accepted or rejected) and fails with a message naming the cap and the
tolerances instead of running for minutes on a stiff problem.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from .._dopri5 import dopri5, runs_lean
from .clock import CLOCKS

__all__ = ["SolverOptions", "METHODS", "ADAPTIVE_METHODS", "ERROR_NORMS", "error_norm", "ode_solve"]

#: The adaptive methods of ``torchdiffeq.odeint`` (they take ``rtol``/``atol``, ``norm``, ``step_t``).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: Every ``method`` :func:`~sdediff.likelihood.log_likelihood` accepts: the methods of
#: ``torchdiffeq.odeint`` (checked against it in the tests).
METHODS = ADAPTIVE_METHODS + ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                              "implicit_adams", "fixed_adams", "scipy_solver")
#: Step-size control norms of :func:`~sdediff.likelihood.log_likelihood`.
ERROR_NORMS = ("batch", "per_example")


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """The expert options of :func:`~sdediff.likelihood.log_likelihood`, grouped.

    Pass ``solver=SolverOptions(...)``, or any field as a keyword of ``log_likelihood`` itself
    (``log_likelihood(..., error_norm="per_example")``), not both.

    Attributes:
        method: ``"dopri5"`` (adaptive, the default) or any other torchdiffeq method (:data:`METHODS`),
            e.g. ``"rk4"``. Without ``options``, ``"dopri5"`` runs the library's own
            Dormand-Prince loop: the steps of torchdiffeq's ``dopri5`` to round-off, at a tenth
            of its bookkeeping per step.
        options: extra solver options passed to ``torchdiffeq.odeint`` (e.g.
            ``{"step_size": 1e-2}``); with any, ``"dopri5"`` is torchdiffeq's too.
        error_norm: how adaptive solvers measure the local error against ``atol + rtol |y|``:
            ``"batch"`` (torchdiffeq's default, the RMS over the whole batch, so a few hard
            examples can carry errors far above the tolerance) or ``"per_example"`` (the largest
            per-example RMS over ``x`` and ``delta_logp``: every example meets the tolerance; on
            the 2-D ring it reaches a given mean error with ~20% fewer evaluations and a ~3x
            smaller worst case). With either, the steps are shared by the batch, so an example's
            result depends on its batch-mates to within the tolerance (see ``evaluate``).
        max_steps: give up after this many solver steps (accepted or rejected) with a
            ``RuntimeError`` naming the cap and the tolerances (a stiff SDE or too tight a
            tolerance); typical solves take 20-300 steps. A cap, not a clock: a step that runs
            in subnormal floats (a schedule whose scale underflows) can still cost 0.1 s.
        control_variate: Hutchinson on a linear SDE only: estimate ``tr J = v^T (J - c I) v + c d``
            for ``J = d score / dx`` with the probe-free guess ``c = -|score|^2 / d`` of its mean
            diagonal (Fisher identity ``E[score score^T] = -E[J]``). Unbiased; it removes the
            variance Gaussian probes draw from ``|v|^2``, usually the bulk of it. Rademacher
            probes have ``|v|^2 = d`` already, so for them it changes nothing.
        fresh_probes: Hutchinson, ODE path only: draw new probes at every score evaluation instead
            of once per solve. The step-size control then looks at ``x`` alone (the
            ``x``-dynamics do not depend on the probes), so the steps, the stages and the
            solver's quadrature weights are probe-independent and the result is a fixed linear
            combination of independent unbiased estimates -- unbiased, with a variance that
            falls with the number of evaluations (measured ~2x smaller std at ``rtol = 1e-5``).
        nodes_per_step: Gauss-Legendre nodes per accepted step with ``quadrature="steps"``
            (``>= 1``; 3 integrates a quintic in ``t`` exactly per step, like the 5th-order
            solver; 4 is more accurate per step).
        clock: the time the flow is solved in (:mod:`~sdediff.likelihood.clock`; the answer is
            the same, only the solver's error differs): ``"auto"`` takes the log-SNR for a
            :class:`~sdediff.sde.DiscreteVPSDE`, whose ``f`` and ``g`` jump at every knot
            (unless ``options`` has ``jump_t``), and the SDE's own time otherwise;
            ``"log_snr"`` forces it for any variance-preserving linear SDE; ``"t"`` never.
    """

    method: str = "dopri5"
    options: dict | None = None
    error_norm: str = "batch"
    max_steps: int = 1000
    control_variate: bool = False
    fresh_probes: bool = False
    nodes_per_step: int = 3
    clock: str = "auto"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be a torchdiffeq method, one of {METHODS}, got {self.method!r}")
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"options must be a dict or None, got {type(self.options).__name__}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {self.error_norm!r}")
        for name in ("max_steps", "nodes_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    @property
    def lean(self) -> bool:
        """Whether the solve runs the library's dopri5 loop."""
        return runs_lean(self.method, self.options)


def error_norm(kind: str, d: int, include_delta: bool) -> Callable[[Tensor], Tensor]:
    """The solver's error norm on the scaled error of the state ``(B, d [+ 1])``: ``x`` in
    the first ``d`` columns, ``delta_logp`` in column ``d`` if ``include_delta``.

    ``"batch"``: the larger of the batch RMS of ``x`` and of ``delta`` (torchdiffeq's
    mixed norm of the pair). ``"per_example"``: the largest per-example RMS over the
    example's ``d`` entries and its ``delta``.
    """
    def batch(err: Tensor) -> Tensor:
        rms_x = err[:, :d].pow(2).mean().sqrt()
        return torch.maximum(rms_x, err[:, d].pow(2).mean().sqrt()) if include_delta else rms_x

    def per_example(err: Tensor) -> Tensor:
        cols = d + 1 if include_delta else d
        return (err[:, :cols].pow(2).sum(1) / cols).sqrt().max()

    return batch if kind == "batch" else per_example


def ode_solve(func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float,
              solver: SolverOptions, rtol: float, atol: float, norm: Callable[[Tensor], Tensor],
              t_eval: Tensor | None = None, on_step=None) -> tuple[Tensor, Tensor | None]:
    """``(y(t1), y(t_eval))`` of ``dy/dt = func(t, y)`` from ``t0``: the lean dopri5 loop or
    ``torchdiffeq.odeint``. ``on_step`` (lean loop only) sees every accepted step (see
    :func:`sdediff._dopri5.dopri5`).

    Raises:
        RuntimeError: more than ``solver.max_steps`` steps, with the tolerances in the message.
    """
    try:
        if solver.lean:
            return dopri5(func, y0, t0, t1, rtol, atol, norm=norm, t_eval=t_eval,
                          max_steps=solver.max_steps, on_step=on_step)
        ends = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device)
        times = ends if t_eval is None else torch.cat([ends[:1], t_eval.to(ends), ends[1:]])
        options = dict(solver.options or {})
        if solver.method in ADAPTIVE_METHODS:
            options.setdefault("step_t", ends[1:])
            options.setdefault("norm", norm)
            options.setdefault("max_num_steps", solver.max_steps)
        ys = odeint(func, y0, times, method=solver.method, rtol=rtol, atol=atol, options=options)
    except (RuntimeError, AssertionError) as err:
        if "max_num_steps" not in str(err) and "did not reach" not in str(err):
            raise
        raise RuntimeError(
            f"the likelihood's ODE solve did not reach T = {t1:.6g} within max_steps = {solver.max_steps} "
            f"solver steps (rtol = {rtol:g}, atol = {atol:g}, method = {solver.method!r}): the "
            "probability-flow ODE is stiff or the tolerance too tight. Loosen rtol/atol, check the "
            "SDE's schedule (e.g. a huge beta_max) and the score, or raise max_steps "
            "(log_likelihood(..., max_steps=...))") from None
    return ys[-1], (None if t_eval is None else ys[1:-1])
