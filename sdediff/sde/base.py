"""The SDE interface: the base class every forward SDE implements, and its reverse.

A forward SDE ``dx = f(x, t) dt + g(x, t) dW`` runs from data at ``t = 0`` to the
prior at ``t = T``. Every SDE exposes the members of the contract in ``DESIGN.md``:
``sde``, ``marginal_prob``, ``prior_sampling``, ``prior_logp``, ``discretize`` and
``reverse``. :class:`ReverseSDE` holds the one reverse-time drift of the toolkit:
every sampler and the likelihood get ``f - g^2 score`` (or the probability-flow
``f - g^2 score / 2``) from :meth:`ReverseSDE.drift`.

Time convention: ``t`` is continuous in ``[0, T]``, given as a float or a tensor
of shape ``(B,)``. Coefficients of shape ``(B,)`` broadcast over ``x``'s other
dimensions.
"""
from __future__ import annotations

import abc
import math
import operator
from typing import Callable

import torch
from torch import Tensor

__all__ = ["SDE", "ReverseSDE", "ScoreFn", "broadcast_like"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

# Slack for t slightly outside [0, T] from float rounding (relative to T).
_T_TOL = 1e-6


def broadcast_like(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient ``(B,)`` (or a scalar) to broadcast against ``x``."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))


def _check_finite_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


class SDE(abc.ABC):
    """Base class of a forward SDE ``dx = f(x, t) dt + g(x, t) dW`` on ``[0, T]``.

    A subclass defines :meth:`sde`, :meth:`prior_sampling` and :meth:`prior_logp`;
    that is enough to sample it through the reverse SDE or the probability-flow ODE.
    Set ``noise_type = "diagonal"`` when ``g`` depends on the state, in which case
    :meth:`sde` returns a diffusion of ``x``'s shape whose ``i``-th entry depends on
    ``x`` only through ``x_i``; the default ``"scalar"`` means ``g = g(t)`` of shape ``(B,)``.

    Args:
        T: the end time, ``> 0``.
    """

    noise_type: str = "scalar"
    #: ``True`` when the drift is ``f(t) x`` with scalar ``g(t)`` and the class defines
    #: ``f(t)`` and ``g(t)``: the reverse drift then needs only those two numbers.
    linear_drift: bool = False

    def __init__(self, T: float = 1.0):
        self.T = _check_finite_positive("T", T)

    # ----------------------------------------------------------------- contract
    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g`` (``(B,)`` or shape of ``x``)."""

    @abc.abstractmethod
    def prior_sampling(self, shape, generator: torch.Generator | None = None,
                       dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Draw ``x_T`` from the prior. ``shape`` includes the batch dimension."""

    @abc.abstractmethod
    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at ``z``, summed over all but the batch dimension: ``(B,)``."""

    def marginal_prob(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and std of the Gaussian kernel ``p_t(x | x0)``, where one exists."""
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form transition kernel; "
            "only linear SDEs (subclasses of LinearSDE) define marginal_prob")

    def discretize(self, x: Tensor, t, dt: float) -> tuple[Tensor, Tensor]:
        """One step of the discrete forward chain from ``t - dt`` to ``t``.

        Returns ``(f, G)`` with ``x_t ~= x_{t-dt} + f + G z``, evaluated at ``(x, t)``.
        The base class uses Euler-Maruyama; linear SDEs override it with the exact
        Gaussian transition, which for VP is DDPM's ``sqrt(1 - beta) x + sqrt(beta) z``.
        """
        t = self._time(t, x)
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or the probability-flow ODE) driven by ``score_fn``.

        Args:
            score_fn: ``score_fn(x, t) -> tensor like x``, an estimate of ``grad log p_t(x)``.
            probability_flow: return the deterministic probability-flow ODE instead.
        """
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, probability_flow=probability_flow)

    # ------------------------------------------------------------------ helpers
    def _time(self, t, like: Tensor) -> Tensor:
        """``t`` as a tensor on ``like``'s device and dtype, checked to lie in ``[0, T]``."""
        return self.check_time(t, dtype=like.dtype, device=like.device)

    def check_time(self, t, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Convert ``t`` (float or tensor) to a tensor and check it lies in ``[0, T]``.

        Raises:
            ValueError: if any ``t`` is outside ``[0, T]`` or not finite.
        """
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=dtype or torch.get_default_dtype(), device=device)
        elif dtype is not None or device is not None:
            t = t.to(dtype=dtype or t.dtype, device=device or t.device)
        tol = _T_TOL * self.T
        # NaN fails both comparisons, so one pass catches it too.
        if not bool(((t >= -tol) & (t <= self.T + tol)).all()):
            raise ValueError(
                f"t must lie in [0, T] = [0, {self.T}], got values in "
                f"[{t.min().item():.6g}, {t.max().item():.6g}]")
        return t

    def _float_time(self, t) -> float:
        """``t`` as a float in ``[0, T]`` (round-off beyond the ends clamped, like :meth:`check_time`)."""
        t = float(t)
        if not 0.0 <= t <= self.T:  # also for NaN
            self.check_time(torch.tensor(t, dtype=torch.float64))  # raises beyond round-off
            t = min(max(t, 0.0), self.T)
        return t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T})"


def _check_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints (batch first); floats such as ``8.5`` are refused."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a tuple of ints (batch first), got {shape!r}")
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints (batch first), got {shape!r}") from None
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (batch first), got {shape}")
    return shape


class ReverseSDE(SDE):
    """The reverse-time SDE of ``forward`` driven by ``score_fn`` (or its probability-flow ODE).

    Written, like the reference code, in the forward time variable: :meth:`drift` is
    ``f - w g^2 score`` with ``w = 1`` for the reverse SDE and ``w = 1/2`` for the
    probability-flow ODE, to be integrated from ``T`` down to ``0``. For state-dependent
    diagonal noise the drift also carries ``- w div(g g^T)``, computed by autograd.
    This is the one place the toolkit turns a score into a drift: the samplers and the
    likelihood all call :meth:`drift` (and :meth:`coefficients` for the divergence of a
    linear drift).

    For a forward SDE with a linear drift ``f(t) x`` and scalar noise ``g(t)``
    (``forward.linear_drift``) the drift needs only the two numbers ``f(t)`` and
    ``w g(t)^2``: no time check, no host sync, and for a Python-float time they are
    memoized (a sampler's grid repeats its times; :meth:`tabulate` fills a whole grid in
    one vectorized call).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        super().__init__(forward.T)
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.weight = 0.5 if self.probability_flow else 1.0
        self.noise_type = forward.noise_type
        self.linear = forward.linear_drift and forward.noise_type == "scalar"
        self._memo: dict[float, tuple[float, float]] = {}

    # ------------------------------------------------------------- the drift
    def coefficients(self, t):
        """``f(t)`` and ``w g(t)^2`` of a linear-drift forward SDE.

        A Python float ``t`` gives Python floats (memoized); a tensor ``t`` gives float64
        tensors of its shape.
        """
        if isinstance(t, Tensor):
            t64 = t.detach().to(torch.float64)
            return self.forward.f(t64), self.weight * self.forward.g(t64) ** 2
        out = self._memo.get(t)
        if out is None:
            self.tabulate([t])
            out = self._memo[t]
        return out

    def tabulate(self, ts) -> None:
        """Memoize :meth:`coefficients` at every time of ``ts`` (one vectorized call)."""
        t64 = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu()
        f, g = self.forward.f(t64).tolist(), self.forward.g(t64).tolist()
        for t, f_t, g_t in zip(t64.tolist(), f, g):
            self._memo[t] = (f_t, self.weight * g_t * g_t)

    def drift(self, x: Tensor, t, score: Tensor | None = None) -> Tensor:
        """The reverse drift in forward time, ``f(x, t) - w g^2 score(x, t)`` (``- w div(g g^T)``).

        Args:
            x: the state ``(B, *dims)``.
            t: the time: a float, a 0-dim tensor or a ``(B,)`` tensor.
            score: ``score_fn(x, t)`` if the caller has it already (it is then not evaluated).
        """
        if score is None:
            score = self.score_fn(x, _time_vector(t, x))
        if self.linear:
            f, wg2 = self.coefficients(t)
            if isinstance(f, Tensor):
                return broadcast_like(f, x) * x - broadcast_like(wg2, x) * score
            return x.mul(f).add_(score, alpha=-wg2)
        t_vec = self._time(_time_vector(t, x), x)
        if self.noise_type == "diagonal":
            f, diffusion, div = _diagonal_divergence(self.forward, x, t_vec)
            return f - self.weight * (diffusion ** 2 * score + div)
        f, diffusion = self.forward.sde(x, t_vec)
        g2 = diffusion ** 2 if diffusion.shape == x.shape else broadcast_like(diffusion ** 2, x)
        return f - self.weight * g2 * score

    # ---------------------------------------------------------------- contract
    def sde(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """``(drift, diffusion)``: :meth:`drift` and the forward ``g`` (zero for the ODE)."""
        t = self._time(t, x)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        diffusion = self.forward.g(t.to(torch.float64)).to(x.dtype) if self.linear else self.forward.sde(x, t)[1]
        drift = self.drift(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Tensor, t, dt: float) -> tuple[Tensor, Tensor]:
        """Reverse of the forward step: ``x_{t-dt} = x - (f - G^2 score) + G z``."""
        t = self._time(t, x)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        f, G = self.forward.discretize(x, t, dt)
        G2 = G ** 2 if G.shape == x.shape else broadcast_like(G ** 2, x)
        rev_f = f - self.weight * G2 * self.score_fn(x, t)
        if self.forward.noise_type == "diagonal":  # the - div(g g^T) dt term of the reverse drift
            rev_f = rev_f - self.weight * dt * _diagonal_divergence(self.forward, x, t)[2]
        return rev_f, torch.zeros_like(G) if self.probability_flow else G

    def prior_sampling(self, shape, generator=None, dtype=None, device=None) -> Tensor:
        return self.forward.prior_sampling(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z: Tensor) -> Tensor:
        return self.forward.prior_logp(z)

    def __repr__(self) -> str:
        kind = "probability-flow ODE" if self.probability_flow else "reverse SDE"
        return f"ReverseSDE({self.forward!r}, {kind})"


def _time_vector(t, x: Tensor) -> Tensor:
    """``t`` (float, 0-dim or ``(B,)``) as the ``(B,)`` tensor a score function receives."""
    if isinstance(t, Tensor):
        t = t.to(dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.dim() == 0 else t
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _diagonal_divergence(sde: SDE, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Drift, diffusion and ``div(g g^T)_i = d(g_i^2)/dx_i`` for diagonal noise.

    Assumes ``g_i`` depends on ``x`` only through ``x_i`` (torchsde's diagonal
    noise), so the diagonal of the Jacobian of ``g^2`` is the gradient of its sum.
    """
    drift, diffusion = sde.sde(x, t)
    if diffusion.shape != x.shape:
        raise ValueError(f"noise_type='diagonal' needs a diffusion of x's shape {tuple(x.shape)}, "
                         f"got {tuple(diffusion.shape)}")
    with torch.enable_grad():
        # Inside a likelihood solve x itself requires grad: keep the graph so that the
        # divergence of this term is differentiated too.
        outer = x.requires_grad
        xg = x if outer else x.detach().requires_grad_(True)
        (div,) = torch.autograd.grad(sde.sde(xg, t)[1].pow(2).sum(), xg, create_graph=outer,
                                     allow_unused=True)
    if div is None:
        div = torch.zeros_like(x)
    return drift, diffusion, div
