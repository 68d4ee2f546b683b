"""Samplers behind one call: :func:`sample` dispatches on a registry of named samplers.

A sampler is a function registered with :func:`register_sampler`::

    @register_sampler("my_sampler", nfe_per_step=1, order=1, stochastic=False)
    def my_sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None, **options):
        ...  # x is the prior draw at ts[0] = T; return the state at ts[-1] = eps

``score`` is the user's score function wrapped by :class:`GuardedScore` (it counts
evaluations and reports NaNs with the step); ``ts`` is a decreasing float64 grid of
``steps + 1`` times from ``T`` to ``eps``. :func:`sample` validates everything
before it runs, draws the prior, and applies the optional final denoising step.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch
from torch import Tensor

from .._checks import all_finite
from ..sde import SDE, LinearSDE
from ._common import GRIDS, GuardedScore, time_grid, tweedie

__all__ = ["sample", "register_sampler", "available_samplers", "SamplerInfo", "time_grid", "GuardedScore",
           "schedule", "exponential_weights"]


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """What a registered sampler is.

    Attributes:
        name: the registry key.
        fn: the sampler function.
        nfe_per_step: score evaluations per step (``None`` when adaptive / variable).
        order: the order of convergence of its deterministic part (weak order for SDE samplers).
        stochastic: whether it injects noise.
        linear_only: whether it needs a :class:`LinearSDE` (``scale``/``std``).
        description: the first line of its docstring.
    """

    name: str
    fn: Callable
    nfe_per_step: float | None
    order: float
    stochastic: bool
    linear_only: bool
    description: str


_REGISTRY: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, nfe_per_step: float | None, order: float, stochastic: bool,
                     linear_only: bool = False):
    """Decorator adding a sampler to the registry under ``name`` (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = SamplerInfo(name, fn, nfe_per_step, order, stochastic, linear_only, doc)
        return fn

    return decorator


def available_samplers() -> dict[str, SamplerInfo]:
    """The registered samplers by name, each with its NFE per step, order and kind."""
    return dict(sorted(_REGISTRY.items()))


def sample(score_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, shape, sampler: str = "pc",
           steps: int = 500, generator: torch.Generator | None = None, eps: float = 1e-3,
           denoise: bool = True, progress: bool = False, grid: str = "uniform",
           callback: Callable | None = None, x_T: Tensor | None = None,
           dtype: torch.dtype | None = None, device=None, return_nfe: bool = False,
           check_finite: bool = True, **options):
    """Draw samples by integrating from the prior at ``T`` down to ``eps``.

    Args:
        score_fn: ``score_fn(x, t) -> tensor like x`` with ``t`` of shape ``(B,)``.
        sde: the forward SDE the score belongs to.
        shape: the output shape, batch first, e.g. ``(1000, 2)``.
        sampler: a name from :func:`available_samplers`.
        steps: number of steps (intervals of the time grid), ``>= 1``; adaptive
            samplers read it as the number of output grid points only.
        generator: the source of all randomness (the prior draw and any noise).
        eps: the final time, in ``(0, T)``.
        denoise: apply Tweedie's formula ``E[x0 | x_eps]`` at the end (one more NFE;
            linear SDEs only).
        progress: show a progress bar.
        grid: the time grid: one of ``"uniform"``, ``"quadratic"``, ``"karras"``, ``"logsnr"``.
        callback: called as ``callback(step=i, t=t, x=x, denoised=...)`` after each step.
        x_T: start from this state instead of a prior draw (its shape must equal ``shape``).
        dtype, device: of the prior draw (default: the default dtype; the generator's device).
        return_nfe: also return the number of score evaluations used.
        check_finite: name the step and time at which ``score_fn`` first returned
            NaN/inf. The run itself checks only the returned samples (no per-evaluation
            reduction or host sync); if they are not finite, the run is replayed from the
            same random state with every score output checked, which raises at the first
            bad evaluation. A failing run so costs up to twice its NFE, a good one
            nothing; replaying calls ``score_fn`` again and so assumes it is deterministic.
            ``False`` skips the replay: NaN/inf samples raise without naming the step.
        **options: the sampler's own options (see its docstring).

    Returns:
        The samples, a tensor of ``shape`` (and the NFE if ``return_nfe``).

    Raises:
        ValueError: an unknown sampler (the message lists the available ones), bad
            ``steps``/``eps``/``grid``/``shape``, or a ``score_fn`` of the wrong output shape.
        FloatingPointError: the samples are not finite; the message names the step and
            time at which ``score_fn`` first returned NaN/inf (unless ``check_finite=False``).
    """
    info = _REGISTRY.get(sampler)
    if info is None:
        names = ", ".join(f"{k} ({_nfe_text(v)})" for k, v in available_samplers().items())
        raise ValueError(f"unknown sampler {sampler!r}; available: {names}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdediff SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if info.linear_only and not isinstance(sde, LinearSDE):
        raise ValueError(f"sampler {sampler!r} needs a LinearSDE (scale/std); for "
                         f"{type(sde).__name__} use sampler='sde' or sampler='ode'")
    if denoise and not isinstance(sde, LinearSDE):
        raise ValueError("denoise=True needs a LinearSDE (Tweedie's formula uses scale/std); "
                         "pass denoise=False")
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have shape {tuple(shape)}, got {tuple(x_T.shape)}")
    # The random state to replay a failing run from (only needed to name the failing step).
    rng = _RandomState(generator, x_T.device if x_T is not None else device) if check_finite else None

    def run(checked: bool, progress: bool, callback: Callable | None) -> tuple[Tensor, int]:
        if x_T is None:
            x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
        else:
            x = x_T.clone()
        ts = time_grid(sde, steps, eps=float(eps), kind=grid, device=x.device)
        score = GuardedScore(score_fn, check_finite=checked)
        with torch.no_grad():
            x = info.fn(score, sde, x, ts, generator=generator, progress=progress,
                        callback=callback, **options)
            if denoise:
                score.step = steps
                t_end = ts[-1:].to(torch.float64)
                x = tweedie(score, x, float(t_end), float(sde.scale(t_end)), float(sde.std(t_end)))
        return x, score.nfe

    try:
        x, nfe = run(False, progress, callback)
        failure = None if all_finite(x) else f"sampler {sampler!r} produced NaN or inf samples"
    except FloatingPointError as err:  # an adaptive sampler's error estimate went NaN/inf
        failure = str(err)
    if failure is not None:
        if not check_finite:
            raise FloatingPointError(f"{failure}; rerun with check_finite=True to find the step "
                                     "where the score failed")
        rng.restore()
        run(True, False, None)  # raises at the first non-finite score output
        raise FloatingPointError(f"{failure}, but a replay from the same random state with every "
                                 "score output checked did not reproduce it: score_fn (or the "
                                 "random state) is not deterministic")
    return (x, nfe) if return_nfe else x


class _RandomState:
    """The state of ``generator`` (or of the global generators) now, to replay a run from."""

    def __init__(self, generator: torch.Generator | None, device):
        self.generator = generator
        if generator is not None:
            self.state = generator.get_state()
            return
        self.state = torch.get_rng_state()
        device = torch.device(device) if device is not None else None
        self.cuda = (device is not None and device.type == "cuda" and torch.cuda.is_available())
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        if self.generator is not None:
            self.generator.set_state(self.state)
            return
        torch.set_rng_state(self.state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def _nfe_text(info: SamplerInfo) -> str:
    return "adaptive NFE" if info.nfe_per_step is None else f"{info.nfe_per_step:g} NFE/step"


# Importing the sampler modules runs their ``@register_sampler`` decorators.
from . import correctors, ddim, dpm_solver, edm, ode, pc, predictors, sde  # noqa: E402,F401
from .ddim import schedule  # noqa: E402
from .dpm_solver import _weights as exponential_weights  # noqa: E402
