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

Brownian motion (entropy always drawn from ``generator``): ``brownian="interval"`` is one
``torchsde.BrownianInterval`` of shape ``(B, d)``: fast, but an example's noise depends on
the batch it is drawn in. ``brownian="tree"`` gives every example its own Brownian tree,
seeded by its own integer (drawn from ``generator``, or given as ``seeds=``); the trees are
evaluated together by a counter-based RNG (one bisection for the whole batch rather than one
torchsde object per example, which measured ~0.3 ms per example per step). An example's
output then depends on its seed only.
"""
from __future__ import annotations

import math

import torch
import torchsde
from torch import Tensor
from torchsde._brownian import BaseBrownian
from tqdm.auto import tqdm

from ..sde import SDE, LinearSDE, broadcast_like
from . import register_sampler

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


_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    """A 64-bit pattern as the int64 with the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(z: Tensor) -> Tensor:
    """The splitmix64 finalizer on int64 tensors (wrapping arithmetic): a counter-based RNG."""
    z = z + _GOLDEN
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def _splitmix64_int(v: int) -> int:
    """:func:`_splitmix64` on a Python int (no tensor round trip)."""
    z = (v + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(z ^ (z >> 31))


class _CounterBrownianTree(BaseBrownian):
    """Per-example Brownian trees on ``[0, S]``, vectorized over the batch by a counter-based RNG.

    Example ``j``'s path is a Levy (midpoint-bisection) construction whose Gaussian at tree
    node ``n`` and coordinate ``c`` is a pure function of ``(seed_j, n, c)`` (splitmix64 hashes
    and Box-Muller), so it depends neither on the batch nor on the order of queries. ``W(t)`` is
    found by bisection until the bracketing interval is shorter than ``tol * S`` and then
    interpolated linearly (as ``torchsde.BrownianTree`` does): an ``O(sqrt(tol))`` error.
    """

    def __init__(self, s_end: float, seeds: list[int], d: int, dtype, device, tol: float = 1e-7):
        super().__init__()
        self.s_end, self.tol_abs = float(s_end), tol * float(s_end)
        self._dtype, self._device = dtype, device
        seed = torch.tensor([_signed(v) for v in seeds], dtype=torch.int64, device=device)
        self._base = _splitmix64(seed)[:, None]  # (B, 1)
        self._coord = 2 * torch.arange(d, dtype=torch.int64, device=device)[None, :]  # (1, d)
        self._shape = torch.Size((len(seeds), d))
        self._cache: dict[int, Tensor] = {}

    def _normal(self, node: int) -> Tensor:
        """Standard normals ``(B, d)`` for tree node ``node`` (Box-Muller on two hashed uniforms)."""
        key = (self._base ^ _splitmix64_int(node)) + self._coord
        bits = _splitmix64(key), _splitmix64(key + 1)
        u1, u2 = ((_srl(b, 11).to(torch.float64) + 0.5) * 2.0 ** -53 for b in bits)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(self._dtype)

    def _midpoint(self, node: int, a: float, b: float, wa: Tensor, wb: Tensor) -> Tensor:
        """``W`` at the midpoint of ``[a, b]``: the Brownian-bridge mean plus ``sqrt(b - a) / 2`` noise."""
        w = self._cache.get(node)
        if w is None:
            w = 0.5 * (wa + wb) + (0.5 * math.sqrt(b - a)) * self._normal(node)
            if len(self._cache) > 4096:  # keep memory bounded; values are recomputable
                self._cache.clear()
            self._cache[node] = w
        return w

    def value(self, t: float) -> Tensor:
        """``W(t)`` for all examples, shape ``(B, d)``."""
        t = min(max(float(t), 0.0), self.s_end)
        a, b, node = 0.0, self.s_end, 1
        wa = torch.zeros(self._shape, dtype=self._dtype, device=self._device)
        wb = self._cache.get(0)
        if wb is None:
            wb = self._cache[0] = math.sqrt(self.s_end) * self._normal(0)
        while True:
            if t == a:
                return wa
            if t == b:
                return wb
            if b - a <= self.tol_abs:
                return wa + ((t - a) / (b - a)) * (wb - wa)
            m = 0.5 * (a + b)
            wm = self._midpoint(node, a, b, wa, wb)
            if t < m:
                b, wb, node = m, wm, 2 * node
            else:
                a, wa, node = m, wm, 2 * node + 1

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("brownian='tree' has no Levy-area approximation; for method='srk' "
                             "use brownian='interval'")
        if tb is None:
            return self.value(ta)
        return self.value(tb) - self.value(ta)

    def __repr__(self) -> str:
        return f"_CounterBrownianTree(shape={tuple(self._shape)}, s_end={self.s_end})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return "none"

def _seeds(seeds, batch: int, generator) -> list[int]:
    if seeds is None:
        device = generator.device if generator is not None else "cpu"
        return torch.randint(0, 2 ** 62, (batch,), generator=generator, device=device).tolist()
    seeds = list(seeds)
    if len(seeds) != batch or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                      for s in seeds):
        raise ValueError(f"seeds must be a list of {batch} non-negative ints (one per example), "
                         f"got {len(seeds)} values")
    return seeds


@register_sampler("sde", nfe_per_step=1, order=1, stochastic=True)
@torch.no_grad()
def sde_sampler(score, sde: SDE, x: Tensor, ts: Tensor, *, generator=None, progress=False,
                callback=None, method: str = "euler", brownian: str = "interval",
                seeds: list[int] | None = None) -> Tensor:
    """Reverse SDE through torchsde (euler, milstein, srk, ...) with a seeded Brownian motion; any SDE.

    Options: ``method`` (Ito: euler (default, 1 NFE/step), milstein, srk; Stratonovich:
    heun, midpoint, euler_heun; NFE per step is the method's number of drift evaluations),
    ``brownian``: ``"interval"`` (default; one ``torchsde.BrownianInterval`` of shape ``(B, d)``,
    fast, its noise coupled to the batch) or ``"tree"`` (a Brownian tree per example, so an
    example's output depends on its seed only, not on its batch; not with ``srk``);
    ``seeds`` (``"tree"`` only: one int per example; default: drawn from ``generator``).
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown torchsde method {method!r}; allowed: {', '.join(SDE_METHODS)}")
    if brownian not in BROWNIAN_KINDS:
        raise ValueError(f"brownian must be one of {BROWNIAN_KINDS}, got {brownian!r}")
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
        bm = _CounterBrownianTree(s_end, _seeds(seeds, B, generator), d, y.dtype, y.device)
    else:
        if seeds is not None:
            raise ValueError("seeds= (one per example) needs brownian='tree'")
        levy = "space-time" if method == "srk" else "none"
        bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=(B, d), dtype=y.dtype, device=y.device,
                                       entropy=_seeds(None, 1, generator)[0], levy_area_approximation=levy)
    rev = _ReverseInS(score, sde, shape, SDE_METHODS[method])
    n_steps = len(ts) - 1
    for i in tqdm(range(n_steps), desc=f"sde ({method})", disable=not progress, leave=False):
        score.step = i
        interval = s_grid[i:i + 2]
        # dt above the interval length: torchsde then takes exactly one step, to interval[-1].
        dt = 2.0 * float(interval[1] - interval[0])
        y = torchsde.sdeint(rev, y, interval, bm=bm, method=method, dt=dt)[-1]
        if callback is not None:
            callback(step=i, t=float(ts[i + 1]), x=y.reshape(shape), denoised=None)
    return y.reshape(shape)
