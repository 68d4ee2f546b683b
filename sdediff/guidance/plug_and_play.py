"""Plug-and-play point estimates under a diffusion prior (Graikos, Malkin, Jojic, Samaras 2022).

For a constraint ``c(x, y)`` (a likelihood of the observation ``y`` given ``x``), the
posterior ``p(x | y) ~ p(x) c(x, y)`` is explored by gradient descent on ``x`` itself, with
the denoising loss standing in for ``-log p(x)`` (Graikos et al. 2022, Alg. 1)::

    t_i from the schedule, eps ~ N(0, I), x_t = a(t_i) x + s(t_i) eps
    F(x) = || eps - eps_theta(x_t, t_i) ||^2 - log c(x, y)
    x <- x - lr * grad_x F(x)

with ``eps_theta = -s(t) score(x_t, t)``. In expectation over ``eps`` the first term's gradient
points away from the data density smoothed at level ``t``; annealing ``t`` from large to small
moves ``x`` first towards the bulk and then onto a nearby mode. The result is a point estimate
(a high-posterior point, mode-seeking), not a posterior sample.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import Tensor

from .._random import as_generator
from ..sde import LinearSDE

__all__ = ["plug_and_play", "pnp_times"]


def pnp_times(steps: int, t_max: float, t_min: float, schedule: str = "linear") -> Tensor:
    """The ``steps`` times of the plug-and-play loop, decreasing from ``t_max`` to ``t_min``.

    ``schedule``: ``"linear"`` in ``t``, ``"geometric"`` (uniform in ``log t``), or ``"constant"``
    (every step at ``t_max``; ``t_min`` unused).
    """
    u = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    if schedule == "linear":
        return t_max + (t_min - t_max) * u
    if schedule == "geometric":
        return torch.exp(math.log(t_max) + (math.log(t_min) - math.log(t_max)) * u)
    if schedule == "constant":
        return torch.full((steps,), float(t_max), dtype=torch.float64)
    raise ValueError(f"t_schedule must be 'linear', 'geometric', 'constant' or a 1-D tensor of times, "
                     f"got {schedule!r}")


def _finite_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def plug_and_play(score_fn: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE,
                  log_constraint: Callable[[Tensor], Tensor], x_init: Tensor | None = None, *,
                  shape=None, steps: int = 200, lr: float = 0.02, t_max: float = 0.5, t_min: float = 0.02,
                  t_schedule: str | Tensor = "linear", generator: torch.Generator | int | None = None,
                  dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Plug-and-play MAP-like estimate of ``p(x | y) ~ p(x) c(x, y)`` (Graikos et al. 2022, Alg. 1).

    Each step draws ``eps``, noises the current ``x`` to ``x_t = a(t) x + s(t) eps`` and takes
    a gradient step on ``||eps - eps_theta(x_t, t)||^2 - log c(x, y)`` (summed over the
    coordinates, per example; the gradient flows through ``score_fn`` by autograd), with
    ``eps_theta = -s(t) score_fn(x_t, t)``. Examples of the batch are independent.

    Args:
        score_fn: the prior's score ``score_fn(x, t)``, differentiable in ``x``.
        sde: the linear SDE the score belongs to.
        log_constraint: ``log c(x) -> (B,)``, differentiable in ``x`` (the observation ``y`` is
            closed over), e.g. ``lambda x: -((x - y) ** 2).sum(1) / (2 tau^2)``.
        x_init: the starting points ``(B, *dims)``; default a draw of ``N(0, I)`` of ``shape``.
        shape: the shape of the default start (only without ``x_init``).
        steps: the number of gradient steps (one score evaluation and its backward each).
        lr: the step size.
        t_max, t_min: the first and last noise times, ``0 < t_min <= t_max <= T``.
        t_schedule: ``"linear"``, ``"geometric"``, ``"constant"`` (see :func:`pnp_times`), or a
            1-D tensor of times in ``(0, T]`` (then ``steps``, ``t_max``, ``t_min`` are unused).
        generator: the source of ``eps`` (and of the default start).
        dtype, device: of the default start.

    Returns:
        The estimate, a tensor like ``x_init``.

    Raises:
        TypeError: a non-callable ``score_fn``/``log_constraint``, ``sde`` not linear, or
            neither ``x_init`` nor ``shape``.
        ValueError: bad ``steps``/``lr``/times, or ``log_constraint`` not returning ``(B,)``.
    """
    for name, fn in (("score_fn", score_fn), ("log_constraint", log_constraint)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (scale/std), got {type(sde).__name__}")
    lr = _finite_positive("lr", lr)
    generator = as_generator(generator)
    if isinstance(t_schedule, Tensor):
        ts = t_schedule.detach().to(torch.float64).cpu()
        if ts.dim() != 1 or ts.numel() < 1 or not bool(((ts > 0) & (ts <= sde.T)).all()):
            raise ValueError(f"t_schedule as a tensor must be 1-D with times in (0, T] = (0, {sde.T}]")
    else:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        t_max, t_min = _finite_positive("t_max", t_max), _finite_positive("t_min", t_min)
        if not t_min <= t_max <= sde.T:
            raise ValueError(f"need 0 < t_min <= t_max <= T = {sde.T}, got t_min={t_min}, t_max={t_max}")
        ts = pnp_times(int(steps), t_max, t_min, t_schedule)
    if x_init is None:
        if shape is None:
            raise TypeError("pass x_init (B, *dims) or shape")
        x = torch.randn(tuple(shape), generator=generator, dtype=dtype or torch.get_default_dtype(),
                        device=device)
    elif not isinstance(x_init, Tensor) or x_init.dim() < 2:
        raise ValueError(f"x_init must be a tensor of shape (B, *dims), got "
                         f"{tuple(x_init.shape) if isinstance(x_init, Tensor) else type(x_init).__name__}")
    else:
        x = x_init.detach().clone()
    a_all, s_all = sde.scale(ts).tolist(), sde.std(ts).tolist()
    batch = x.shape[0]
    for t, a, s in zip(ts.tolist(), a_all, s_all):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        t_vec = torch.full((batch,), t, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps_theta = -s * score_fn(a * x_in + s * eps, t_vec)
            log_c = log_constraint(x_in)
            if not isinstance(log_c, Tensor) or tuple(log_c.shape) != (batch,):
                got = tuple(log_c.shape) if isinstance(log_c, Tensor) else type(log_c).__name__
                raise ValueError(f"log_constraint must return a tensor of shape (B,) = ({batch},), got {got}")
            # F = ||eps - eps_theta||^2 - log c(x, y), per example, summed over the batch.
            loss = (eps - eps_theta).pow(2).reshape(batch, -1).sum(1) - log_c
            (grad,) = torch.autograd.grad(loss.sum(), x_in)
        x = x - lr * grad
    return x
