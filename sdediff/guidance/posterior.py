"""Inpainting as posterior sampling: the pseudoinverse-guided score and its SDE solver.

Given ``y = x0[mask]``, the observed part of the noised state carries no information beyond
``y`` (``x_t[mask] = a(t) y + s(t) z``, independent of ``x0[~mask]``), so the exact score of the
free part is ``grad_free log p_t(x_t) + grad_free log p(y | x_t)`` at any replaced observed part.
Replacement drops the second term; PiGDM (Song, Vahdat, Mardani, Kautz 2023, eq. 7) approximates it
by ``p(y | x_t) ~ N(y; x0_hat(x_t)[mask], r_t^2 I)`` with Tweedie's ``x0_hat`` and
``r_t^2 = s^2 / (a^2 + s^2)`` (the posterior variance of ``x0`` for unit-variance data), so
(for the masking operator, whose pseudoinverse is the embedding)::

    grad_x log p(y | x_t) ~ (d x0_hat / d x_t)^T  M^T (y - M x0_hat) / r_t^2,

one vector-Jacobian product through the score per evaluation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..sde import LinearSDE

__all__ = ["pigdm_score", "sde_dpm_solver_2m"]


def pigdm_score(score_fn: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, observed: Tensor,
                mask: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The PiGDM-guided score for inpainting: ``score + grad log p(y | x_t)`` on the free coordinates.

    Each call evaluates ``score_fn`` once with autograd on and takes one vector-Jacobian product
    through it (about two more forward passes' worth of compute for a network). The observed
    coordinates keep the unguided score (inpainting replaces them anyway).

    Args:
        score_fn: the unconditional score; it must be differentiable in ``x`` by autograd.
        sde: the linear SDE of the score.
        observed: the observed values, broadcastable to the state (zeros where ``mask`` is False).
        mask: bool, ``True`` where observed, broadcastable to the state.

    Returns:
        A score function ``(x, t) -> tensor like x``.

    Raises:
        TypeError: (when called) ``score_fn``'s output does not depend on ``x`` through autograd.
    """
    zero = torch.zeros((), dtype=observed.dtype, device=observed.device)

    def guided(x: Tensor, t) -> Tensor:
        t_vec = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t_vec.dim() == 0:
            t_vec = t_vec.expand(x.shape[0])
        view = (-1,) + (1,) * (x.dim() - 1)
        a = sde.scale(t_vec).to(x.dtype).reshape(view)
        s = sde.std(t_vec).to(x.dtype).reshape(view)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            score = score_fn(xg, t)
            if not score.requires_grad:
                raise TypeError("method='pigdm' differentiates score_fn with autograd, but its output does "
                                "not depend on x through autograd (computed under torch.no_grad, or outside "
                                "torch?); make it differentiable or use method='replacement' or 'repaint'")
            x0_hat = (xg + s * s * score) / a
            r2 = s * s / (a * a + s * s)  # PiGDM's r_t^2 for unit-variance data
            residual = torch.where(mask, (observed - x0_hat).detach(), zero) / r2
            (grad,) = torch.autograd.grad(x0_hat, xg, grad_outputs=residual)
        return score.detach() + torch.where(mask, zero, grad)

    return guided


def sde_dpm_solver_2m(score: Callable[[Tensor, Tensor], Tensor], x: Tensor, ts: list[float], a: list[float],
                      s: list[float], noise: Callable[[], Tensor], after_step: Callable[[int, Tensor], Tensor],
                      callback: Callable | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++", Sec. 5 / App.), data prediction.

    With ``lambda = log(a / s)``, ``h = lambda' - lambda``, ``D`` Tweedie's denoiser and
    ``D_prev`` that of the previous step (``r = h_prev / h``)::

        x' = (s'/s) e^{-h} x + a' (1 - e^{-2h}) D + a' (1 - e^{-2h}) / (2 r) (D - D_prev)
             + s' sqrt(1 - e^{-2h}) z,

    the first step without the ``D - D_prev`` term (then it is the ancestral / DDIM eta = 1 step).
    ``after_step(j, x)`` is applied after every step to the state at ``ts[j]`` (inpainting's
    replacement of the observed part) and must return the new state.
    """
    lam = [math.log(ai / si) for ai, si in zip(a, s)]
    prev = None  # (D_prev, h_prev)
    for i in range(len(ts) - 1):
        j = i + 1
        h = lam[j] - lam[i]
        D = torch.add(x, score(x, ts[i]), alpha=s[i] ** 2).div_(a[i])  # Tweedie
        w = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        x_next = torch.add(x.mul(s[j] / s[i] * math.exp(-h)), D, alpha=a[j] * w)
        if prev is not None:
            D_prev, h_prev = prev
            x_next.add_(D - D_prev, alpha=a[j] * w * h / (2.0 * h_prev))  # second-order correction
        x_next.add_(noise(), alpha=s[j] * math.sqrt(w))
        x = after_step(j, x_next)
        prev = (D, h)
        if callback is not None:
            callback(step=i, t=ts[j], x=x)
    return x
