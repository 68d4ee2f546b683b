"""What a likelihood computation returns, and closing the flow with the prior at ``T``."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from ..quantization import HIGH, LOW, NUM_LEVELS, bits_per_dim

__all__ = ["LikelihoodResult", "EvaluationResult", "close_flow"]


@dataclasses.dataclass
class LikelihoodResult:
    """Per-example output of :func:`~sdediff.likelihood.log_likelihood`.

    Attributes:
        logp: ``(B,)`` log-density ``log p_eps(x)`` in nats.
        prior_logp: ``(B,)`` ``log p_T(z)`` of the latent under the prior.
        delta_logp: ``(B,)`` ``int_eps^T div F dt`` (so ``logp = prior_logp + delta_logp``).
        z: the latent ``x(T)``, shape of ``x``.
        nfe: score evaluations used by the solve.
        dim: ``d``, the number of entries of one example.
        trace: the divergence estimator used.
        probes: Hutchinson probes per solve (0 for the exact trace).
        probe_logp: ``(P, B)`` with Hutchinson probes and a quadrature (``None`` otherwise): the
            log-density with each probe's own node estimates -- ``P`` independent unbiased
            estimates sharing one trajectory, whose mean is ``logp``; their spread over ``P``
            is the probe noise of one of them (``/ sqrt(P)`` for ``logp``'s).
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    dim: int
    trace: str = "exact"
    probes: int = 0
    probe_logp: Tensor | None = None

    @property
    def nll(self) -> Tensor:
        """``-logp``, per example, in nats."""
        return -self.logp

    def bpd(self, num_levels: int | None = NUM_LEVELS, low: float = LOW, high: float = HIGH, *,
            data: Tensor | None = None) -> Tensor:
        """Bits per dimension of every example; see :func:`sdediff.quantization.bits_per_dim`."""
        return bits_per_dim(self.logp, self.dim, num_levels=num_levels, low=low, high=high, data=data)


@dataclasses.dataclass
class EvaluationResult:
    """Output of :func:`~sdediff.likelihood.evaluate` over a whole data set (every rank holds all of it).

    Attributes:
        logp: ``(N,)`` per-example log-likelihoods in nats, in data order.
        mean_logp: the mean of ``logp``.
        mean_nll: ``-mean_logp``.
        stderr: the standard error of the mean, ``std(logp) / sqrt(N)``.
        nfe: score evaluations summed over all batches and ranks.
        dim: ``d``.
        bpd: ``(N,)`` bits per dimension, if asked for (else ``None``).
        mean_bpd, bpd_stderr: its mean and standard error (else ``None``).
        probe_logp: ``(P, N)`` the per-probe estimates of a quadrature path with Hutchinson
            probes (see :class:`LikelihoodResult`), else ``None``.
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
    probe_logp: Tensor | None = None


def close_flow(z: Tensor, delta: Tensor, prior_logp: Callable[[Tensor], Tensor], nfe: int, trace: str,
               probes: int) -> LikelihoodResult:
    """``log p_eps(x) = log p_T(z) + delta``, checked: the result of every path. ``delta`` is
    ``(B,)``, or ``(P, B)`` probe by probe (a quadrature path: kept as ``probe_logp``)."""
    batch = z.shape[0]
    probe_delta = None
    if delta.dim() == 2:
        probe_delta, delta = (delta, delta.mean(0)) if trace != "exact" else (None, delta[0])
    prior = prior_logp(z)
    if not isinstance(prior, Tensor) or prior.shape != (batch,):
        raise ValueError(f"prior_logp must return a tensor of shape (B,) = ({batch},), got "
                         f"{tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__}")
    logp = prior.to(delta) + delta
    if not bool(torch.isfinite(logp).all()):
        raise FloatingPointError("the log-likelihood came out NaN/inf: check the score function, "
                                 "eps and the tolerances")
    probe_logp = None if probe_delta is None else prior.to(delta)[None] + probe_delta
    return LikelihoodResult(logp=logp, prior_logp=prior.to(delta), delta_logp=delta, z=z, nfe=nfe,
                            dim=z[0].numel(), trace=trace, probes=0 if trace == "exact" else probes,
                            probe_logp=probe_logp)
