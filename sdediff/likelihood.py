"""Exact log-likelihoods through the probability-flow ODE, bits/dim and dequantization.

The probability-flow ODE ``dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2``
(Song et al. 2021, eq. 13) is a continuous normalizing flow, so by the
instantaneous change of variables (Chen et al. 2018, thm. 1)::

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt.

:func:`log_likelihood` integrates the augmented state ``(x, delta_logp)`` from
``eps`` to ``T`` with Dormand-Prince 5(4) (a lean loop that takes torchdiffeq's
``dopri5`` steps) or any ``torchdiffeq.odeint`` method. The divergence is either exact
(the ``d`` vector-Jacobian products ``e_i^T dF/dx`` from one forward pass, run as
one backward pass vectorized by ``torch.func.vmap`` -- autograd's
``is_grads_batched`` -- in chunks of cotangents so memory stays bounded) or the
Skilling-Hutchinson estimate ``v^T (dF/dx) v`` with probes ``v`` drawn once per
solve and held fixed, as the estimator requires (all probes in one batched VJP).

With ``quadrature=n`` the two parts are decoupled instead. The divergence does not
feed back into ``x``, so ``x(t)`` is solved alone (forward passes only, no graph),
read off by the solver's dense output at the ``n`` Gauss-Legendre nodes of the
log-SNR interval, and ``int div F dt`` becomes a quadrature whose ``n`` node
divergences are computed in a few large batched passes. With the library's
``lambda = log(a / s)`` (:meth:`LinearSDE.log_snr`), ``d(s^2)/dt = 2 f s^2 + g^2``
gives ``dt/dlambda = -2 s^2 / g^2`` for every linear SDE, so::

    int_eps^T div F dt = d log(a(T) / a(eps)) - int_{lambda_T}^{lambda_eps} s^2 tr(d score/dx) dlambda,

the first term exact. With Hutchinson probes every node draws its own, so the
probe noise of ``n`` nodes averages out instead of being frozen along one solve.
``quadrature="steps"`` places the nodes adaptively instead: a few Gauss-Legendre
nodes on each accepted step of the trajectory's solve, in ``t``, with the same
decoupling.

Cost: the exact trace costs about ``d`` backward passes of arithmetic per
evaluation (vectorized, so no Python loop), one probe about one. For small ``d``
(2-D) the forward pass and fixed overheads dominate and the exact trace costs
about as much as one probe; in 64-D it is several times dearer.

The vector-Jacobian products are taken of the whole batch at once (one forward
pass of ``score_fn``), which assumes that example ``i`` of the score depends on
``x_i`` only -- true of any network without batch statistics (no BatchNorm in
training mode).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Iterable

import torch
from torch import Tensor
from torchdiffeq import odeint

from ._checks import all_finite
from ._dopri5 import dopri5, runs_lean
from .datasets import dequantization_bpd_offset
from .datasets import dequantize as _dequantize_levels
from .sde import SDE, LinearSDE

__all__ = ["LikelihoodResult", "EvaluationResult", "log_likelihood", "evaluate",
           "bits_per_dim", "dequantize", "TRACE_ESTIMATORS", "ERROR_NORMS"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: The divergence estimators of :func:`log_likelihood`.
TRACE_ESTIMATORS = ("exact", "gaussian", "rademacher")

_ADAPTIVE_SOLVERS = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")

# Largest number of floats in one vectorized batch of cotangents (chunk x B x d) of the
# exact trace: 2^19 doubles = 4 MiB. Memory stays bounded for large d, and the chunk
# stays near cache size (measured: 64-D, B = 200, a chunk of 32-40 cotangents runs
# ~25% faster per cotangent than all 64 at once).
_EXACT_CHUNK_ELEMENTS = 1 << 19

# Up to this d the exact trace takes d plain backward passes through one retained graph
# instead of one vmapped pass: vmap's batching rules cost more than they save when only
# two or three cotangents are batched (measured on the 2-D ring: 5.7 ms vs 6.5 ms).
_EXACT_LOOP_MAX_DIM = 4

#: Step-size control norms of :func:`log_likelihood`.
ERROR_NORMS = ("batch", "per_example")


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass
class LikelihoodResult:
    """Per-example output of :func:`log_likelihood`.

    Attributes:
        logp: ``(B,)`` log-density ``log p_eps(x)`` in nats.
        prior_logp: ``(B,)`` ``log p_T(z)`` of the latent under the prior.
        delta_logp: ``(B,)`` ``int_eps^T div F dt`` (so ``logp = prior_logp + delta_logp``).
        z: the latent ``x(T)``, shape of ``x``.
        nfe: score evaluations used by the solve.
        dim: ``d``, the number of entries of one example.
        trace: the divergence estimator used.
        probes: Hutchinson probes per solve (0 for the exact trace).
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    dim: int
    trace: str = "exact"
    probes: int = 0

    @property
    def nll(self) -> Tensor:
        """``-logp``, per example, in nats."""
        return -self.logp

    def bpd(self, num_levels: int | None = 256, low: float = -1.0, high: float = 1.0) -> Tensor:
        """Bits per dimension of every example; see :func:`bits_per_dim`."""
        return bits_per_dim(self.logp, self.dim, num_levels=num_levels, low=low, high=high)


@dataclasses.dataclass
class EvaluationResult:
    """Output of :func:`evaluate` over a whole data set (every rank holds all of it).

    Attributes:
        logp: ``(N,)`` per-example log-likelihoods in nats, in data order.
        mean_logp: the mean of ``logp``.
        mean_nll: ``-mean_logp``.
        stderr: the standard error of the mean, ``std(logp) / sqrt(N)``.
        nfe: score evaluations summed over all batches and ranks.
        dim: ``d``.
        bpd: ``(N,)`` bits per dimension, if asked for (else ``None``).
        mean_bpd, bpd_stderr: its mean and standard error (else ``None``).
    """

    logp: Tensor
    mean_logp: float
    mean_nll: float
    stderr: float
    nfe: int
    dim: int
    bpd: Tensor | None = None
    mean_bpd: float | None = None
    bpd_stderr: float | None = None


# ------------------------------------------------------------- bits/dim, dequantization
def bits_per_dim(logp: Tensor, dim: int, num_levels: int | None = 256, low: float = -1.0,
                 high: float = 1.0) -> Tensor:
    """Convert log-densities (nats) of ``d``-dimensional examples to bits per dimension.

    Derivation. Data with ``K`` integer levels ``l`` is mapped to ``[low, high]`` by
    ``x = low + (l + u) delta``, ``delta = (high - low) / K``, ``u ~ U[0, 1)``
    (uniform dequantization, :func:`dequantize`). On the level scale
    ``y = l + u`` (bins of width 1, the scale on which a discrete model assigns
    probabilities to levels) the density is ``q(y) = p(x) delta^d``, so::

        bpd = -log q(y) / (d ln 2)
            = -log p(x) / (d ln 2) - log2(delta)
            = -log p(x) / (d ln 2) + log2(K / (high - low)).

    256 levels on ``[-1, 1]`` give the offset ``log2(128) = 7``; on ``[0, 1]``,
    ``log2(256) = 8``. By Jensen's inequality ``E_u[bpd]`` upper-bounds the
    discrete model's bits/dim (Theis et al. 2016). With ``num_levels=None`` the
    data is continuous and ``bpd = -log p(x) / (d ln 2)``.

    Args:
        logp: log-densities in nats, any shape.
        dim: ``d``, the number of entries of one example, ``>= 1``.
        num_levels: ``K`` for quantized data, or ``None`` for continuous data.
        low, high: the range the levels were mapped to (``low < high``).

    Returns:
        Bits per dimension, shape of ``logp``.

    Raises:
        ValueError: ``dim < 1``, ``num_levels < 2``, ``low >= high`` or non-finite ``logp``.
    """
    if not isinstance(logp, Tensor):
        logp = torch.as_tensor(logp, dtype=torch.float64)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int (entries per example), got {dim!r}")
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("logp has NaN or inf entries; bits/dim would be meaningless")
    bits = -logp / (dim * math.log(2.0))
    if num_levels is None:
        return bits
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2 or None (continuous data), got {num_levels!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low}, high={high}")
    return bits + dequantization_bpd_offset(num_levels, low, high)


def dequantize(levels: Tensor, num_levels: int = 256, low: float = -1.0, high: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform dequantization of integer levels ``0..K-1`` to ``[low, high)``.

    ``x = low + (l + u) (high - low) / K`` with ``u ~ U[0, 1)`` from ``generator``;
    pair it with :func:`bits_per_dim` (same ``num_levels``, ``low``, ``high``).
    This is :func:`sdediff.datasets.dequantize` with 256 levels by default.

    Args:
        levels: integer levels, any shape.
        num_levels: ``K``.
        low, high: the target range.
        generator: the source of ``u``.
        dtype: floating dtype of the result (default: the default dtype).

    Returns:
        A tensor like ``levels`` with values in ``[low, high)``.

    Raises:
        ValueError: levels outside ``0..K-1`` or an empty range.
    """
    return _dequantize_levels(levels, num_levels=num_levels, generator=generator, low=low,
                              high=high, dtype=dtype)


# ------------------------------------------------------------------- the ODE right side
class _CountedScore:
    """Counts score evaluations and checks the output's shape and finiteness."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.score_fn(x, t)
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score_fn must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        if not all_finite(out):
            raise FloatingPointError(f"score_fn returned NaN or inf at t = {float(t.flatten()[0]):.6g} "
                                     f"(evaluation {self.nfe}) during the likelihood solve")
        return out


class _ProbabilityFlow:
    """Right side of the augmented ODE: ``d/dt (x, delta_logp) = (F(x, t), div F(x, t))``.

    For a :class:`LinearSDE` (scalar noise) ``F = f(t) x - g(t)^2 score / 2`` and
    ``div F = d f(t) - g(t)^2 div(score) / 2``: only the score is differentiated.
    Any other :class:`SDE` goes through its reverse's probability-flow drift, all
    of which is differentiated.
    """

    def __init__(self, score: _CountedScore, sde: SDE, shape: tuple[int, ...], trace: str,
                 probes: Tensor | None, control_variate: bool,
                 fresh_generator: torch.Generator | None = None, fresh: bool = False):
        self.score = score
        self.sde = sde
        self.linear = isinstance(sde, LinearSDE) and sde.noise_type == "scalar"
        self.reverse = sde.reverse(score, probability_flow=True)
        self.shape = shape  # (B, *dims)
        self.dim = math.prod(shape[1:])
        self.trace = trace
        self.probes = probes  # (P, B, d) or None
        self.control_variate = control_variate
        self.fresh = fresh  # draw new probes at every evaluation (see log_likelihood)
        self.fresh_generator = fresh_generator
        self.batched_vjp = _BatchedVJP()

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x_flat = state[0]
        # Only the solver's initial-step probe may look past T; the steps land on T (step_t).
        t_vec = t.clamp(max=self.sde.T).expand(x_flat.shape[0])
        if self.linear:
            fn = lambda y: self.score(y.reshape(self.shape), t_vec).reshape(y.shape)  # noqa: E731
        else:
            fn = lambda y: self.reverse.sde(y.reshape(self.shape), t_vec)[0].reshape(y.shape)  # noqa: E731
        with torch.enable_grad():
            xg = x_flat.detach().requires_grad_(True)
            out = fn(xg)
            vjp_fn = _VJP(out, xg)
            if self.trace == "exact":
                tr = self._exact_trace(vjp_fn, x_flat)
            else:
                if self.fresh:
                    self.probes = _draw_probes(self.trace, tuple(self.probes.shape), x_flat,
                                               self.fresh_generator)
                tr = self._hutchinson(vjp_fn, out.detach())
        out, tr = out.detach(), tr.detach()
        if not self.linear:
            return out, tr
        # f and g at the one time of this evaluation, broadcast over the batch.
        t_one = t_vec[:1]
        f_t = self.sde.f(t_one).to(x_flat)[:, None]
        half_g2 = 0.5 * self.sde.g(t_one).to(x_flat)[:, None] ** 2
        # F = f x - g^2/2 score,  div F = d f - g^2/2 tr(d score / dx).
        return f_t * x_flat - half_g2 * out, self.dim * f_t[:, 0] - half_g2[:, 0] * tr

    def _exact_trace(self, vjp_fn: "_VJP", x_flat: Tensor) -> Tensor:
        return _exact_trace(vjp_fn, x_flat, self.batched_vjp)

    def _hutchinson(self, vjp_fn: "_VJP", out: Tensor) -> Tensor:
        quad = _hutchinson_forms(vjp_fn, self.probes, out, self.batched_vjp, self.control_variate)
        return quad.mean(0)


class _BatchedVJP:
    """``v^T J`` for a stack ``(c, B, d)`` of cotangents ``v``: one vectorized backward pass,
    or -- once vectorizing has failed for this score -- one pass per cotangent."""

    def __init__(self):
        self.loop = False

    def __call__(self, vjp_fn: "_VJP", cotangents: Tensor) -> Tensor:
        if cotangents.shape[0] == 1:  # one cotangent: a plain pass, without vmap's overhead
            return vjp_fn.single(cotangents[0])[None]
        if not self.loop:
            try:
                return vjp_fn.batched(cotangents)
            except (RuntimeError, NotImplementedError) as err:
                warnings.warn(f"vectorizing the score's backward pass failed ({err}); falling "
                              "back to one backward pass per cotangent (slower)",
                              RuntimeWarning, stacklevel=4)
                self.loop = True
        return torch.stack([vjp_fn.single(c) for c in cotangents])


def _exact_trace(vjp_fn: "_VJP", x_flat: Tensor, batched_vjp: _BatchedVJP) -> Tensor:
    """``tr J = sum_i e_i^T J e_i`` for every row of ``x_flat`` ``(B, d)``: the ``d``
    cotangents ``e_i`` batched by vmap in chunks (plain passes for tiny ``d``)."""
    batch, d = x_flat.shape
    # e_i for every example: rows of the identity broadcast over the batch, never copied
    # (measured, 64-D, B = 200: a materialized basis costs ~10% more per trace).
    eye = torch.eye(d, dtype=x_flat.dtype, device=x_flat.device)[:, None, :]
    if d <= _EXACT_LOOP_MAX_DIM:  # small d: d plain backward passes, no vmap
        tr = vjp_fn.single(eye[0].expand(batch, d))[:, 0]
        for i in range(1, d):
            tr = tr + vjp_fn.single(eye[i].expand(batch, d))[:, i]
        return tr
    chunk = max(1, min(d, _EXACT_CHUNK_ELEMENTS // max(1, batch * d)))
    tr = torch.zeros(batch, dtype=x_flat.dtype, device=x_flat.device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        rows = batched_vjp(vjp_fn, eye[start:stop].expand(stop - start, batch, d))  # (c, B, d)
        # row c of chunk holds e_{start + c}^T J: its entry start + c is J's diagonal
        tr = tr + rows.diagonal(offset=start, dim1=0, dim2=2).sum(-1)
    return tr


def _hutchinson_forms(vjp_fn: "_VJP", v: Tensor, out: Tensor, batched_vjp: _BatchedVJP,
                      control_variate: bool) -> Tensor:
    """Skilling-Hutchinson ``v_p^T J v_p`` ``(P, B)`` for probes ``v`` ``(P, B, d)``, one batched VJP.

    With ``control_variate``: ``v^T (J - c I) v + c d`` is unbiased for any ``c``
    independent of ``v``; the Fisher identity ``E[score score^T] = -E[d score/dx]``
    gives the probe-free guess ``c = -|score|^2 / d`` of ``J``'s mean diagonal.
    """
    quad = (batched_vjp(vjp_fn, v) * v).sum(-1)
    if control_variate:
        d = v.shape[-1]
        c = -out.pow(2).sum(-1) / d
        quad = quad - c * ((v * v).sum(-1) - d)
    return quad


class _VJP:
    """Vector-Jacobian products of ``out = fn(x)`` from one forward pass (the graph is kept)."""

    def __init__(self, out: Tensor, x: Tensor):
        self.out, self.x = out, x

    def batched(self, cotangents: Tensor) -> Tensor:
        # is_grads_batched runs the backward pass under torch.func.vmap over the stack.
        (grad,) = torch.autograd.grad(self.out, self.x, cotangents, retain_graph=True,
                                      is_grads_batched=True, allow_unused=True)
        return torch.zeros_like(cotangents) if grad is None else grad

    def single(self, cotangent: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(self.out, self.x, cotangent, retain_graph=True, allow_unused=True)
        return torch.zeros_like(cotangent) if grad is None else grad


# ------------------------------------------------------------------ the likelihood
def log_likelihood(score_fn: ScoreFn, sde: SDE, x: Tensor, eps: float = 1e-5, trace: str = "exact",
                   probes: int = 1, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, control_variate: bool = False,
                   prior_logp: Callable[[Tensor], Tensor] | None = None,
                   options: dict | None = None, error_norm: str = "batch",
                   fresh_probes: bool = False, quadrature: int | str | None = None,
                   nodes_per_step: int = 3) -> LikelihoodResult:
    """Log-likelihood of every example of ``x`` at time ``eps`` through the probability-flow ODE.

    Integrates ``d/dt (x, delta) = (F, div F)`` with ``F = f - g^2 score / 2`` from
    ``eps`` to ``T`` (Dormand-Prince 5(4) by default) and returns
    ``log p_eps(x) = log p_T(x(T)) + delta`` (Song et al. 2021, app. D.2).

    Args:
        score_fn: ``score_fn(x, t) -> tensor like x`` with ``t`` of shape ``(B,)``.
        sde: the forward SDE (any :class:`SDE`; its prior closes the flow).
        x: data ``(B, *dims)``, finite; float64 for accurate answers.
        eps: the start time, in ``(0, T)``: the density is that of ``x_eps``.
        trace: ``"exact"`` (``d`` VJPs, vectorized and chunked), or the Hutchinson
            estimators ``"gaussian"`` / ``"rademacher"`` (unbiased, one VJP per probe).
        probes: Hutchinson probes per example, drawn once per solve and averaged (``>= 1``).
        method: ``"dopri5"`` (adaptive, the default) or any other torchdiffeq solver, e.g.
            ``"rk4"``. Without ``options``, ``"dopri5"`` runs the library's own
            Dormand-Prince loop (:mod:`sdediff._dopri5`): the steps of torchdiffeq's
            ``dopri5`` to round-off, at a tenth of its bookkeeping per step.
        rtol, atol: the solver's tolerances (on the augmented state).
        generator: the source of the probes (Hutchinson only).
        control_variate: Hutchinson on a :class:`LinearSDE` only: estimate
            ``tr J = v^T (J - c I) v + c d`` for ``J = d score / dx`` with the probe-free
            guess ``c = -|score|^2 / d`` of its mean diagonal (Fisher identity
            ``E[score score^T] = -E[J]``). Unbiased; it removes the variance Gaussian
            probes draw from ``|v|^2``, usually the bulk of it. Rademacher probes have
            ``|v|^2 = d`` already, so for them it changes nothing.
        prior_logp: ``z -> (B,)`` to close the flow with another density at ``T``
            (default ``sde.prior_logp``), e.g. the exact ``p_T`` of an oracle.
        options: extra solver options passed to torchdiffeq's ``odeint`` (e.g.
            ``{"step_size": 1e-2}``); with any, ``"dopri5"`` is torchdiffeq's too.
        error_norm: how adaptive solvers measure the local error against
            ``atol + rtol |y|``: ``"batch"`` (torchdiffeq's default, the RMS over the whole
            batch, so a few hard examples can carry errors far above the tolerance) or
            ``"per_example"`` (the largest per-example RMS over ``x`` and ``delta_logp``:
            every example meets the tolerance; on the 2-D ring it reaches a given mean
            error with ~20% fewer evaluations and a ~3x smaller worst case).
        fresh_probes: Hutchinson only: draw new probes at every score evaluation instead
            of once per solve. The step-size control then looks at ``x`` alone (the
            ``x``-dynamics do not depend on the probes), so the steps, the stages and the
            solver's quadrature weights are probe-independent and the result is a fixed
            linear combination of independent unbiased estimates -- unbiased, with a
            variance that falls with the number of evaluations where the Jacobian's
            off-diagonal part is large (measured ~2x smaller std at ``rtol = 1e-5``).
            Needs an adaptive or fixed-grid torchdiffeq solver; the dense-output value at
            ``T`` is a fixed combination of stage values, so this holds for all of them.
        quadrature: ``None`` (default) integrates ``div F`` with the ODE, as above. An int
            ``n >= 2`` (:class:`LinearSDE` only) solves ``x(t)`` alone (forward passes,
            the tolerances and ``error_norm`` apply to ``x``) and integrates the divergence
            along it with ``n``-point Gauss-Legendre in log-SNR, the ``n`` node divergences
            computed in a few large batched passes (see the module notes). With
            Hutchinson probes every node draws its own ``probes`` probes, so the estimate
            averages ``n * probes`` independent ones: unbiased for the quadrature, and on
            the test mixtures ``n = 48, probes = 4`` has a 3.4-3.8x smaller std than one
            probe held along an ODE solve, at 1.2-1.5x its time at the same tolerance.
            The quadrature error itself falls geometrically with ``n`` (exact trace, 64-D mixture:
            ~0.12 / 0.05 / 0.02 nats at ``n`` = 32 / 48 / 64): use it for Hutchinson,
            where it hides under the probe noise, and the ODE path for the most accurate
            exact values. ``nfe`` counts the trajectory's evaluations plus one per node.

            ``"steps"`` (:class:`LinearSDE` only, ``method="dopri5"`` without ``options``):
            the same decoupling with an adaptive composite rule instead: ``x(t)`` is solved
            alone by the library's Dormand-Prince loop, and each of its accepted steps
            ``[t, t + h]`` gets ``nodes_per_step``-point Gauss-Legendre in ``t`` on the
            step's dense output, ``int div F dt = d log(a(T) / a(eps)) - sum_j w_j g(t_j)^2
            / 2 tr(d score/dx)(t_j)``. The solver's steps are short where the flow changes
            fast, which is where the divergence does too, so the nodes land where they
            are needed (the fixed log-SNR rule needs ~128 nodes for 1e-4 nats on the 2-D
            ring). A step costs 6 forward passes and ``nodes_per_step`` divergences
            instead of 6 divergences. Measured with the exact trace at ``rtol = 1e-4`` (3
            nodes): 1.3e-4 nats on the 2-D ring and 1.46e-2 (the prior floor 1.44e-2) on
            the 64-D mixture, in about 1/2 and 1/3 the time of the ODE path at the same
            tolerance. With Hutchinson probes it averages dozens of nodes' probes, as
            ``quadrature=n`` does (``probes=4``: 4.8-6.4x lower std than one probe held
            along a solve at ``rtol = 1e-3``). The step control
            sees ``x`` only, not the divergence, so at loose tolerances on small batches a
            few examples can carry larger quadrature errors (64-D, 12 points, ``rtol =
            1e-4``: one at 1.7e-2 nats, the mean 3e-3); ``nodes_per_step=4`` or a tighter
            tolerance brings them down.
        nodes_per_step: Gauss-Legendre nodes per accepted step with ``quadrature="steps"``
            (``>= 1``; 3 integrates a quintic in ``t`` exactly per step, like the 5th-order
            solver; 4 is more accurate per step).

    Returns:
        A :class:`LikelihoodResult` with per-example ``logp`` (nats), ``prior_logp``,
        ``delta_logp``, the latent ``z`` and the ``nfe``; ``result.bpd(...)`` converts.

    Raises:
        ValueError: ``eps`` outside ``(0, T)``, an unknown ``trace`` or ``method``,
            ``probes < 1``, bad tolerances, ``x`` of the wrong shape or with NaN/inf,
            or a ``score_fn`` output of the wrong shape.
        FloatingPointError: the score or the result is NaN/inf.
    """
    x = _check_inputs(score_fn, sde, x, eps, trace, probes, method, rtol, atol)
    if error_norm not in ERROR_NORMS:
        raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {error_norm!r}")
    if isinstance(nodes_per_step, bool) or not isinstance(nodes_per_step, int) or nodes_per_step < 1:
        raise ValueError(f"nodes_per_step must be an int >= 1, got {nodes_per_step!r}")
    if nodes_per_step != 3 and quadrature != "steps":
        raise ValueError(f"nodes_per_step applies to quadrature='steps' only, got quadrature={quadrature!r}")
    if quadrature is not None:
        by_steps = quadrature == "steps"
        if not by_steps and (isinstance(quadrature, bool) or not isinstance(quadrature, int)
                             or quadrature < 2):
            raise ValueError(f"quadrature must be None (integrate with the ODE), an int >= 2 "
                             f"(Gauss-Legendre nodes in log-SNR) or 'steps' (Gauss-Legendre on "
                             f"every solver step), got {quadrature!r}")
        if not (isinstance(sde, LinearSDE) and sde.noise_type == "scalar"):
            raise ValueError("quadrature needs a LinearSDE with scalar noise (it integrates the "
                             "divergence apart, with the exact d log(a(T) / a(eps)) term); got "
                             f"{type(sde).__name__}: use quadrature=None")
        if fresh_probes:
            raise ValueError("fresh_probes applies to the ODE path; quadrature=n already draws "
                             "new probes at every node")
        if by_steps:
            if not runs_lean(method, options):
                raise ValueError("quadrature='steps' runs the library's dopri5 loop: it needs "
                                 f"method='dopri5' and no options, got method={method!r}, "
                                 f"options={options!r}")
            return _log_likelihood_by_steps(
                score_fn, sde, x, eps, nodes_per_step, trace, probes, generator,
                bool(control_variate), prior_logp, rtol, atol, error_norm)
        return _log_likelihood_by_quadrature(
            score_fn, sde, x, eps, quadrature, trace, probes, generator, bool(control_variate),
            prior_logp, method, rtol, atol, dict(options or {}), error_norm)
    if fresh_probes and trace == "exact":
        raise ValueError("fresh_probes=True needs a Hutchinson trace ('gaussian' or 'rademacher'), "
                         "got trace='exact'")
    batch = x.shape[0]
    d = x[0].numel()
    x_flat = x.reshape(batch, d)
    v = None
    if trace != "exact":
        v = _draw_probes(trace, (probes, batch, d), x, generator)
    score = _CountedScore(score_fn)
    flow = _ProbabilityFlow(score, sde, tuple(x.shape), trace, v, bool(control_variate),
                            fresh_generator=generator, fresh=bool(fresh_probes))
    if control_variate and not flow.linear:
        raise ValueError("control_variate=True needs a LinearSDE with scalar noise (its guess of "
                         f"the Jacobian's diagonal uses f(t), g(t) and the score); got {type(sde).__name__}")
    delta0 = torch.zeros(batch, dtype=x.dtype, device=x.device)

    def func(t: Tensor, y: Tensor) -> Tensor:  # one (B, d + 1) state: x, then delta_logp
        dx, ddelta = flow(t, (y[:, :d], y[:, d]))
        return torch.cat([dx, ddelta[:, None]], 1)

    with torch.no_grad():
        y1, _ = _ode_solve(func, torch.cat([x_flat, delta0[:, None]], 1), eps, sde.T, method, rtol,
                           atol, options, _error_norm(error_norm, d, include_delta=not fresh_probes))
    z, delta = y1[:, :d].reshape(x.shape), y1[:, d]
    return _result(z, delta, prior_logp or sde.prior_logp, score.nfe, trace, probes)


def _result(z: Tensor, delta: Tensor, prior_logp, nfe: int, trace: str, probes: int) -> LikelihoodResult:
    """Close the flow with the prior at ``T`` and check the outcome."""
    batch = z.shape[0]
    prior = prior_logp(z)
    if not isinstance(prior, Tensor) or prior.shape != (batch,):
        raise ValueError(f"prior_logp must return a tensor of shape (B,) = ({batch},), got "
                         f"{tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__}")
    logp = prior.to(delta) + delta
    if not bool(torch.isfinite(logp).all()):
        raise FloatingPointError("the log-likelihood came out NaN/inf: check the score function, "
                                 "eps and the tolerances")
    return LikelihoodResult(logp=logp, prior_logp=prior.to(delta), delta_logp=delta, z=z, nfe=nfe,
                            dim=z[0].numel(), trace=trace, probes=0 if trace == "exact" else probes)


# Rows x entries (x probes) of one batched pass of the quadrature's node divergences
# (2^20 floats): nodes are grouped so that a group's forward graph stays around 8 MiB in
# float64. The exact trace runs its d cotangents over the group in chunks, so it takes
# smaller groups (measured, 64-D, 40 nodes of 200 examples, per node: 16.8 ms in groups
# of 5 nodes, 19.5 ms in groups of 20, 19 ms node by node).
_QUADRATURE_GROUP_ELEMENTS = 1 << 20
_EXACT_GROUP_ELEMENTS = 1 << 16


def _quadrature_rule(n: int):
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on ``[-1, 1]`` (float64 numpy)."""
    import numpy as np

    return np.polynomial.legendre.leggauss(n)


def _log_likelihood_by_quadrature(score_fn, sde: LinearSDE, x: Tensor, eps: float, n: int, trace: str,
                                  probes: int, generator, control_variate: bool, prior_logp,
                                  method: str, rtol: float, atol: float, options: dict,
                                  error_norm: str) -> LikelihoodResult:
    """``quadrature=n`` of :func:`log_likelihood`: the trajectory alone, then Gauss-Legendre in log-SNR."""
    batch, d = x.shape[0], x[0].numel()
    shape = tuple(x.shape)
    kw = dict(dtype=x.dtype, device=x.device)
    t_ends = torch.tensor([eps, sde.T], **kw)
    lam_eps, lam_T = (float(v) for v in sde.log_snr(t_ends))
    u, w = _quadrature_rule(n)
    half = 0.5 * (lam_eps - lam_T)
    lam = torch.as_tensor(lam_T + half * (u + 1.0), **kw)  # ascending lambda: descending t
    weights = torch.as_tensor(half * w, **kw)
    t_nodes = sde.t_from_log_snr(lam).to(**kw).flip(0)  # ascending t
    weights = weights.flip(0)
    times = torch.cat([t_ends[:1], t_nodes, t_ends[1:]])
    if not bool((times.diff() > 0).all()):
        raise ValueError(f"quadrature={n} nodes are not distinct in t at {x.dtype} resolution; "
                         "use fewer nodes")

    score = _CountedScore(score_fn)
    with torch.no_grad():
        x_T, nodes_x = _ode_solve(_trajectory_drift(score, sde, shape), x.reshape(batch, d), eps, sde.T,
                                  method, rtol, atol, options,
                                  _error_norm(error_norm, d, include_delta=False), t_eval=t_nodes)
    nodes = _NodeTraces(score, shape, trace, probes, generator, control_variate)
    for t_node, x_node in zip(t_nodes.tolist(), nodes_x):
        nodes.add(t_node, x_node)
    tr = nodes.traces()  # (n, B)
    s2 = sde.std(t_nodes).to(**kw) ** 2
    log_a = torch.log(sde.scale(t_ends).to(**kw))
    delta = d * (log_a[1] - log_a[0]) - (weights[:, None] * s2[:, None] * tr).sum(0)
    return _result(x_T.reshape(shape), delta, prior_logp or sde.prior_logp, score.nfe, trace, probes)


def _log_likelihood_by_steps(score_fn, sde: LinearSDE, x: Tensor, eps: float, m: int, trace: str,
                             probes: int, generator, control_variate: bool, prior_logp, rtol: float,
                             atol: float, error_norm: str) -> LikelihoodResult:
    """``quadrature="steps"`` of :func:`log_likelihood`: the trajectory alone, by the lean dopri5,
    then ``m``-point Gauss-Legendre in ``t`` on each of its accepted steps (dense output)."""
    batch, d = x.shape[0], x[0].numel()
    shape = tuple(x.shape)
    kw = dict(dtype=x.dtype, device=x.device)
    u, w = _quadrature_rule(m)
    fractions, half_weights = ((u + 1.0) / 2.0).tolist(), (w / 2.0).tolist()
    score = _CountedScore(score_fn)
    nodes = _NodeTraces(score, shape, trace, probes, generator, control_variate)
    weights: list[float] = []

    def on_step(t: float, dt: float, x_at: Callable[[float], Tensor]) -> None:
        for frac, half_w in zip(fractions, half_weights):
            weights.append(half_w * dt)
            nodes.add(t + frac * dt, x_at(frac))

    with torch.no_grad():
        x_T, _ = dopri5(_trajectory_drift(score, sde, shape), x.reshape(batch, d), eps, sde.T, rtol, atol,
                        norm=_error_norm(error_norm, d, include_delta=False), on_step=on_step)
    tr = nodes.traces()  # (N, B)
    t_nodes = torch.tensor(nodes.times, **kw)
    half_g2 = 0.5 * sde.g(t_nodes).to(**kw) ** 2
    log_a = torch.log(sde.scale(torch.tensor([eps, sde.T], **kw)).to(**kw))
    # int div F dt = d log(a(T) / a(eps)) - int g^2 / 2 tr(d score/dx) dt
    delta = d * (log_a[1] - log_a[0]) - (torch.tensor(weights, **kw)[:, None] * half_g2[:, None] * tr).sum(0)
    return _result(x_T.reshape(shape), delta, prior_logp or sde.prior_logp, score.nfe, trace, probes)


def _trajectory_drift(score: _CountedScore, sde: LinearSDE, shape: tuple[int, ...]):
    """``F(x, t) = f(t) x - g(t)^2 score / 2`` on the flat ``(B, d)`` state (no divergence)."""
    batch, d = shape[0], math.prod(shape[1:])

    def drift(t: Tensor, y: Tensor) -> Tensor:
        t_vec = t.clamp(max=sde.T).expand(batch)
        t_one = t_vec[:1]  # f and g at the one time of this evaluation, broadcast over the batch
        f_t = sde.f(t_one).to(y)[:, None]
        half_g2 = 0.5 * sde.g(t_one).to(y)[:, None] ** 2
        return f_t * y - half_g2 * score(y.reshape(shape), t_vec).reshape(batch, d)

    return drift


class _NodeTraces:
    """``tr(d score/dx)`` at quadrature nodes, nodes grouped into large batched passes.

    :meth:`add` takes one node (its time and its ``(B, d)`` state) and runs a batched
    pass whenever ``group`` nodes are waiting; :meth:`traces` runs the rest and returns
    all of them, ``(N, B)`` in the order added (their times in :attr:`times`). With Hutchinson probes every node draws
    its own. Each node counts as one evaluation of ``score``.
    """

    def __init__(self, score: _CountedScore, shape: tuple[int, ...], trace: str, probes: int,
                 generator, control_variate: bool):
        self.score, self.shape = score, shape
        self.batch, self.dim = shape[0], math.prod(shape[1:])
        self.trace, self.probes = trace, probes
        self.generator, self.control_variate = generator, control_variate
        if trace == "exact":
            self.group = max(1, _EXACT_GROUP_ELEMENTS // max(1, self.batch * self.dim))
        else:
            self.group = max(1, _QUADRATURE_GROUP_ELEMENTS // max(1, self.batch * self.dim * probes))
        self.batched_vjp = _BatchedVJP()
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
        tr = torch.cat(self._out)
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
            out = self.score.score_fn(y.reshape((rows,) + self.shape[1:]), t_rows).reshape(rows, self.dim)
            self.score.nfe += k
            vjp_fn = _VJP(out, y)
            if self.trace == "exact":
                tr = _exact_trace(vjp_fn, y, self.batched_vjp)
            else:
                v = _draw_probes(self.trace, (self.probes, rows, self.dim), y, self.generator)
                tr = _hutchinson_forms(vjp_fn, v, out.detach(), self.batched_vjp,
                                       self.control_variate).mean(0)
        self._out.append(tr.detach().reshape(k, self.batch))


def _check_inputs(score_fn, sde, x, eps, trace, probes, method, rtol, atol) -> Tensor:
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdediff SDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor (float64 for accurate likelihoods), got {x.dtype}")
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
    from torchdiffeq._impl.odeint import SOLVERS
    if method not in SOLVERS:
        raise ValueError(f"method must be a torchdiffeq solver, one of {sorted(SOLVERS)}, got {method!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"{name} must be a float in (0, 1), got {tol!r}")
    return x


def _error_norm(kind: str, d: int, include_delta: bool) -> Callable[[Tensor], Tensor]:
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


def _ode_solve(func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float, method: str,
               rtol: float, atol: float, options: dict | None, norm: Callable[[Tensor], Tensor],
               t_eval: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``(y(t1), y(t_eval))`` of ``dy/dt = func(t, y)`` from ``t0``: the library's dopri5 loop
    (``method="dopri5"`` without ``options``), else ``torchdiffeq.odeint``. Adaptive steps
    never pass ``t1`` (where the SDE is undefined)."""
    if runs_lean(method, options):
        return dopri5(func, y0, t0, t1, rtol, atol, norm=norm, t_eval=t_eval)
    ends = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device)
    times = ends if t_eval is None else torch.cat([ends[:1], t_eval.to(ends), ends[1:]])
    options = dict(options or {})
    if method in _ADAPTIVE_SOLVERS:
        options.setdefault("step_t", ends[1:])
        options.setdefault("norm", norm)
    ys = odeint(func, y0, times, method=method, rtol=rtol, atol=atol, options=options)
    return ys[-1], (None if t_eval is None else ys[1:-1])


def _draw_probes(trace: str, shape: tuple[int, int, int], like: Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Probe vectors ``(P, B, d)``: standard normal, or Rademacher (+-1 with equal odds)."""
    device = generator.device if generator is not None else like.device
    if trace == "gaussian":
        v = torch.randn(shape, generator=generator, dtype=like.dtype, device=device)
    else:
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(like.dtype) * 2 - 1
    return v.to(like.device)


# ------------------------------------------------------------- whole data sets
def evaluate(score_fn: ScoreFn, sde: SDE, data: Tensor | Iterable[Tensor], batch_size: int = 256,
             num_levels: int | None = None, low: float = -1.0, high: float = 1.0, bpd: bool = False,
             generator: torch.Generator | None = None, progress: bool = True,
             **kwargs) -> EvaluationResult:
    """Log-likelihoods of a whole data set: mean, standard error and per-example values.

    ``data`` is cut into batches of ``batch_size`` (the same batches whatever the
    number of processes, so the numbers do not depend on it). Under
    ``torch.distributed`` (an initialized process group, e.g. from ``torchrun``)
    each rank solves its own contiguous run of batches with no collective inside
    the solves (adaptive solvers take a different number of steps on each rank);
    the per-example results are gathered at the end with ``all_gather_object``,
    so every rank returns the same full result in data order.

    Hutchinson probes come from per-batch generators seeded from one draw of
    ``generator``, so results are reproducible and independent of the rank count.

    Args:
        score_fn: ``score_fn(x, t) -> tensor like x``.
        sde: the forward SDE.
        data: a tensor ``(N, *dims)`` or an iterable of such batches (concatenated first).
        batch_size: examples per solve.
        num_levels, low, high: passed to :func:`bits_per_dim` (``num_levels=None``: continuous).
        bpd: also return bits per dimension.
        generator: the source of Hutchinson probes.
        progress: show a tqdm bar (on rank 0 only).
        **kwargs: passed to :func:`log_likelihood` (``eps``, ``trace``, ``rtol``, ...).

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        ValueError: empty data, bad ``batch_size``, or the errors of :func:`log_likelihood`.
    """
    from tqdm.auto import tqdm

    if "generator" in kwargs or "x" in kwargs:
        raise TypeError("pass generator= to evaluate itself; x is the data argument")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(data, Tensor):
        batches = [b if isinstance(b, Tensor) else b[0] for b in data]
        if not batches:
            raise ValueError("data is empty")
        data = torch.cat(batches)
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"data must have shape (N, *dims) with N >= 1, got {tuple(data.shape)}")
    n = data.shape[0]
    starts = list(range(0, n, batch_size))
    base_seed = 0
    if kwargs.get("trace", "exact") != "exact":
        base_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                      device=generator.device if generator is not None else "cpu"))
    rank, world = _dist_rank_world()
    mine = range(len(starts) * rank // world, len(starts) * (rank + 1) // world)
    gen_device = generator.device if generator is not None else data.device
    local: list[tuple[int, Tensor, int]] = []
    for b in tqdm(mine, desc=f"likelihood (rank {rank})" if world > 1 else "likelihood",
                  disable=not progress or rank != 0, unit="batch"):
        gen = torch.Generator(device=gen_device).manual_seed(base_seed + b)
        res = log_likelihood(score_fn, sde, data[starts[b]:starts[b] + batch_size], generator=gen, **kwargs)
        local.append((b, res.logp.detach().cpu(), res.nfe))
    if world > 1:
        gathered: list = [None] * world
        import torch.distributed as dist
        dist.all_gather_object(gathered, local)
        local = [item for part in gathered for item in part]
    local.sort(key=lambda item: item[0])
    logp = torch.cat([item[1] for item in local]).to(data.device)
    nfe = sum(item[2] for item in local)
    d = data[0].numel()
    mean = float(logp.mean())
    stderr = float(logp.std() / math.sqrt(n)) if n > 1 else float("nan")
    out = EvaluationResult(logp=logp, mean_logp=mean, mean_nll=-mean, stderr=stderr, nfe=nfe, dim=d)
    if bpd:
        bits = bits_per_dim(logp, d, num_levels=num_levels, low=low, high=high)
        out.bpd, out.mean_bpd = bits, float(bits.mean())
        out.bpd_stderr = float(bits.std() / math.sqrt(n)) if n > 1 else float("nan")
    return out


def _dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialized process group, else ``(0, 1)``."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
