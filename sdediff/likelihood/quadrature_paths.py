"""The quadrature paths: solve ``x(t)`` alone, then integrate the divergence by Gauss-Legendre.

The divergence does not feed back into ``x``, so for a linear SDE ``x(t)`` is solved alone
(forward passes only, no graph) and ``int div F dt`` becomes a quadrature whose node
divergences are computed in a few large batched passes (:class:`NodeTraces`). With the
library's ``lambda = log(a / s)`` (:meth:`LinearSDE.log_snr`), ``d(s^2)/dt = 2 f s^2 + g^2``
gives ``dt/dlambda = -2 s^2 / g^2`` for every linear SDE, so::

    int_eps^T div F dt = d log(a(T) / a(eps)) - int_{lambda_T}^{lambda_eps} s^2 tr(d score/dx) dlambda,

the first term exact.

* ``quadrature=n`` (:func:`log_likelihood_by_log_snr_nodes`): ``n`` Gauss-Legendre nodes of the
  log-SNR interval, read off the trajectory solver's dense output.
* ``quadrature="steps"`` (:func:`log_likelihood_by_steps`): a few Gauss-Legendre nodes in ``t``
  on each accepted step of the trajectory's (lean dopri5) solve, weighted by ``w g(t)^2`` from
  ``flow.coefficients`` -- the nodes land where the flow changes fast.

With Hutchinson probes every node draws its own, so the probe noise of many nodes averages out
instead of being frozen along one solve.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._checks import all_finite
from ..sde import LinearSDE
from .augmented_flow import CountedScore, trajectory_drift
from .results import LikelihoodResult, close_flow
from .solvers import SolverOptions, error_norm, ode_solve
from .trace_estimators import VJP, BatchedVJP, draw_probes, exact_trace, hutchinson_forms

__all__ = ["NodeTraces", "log_likelihood_by_log_snr_nodes", "log_likelihood_by_steps"]

# Rows x entries (x probes) of one batched pass of the quadrature's node divergences
# (2^20 floats): nodes are grouped so that a group's forward graph stays around 8 MiB in
# float64. The exact trace runs its d cotangents over the group in chunks, so it takes
# smaller groups (measured, 64-D, 40 nodes of 200 examples, per node: 16.8 ms in groups
# of 5 nodes, 19.5 ms in groups of 20, 19 ms node by node).
QUADRATURE_GROUP_ELEMENTS = 1 << 20
EXACT_GROUP_ELEMENTS = 1 << 16


def quadrature_rule(n: int):
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on ``[-1, 1]`` (float64 numpy)."""
    import numpy as np

    return np.polynomial.legendre.leggauss(n)


class NodeTraces:
    """``tr(d score/dx)`` at quadrature nodes, nodes grouped into large batched passes.

    :meth:`add` takes one node (its time and its ``(B, d)`` state) and runs a batched
    pass whenever ``group`` nodes are waiting; :meth:`traces` runs the rest and returns
    all of them, ``(P, N, B)`` in the order added (their times in :attr:`times`): with
    Hutchinson probes, every node draws its own ``P`` and the forms are kept probe by probe
    (``P = 1`` for the exact trace). Each node counts as one evaluation of ``score``.
    """

    def __init__(self, score: CountedScore, shape: tuple[int, ...], trace: str, probes: int,
                 generator, control_variate: bool):
        self.score, self.shape = score, shape
        self.batch, self.dim = shape[0], math.prod(shape[1:])
        self.trace, self.probes = trace, probes
        self.generator, self.control_variate = generator, control_variate
        if trace == "exact":
            self.group = max(1, EXACT_GROUP_ELEMENTS // max(1, self.batch * self.dim))
        else:
            self.group = max(1, QUADRATURE_GROUP_ELEMENTS // max(1, self.batch * self.dim * probes))
        self.batched_vjp = BatchedVJP()
        self.times: list[float] = []
        self._out: list[Tensor] = []
        self._waiting: list[Tensor] = []  # states of the last nodes added, not yet traced

    def add(self, t: float, x: Tensor) -> None:
        self.times.append(t)
        self._waiting.append(x)
        if len(self._waiting) == self.group:
            self._run()

    def traces(self) -> Tensor:
        if self._waiting:
            self._run()
        tr = torch.cat(self._out, 1)
        if not all_finite(tr):
            raise FloatingPointError("the divergence came out NaN/inf at a quadrature node: check the "
                                     "score function and eps")
        return tr

    def _run(self) -> None:
        x_nodes = torch.stack(self._waiting)
        k, rows = x_nodes.shape[0], x_nodes.shape[0] * self.batch
        t_rows = torch.tensor(self.times[-k:], dtype=x_nodes.dtype,
                              device=x_nodes.device).repeat_interleave(self.batch)
        self._waiting = []
        with torch.enable_grad():
            y = x_nodes.reshape(rows, self.dim).detach().requires_grad_(True)
            out = self.score.raw(y.reshape((rows,) + self.shape[1:]), t_rows).reshape(rows, self.dim)
            self.score.nfe += k
            if self.trace == "exact":
                tr = exact_trace(VJP(out, y), y, self.batched_vjp)[None]
            else:
                v = draw_probes(self.trace, (self.probes, rows, self.dim), y, self.generator)
                tr = hutchinson_forms(VJP(out, y), v, out.detach(), self.batched_vjp, self.control_variate)
        self._out.append(tr.detach().reshape(-1, k, self.batch))


def log_likelihood_by_log_snr_nodes(score: CountedScore, sde: LinearSDE, x: Tensor, eps: float, n: int,
                                    trace: str, probes: int, generator, prior_logp: Callable[[Tensor], Tensor],
                                    rtol: float, atol: float, solver: SolverOptions) -> LikelihoodResult:
    """``quadrature=n`` of :func:`~sdediff.likelihood.log_likelihood`: the trajectory alone, then
    ``n``-point Gauss-Legendre in log-SNR."""
    batch, d = x.shape[0], x[0].numel()
    shape = tuple(x.shape)
    kw = dict(dtype=x.dtype, device=x.device)
    t_ends = torch.tensor([eps, sde.T], **kw)
    lam_eps, lam_T = (float(v) for v in sde.log_snr(t_ends))
    u, w = quadrature_rule(n)
    half = 0.5 * (lam_eps - lam_T)
    lam = torch.as_tensor(lam_T + half * (u + 1.0), **kw)  # ascending lambda: descending t
    weights = torch.as_tensor(half * w, **kw).flip(0)
    t_nodes = sde.t_from_log_snr(lam).to(**kw).flip(0)  # ascending t
    times = torch.cat([t_ends[:1], t_nodes, t_ends[1:]])
    if not bool((times.diff() > 0).all()):
        raise ValueError(f"quadrature={n} nodes are not distinct in t at {x.dtype} resolution; "
                         "use fewer nodes")
    with torch.no_grad():
        x_T, nodes_x = ode_solve(trajectory_drift(score, sde, shape), x.reshape(batch, d), eps, sde.T,
                                 solver, rtol, atol, error_norm(solver.error_norm, d, include_delta=False),
                                 t_eval=t_nodes)
    nodes = NodeTraces(score, shape, trace, probes, generator, solver.control_variate)
    for t_node, x_node in zip(t_nodes.tolist(), nodes_x):
        nodes.add(t_node, x_node)
    tr = nodes.traces()  # (P, n, B)
    s2 = sde.std(t_nodes).to(**kw) ** 2
    log_a = torch.log(sde.scale(t_ends).to(**kw))
    # int div F dt = d log(a(T) / a(eps)) - int s^2 tr(d score/dx) dlambda, probe by probe
    delta = d * (log_a[1] - log_a[0]) - (weights[:, None] * s2[:, None] * tr).sum(1)
    return close_flow(x_T.reshape(shape), delta, prior_logp, score.nfe, trace, probes)


def log_likelihood_by_steps(score: CountedScore, sde: LinearSDE, x: Tensor, eps: float, trace: str,
                            probes: int, generator, prior_logp: Callable[[Tensor], Tensor], rtol: float,
                            atol: float, solver: SolverOptions) -> LikelihoodResult:
    """``quadrature="steps"`` of :func:`~sdediff.likelihood.log_likelihood`: the trajectory alone, by
    the lean dopri5, then ``nodes_per_step``-point Gauss-Legendre in ``t`` on each accepted step."""
    batch, d = x.shape[0], x[0].numel()
    shape = tuple(x.shape)
    kw = dict(dtype=x.dtype, device=x.device)
    u, w = quadrature_rule(solver.nodes_per_step)
    fractions, half_weights = ((u + 1.0) / 2.0).tolist(), (w / 2.0).tolist()
    nodes = NodeTraces(score, shape, trace, probes, generator, solver.control_variate)
    weights: list[float] = []

    def on_step(t: float, dt: float, x_at: Callable[[float], Tensor]) -> None:
        for frac, half_w in zip(fractions, half_weights):
            weights.append(half_w * dt)
            nodes.add(t + frac * dt, x_at(frac))

    with torch.no_grad():
        x_T, _ = ode_solve(trajectory_drift(score, sde, shape), x.reshape(batch, d), eps, sde.T, solver,
                           rtol, atol, error_norm(solver.error_norm, d, include_delta=False), on_step=on_step)
    tr = nodes.traces()  # (P, N, B)
    _, wg2 = sde.reverse(score, probability_flow=True).coefficients(torch.tensor(nodes.times, **kw))
    log_a = torch.log(sde.scale(torch.tensor([eps, sde.T], **kw)).to(**kw))
    # int div F dt = d log(a(T) / a(eps)) - int w g^2 tr(d score/dx) dt, probe by probe
    delta = d * (log_a[1] - log_a[0]) - (torch.tensor(weights, **kw)[:, None] * wg2.to(**kw)[:, None] * tr).sum(1)
    return close_flow(x_T.reshape(shape), delta, prior_logp, score.nfe, trace, probes)
