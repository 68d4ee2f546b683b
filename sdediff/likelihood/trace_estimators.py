"""Divergence estimators: the exact trace and Skilling-Hutchinson forms of a Jacobian.

Everything here works on a flat ``(B, d)`` output ``out = fn(x)`` whose graph is kept, through
:class:`VJP` (vector-Jacobian products ``v^T J`` from one forward pass):

* :func:`exact_trace`: ``tr J = sum_i e_i^T J e_i``, the ``d`` cotangents ``e_i`` run as one
  backward pass vectorized by ``torch.func.vmap`` (autograd's ``is_grads_batched``) in chunks
  (memory stays bounded), or as ``d`` plain passes for tiny ``d``;
* :func:`hutchinson_forms`: ``v^T J v`` for probes ``v`` (:func:`draw_probes`), all probes in
  one batched VJP, optionally with the probe-free control variate.

The VJPs are taken of the whole batch at once, which assumes that example ``i`` of ``out``
depends on ``x_i`` only -- true of any network without batch statistics.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["TRACE_ESTIMATORS", "VJP", "BatchedVJP", "exact_trace", "hutchinson_forms", "draw_probes",
           "divergence"]

#: The divergence estimators of :func:`~sdediff.likelihood.log_likelihood`.
TRACE_ESTIMATORS = ("exact", "gaussian", "rademacher")

# Largest number of floats in one vectorized batch of cotangents (chunk x B x d) of the
# exact trace: 2^19 doubles = 4 MiB. Memory stays bounded for large d, and the chunk
# stays near cache size (measured: 64-D, B = 200, a chunk of 32-40 cotangents runs
# ~25% faster per cotangent than all 64 at once).
EXACT_CHUNK_ELEMENTS = 1 << 19

# Up to this d the exact trace takes d plain backward passes through one retained graph
# instead of one vmapped pass: vmap's batching rules cost more than they save when only
# two or three cotangents are batched (measured on the 2-D ring: 5.7 ms vs 6.5 ms).
EXACT_LOOP_MAX_DIM = 4


class VJP:
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


#: Cotangents up to which a failed vectorization falls back to a loop without a warning (the
#: Hutchinson probes of a node, say, against the exact trace's ``d``).
QUIET_LOOP_MAX = 16


class BatchedVJP:
    """``v^T J`` for a stack ``(c, B, d)`` of cotangents ``v``: one vectorized backward pass,
    or -- once vectorizing has failed for this function -- one pass per cotangent."""

    def __init__(self):
        self.loop = False

    def __call__(self, vjp: VJP, cotangents: Tensor) -> Tensor:
        if cotangents.shape[0] == 1:  # one cotangent: a plain pass, without vmap's overhead
            return vjp.single(cotangents[0])[None]
        if not self.loop:
            try:
                return vjp.batched(cotangents)
            except (RuntimeError, NotImplementedError) as err:
                if cotangents.shape[0] > QUIET_LOOP_MAX:  # a few probes cost about the same either way
                    warnings.warn(f"vectorizing the score's backward pass failed ({err}); falling "
                                  "back to one backward pass per cotangent (slower)",
                                  RuntimeWarning, stacklevel=4)
                self.loop = True
        return torch.stack([vjp.single(c) for c in cotangents])


def exact_trace(vjp: VJP, x_flat: Tensor, batched_vjp: BatchedVJP) -> Tensor:
    """``tr J = sum_i e_i^T J e_i`` for every row of ``x_flat`` ``(B, d)``: the ``d``
    cotangents ``e_i`` batched by vmap in chunks (plain passes for tiny ``d``)."""
    batch, d = x_flat.shape
    # e_i for every example: rows of the identity broadcast over the batch, never copied
    # (measured, 64-D, B = 200: a materialized basis costs ~10% more per trace).
    eye = torch.eye(d, dtype=x_flat.dtype, device=x_flat.device)[:, None, :]
    if d <= EXACT_LOOP_MAX_DIM:  # small d: d plain backward passes, no vmap
        tr = vjp.single(eye[0].expand(batch, d))[:, 0]
        for i in range(1, d):
            tr = tr + vjp.single(eye[i].expand(batch, d))[:, i]
        return tr
    chunk = max(1, min(d, EXACT_CHUNK_ELEMENTS // max(1, batch * d)))
    tr = torch.zeros(batch, dtype=x_flat.dtype, device=x_flat.device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        rows = batched_vjp(vjp, eye[start:stop].expand(stop - start, batch, d))  # (c, B, d)
        # row c of chunk holds e_{start + c}^T J: its entry start + c is J's diagonal
        tr = tr + rows.diagonal(offset=start, dim1=0, dim2=2).sum(-1)
    return tr


def hutchinson_forms(vjp: VJP, v: Tensor, out: Tensor, batched_vjp: BatchedVJP,
                     control_variate: bool) -> Tensor:
    """Skilling-Hutchinson ``v_p^T J v_p`` ``(P, B)`` for probes ``v`` ``(P, B, d)``, one batched VJP.

    With ``control_variate``: ``v^T (J - c I) v + c d`` is unbiased for any ``c``
    independent of ``v``; the Fisher identity ``E[score score^T] = -E[d score/dx]``
    gives the probe-free guess ``c = -|score|^2 / d`` of ``J``'s mean diagonal (``out``
    is the score).
    """
    quad = (batched_vjp(vjp, v) * v).sum(-1)
    if control_variate:
        d = v.shape[-1]
        c = -out.pow(2).sum(-1) / d
        quad = quad - c * ((v * v).sum(-1) - d)
    return quad


def draw_probes(trace: str, shape: tuple[int, int, int], like: Tensor,
                generator: torch.Generator | None) -> Tensor:
    """Probe vectors ``(P, B, d)``: standard normal, or Rademacher (+-1 with equal odds)."""
    device = generator.device if generator is not None else like.device
    if trace == "gaussian":
        v = torch.randn(shape, generator=generator, dtype=like.dtype, device=device)
    else:
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(like.dtype) * 2 - 1
    return v.to(like.device)


def divergence(trace: str, vjp: VJP, x_flat: Tensor, out: Tensor, probes: Tensor | None,
               batched_vjp: BatchedVJP, control_variate: bool) -> Tensor:
    """``tr J`` ``(B,)``: exact, or the mean of the Hutchinson forms over the probes ``(P, B, d)``."""
    if trace == "exact":
        return exact_trace(vjp, x_flat, batched_vjp)
    return hutchinson_forms(vjp, probes, out, batched_vjp, control_variate).mean(0)
