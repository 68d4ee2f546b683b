"""Pieces every sampler shares: time grids, the guarded score function, Tweedie's denoiser."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._checks import all_finite
from ..sde import SDE, LinearSDE

GRIDS = ("uniform", "quadratic", "karras", "logsnr")


def time_grid(sde: SDE, steps: int, eps: float = 1e-3, kind: str = "uniform", rho: float = 7.0,
              dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """A decreasing grid of ``steps + 1`` times from ``T`` down to ``eps``.

    Args:
        sde: the forward SDE (``karras`` and ``logsnr`` need a :class:`LinearSDE`).
        steps: number of intervals, an int ``>= 1``.
        eps: the last time, in ``(0, T)``.
        kind: ``"uniform"`` in ``t``; ``"quadratic"`` (``t - eps`` proportional to
            ``(i/N)^2``, dense near the data); ``"karras"`` (Karras et al. 2022, eq. 5:
            noise levels ``sigma = std/scale`` uniform in ``sigma^(1/rho)``); ``"logsnr"``
            (uniform in ``lambda = log(scale/std)``, as DPM-Solver uses).
        rho: the Karras exponent.

    Raises:
        ValueError: an unknown ``kind``, ``steps`` not an int ``>= 1``, or ``eps`` outside ``(0, T)``.
    """
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    check_steps(steps)
    check_eps(eps, sde.T)
    T = sde.T
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)  # 0 at T, 1 at eps
    if kind == "uniform":
        ts = T + (eps - T) * u
    elif kind == "quadratic":
        ts = eps + (T - eps) * (1 - u) ** 2
    else:
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"grid={kind!r} needs a LinearSDE (scale/std), got {type(sde).__name__}")
        end = torch.tensor([T, eps], dtype=torch.float64)
        lam_T, lam_eps = sde.log_snr(end).tolist()
        if kind == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * u
        else:
            s_max, s_min = math.exp(-lam_T), math.exp(-lam_eps)
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -sig.log()
        ts = sde.t_from_log_snr(lam).to(torch.float64)
    ts[0], ts[-1] = T, eps  # pin the ends against round-off (of the inversion, or eps + (T - eps))
    return ts.to(dtype=dtype, device=device)


def check_steps(steps) -> int:
    """``steps`` as an int ``>= 1`` (``ValueError`` naming ``steps`` otherwise)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return steps


def check_eps(eps, T: float) -> float:
    """``eps`` as a float in ``(0, T)`` (``ValueError`` naming ``eps`` otherwise)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < T:
        raise ValueError(f"eps must lie in (0, T) = (0, {T}), got {eps!r}")
    return float(eps)


def custom_grid(sde: SDE, grid) -> Tensor:
    """A user's time grid (1-D tensor or sequence) checked and returned as a float64 CPU tensor.

    The grid must hold at least 2 finite times, strictly decreasing, within ``[0, T]``;
    its first time is any time in ``(0, T]`` and only its last may be ``0``.

    Raises:
        ValueError: naming ``grid``, for anything else.
    """
    try:
        ts = torch.as_tensor(grid.detach().cpu() if isinstance(grid, Tensor) else grid,
                             dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"grid must be one of {GRIDS} or a 1-D sequence of decreasing times, "
                         f"got {type(grid).__name__}") from err
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"grid must be a 1-D sequence of at least 2 times, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("grid must hold finite times, got NaN or inf")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("grid must be strictly decreasing (from the prior's time down to the last)")
    if float(ts[-1]) < 0.0 or float(ts[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"grid must lie in [0, T] = [0, {sde.T}], got times in "
                         f"[{float(ts[-1]):.6g}, {float(ts[0]):.6g}]")
    return ts.clamp(max=sde.T)


class ScoreNotFiniteError(FloatingPointError):
    """``score_fn`` returned NaN or inf (raised by a checking :class:`GuardedScore`)."""


class GuardedScore:
    """Wrap a score function: count evaluations, check shape and finiteness, name the step.

    Sampler code calls ``score(x, t)`` with ``t`` a float or a tensor; the wrapper
    passes a ``(B,)`` tensor to the user's function. ``score_fn`` must return a tensor of
    ``x``'s shape and dtype (a ``TypeError`` names another dtype: no silent casts).

    With ``io_dtype`` (half-precision sampling) the sampler's state stays in its own
    dtype (float32) while ``score_fn`` sees ``x`` and ``t`` cast to ``io_dtype`` and must
    return ``io_dtype``; its output is cast back to the state's dtype.
    """

    def __init__(self, score_fn: Callable[[Tensor, Tensor], Tensor], check_finite: bool = True,
                 io_dtype: torch.dtype | None = None):
        self.score_fn = score_fn
        self.nfe = 0
        self.check_finite = check_finite
        self.io_dtype = io_dtype
        self.step: int | None = None
        self._last_t: tuple | None = None  # (key, tensor): multistage steps reuse one t

    def _time_vector(self, x: Tensor, t) -> Tensor:
        """``t`` as a ``(B,)`` tensor in ``x``'s dtype and device (cached for a repeated float)."""
        if isinstance(t, Tensor) and t.dim() == 1:
            return t.to(dtype=x.dtype, device=x.device)
        key = (float(t), x.shape[0], x.dtype, x.device)
        if self._last_t is None or self._last_t[0] != key:
            vec = torch.full((x.shape[0],), key[0], dtype=x.dtype, device=x.device)
            self._last_t = (key, vec)
        return self._last_t[1]

    def __call__(self, x: Tensor, t) -> Tensor:
        t_vec = self._time_vector(x, t)
        x_in = x
        if self.io_dtype is not None:
            x_in, t_vec = x.to(self.io_dtype), t_vec.to(self.io_dtype)
        out = self.score_fn(x_in, t_vec)
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score_fn must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        if out.dtype != x_in.dtype:
            raise TypeError(f"score_fn returned dtype {out.dtype} for x of dtype {x_in.dtype}; it must "
                            f"return x's dtype (cast inside score_fn, or sample with dtype={out.dtype})")
        if self.check_finite and not all_finite(out):
            where = f"step {self.step}, " if self.step is not None else ""
            raise ScoreNotFiniteError(
                f"score_fn returned NaN or inf at {where}t = {float(t_vec.flatten()[0]):.6g} "
                f"(evaluation {self.nfe})")
        return out if self.io_dtype is None else out.to(x.dtype)


def step_range(n: int, progress: bool, desc: str):
    """``range(n)``, under a tqdm bar when ``progress`` (no bar object at all otherwise: a
    disabled bar still costs tens of microseconds a run)."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm
    return tqdm(range(n), desc=desc, leave=False)


def tweedie(score: Callable, x: Tensor, t: float, a: float, s: float) -> Tensor:
    """Tweedie's formula ``x0_hat = E[x0 | x_t] = (x + s^2 score(x, t)) / a`` (one NFE).

    ``a = scale(t)`` and ``s = std(t)`` are Python floats: every example shares the step's time.
    """
    return torch.add(x, score(x, t), alpha=s * s).div_(a)

