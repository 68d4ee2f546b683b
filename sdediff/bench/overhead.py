"""Per-step overhead of the main samplers with the model cost excluded.

A zero-cost score (a precomputed tensor) against a bare loop of the same tensor arithmetic.
"""
from __future__ import annotations

import math
import time

import torch

import sdediff as sd
from sdediff.samplers import GuardedScore, available_samplers, exponential_weights, schedule

from .problems import EPS

__all__ = ["overhead"]


def _t_input(t: float, x: torch.Tensor) -> torch.Tensor:
    """The ``(B,)`` time a score function receives: the least any sampler must build per NFE."""
    return torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])


def _bare_ddim(x, c, a, s, lam, t):
    for i in range(len(a) - 1):
        _t_input(t[i], x)
        x0 = torch.add(x, c, alpha=s[i] * s[i]).div_(a[i])
        x = x.mul(s[i + 1] / s[i]).add_(x0, alpha=-a[i + 1] * math.expm1(lam[i] - lam[i + 1]))
    return x


def _bare_dpm3m(x, c, a, s, lam, t):
    hist = []
    for i in range(len(a) - 1):
        _t_input(t[i], x)
        d = torch.add(x, c, alpha=s[i] * s[i]).div_(a[i])
        hist = [(lam[i], d)] + hist[:2]
        w = exponential_weights([l - lam[i] for l, _ in hist], lam[i + 1] - lam[i])
        out = x.mul(s[i + 1] / s[i])
        for wk, (_, dk) in zip(w, hist):
            out.add_(dk, alpha=a[i + 1] * wk)
        x = out
    return x


def _bare_heun(x, c, a, s, lam, t):
    sig = [si / ai for ai, si in zip(a, s)]
    y = x / a[0]
    n = len(a) - 1
    for i in range(n):
        _t_input(t[i], y)
        _ = y * a[i]  # the score's input x = a y
        d = c.mul(-s[i])
        y_next = torch.add(y, d, alpha=sig[i + 1] - sig[i])
        if i < n - 1:
            _t_input(t[i + 1], y)
            _ = y_next * a[i + 1]
            d2 = c.mul(-s[i + 1])
            y_next = torch.add(y, d.add_(d2), alpha=0.5 * (sig[i + 1] - sig[i]))
        y = y_next
    return y * a[n]


def overhead(shapes=((4000, 2), (2000, 64)), steps: int = 200, repeats: int = 5, log=print) -> list[dict]:
    """Per-step time with a zero-cost score (a precomputed tensor), in microseconds.

    ``sampler``: the registered function called on the time grid with an unchecked
    :class:`GuardedScore` (the sampler's own arithmetic and bookkeeping); ``sample``: the
    whole :func:`sdediff.sample` call, which adds validation, the per-evaluation shape check
    and the final finiteness check; ``unchecked``: the same with ``check_finite=False`` (no
    replay on failure, so no random-state snapshot); ``bare``: a plain loop doing the same
    tensor arithmetic with precomputed floats. Repeats are interleaved; the minimum is kept.
    """
    sde = sd.VPSDE()
    cases = [("ddim", {}, "logsnr", _bare_ddim), ("dpm_solver_3M", {"order": 3}, "logsnr", _bare_dpm3m),
             ("heun", {}, "karras", _bare_heun)]
    infos = available_samplers()
    out = []
    for shape in shapes:
        const = torch.full(shape, 0.1, dtype=torch.float64)
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for label, options, grid, bare in cases:
            sampler = "dpm_solver" if label.startswith("dpm") else label
            ts = sd.time_grid(sde, steps, eps=EPS, kind=grid)
            a, s, lam = schedule(sde, ts)
            t_list = ts.tolist()
            fn = infos[sampler].fn

            def run_sampler():
                fn(GuardedScore(lambda x, t: const, check_finite=False), sde, x_T, ts, **options)

            def run_sample():
                sd.sample(lambda x, t: const, sde, shape, sampler=sampler, steps=steps, grid=grid,
                          x_T=x_T, denoise=False, eps=EPS, **options)

            def run_unchecked():
                sd.sample(lambda x, t: const, sde, shape, sampler=sampler, steps=steps, grid=grid,
                          x_T=x_T, denoise=False, eps=EPS, check_finite=False, **options)

            def run_bare():
                return bare(x_T, const, a, s, lam, t_list)

            runs = {"sampler": run_sampler, "sample": run_sample, "unchecked": run_unchecked,
                    "bare": run_bare}
            for f in runs.values():
                f()
            best = dict.fromkeys(runs, math.inf)
            for _ in range(repeats):  # interleaved, so that load hits every variant alike
                for key, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    best[key] = min(best[key], (time.perf_counter() - t0) / steps * 1e6)
            row = dict(sampler=label, shape=list(shape), us_per_step_sampler=best["sampler"],
                       us_per_step_sample=best["sample"], us_per_step_bare=best["bare"],
                       us_per_step_unchecked=best["unchecked"],
                       ratio=best["sampler"] / best["bare"], ratio_sample=best["sample"] / best["bare"],
                       ratio_unchecked=best["unchecked"] / best["bare"])
            out.append(row)
            log(f"  overhead {label:14s} {shape}: sampler {best['sampler']:.1f}, sample() {best['sample']:.1f}, "
                f"bare {best['bare']:.1f} us/step; ratios {row['ratio']:.2f}, {row['ratio_sample']:.2f}")
    return out
