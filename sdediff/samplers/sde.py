"""The reverse-time SDE solved by torchsde, with a seeded Brownian motion.

Time substitution: torchsde integrates forward in time, so with ``s = T - t`` the state
``y(s) = x(T - s)`` of the reverse SDE ``dx = [f - g^2 score - div(g g^T)] dt + g dW_bar``
(``t`` from ``T`` down to ``eps``) solves the Ito SDE
``dy = -[f - g^2 score - div(g g^T)](y, T - s) ds + g(y, T - s) dB_s`` for ``s`` in ``[0, T - eps]``.
The noise is passed to torchsde as ``"diagonal"`` (a scalar ``g(t)`` is broadcast over the
state), and ``x`` is flattened to ``(B, d)`` and restored at the end. Stratonovich methods get
the Ito-to-Stratonovich drift correction ``- g dg/dy / 2`` (zero when ``g`` ignores the state).

The solver steps exactly on the sampler's grid: one ``torchsde.sdeint`` call per grid
interval, all driven by the same Brownian motion, so any grid works and the callback,
progress bar and NaN reports see every step.

Brownian motion: ``brownian="interval"`` is one ``torchsde.BrownianInterval`` of shape
``(B, d)``, its entropy drawn from ``generator``: fast, but an example's noise depends on the
batch it is drawn in. ``brownian="tree"`` gives every example its own Brownian tree
(:mod:`sdediff.samplers.brownian`), seeded by its own stream: drawn from ``generator``, or the
example's seed under ``sample(..., seeds=...)``, where it is the default. An example's output
then depends on its seed only.
"""
from __future__ import annotations

import torch
import torchsde
from torch import Tensor

from .._random import as_noise
from ..sde import SDE, broadcast_like
from . import register_sampler
from ._common import step_range
from .brownian import CounterBrownianTree

__all__ = ["sde_sampler", "SDE_METHODS", "BROWNIAN_KINDS"]

#: torchsde method -> the SDE type it integrates.
SDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito",
               "heun": "stratonovich", "midpoint": "stratonovich", "euler_heun": "stratonovich"}
BROWNIAN_KINDS = ("interval", "tree")


class _ReverseInS(torch.nn.Module):
    """The reverse SDE in ``s = T - t`` on flattened states, in torchsde's interface."""

    noise_type = "diagonal"

    def __init__(self, score, sde: SDE, shape: torch.Size, sde_type: str):
        super().__init__()
        self.score, self.sde, self.shape = score, sde, shape
        self.sde_type = sde_type
        self.reverse = sde.reverse(score)
        self._memo = None  # last drift evaluation: torchsde's input check repeats the first one

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        key = (float(s), y.data_ptr(), y._version)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        t = self.sde.T - s
        x = y.reshape(self.shape)
        out = -self.reverse.drift(x, t).reshape(y.shape)  # the reverse drift, d/ds = -d/dt
        if self.sde_type == "stratonovich" and self.sde.noise_type == "diagonal":
            out = out - 0.5 * self._g_dg(s, y)  # Ito -> Stratonovich
        self._memo = (key, out)
        return out

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        t = self.sde.T - s
        x = y.reshape(self.shape)
        if self.reverse.linear:
            return self.sde.g(t.detach().to(torch.float64)).to(y.dtype).expand(y.shape)
        diffusion = self.sde.sde(x, self.sde._time(t, x).expand(x.shape[0]))[1]
        if diffusion.shape != x.shape:
            diffusion = broadcast_like(diffusion, x).expand(x.shape)
        return diffusion.reshape(y.shape)

    def _g_dg(self, s: Tensor, y: Tensor) -> Tensor:
        """``g * dg/dy`` elementwise (diagonal noise: ``g_i`` depends on ``y_i`` only)."""
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            g = self.g(s, yg)
            (dg,) = torch.autograd.grad(g.sum(), yg, allow_unused=True)
        return torch.zeros_like(y) if dg is None else g.detach() * dg


@register_sampler("sde", nfe_per_step=1, order=1, stochastic=True)
@torch.no_grad()
def sde_sampler(score, sde: SDE, x: Tensor, ts: Tensor, *, generator=None, progress=False,
                callback=None, method: str = "euler", brownian: str | None = None) -> Tensor:
    """Reverse SDE through torchsde (euler, milstein, srk, ...) with a seeded Brownian motion; any SDE.

    Options: ``method`` (Ito: euler (default, 1 NFE/step), milstein, srk; Stratonovich:
    heun, midpoint, euler_heun; NFE per step is the method's number of drift evaluations),
    ``brownian``: ``"interval"`` (one ``torchsde.BrownianInterval`` of shape ``(B, d)``,
    fast, its noise coupled to the batch; the default with a generator) or ``"tree"`` (a
    Brownian tree per example, so an example's output depends on its seed only, not on its
    batch; not with ``srk``; the default, and the only choice, under ``sample(seeds=...)``).
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown torchsde method {method!r}; allowed: {', '.join(SDE_METHODS)}")
    noise = as_noise(generator)
    if brownian is None:
        brownian = "tree" if noise.per_example else "interval"
    if brownian not in BROWNIAN_KINDS:
        raise ValueError(f"brownian must be one of {BROWNIAN_KINDS}, got {brownian!r}")
    if noise.per_example and brownian != "tree":
        raise ValueError("seeds= (one stream per example) needs brownian='tree': a BrownianInterval "
                         "couples the examples of a batch")
    if sde.noise_type not in ("scalar", "diagonal"):
        raise ValueError(f"sampler='sde' supports noise_type 'scalar' or 'diagonal', got {sde.noise_type!r}")
    shape, B = x.shape, x.shape[0]
    y = x.reshape(B, -1)
    d = y.shape[1]
    s_grid = sde.T - ts.to(device=x.device, dtype=torch.float64)  # s = T - t, increasing from 0
    s_end = float(s_grid[-1])
    if brownian == "tree":
        if method == "srk":
            raise ValueError("method='srk' needs a Levy-area approximation: use brownian='interval'")
        bm = CounterBrownianTree(s_end, noise.seeds(B), d, y.dtype, y.device)
    else:
        levy = "space-time" if method == "srk" else "none"
        bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=(B, d), dtype=y.dtype, device=y.device,
                                       entropy=noise.seeds(1)[0], levy_area_approximation=levy)
    rev = _ReverseInS(score, sde, shape, SDE_METHODS[method])
    n_steps = len(ts) - 1
    for i in step_range(n_steps, progress, f"sde ({method})"):
        score.step = i
        interval = s_grid[i:i + 2]
        # dt above the interval length: torchsde then takes exactly one step, to interval[-1].
        dt = 2.0 * float(interval[1] - interval[0])
        y = torchsde.sdeint(rev, y, interval, bm=bm, method=method, dt=dt)[-1]
        if callback is not None:
            callback(step=i, t=float(ts[i + 1]), x=y.reshape(shape), denoised=None)
    return y.reshape(shape)
