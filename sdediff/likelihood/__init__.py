"""Exact log-likelihoods through the probability-flow ODE.

The probability-flow ODE ``dx/dt = F(x, t) = f(x, t) - g^2 score(x, t) / 2`` (Song et al. 2021,
eq. 13; the drift of ``sde.reverse(score, probability_flow=True)``) is a continuous
normalizing flow, so by the instantaneous change of variables (Chen et al. 2018, thm. 1)::

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt.

One module per job:

* :mod:`~sdediff.likelihood.dispatch`: :func:`log_likelihood` checks its arguments and picks a path;
* :mod:`~sdediff.likelihood.augmented_flow`: the right-hand sides, ``(F, div F)`` and ``F`` alone;
* :mod:`~sdediff.likelihood.trace_estimators`: the exact trace and the Hutchinson forms;
* :mod:`~sdediff.likelihood.solvers`: :class:`SolverOptions`, error norms, the solve and its step cap;
* :mod:`~sdediff.likelihood.ode_path`: ``(x, delta_logp)`` integrated together;
* :mod:`~sdediff.likelihood.quadrature_paths`: ``x(t)`` alone, the divergence by Gauss-Legendre
  (fixed log-SNR nodes, or nodes on the solver's own steps);
* :mod:`~sdediff.likelihood.evaluation`: :func:`evaluate`, whole data sets, sharded over ranks;
* :mod:`~sdediff.likelihood.results`: :class:`LikelihoodResult`, :class:`EvaluationResult`.

Cost: the exact trace costs about ``d`` backward passes of arithmetic per evaluation
(vectorized, so no Python loop), one probe about one. For small ``d`` (2-D) the forward pass
and fixed overheads dominate and the exact trace costs about as much as one probe; in 64-D it
is several times dearer. :func:`bits_per_dim` and :func:`dequantize` come from
:mod:`sdediff.quantization`.
"""
from ..quantization import bits_per_dim, dequantize
from .dispatch import log_likelihood
from .evaluation import evaluate
from .results import EvaluationResult, LikelihoodResult
from .solvers import ERROR_NORMS, METHODS, SolverOptions
from .trace_estimators import TRACE_ESTIMATORS

__all__ = ["LikelihoodResult", "EvaluationResult", "SolverOptions", "log_likelihood", "evaluate",
           "bits_per_dim", "dequantize", "TRACE_ESTIMATORS", "ERROR_NORMS", "METHODS"]
