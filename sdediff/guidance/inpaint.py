"""Inpainting with an unconditional score: sample ``x0`` given some of its coordinates.

``mask == True`` marks the observed coordinates, whose values ``observed`` are fixed; the
others are drawn (approximately) from the model's conditional ``p(x_unobserved | x_observed)``.
The score itself is never conditioned: the methods act on the sampler's state.

* ``"replacement"`` (Song et al. 2021, score_sde's inpainter; also SDEdit-style): after every
  step to time ``t``, overwrite the observed coordinates by a fresh draw of their forward
  marginal ``a(t) observed + s(t) z``.
* ``"repaint"`` (Lugmayr et al. 2022, RePaint): replacement, plus resampling: after every
  ``jump_length`` steps down, noise the whole state back up ``jump_length`` steps with the
  forward transition and denoise again, ``resample`` times in all. The re-noised state
  carries information from the observed coordinates into the unobserved ones, which one pass
  of replacement does not (it harmonizes the two parts). ``resample = 1`` is replacement.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable

import torch
from torch import Tensor

from ..sde import SDE, LinearSDE
from ..samplers import GuardedScore, available_samplers, time_grid

__all__ = ["inpaint", "INPAINT_METHODS", "repaint_path"]

#: The inpainting methods, by name.
INPAINT_METHODS = ("replacement", "repaint")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def repaint_path(steps: int, jump_length: int = 1, resample: int = 1) -> list[int]:
    """The grid indices RePaint visits (Lugmayr et al. 2022, Alg. 1 with its "jump" schedule).

    Index ``0`` is ``T`` and ``steps`` is the last time. A move ``i -> i + 1`` is a denoising
    step; a move ``i + 1 -> i`` re-noises by the forward transition. After reaching an index
    ``i = steps - m jump_length > jump_length`` (``m = 0, 1, ...``; the last index included)
    the path goes back up ``jump_length`` indices and down again, ``resample - 1`` times.
    ``resample = 1`` is the plain path ``0, 1, ..., steps``.

    Returns:
        The visited indices, starting at 0 and ending at ``steps``; the number of
        denoising moves is ``steps + (resample - 1) jump_length (number of jump points)``.
    """
    steps = _positive_int("steps", steps)
    jump_length = _positive_int("jump_length", jump_length)
    resample = _positive_int("resample", resample)
    jumps = {i: resample - 1 for i in range(steps, jump_length, -jump_length)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                i -= 1
                path.append(i)
    return path


def _example_or_batch(name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``value`` of ``shape[1:]`` (broadcast over the batch) or of ``shape``."""
    if tuple(value.shape) == shape[1:]:
        return value.expand(shape)
    if tuple(value.shape) == shape:
        return value
    raise ValueError(f"{name} must have the example shape {shape[1:]} or the batch shape {shape}, "
                     f"got {tuple(value.shape)}")


def _resolve_shapes(observed, mask, shape) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    if not isinstance(observed, Tensor):
        raise TypeError(f"observed must be a tensor, got {type(observed).__name__}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"a {mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = observed), got {got}")
    if shape is None:
        if observed.dim() < 2:
            raise ValueError(f"observed of shape {tuple(observed.shape)} has no batch dimension: pass "
                             "shape=(B, *dims) (observed may then have the example shape dims)")
        shape = tuple(observed.shape)
    else:
        shape = tuple(shape)
        if len(shape) < 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
            raise ValueError(f"shape must be (B, *dims) with positive ints, got {shape!r}")
    return _example_or_batch("observed", observed, shape), _example_or_batch("mask", mask, shape), shape


def inpaint(score_fn: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, observed: Tensor, mask: Tensor, *,
            method: str = "repaint", sampler: str = "ancestral", steps: int = 25, shape=None,
            generator: torch.Generator | None = None, resample: int | None = None, jump_length: int = 1,
            eps: float = 1e-3, grid: str = "quadratic", denoise: bool = True, callback: Callable | None = None,
            dtype: torch.dtype | None = None, device=None, return_nfe: bool = False, **options):
    """Sample ``x0`` whose observed coordinates (``mask == True``) equal ``observed``.

    The sampler runs one grid interval at a time (so a multistep sampler such as
    ``dpm_solver`` takes its first-order step; ``heun`` takes full steps, the last one Euler);
    after each interval the observed coordinates are replaced by a draw of their forward
    marginal at the new time. At the end they are set to ``observed`` exactly.

    Defaults (``"repaint"``, ``resample=4``, ``steps=25``: about 100 NFE with ``ancestral``)
    are the measured best at equal NFE on a multimodal posterior (the 8-mode ring, one
    coordinate observed, exact score): at ~50 NFE RePaint's Frechet error over the noise floor
    is 0.021 against replacement's 0.21. On a unimodal posterior (64-D mixture, half observed)
    replacement's score is nearly exact and the error is discretization: there replacement
    wins at equal NFE (0.11 vs 0.33 excess at ~50 NFE), so prefer it when the observed part
    pins down the mode.

    Cost: ``method="replacement"`` uses ``steps`` sampler steps; ``"repaint"`` about
    ``resample`` times as many (exactly: the denoising moves of :func:`repaint_path`), plus one
    NFE for ``denoise``. Compare methods at equal NFE (``return_nfe=True``).

    Args:
        score_fn: the unconditional score ``score_fn(x, t)`` (a guided score works too).
        sde: the linear SDE the score belongs to.
        observed: the observed values, of the example shape ``dims`` (shared by the batch) or
            ``(B, *dims)``; only the entries under ``mask`` are read (others may be NaN).
        mask: bool, ``True`` where observed; the example shape or ``(B, *dims)``.
        method: ``"repaint"`` (default) or ``"replacement"`` (see the module docstring).
        sampler: a registered sampler run on each interval (default ``"ancestral"``).
        steps: the grid's number of intervals.
        shape: the output shape ``(B, *dims)``; default ``observed.shape`` (then ``observed``
            must carry the batch).
        generator: the source of all randomness.
        resample: ``"repaint"``: how many times each block of ``jump_length`` steps is denoised
            (default 4); must be 1 or omitted for ``"replacement"``.
        jump_length: ``"repaint"``: steps per resampled block (default 1).
        eps: the last time of the grid, in ``(0, T)``.
        grid: the time grid kind (see :func:`sdediff.time_grid`); ``"quadratic"`` (dense near
            the data) measured as good as or better than ``"uniform"`` for both methods.
        denoise: finish with Tweedie's ``E[x0 | x_eps]`` (one NFE).
        callback: called as ``callback(step=k, t=t, x=x)`` after every move of the path.
        dtype, device: of the samples (default: ``observed``'s floating dtype, else the default
            dtype; ``observed``'s device).
        return_nfe: also return the number of score evaluations.
        **options: the sampler's own options.

    Returns:
        Samples of shape ``(B, *dims)`` (and the NFE if ``return_nfe``).

    Raises:
        TypeError: ``observed`` not a tensor, ``mask`` not a bool tensor, ``sde`` not linear.
        ValueError: an unknown ``method``/``sampler``, ``observed``/``mask`` of neither the
            example nor the batch shape, non-finite observed values, bad ``steps``/``resample``/
            ``jump_length``/``eps``.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (inpainting noises the observed part with scale/std), "
                        f"got {type(sde).__name__}")
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(INPAINT_METHODS)}")
    info = available_samplers().get(sampler)
    if info is None:
        raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(available_samplers())}")
    steps = _positive_int("steps", steps)
    jump_length = _positive_int("jump_length", jump_length)
    if method == "replacement":
        if resample not in (None, 1):
            raise ValueError(f"resample must be 1 or None for method='replacement', got {resample!r}")
        resample = 1
    resample = _positive_int("resample", 4 if resample is None else resample)
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    observed, mask, shape = _resolve_shapes(observed, mask, shape)
    if dtype is None:
        dtype = observed.dtype if observed.is_floating_point() else torch.get_default_dtype()
    device = observed.device if device is None else torch.device(device)
    mask = mask.to(device)
    observed = torch.where(mask, observed.to(device=device, dtype=dtype), torch.zeros((), dtype=dtype, device=device))
    if not bool(torch.isfinite(observed).all()):
        raise ValueError("observed must be finite where mask is True")
    if "final_euler" in inspect.signature(info.fn).parameters and "final_euler" not in options:
        options["final_euler"] = None  # set per interval below: a full step but on the last one

    ts = time_grid(sde, steps, eps=float(eps), kind=grid, device=device)
    a = sde.scale(ts).tolist()
    s = sde.std(ts).tolist()
    score = GuardedScore(score_fn)

    def noised_observed(i: int) -> Tensor:
        """A draw of the observed part's forward marginal at ``ts[i]``."""
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return torch.add(z.mul_(s[i]), observed, alpha=a[i])

    x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
    x = torch.where(mask, noised_observed(0), x)
    path = repaint_path(steps, jump_length, resample)
    for k in range(1, len(path)):
        i, j = path[k - 1], path[k]
        if j == i + 1:
            # Denoise one interval with the sampler, then replace the observed part.
            score.step = i
            opts = options if options.get("final_euler", True) is not None else \
                {**options, "final_euler": j == steps}
            with torch.no_grad():
                x = info.fn(score, sde, x, ts[i:j + 1], generator=generator, progress=False,
                            callback=None, **opts)
            x = torch.where(mask, noised_observed(j), x)
        else:
            # Re-noise one interval up with the forward transition x_{t_j} | x_{t_i}.
            r = a[j] / a[i]
            sigma = math.sqrt(max(s[j] ** 2 - (r * s[i]) ** 2, 0.0))
            z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            x = torch.add(z.mul_(sigma), x, alpha=r)
        if callback is not None:
            callback(step=k - 1, t=float(ts[j]), x=x)
    if denoise:
        score.step = steps
        with torch.no_grad():
            x = (x + s[-1] ** 2 * score(x, ts[-1].item())) / a[-1]
    x = torch.where(mask, observed, x)
    return (x, score.nfe) if return_nfe else x
