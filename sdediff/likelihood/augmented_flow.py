"""The right-hand sides the likelihood integrates, built on the one probability-flow drift.

``flow = sde.reverse(score, probability_flow=True)`` (:class:`~sdediff.sde.ReverseSDE`) holds
the drift ``F = f - g^2 score / 2`` (Song et al. 2021, eq. 13). By the instantaneous change of
variables (Chen et al. 2018, thm. 1) the log-density moves with ``div F``, so the ODE path
integrates the augmented state ``(x, delta_logp)`` with :class:`AugmentedFlow`:

* a linear drift with scalar noise (``flow.linear``): only the score is differentiated, and
  ``div F = d f(t) - w g(t)^2 tr(d score/dx)`` with ``f(t)`` and ``w g(t)^2`` from
  ``flow.coefficients(t)``; ``F`` itself is ``flow.drift(x, t, score=...)``;
* any other SDE: the whole ``flow.drift`` is differentiated.

The quadrature paths integrate ``x`` alone with :func:`trajectory_drift` (``flow.drift``, no
graph). :class:`CountedScore` counts the score's evaluations, checks its output, and runs a
``torch.nn.Module`` score in its parameters' dtype (the result cast back to ``x``'s).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from .._checks import all_finite
from ..sde import SDE
from .trace_estimators import VJP, BatchedVJP, divergence, draw_probes

__all__ = ["CountedScore", "AugmentedFlow", "trajectory_drift"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _parameter_dtype(score_fn) -> torch.dtype | None:
    """The floating dtype of a ``torch.nn.Module`` score (or a bound method of one), else ``None``."""
    module = score_fn if isinstance(score_fn, torch.nn.Module) else getattr(score_fn, "__self__", None)
    if not isinstance(module, torch.nn.Module):
        return None
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


class CountedScore:
    """Counts score evaluations, checks the output's shape and finiteness, and matches dtypes.

    A module whose parameters have another floating dtype than ``x`` (say a float32 model and
    the float64 data the likelihood recommends; ``model``: the module behind a wrapping
    ``score_fn``) is evaluated at ``x`` cast to its dtype, unless it says it does so itself
    (``model.accepts_any_dtype``, as the interop adapters do); any
    score output in another dtype than ``x`` is cast to ``x``'s. The ODE state, the
    divergence and the solver stay in ``x``'s dtype; the score carries its own precision.
    """

    def __init__(self, score_fn: ScoreFn, dtype: torch.dtype, model=None):
        self.score_fn = score_fn
        self.nfe = 0
        model = score_fn if model is None else model
        # a model that casts to its network's dtype itself (an interop adapter) sees x as it is
        model_dtype = None if getattr(model, "accepts_any_dtype", False) else _parameter_dtype(model)
        self.model_dtype = model_dtype if model_dtype not in (None, dtype) else None
        if self.model_dtype is not None:
            warnings.warn(f"score_fn's parameters are {self.model_dtype} while x is {dtype}: the score is "
                          f"evaluated in {self.model_dtype} and cast to {dtype} (the ODE and the divergence "
                          f"stay in {dtype}); for full {dtype} accuracy pass a copy of the model in "
                          f"{dtype}, e.g. copy.deepcopy(model).to({dtype})", UserWarning, stacklevel=4)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The score at ``(x, t)`` in ``x``'s dtype: not counted, not checked for NaN."""
        if self.model_dtype is not None:
            out = self.score_fn(x.to(self.model_dtype), t.to(self.model_dtype))
        else:
            out = self.score_fn(x, t)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score_fn must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.raw(x, t)
        self.nfe += 1
        if not all_finite(out):
            raise FloatingPointError(f"score_fn returned NaN or inf at t = {float(t.flatten()[0]):.6g} "
                                     f"(evaluation {self.nfe}) during the likelihood solve")
        return out


class AugmentedFlow:
    """Right side of the augmented ODE on the flat state ``y = (x, delta_logp)`` ``(B, d + 1)``:
    ``dy/dt = (F(x, t), div F(x, t))`` with ``F = flow.drift`` (see the module notes).

    Hutchinson probes ``(P, B, d)`` are held fixed along the solve, as the estimator requires,
    unless ``fresh`` (then every evaluation draws new ones from ``fresh_generator``).
    """

    def __init__(self, score: CountedScore, sde: SDE, shape: tuple[int, ...], trace: str,
                 probes: Tensor | None, control_variate: bool,
                 fresh_generator: torch.Generator | None = None, fresh: bool = False):
        self.flow = sde.reverse(score, probability_flow=True)
        self.linear = self.flow.linear
        self.score, self.T = score, sde.T
        self.shape = shape  # (B, *dims)
        self.batch, self.dim = shape[0], math.prod(shape[1:])
        self.trace, self.probes = trace, probes
        self.control_variate = control_variate
        self.fresh, self.fresh_generator = fresh, fresh_generator
        self.batched_vjp = BatchedVJP()

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        batch, d = self.batch, self.dim
        x_flat = y[:, :d]
        # Only the solver's initial-step probe may look past T; the steps land on T.
        t = t.clamp(max=self.T)
        t_vec = t.expand(batch)
        with torch.enable_grad():
            xg = x_flat.detach().requires_grad_(True)
            x_in = xg.reshape(self.shape)
            # differentiate the score alone (linear drift), else the whole drift
            out = (self.score(x_in, t_vec) if self.linear else self.flow.drift(x_in, t_vec)).reshape(batch, d)
            if self.fresh:
                self.probes = draw_probes(self.trace, tuple(self.probes.shape), x_flat, self.fresh_generator)
            tr = divergence(self.trace, VJP(out, xg), x_flat, out.detach(), self.probes,
                            self.batched_vjp, self.control_variate)
        out, tr = out.detach(), tr.detach()
        if not self.linear:
            return torch.cat([out, tr[:, None]], 1)
        t_float = float(t)
        f_t, wg2 = self.flow.coefficients(t_float)
        dx = self.flow.drift(x_flat, t_float, score=out)  # F = f x - w g^2 score
        return torch.cat([dx, (d * f_t - wg2 * tr)[:, None]], 1)  # div F = d f - w g^2 tr(d score/dx)


def trajectory_drift(score: CountedScore, sde: SDE, shape: tuple[int, ...]) -> Callable[[Tensor, Tensor], Tensor]:
    """``F(x, t) = flow.drift(x, t)`` on the flat ``(B, d)`` state (no divergence, no graph)."""
    flow = sde.reverse(score, probability_flow=True)
    batch, d, T = shape[0], math.prod(shape[1:]), sde.T

    def drift(t: Tensor, y: Tensor) -> Tensor:
        t = t.clamp(max=T)
        return flow.drift(y.reshape(shape), float(t) if flow.linear else t.expand(batch)).reshape(batch, d)

    return drift
