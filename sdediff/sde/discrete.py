"""A VP SDE that is exact on a discrete schedule: DDPM's ``alpha_bar`` at every knot, linear in between.

A discrete model is trained on ``N`` noise levels ``alpha_bar_1 > ... > alpha_bar_N`` (DDPM,
diffusers' ``alphas_cumprod``). :class:`DiscreteVPSDE` is the one VP SDE whose marginals hit
them exactly: the DDPM index ``n`` is the time ``t_n = n T / N`` and

    log a(t) = piecewise linear between the knots, log a(t_0) = 0, log a(t_n) = log(alpha_bar_n) / 2,
    f(t)     = d log a / dt = N log(1 - beta_n) / (2 T)   on the n-th piece (t_{n-1}, t_n],
    g(t)^2   = -2 f(t),

so that ``d s^2 / dt = 2 f s^2 + g^2 = -2 f (1 - s^2)`` keeps ``s^2 = 1 - a^2`` (variance preserving)
and ``scale(t_n)^2 = alpha_bar_n``. The continuum limit of the piecewise-constant
``beta(t) = -2 f(t)`` is VP's ``b(t)`` (``N log(1/(1 - beta_n)) ~ N beta_n``), but no
approximation is made: a discrete model's ``eps(x, n)`` is the exact ``-s score`` of this SDE
at ``t_n``, and any time in between interpolates the noise level monotonically.
"""
from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

from .linear import LinearSDE

__all__ = ["DiscreteVPSDE", "SCHEDULES", "make_betas"]

#: Names accepted by :meth:`DiscreteVPSDE.from_schedule` and :func:`make_betas`.
SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "cosine")


def make_betas(schedule: str, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The betas of a named discrete schedule, in float64.

    * ``"linear"`` (Ho et al. 2020): ``beta_n`` evenly spaced from ``beta_start`` to ``beta_end``.
    * ``"scaled_linear"`` (latent diffusion; diffusers' name): ``sqrt(beta_n)`` evenly spaced,
      e.g. ``beta_start=0.00085, beta_end=0.012``.
    * ``"cosine"`` (Nichol & Dhariwal 2021, eq. 17; diffusers' ``squaredcos_cap_v2``):
      ``alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2``,
      ``beta_n = min(1 - alpha_bar(n / N) / alpha_bar((n - 1) / N), max_beta)``.

    Args:
        schedule: one of :data:`SCHEDULES`.
        N: number of steps.
        beta_start, beta_end: the end values of the (scaled-)linear schedules.
        cosine_s: the offset ``s`` of the cosine schedule.
        max_beta: the cosine schedule's clipping of ``beta_n`` (0.999 keeps ``beta_N < 1``).

    Returns:
        ``(N,)`` float64 betas.

    Raises:
        ValueError: an unknown ``schedule`` or bad ``N`` / betas.
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an int >= 1, got {N!r}")
    f64 = torch.float64
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, N, dtype=f64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=f64) ** 2
    elif schedule == "cosine":
        u = torch.arange(N + 1, dtype=f64) / N
        alpha_bar = torch.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return betas


class DiscreteVPSDE(LinearSDE):
    """The VP SDE exact on a discrete schedule (module notes): ``scale(n T / N)^2 = alpha_bar_n``.

    Give exactly one of ``betas`` or ``alphas_cumprod``. Every member of the SDE contract is in
    closed form, so the samplers, the likelihood and the oracle use it like any
    :class:`LinearSDE`; :meth:`t_from_log_snr` inverts the piecewise-linear ``log a`` exactly.

    Args:
        betas: ``(N,)`` the per-step variances ``beta_n`` in ``(0, 1)``.
        alphas_cumprod: ``(N,)`` ``alpha_bar_n = prod_{i <= n} (1 - beta_i)``, strictly
            decreasing in ``(0, 1)`` (diffusers' ``scheduler.alphas_cumprod``).
        T: end time; the knots are ``t_n = n T / N``.

    Raises:
        TypeError: neither or both of ``betas`` and ``alphas_cumprod``.
        ValueError: a schedule that is not 1-D, has fewer than 1 entry, or whose
            ``alpha_bar`` is not strictly decreasing in ``(0, 1)`` (zero terminal SNR,
            ``alpha_bar_N = 0``, has no Gaussian prior and is refused).

    Example:
        >>> sde = DiscreteVPSDE.from_schedule("linear", N=1000)
        >>> float(sde.scale(torch.tensor(1.0)) ** 2)  # doctest: +ELLIPSIS
        4.03...e-05
    """

    def __init__(self, betas=None, alphas_cumprod=None, *, T: float = 1.0):
        super().__init__(T=T)
        if (betas is None) == (alphas_cumprod is None):
            raise TypeError("DiscreteVPSDE needs exactly one of betas= or alphas_cumprod=")
        name = "betas" if betas is not None else "alphas_cumprod"
        values = torch.as_tensor(betas if betas is not None else alphas_cumprod).detach()
        values = values.to(device="cpu", dtype=torch.float64)
        if values.dim() != 1 or values.numel() < 1:
            raise ValueError(f"{name} must be a 1-D tensor with N >= 1 entries, got shape {tuple(values.shape)}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{name} has NaN or inf entries")
        if betas is not None:
            if not bool(((values > 0) & (values < 1)).all()):
                raise ValueError(f"betas must lie in (0, 1), got values in [{values.min():.6g}, {values.max():.6g}]")
            alpha_bar = torch.cumprod(1 - values, 0)
        else:
            alpha_bar = values
            if not bool(((alpha_bar > 0) & (alpha_bar < 1)).all()) or not bool((alpha_bar[1:] < alpha_bar[:-1]).all()):
                raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1) (zero terminal SNR, "
                                 "alpha_bar_N = 0, is not supported: it has no Gaussian prior)")
        self.num_steps = values.numel()
        #: ``alpha_bar_n``, ``n = 1..N`` (float64, CPU).
        self.alphas_cumprod = alpha_bar
        #: ``log a`` at the knots ``t_0 = 0, ..., t_N = T`` (``N + 1`` entries, first 0).
        self._log_a = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * alpha_bar.log()])
        if not bool((self._log_a[1:] < self._log_a[:-1]).all()):
            raise ValueError(f"{name} gives an alpha_bar that is not strictly decreasing "
                             "(some beta_n rounds to 0); the log-SNR would not be invertible")
        # f on the n-th piece: the slope (log a_n - log a_{n-1}) / (t_n - t_{n-1}).
        self._f = self._log_a.diff() / self.knots.diff()
        self._device_cache: dict = {}
        self._lists = (self.knots.tolist(), self._log_a.tolist(), self._f.tolist())  # for float look-ups

    @classmethod
    def from_schedule(cls, schedule: str, N: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02,
                      cosine_s: float = 0.008, max_beta: float = 0.999, T: float = 1.0) -> "DiscreteVPSDE":
        """The SDE of a named schedule (``"linear"``, ``"scaled_linear"``, ``"cosine"``); see :func:`make_betas`."""
        return cls(betas=make_betas(schedule, N, beta_start, beta_end, cosine_s, max_beta), T=T)

    # ------------------------------------------------------------- the pieces
    @property
    def betas(self) -> Tensor:
        """``beta_n = 1 - alpha_bar_n / alpha_bar_{n-1}`` (float64)."""
        return -torch.expm1(2 * (self._log_a[1:] - self._log_a[:-1]))

    @property
    def knots(self) -> Tensor:
        """The knot times ``t_n = n T / N``, ``n = 0..N`` (float64)."""
        return torch.arange(self.num_steps + 1, dtype=torch.float64) * self.T / self.num_steps

    @property
    def breakpoints(self) -> Tensor:
        """The interior knots ``t_1 .. t_{N-1}``, where ``f`` and ``g`` jump (float64).

        An adaptive ODE solver in ``t`` is only first order across a jump; stopping its steps
        there restores its order, e.g. ``log_likelihood(..., options={"jump_t": sde.breakpoints})``
        (torchdiffeq's ``dopri5``; one step per piece at least, so costly for large ``N``).
        """
        return self.knots[1:-1]

    def _tables(self, device) -> tuple[Tensor, Tensor, Tensor]:
        tables = self._device_cache.get(device)
        if tables is None:
            tables = (self.knots.to(device), self._log_a.to(device), self._f.to(device))
            self._device_cache[device] = tables
        return tables

    def _piece(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(n - 1, t)``: ``t`` (as float64, clamped to ``[0, T]``) lies on the piece
        ``(t_{n-1}, t_n]`` (``t = 0`` on the first).

        A time equal to a knot belongs to the piece on its left, the next float up to the one
        on its right: the convention of ODE solvers that stop at discontinuities
        (``torchdiffeq``'s ``jump_t``), so a step ending on a knot sees one ``f`` throughout.
        """
        knots, _, _ = self._tables(t.device)
        tt = t.to(torch.float64).clamp(0.0, self.T).contiguous()
        return torch.searchsorted(knots, tt).clamp_(1, self.num_steps).sub_(1), tt

    def log_scale(self, t) -> Tensor:
        """``log a(t)``: linear in ``t`` between the knots (float64)."""
        return self._log_scale(self.check_time(t))

    def _log_scale(self, t: Tensor) -> Tensor:
        knots, log_a, f = self._tables(t.device)
        i, tt = self._piece(t)
        return log_a[i] + (tt - knots[i]) * f[i]

    # ------------------------------------------------------------ coefficients
    def f(self, t: Tensor) -> Tensor:
        """``f(t) = N log(1 - beta_n) / (2 T)`` on the piece ``(t_{n-1}, t_n]``."""
        _, _, f = self._tables(t.device)
        i, _ = self._piece(t)
        return f[i].to(t.dtype)

    def g(self, t: Tensor) -> Tensor:
        """``g(t) = sqrt(-2 f(t))``: piecewise constant, so that ``s^2 = 1 - a^2``."""
        return (-2 * self.f(t)).sqrt()

    def scale(self, t) -> Tensor:
        t = self.check_time(t)
        return self._log_scale(t).exp().to(t.dtype)

    def std(self, t) -> Tensor:
        """``s(t) = sqrt(1 - a(t)^2)``, computed as ``sqrt(-expm1(2 log a))`` (accurate near 0)."""
        t = self.check_time(t)
        return (-torch.expm1(2 * self._log_scale(t))).sqrt().to(t.dtype)

    def scale_and_std(self, t) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))`` from one look-up of ``log a(t)``."""
        t = self.check_time(t)
        log_a = self._log_scale(t)
        return log_a.exp().to(t.dtype), (-torch.expm1(2 * log_a)).sqrt().to(t.dtype)

    def scale_and_std_at(self, t: float) -> tuple[float, float]:
        """``(a(t), s(t))`` at one time, in float arithmetic: the tensors' look-up, without tensors."""
        t = self._float_time(t)
        knots, log_a, f = self._lists
        i = min(max(bisect.bisect_left(knots, t), 1), self.num_steps) - 1  # as searchsorted
        log_a_t = log_a[i] + (t - knots[i]) * f[i]
        return math.exp(log_a_t), math.sqrt(-math.expm1(2 * log_a_t))

    def log_snr(self, t) -> Tensor:
        """``lambda(t) = log a - log(1 - a^2) / 2`` (``+inf`` at ``t = 0``)."""
        t = self.check_time(t)
        log_a = self._log_scale(t)
        return (log_a - 0.5 * torch.log(-torch.expm1(2 * log_a))).to(t.dtype)

    def t_from_log_snr(self, lam) -> Tensor:
        """Exact inverse of :meth:`log_snr`: ``log a = -softplus(-2 lambda) / 2``, then the piece.

        ``lambda`` outside ``[log_snr(T), +inf]`` maps to ``T`` (or ``0`` for ``+inf``).
        """
        lam = torch.as_tensor(lam)
        out_dtype = lam.dtype if lam.is_floating_point() else torch.get_default_dtype()
        knots, log_a_knots, _ = self._tables(lam.device)
        target = -0.5 * torch.nn.functional.softplus(-2 * lam.to(torch.float64))  # log a, in (-inf, 0]
        # -log a increases along the knots: find the piece (t_{n-1}, t_n] with log a_n <= target.
        n = torch.searchsorted(-log_a_knots, -target.contiguous()).clamp(1, self.num_steps)
        lo, hi = log_a_knots[n - 1], log_a_knots[n]
        w = ((target - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (knots[n - 1] + w * (knots[n] - knots[n - 1])).to(out_dtype)

    @property
    def prior_std(self) -> float:
        """The prior is ``N(0, I)``, as for VP (``std(T)^2 = 1 - alpha_bar_N``)."""
        return 1.0

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(N={self.num_steps}, alpha_bar_N={float(self.alphas_cumprod[-1]):.4g}, T={self.T})"
