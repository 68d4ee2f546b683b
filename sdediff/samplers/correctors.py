"""Correctors: Markov-chain steps that leave the marginal ``p_t`` (approximately) invariant.

A corrector is ``step(score, sde, x, j, grid, noise, **options) -> x`` and runs at
the grid time ``t_j`` (see :class:`~sdediff.samplers.predictors.Grid`). Both correctors
are unadjusted Langevin dynamics ``x <- x + e score(x, t) + sqrt(2 e) z`` and differ in
the step size ``e``:

* ``langevin`` (Song et al. 2021, Algorithm 4/5): the signal-to-noise rule
  ``e = 2 alpha (snr ||z|| / ||score||)^2`` with ``alpha = a(t_j)^2 / a(t_{j+1})^2``
  (``alpha_n = 1 - beta_n`` for VP, ``1`` for VE since ``a = 1``; ``1`` for non-linear SDEs);
* ``ald`` (annealed Langevin dynamics, Song & Ermon 2019, Algorithm 1): ``e`` proportional
  to the noise variance, ``e = step_size * s(t)^2``. SMLD writes ``alpha_i = eps sigma_i^2 / sigma_L^2``
  with the update ``x + alpha_i / 2 score + sqrt(alpha_i) z``, i.e. ``step_size = eps / (2 sigma_L^2)``;
  its defaults (``eps = 2e-5``, ``sigma_L = 0.01``) give ``step_size = 0.1``, our default.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .predictors import Grid

__all__ = ["CORRECTORS", "langevin_step", "ald_step", "LANGEVIN_NORMS"]

#: How the signal-to-noise rule measures ``||z||`` and ``||score||``.
LANGEVIN_NORMS = ("example", "batch")


def langevin_alpha(grid: Grid, j: int) -> float:
    """``alpha = a(t_j)^2 / a(t_{j+1})^2`` over the grid interval below ``t_j`` (above it at the end)."""
    if not grid.linear:
        return 1.0
    k = min(j, len(grid.t) - 2)
    return (grid.scale[k] / grid.scale[k + 1]) ** 2


def langevin_step(score, sde, x: Tensor, j: int, grid: Grid, noise, *, snr: float = 0.16,
                  norm: str = "batch") -> Tensor:
    """One Langevin corrector step with the signal-to-noise step-size rule (Song et al. 2021).

    ``e = 2 alpha (snr ||z|| / ||score||)^2``, then ``x <- x + e score + sqrt(2 e) z``.
    ``norm="batch"`` (default) averages each norm over the batch, as the reference code does.
    With ``norm="example"`` the norms (so ``e``) are per example and no example depends on
    the others; this is sound in high dimension, where ``||z||`` and ``||score||`` concentrate,
    but in low dimension their ratio is heavy-tailed (in 2-D ``||z||^2 / ||score||^2`` is
    F(2, 2)-like, infinite mean): points near a mode's centre take huge steps. Measured on the
    2-D ring (VP, 500 steps, exact score): sliced-W2 ~50x the noise floor per example, ~0.5x per batch.
    """
    t = grid.t[j]
    alpha = langevin_alpha(grid, j)
    sc = score(x, t)
    z = noise.randn_like(x)
    B = x.shape[0]
    score_norm = sc.reshape(B, -1).norm(dim=1)
    noise_norm = z.reshape(B, -1).norm(dim=1)
    if norm == "batch":
        score_norm, noise_norm = score_norm.mean(), noise_norm.mean()
    # e = 2 alpha (snr ||z|| / ||score||)^2; a vanishing score (a stationary point) gets e = 0.
    e = 2.0 * alpha * (snr * noise_norm / score_norm) ** 2
    e = torch.where(score_norm > 0, e, torch.zeros_like(e))
    if e.dim() == 1:
        e = e.reshape(B, *([1] * (x.dim() - 1)))
    return x + e * sc + (2.0 * e).sqrt() * z


def ald_step(score, sde, x: Tensor, j: int, grid: Grid, noise, *,
             step_size: float = 0.1) -> Tensor:
    """One annealed-Langevin step (Song & Ermon 2019): ``e = step_size * s(t)^2``."""
    grid.require_linear("the ald corrector")
    e = step_size * grid.std[j] ** 2
    sc = score(x, grid.t[j])
    x_next = x.add(sc, alpha=e)
    return x_next.add_(noise.randn_like(x), alpha=math.sqrt(2.0 * e))


#: name -> corrector step function.
CORRECTORS: dict[str, Callable] = {
    "langevin": langevin_step,
    "ald": ald_step,
}
