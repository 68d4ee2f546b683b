"""Data as tensors: 2-D toy distributions and the scikit-learn digits (8x8, 17 grey levels).

Toy sets
--------
Every toy sampler has the signature ``sampler(n, generator=None, dtype=torch.float32, device=None)``
and returns a float tensor of shape ``(n, 2)``. Randomness comes only from ``generator`` (a
``torch.Generator`` or an ``int`` seed; ``None`` uses torch's global RNG), so the same seed gives
the same samples. All sets are roughly centred with coordinates of order 1-4.

``ring`` is an exact Gaussian mixture (:func:`ring_params` returns its parameters), so it has a
closed-form oracle (``sdediff.GaussianMixture(*ring_params())``).

Labels
------
``toy_data(name, n, ..., return_labels=True)`` (and each sampler's ``return_labels=True``) also
returns an ``int64`` tensor ``(n,)`` of classes where the set has natural ones
(:data:`TOY_NUM_CLASSES`): the ring's modes (label ``k`` is the component of mean
``mu_k``, so ``GaussianMixture(*ring_params(), labels=torch.arange(K))`` is the labelled
oracle), the two moons, the pinwheel's arms, the two spirals, the two circles and the
checkerboard's 8 squares. ``swiss_roll`` is one curve with no classes: asking for its labels is
a ``ValueError``. The labels come from the same draw: the points are those of
``return_labels=False`` with the same generator.

Digits
------
:func:`load_digits_tensors` wraps :func:`sklearn.datasets.load_digits` (1,797 images bundled with
scikit-learn, no download) with a fixed split, see :func:`digits_split_indices`.
Quantization (:func:`dequantize`, :func:`levels_to_range`, :func:`range_to_levels`,
:func:`dequantization_log_jacobian`, :func:`dequantization_bpd_offset`) lives in
:mod:`sdediff.quantization`, whose default is 256 levels: pass ``DIGITS_NUM_LEVELS`` (17) for
the digits. Those names are re-exported here (the same functions) for older code.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .digits import (DIGITS_NUM_CLASSES, DIGITS_NUM_LEVELS, DIGITS_SPLIT_SIZES, digits_split_indices,
                     load_digits_tensors)
from .quantization import (_as_generator, dequantization_bpd_offset, dequantization_log_jacobian,
                           dequantize, levels_to_range, range_to_levels)

__all__ = [
    "TOY_DATASETS", "toy_data", "ring", "ring_params", "moons", "swiss_roll", "checkerboard", "pinwheel",
    "two_spirals", "circles", "TOY_NUM_CLASSES", "DIGITS_NUM_LEVELS", "DIGITS_NUM_CLASSES", "DIGITS_SPLIT_SIZES",
    "digits_split_indices",
    "load_digits_tensors",
    # re-exported from sdediff.quantization
    "dequantize", "dequantization_log_jacobian", "dequantization_bpd_offset", "levels_to_range",
    "range_to_levels",
]

# --------------------------------------------------------------------------------------------
# Random-number plumbing
# --------------------------------------------------------------------------------------------


def _rng_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype, device=_rng_device(gen))


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=dtype, device=_rng_device(gen))


def _randint(high: int, shape: tuple[int, ...], gen: torch.Generator | None) -> torch.Tensor:
    return torch.randint(high, shape, generator=gen, device=_rng_device(gen))


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")


def _finish(x: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """Cast samples (drawn in float64 on the generator's device) and move them to ``device``."""
    return x.to(dtype=dtype, device=device if device is not None else x.device)


def _labelled(x: torch.Tensor, labels: torch.Tensor, return_labels: bool):
    """``x``, or ``(x, labels)`` with the labels as ``int64`` on ``x``'s device."""
    return (x, labels.to(device=x.device, dtype=torch.int64)) if return_labels else x


# --------------------------------------------------------------------------------------------
# 2-D toy distributions
# --------------------------------------------------------------------------------------------

#: Ring defaults: 8 equally weighted isotropic Gaussians, means on a circle of radius 2, std 0.1.
RING_NUM_MODES, RING_RADIUS, RING_STD = 8, 2.0, 0.1


def ring_params(num_modes: int = RING_NUM_MODES, radius: float = RING_RADIUS, std: float = RING_STD,
                dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact mixture parameters of the ``ring`` toy set.

    Mode ``k`` (``k = 0..K-1``) is ``N(mu_k, std^2 I)`` with
    ``mu_k = radius * (cos(2 pi k / K), sin(2 pi k / K))`` and weight ``1 / K``.
    With the defaults, neighbouring means are ``2 * 2 * sin(pi / 8) = 1.53`` apart, about 15 stds.

    Args:
        num_modes: Number of components ``K``.
        radius: Radius of the circle of means.
        std: Per-coordinate standard deviation of every component.
        dtype: Floating dtype of the returned tensors.

    Returns:
        ``(means, stds, weights)`` of shapes ``(K, 2)``, ``(K,)``, ``(K,)``, on the CPU.

    Raises:
        ValueError: If ``num_modes < 1``, ``radius < 0`` or ``std <= 0``.
    """
    if isinstance(num_modes, bool) or not isinstance(num_modes, int) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive integer, got {num_modes!r}")
    if not radius >= 0:
        raise ValueError(f"radius must be non-negative, got {radius!r}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    angles = 2.0 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    stds = torch.full((num_modes,), float(std), dtype=torch.float64)
    weights = torch.full((num_modes,), 1.0 / num_modes, dtype=torch.float64)
    return means.to(dtype), stds.to(dtype), weights.to(dtype)


def ring(
    n: int,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    *,
    num_modes: int = RING_NUM_MODES,
    radius: float = RING_RADIUS,
    std: float = RING_STD,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Samples of the Gaussian mixture described by :func:`ring_params` (default: 8 modes, radius 2, std 0.1).

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        num_modes: Number of mixture components.
        radius: Radius of the circle of means.
        std: Standard deviation of each component.
        return_labels: also return the class of each sample: the mode index ``k`` in ``0..num_modes-1``.

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    means, stds, _ = (p.to(_rng_device(gen)) for p in ring_params(num_modes, radius, std))
    k = _randint(num_modes, (n,), gen)  # equal weights: a uniform component index
    x = means[k] + stds[k, None] * _randn((n, 2), gen, torch.float64)
    return _labelled(_finish(x, dtype, device), k, return_labels)


def moons(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None, *,
          return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles (as scikit-learn's ``make_moons``), centred and scaled by 2, noise std 0.1.

    Upper moon ``(cos a, sin a)``, lower moon ``(1 - cos a, 1/2 - sin a)``, ``a ~ U[0, pi]``,
    each point picked from either moon with probability 1/2; then ``x = 2 (p - (1/2, 1/4)) + 0.1 z``.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        return_labels: also return the class of each sample: ``0`` for the upper moon, ``1`` for the lower one.

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    a = math.pi * _rand((n,), gen, torch.float64)
    lower = _randint(2, (n,), gen).bool()
    px = torch.where(lower, 1.0 - torch.cos(a), torch.cos(a))
    py = torch.where(lower, 0.5 - torch.sin(a), torch.sin(a))
    p = torch.stack([px - 0.5, py - 0.25], dim=1)
    x = _finish(2.0 * p + 0.1 * _randn((n, 2), gen, torch.float64), dtype, device)
    return _labelled(x, lower.long(), return_labels)


def swiss_roll(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """A 2-D Swiss roll: ``s (cos s, sin s) / 5 + 0.2 z`` with ``s = 1.5 pi (1 + 2u)``, ``u ~ U[0, 1]``.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    s = 1.5 * math.pi * (1.0 + 2.0 * _rand((n,), gen, torch.float64))
    x = torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / 5.0
    return _finish(x + 0.2 * _randn((n, 2), gen, torch.float64), dtype, device)


def checkerboard(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, *,
                 return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Uniform density on the 8 "black" squares of a 4x4 checkerboard covering ``[-4, 4]^2``.

    Each square has side 2; a square with lower-left corner ``(2i - 4, 2j - 4)`` is occupied when
    ``i + j`` is even.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        return_labels: also return the class of each sample: the square, ``2 * column + row // 2``
            (0..7; columns and rows of the 4x4 board counted from the lower left).

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    x1 = 4.0 * _rand((n,), gen, torch.float64) - 2.0  # in [-2, 2)
    x2 = _rand((n,), gen, torch.float64) - 2.0 * _randint(2, (n,), gen).to(torch.float64)  # [-2, 1)
    x2 = x2 + torch.floor(x1) % 2  # shift every other column up by one unit
    x = _finish(2.0 * torch.stack([x1, x2], dim=1), dtype, device)
    column, row = (torch.floor(x1) + 2).long(), (torch.floor(x2) + 2).long()
    return _labelled(x, 2 * column + row // 2, return_labels)


def pinwheel(
    n: int,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    *,
    num_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A pinwheel of ``num_arms`` curved arms (Johnson et al. 2016, as in FFJORD's toy sets).

    A point ``f = (1 + radial_std z1, tangential_std z2)`` on arm ``k`` (uniform) is rotated by
    ``2 pi k / num_arms + rate * exp(f_1)`` and scaled by 2.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        num_arms: Number of arms.
        radial_std: Radial noise before the twist.
        tangential_std: Tangential noise before the twist.
        rate: Twist rate.
        return_labels: also return the class of each sample: the arm ``k`` in ``0..num_arms-1``.

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    arm = _randint(num_arms, (n,), gen).to(torch.float64)
    f = _randn((n, 2), gen, torch.float64)
    f = torch.stack([1.0 + radial_std * f[:, 0], tangential_std * f[:, 1]], dim=1)
    angle = 2.0 * math.pi * arm / num_arms + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], dim=1)
    return _labelled(_finish(2.0 * x, dtype, device), arm.long(), return_labels)


def two_spirals(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None, *,
                return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals (point-symmetric), 1.5 turns each, as in FFJORD's ``2spirals``.

    ``r = sqrt(u) * 3 pi`` (``u ~ U[0, 1]``), ``p = (-r cos r + 0.5 v1, r sin r + 0.5 v2)``
    (``v ~ U[0, 1]^2``), a random sign picks the spiral, then ``x = p / 3 + 0.1 z``.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        return_labels: also return the class of each sample: ``0`` for the spiral of sign ``+1``, ``1`` for the other.

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    r = torch.sqrt(_rand((n,), gen, torch.float64)) * 3.0 * math.pi  # 540 degrees
    jitter = 0.5 * _rand((n, 2), gen, torch.float64)
    p = torch.stack([-torch.cos(r) * r, torch.sin(r) * r], dim=1) + jitter
    flip = _randint(2, (n, 1), gen)
    sign = 1.0 - 2.0 * flip.to(torch.float64)
    x = _finish(sign * p / 3.0 + 0.1 * _randn((n, 2), gen, torch.float64), dtype, device)
    return _labelled(x, flip[:, 0].long(), return_labels)


def circles(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None, *,
            return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Two concentric circles of radii 3 and 1.5 (as ``make_circles(factor=0.5, noise=0.08)`` scaled by 3).

    Each point picks a circle with probability 1/2 and a uniform angle; then noise ``0.24 z``.

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        return_labels: also return the class of each sample: ``0`` for the outer circle (radius 3),
            ``1`` for the inner one.

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` ``int64`` of shape ``(n,)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    a = 2.0 * math.pi * _rand((n,), gen, torch.float64)
    inner = _randint(2, (n,), gen)
    radius = 3.0 - 1.5 * inner.to(torch.float64)
    x = radius[:, None] * torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    x = _finish(x + 0.24 * _randn((n, 2), gen, torch.float64), dtype, device)
    return _labelled(x, inner.long(), return_labels)


_TOY_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ring": ring,
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "two_spirals": two_spirals,
    "circles": circles,
}

#: Names accepted by :func:`toy_data`.
TOY_DATASETS: tuple[str, ...] = tuple(_TOY_SAMPLERS)

#: The number of classes of each labelled toy set (``toy_data(..., return_labels=True)``); the
#: sets not listed (``swiss_roll``) have no natural classes.
TOY_NUM_CLASSES: dict[str, int] = {"ring": RING_NUM_MODES, "moons": 2, "checkerboard": 8, "pinwheel": 5,
                                   "two_spirals": 2, "circles": 2}


def toy_data(name: str, n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None, *,
             return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` samples of a named 2-D toy distribution (and their classes, see :data:`TOY_NUM_CLASSES`).

    Args:
        name: One of :data:`TOY_DATASETS`.
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        return_labels: also return the class of each sample: ``int64`` in
            ``0..TOY_NUM_CLASSES[name]-1`` (the same points as without it, for the same generator).

    Returns:
        Tensor of shape ``(n, 2)``, or ``(x, labels)`` with ``labels`` of shape ``(n,)``.

    Raises:
        ValueError: If ``name`` is unknown, ``n`` is negative, or labels are asked of a set without
            classes (``swiss_roll``).
        TypeError: If ``generator`` is neither a generator, an int nor ``None``.
    """
    if name not in _TOY_SAMPLERS:
        raise ValueError(f"name must be one of {TOY_DATASETS}, got {name!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if not return_labels:
        return _TOY_SAMPLERS[name](n, generator, dtype, device)
    if name not in TOY_NUM_CLASSES:
        raise ValueError(f"toy set {name!r} has no classes, so it has no labels; labelled sets: "
                         f"{', '.join(TOY_NUM_CLASSES)}")
    return _TOY_SAMPLERS[name](n, generator, dtype, device, return_labels=True)
