"""Samplers behind one call: :func:`sample` dispatches on a registry of named samplers.

A sampler is a function registered with :func:`register_sampler`::

    @register_sampler("my_sampler", nfe_per_step=1, order=1, stochastic=False)
    def my_sampler(score, sde, x, ts, *, generator=None, progress=False, callback=None, **options):
        ...  # x is the state at ts[0] (the prior draw); return the state at ts[-1]

``score`` is the user's score function wrapped by :class:`GuardedScore` (it counts
evaluations and reports NaNs with the step); ``ts`` is a decreasing float64 grid of
times in ``(0, T]``, from ``T`` to ``eps`` for the named grids. ``generator`` is the
run's randomness: a ``torch.Generator`` or ``None`` (torch's global generator), or, under
``sample(seeds=...)``, a per-example noise source; draw through
``sdediff._random.as_noise(generator).randn_like(x)``, which handles all of them.
:func:`sample` validates everything before it runs, draws the prior, and applies the
optional final denoising step (or the landing on ``t = 0`` of a grid ending there).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor

from .._checks import all_finite
from .._random import SeededNoise, as_generator, check_seeds
from ..sde import SDE, LinearSDE
from ..sde.base import _check_shape
from ._common import GuardedScore, ScoreNotFiniteError, check_eps, check_steps, custom_grid, time_grid, tweedie

__all__ = ["sample", "default_sampler", "register_sampler", "available_samplers", "SamplerInfo", "time_grid",
           "GuardedScore", "schedule", "exponential_weights"]


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
        grid: the time grid :func:`sample` uses when none is given.
        steps: the number of steps :func:`sample` uses when none is given.
        denoise: whether :func:`sample` ends with the Tweedie step when ``denoise`` is not given.
    """

    name: str
    fn: Callable
    nfe_per_step: float | None
    order: float
    stochastic: bool
    linear_only: bool
    description: str
    grid: str = "uniform"
    steps: int = 500
    denoise: bool = True


_REGISTRY: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, nfe_per_step: float | None, order: float, stochastic: bool,
                     linear_only: bool = False, grid: str = "uniform", steps: int = 500,
                     denoise: bool = True):
    """Decorator adding a sampler to the registry under ``name`` (see the module docstring).

    ``grid``, ``steps`` and ``denoise`` are the sampler's defaults in :func:`sample`: what a
    user gets who names only the sampler.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = SamplerInfo(name, fn, nfe_per_step, order, stochastic, linear_only, doc,
                                      grid, check_steps(steps), bool(denoise))
        return fn

    return decorator


def available_samplers() -> dict[str, SamplerInfo]:
    """The registered samplers by name, each with its NFE per step, order and kind."""
    return dict(sorted(_REGISTRY.items()))


def default_sampler(sde: SDE) -> str:
    """The sampler :func:`sample` runs when none is named: ``"unipc"`` for a :class:`LinearSDE`
    (measured best; see the README), the adaptive probability-flow ``"ode"`` otherwise."""
    return "unipc" if isinstance(sde, LinearSDE) else "ode"


def sample(score_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, shape, sampler: str | None = None,
           steps: int | None = None, generator: torch.Generator | int | None = None,
           eps: float | None = None, denoise: bool | None = None, progress: bool = False,
           grid: str | Tensor | Sequence[float] | None = None, callback: Callable | None = None,
           x_T: Tensor | None = None, dtype: torch.dtype | None = None, device=None,
           return_nfe: bool = False, check_finite: bool = True, seeds=None, **options):
    """Draw samples by integrating from the prior at ``T`` down to ``eps``.

    Args:
        score_fn: ``score_fn(x, t) -> tensor like x`` with ``t`` of shape ``(B,)``; it must
            return ``x``'s dtype (no silent casts: another dtype is a ``TypeError``).
        sde: the forward SDE the score belongs to.
        shape: the output shape, batch first, e.g. ``(1000, 2)``: positive ints.
        sampler: a name from :func:`available_samplers`. Default: ``"unipc"`` for a
            :class:`LinearSDE` (the measured best at 5 to 200 NFE against the peers' samplers,
            see its docstring), ``"ode"`` (adaptive probability-flow ODE) for any other SDE.
        steps: number of steps (intervals of the time grid), an int ``>= 1``; default the
            sampler's own (``available_samplers()[name].steps``: 20 for ``unipc`` and
            ``dpm_solver``, 500 for the others), or ``len(grid) - 1`` for a custom grid (giving
            both, they must agree). Adaptive samplers read it as the number of output grid
            points only.
        generator: the source of all randomness (the prior draw and any noise): a
            ``torch.Generator``, an int seed (a fresh generator seeded with it) or ``None``
            (torch's global generator).
        eps: the final time, in ``(0, T)`` (default ``1e-3``); a custom grid ends where it ends.
        denoise: apply Tweedie's formula ``E[x0 | x_eps]`` at the end (one more NFE;
            linear SDEs only). Default: the sampler's own (``False`` for ``unipc`` and
            ``dpm_solver``, whose NFE is better spent on one more step; ``True`` otherwise). Ignored by a grid ending at ``0``, which lands there through
            the denoiser already.
        progress: show a progress bar.
        grid: the time grid: one of ``"uniform"``, ``"quadratic"``, ``"karras"``, ``"logsnr"``
            (from ``T`` down to ``eps``; default the sampler's own: ``"quadratic"`` for
            ``unipc`` and ``dpm_solver``, ``"uniform"`` for the others), or the times themselves: a 1-D tensor or sequence,
            strictly decreasing, within ``[0, T]``. Its first time ``grid[0] <= T`` is where
            the prior draw is placed: the draw is the prior ``N(0, prior_std^2 I)`` at ``T``
            whatever ``grid[0]`` is, as diffusers places ``randn * init_noise_sigma`` at its
            first timestep (e.g. ``t = 0.981`` for DDIM's 50 "leading" steps of 1000, where
            ``std(t)`` and ``prior_std`` agree to 1e-4 under VP); with ``x_T`` the given state
            is placed there. A grid ending at ``0`` takes its last step, from ``grid[-2]``
            onto ``t = 0``, through the denoiser: ``x_0 = E[x0 | x_{grid[-2]}]`` (Tweedie,
            one NFE, linear SDEs), which is DDIM's last step with ``set_alpha_to_one=True``
            and DPM-Solver's onto ``sigma = 0``.
        callback: called as ``callback(step=i, t=t, x=x, denoised=...)`` after each step.
        x_T: start from this state instead of a prior draw: a finite floating tensor of
            ``shape``.
        dtype, device: of the prior draw (default: ``x_T``'s, else the default dtype and the
            generator's device). ``torch.float16`` / ``torch.bfloat16`` (or such an ``x_T``):
            the state and all sampler arithmetic run in float32, ``score_fn`` receives ``x`` and
            ``t`` cast to the requested dtype and must return it, and the samples are
            returned in it (half-precision arithmetic over hundreds of steps would drift by
            O(1) on the 2-D ring).
        return_nfe: also return the number of score evaluations used.
        check_finite: name the step and time at which ``score_fn`` first returned
            NaN/inf. The run itself checks only the returned samples (no per-evaluation
            reduction or host sync); if they are not finite, the run is replayed from the
            same random state with every score output checked, which raises at the first
            bad evaluation. A failing run so costs up to twice its NFE, a good one
            nothing; replaying calls ``score_fn`` again and so assumes it is deterministic.
            If every score output of the replay is finite and its samples still are not,
            the sampler's own arithmetic overflowed, and the error says so.
            ``False`` skips the replay: NaN/inf samples raise without naming the step.
        seeds: one int per example (a sequence of ``shape[0]`` ints or a 1-D integer tensor):
            each example draws its prior sample and every noise from its own stream
            (:class:`sdediff._random.SeededNoise`), so its result depends on its seed only,
            not on its batch-mates, the batch size or the process count (up to the score's
            own batch dependence, e.g. BLAS blocking). Not with ``generator``. Samplers whose
            noise couples the batch refuse it (``pc``/``langevin`` with ``norm="batch"``,
            ``sde`` with ``brownian="interval"``); ``sde`` uses per-example Brownian trees.
        **options: the sampler's own options (see its docstring).

    Returns:
        The samples, a tensor of ``shape`` (and the NFE if ``return_nfe``).

    Raises:
        ValueError: an unknown sampler (the message lists the available ones), bad
            ``steps``/``eps``/``grid``/``shape``/``seeds``, ``seeds`` with ``generator``, a
            non-finite ``x_T``, or a ``score_fn`` of the wrong output shape.
        TypeError: a non-floating ``x_T`` or ``dtype``, or a ``score_fn`` output of another dtype.
        FloatingPointError: the samples are not finite; the message names the step and
            time at which ``score_fn`` first returned NaN/inf (unless ``check_finite=False``),
            or says that the sampler overflowed although every score output was finite.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdediff SDE, got {type(sde).__name__}")
    if sampler is None:
        sampler = default_sampler(sde)
    info = _REGISTRY.get(sampler) if isinstance(sampler, str) else None
    if info is None:
        names = ", ".join(f"{k} ({_nfe_text(v)})" for k, v in available_samplers().items())
        raise ValueError(f"unknown sampler {sampler!r}; available: {names}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    shape = _check_shape(shape)
    grid = info.grid if grid is None else grid
    if isinstance(grid, str) and steps is None:
        steps = info.steps
    denoise = info.denoise if denoise is None else bool(denoise)
    ts, land_at_zero = _resolve_grid(sde, grid, steps, eps)
    steps = len(ts) - 1 + land_at_zero
    if info.linear_only and not isinstance(sde, LinearSDE):
        raise ValueError(f"sampler {sampler!r} needs a LinearSDE (scale/std); for "
                         f"{type(sde).__name__} use sampler='sde' or sampler='ode'")
    if land_at_zero and not isinstance(sde, LinearSDE):
        raise ValueError("a grid ending at t = 0 lands there through the denoiser (Tweedie's "
                         f"formula uses scale/std), which needs a LinearSDE, got {type(sde).__name__}")
    denoise = denoise and not land_at_zero
    if denoise and not isinstance(sde, LinearSDE):
        raise ValueError("denoise=True needs a LinearSDE (Tweedie's formula uses scale/std); "
                         "pass denoise=False")
    out_dtype = _check_dtype(x_T, dtype, shape)
    io_dtype = out_dtype if out_dtype in _HALF else None
    work_dtype = torch.float32 if io_dtype is not None else out_dtype
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass generator or seeds, not both: seeds gives every example its own "
                             "random stream, generator one stream for the batch")
        seeds = check_seeds(seeds, shape[0])
    else:
        generator = as_generator(generator, x_T.device if x_T is not None else device)
    # The random state to replay a failing run from (only needed to name the failing step).
    rng = _RandomState(generator, x_T.device if x_T is not None else device) \
        if check_finite and seeds is None else None

    def run(checked: bool, progress: bool, callback: Callable | None) -> tuple[Tensor, int]:
        noise = SeededNoise(seeds) if seeds is not None else generator
        if x_T is not None:
            x = x_T.to(work_dtype, copy=True)
        elif seeds is not None:
            x = _seeded_prior(sde, shape, noise, work_dtype, device)
        else:
            x = sde.prior_sampling(shape, generator=generator, dtype=work_dtype, device=device)
        grid_ts = ts.to(x.device)
        score = GuardedScore(score_fn, check_finite=checked, io_dtype=io_dtype)
        with torch.no_grad():
            if len(grid_ts) > 1:
                x = info.fn(score, sde, x, grid_ts, generator=noise, progress=progress,
                            callback=callback, **options)
            if denoise or land_at_zero:
                score.step = steps - 1 if land_at_zero else steps
                t_end = float(grid_ts[-1])
                x = tweedie(score, x, t_end, *sde.scale_and_std_at(t_end))
                if land_at_zero and callback is not None:
                    callback(step=steps - 1, t=0.0, x=x, denoised=x)
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
        if rng is not None:
            rng.restore()
        try:
            replay, _ = run(True, False, None)  # raises at the first non-finite score output
            overflowed = not all_finite(replay)
        except ScoreNotFiniteError:
            raise
        except FloatingPointError:
            overflowed = True
        if overflowed:
            raise FloatingPointError(
                f"{failure}: the samples overflowed to inf/NaN although every score output was "
                f"finite (a replay checked each one), so the sampler's own arithmetic in "
                f"{work_dtype} overflowed; sample in torch.float64, or check the score's scale "
                f"and the SDE's coefficients")
        raise FloatingPointError(f"{failure}, but a replay from the same random state with every "
                                 "score output checked did not reproduce it: score_fn (or the "
                                 "random state) is not deterministic")
    if io_dtype is not None:
        x = x.to(io_dtype)
    return (x, nfe) if return_nfe else x


_HALF = (torch.float16, torch.bfloat16)


def _check_dtype(x_T: Tensor | None, dtype, shape: tuple[int, ...]) -> torch.dtype:
    """The dtype of the samples; ``x_T`` and ``dtype`` checked (floating, finite, the shape)."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
    if x_T is None:
        return dtype if dtype is not None else torch.get_default_dtype()
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a tensor, got {type(x_T).__name__}")
    if not x_T.dtype.is_floating_point:
        raise TypeError(f"x_T must be a floating tensor, got dtype {x_T.dtype}; cast it, e.g. "
                        "x_T.float()")
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    if dtype is not None and dtype != x_T.dtype:
        raise ValueError(f"dtype={dtype} disagrees with x_T's dtype {x_T.dtype}; pass one of them")
    if not all_finite(x_T):
        raise ValueError("x_T holds NaN or inf; the starting state must be finite")
    return x_T.dtype


def _resolve_grid(sde: SDE, grid, steps, eps) -> tuple[Tensor, bool]:
    """The float64 grid a sampler runs on and whether the run then lands on ``t = 0``."""
    if isinstance(grid, str):
        steps = check_steps(500 if steps is None else steps)
        eps = check_eps(1e-3 if eps is None else eps, sde.T)
        return time_grid(sde, steps, eps=eps, kind=grid), False
    ts = custom_grid(sde, grid)
    if steps is not None and check_steps(steps) != len(ts) - 1:
        raise ValueError(f"steps={steps} disagrees with the grid's {len(ts) - 1} intervals; "
                         "omit steps (a custom grid sets it)")
    if eps is not None and float(eps) != float(ts[-1]):
        raise ValueError(f"eps={eps} disagrees with the grid's last time {float(ts[-1]):.6g}; "
                         "omit eps (a custom grid sets it)")
    if float(ts[-1]) == 0.0:
        return ts[:-1], True
    return ts, False


def _seeded_prior(sde: SDE, shape: tuple[int, ...], noise: SeededNoise, dtype, device) -> Tensor:
    """The prior draw under ``seeds=``: example ``j``'s from its own stream.

    A linear SDE's prior ``N(0, prior_std^2 I)`` is the streams' first draw times
    ``prior_std`` (vectorized); any other SDE's ``prior_sampling`` is called once per
    example with a generator seeded from the example's stream.
    """
    if isinstance(sde, LinearSDE):
        return noise.randn(shape, dtype=torch.float64, device=device).mul_(sde.prior_std).to(dtype)
    return torch.cat([sde.prior_sampling((1, *shape[1:]), generator=as_generator(k, device),
                                         dtype=dtype, device=device) for k in noise.int_seeds()])


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
from . import adaptive, correctors, ddim, dpm_solver, edm, ode, pc, predictors, sde, unipc  # noqa: E402,F401
from .ddim import schedule  # noqa: E402
from .dpm_solver import exponential_weights  # noqa: E402
