"""Data as tensors: 2-D toy distributions and the scikit-learn digits (8x8, 17 grey levels).

Toy sets
--------
Every toy sampler has the signature ``sampler(n, generator=None, dtype=torch.float32, device=None)``
and returns a float tensor of shape ``(n, 2)``. Randomness comes only from ``generator`` (a
``torch.Generator`` or an ``int`` seed; ``None`` uses torch's global RNG), so the same seed gives
the same samples. All sets are roughly centred with coordinates of order 1-4.

``ring`` is an exact Gaussian mixture (:func:`ring_params` returns its parameters), so it has a
closed-form oracle (``sdediff.GaussianMixture(*ring_params())``).

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

import functools
import hashlib
import math
from typing import Callable

import numpy as np
import torch

from .quantization import (_as_generator, dequantization_bpd_offset, dequantization_log_jacobian,
                           dequantize, levels_to_range, range_to_levels)

__all__ = [
    "TOY_DATASETS", "toy_data", "ring", "ring_params", "moons", "swiss_roll", "checkerboard", "pinwheel",
    "two_spirals", "circles", "DIGITS_NUM_LEVELS", "DIGITS_SPLIT_SIZES", "digits_split_indices",
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
) -> torch.Tensor:
    """Samples of the Gaussian mixture described by :func:`ring_params` (default: 8 modes, radius 2, std 0.1).

    Args:
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).
        num_modes: Number of mixture components.
        radius: Radius of the circle of means.
        std: Standard deviation of each component.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    means, stds, _ = (p.to(_rng_device(gen)) for p in ring_params(num_modes, radius, std))
    k = _randint(num_modes, (n,), gen)  # equal weights: a uniform component index
    x = means[k] + stds[k, None] * _randn((n, 2), gen, torch.float64)
    return _finish(x, dtype, device)


def moons(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Two interleaving half circles (as scikit-learn's ``make_moons``), centred and scaled by 2, noise std 0.1.

    Upper moon ``(cos a, sin a)``, lower moon ``(1 - cos a, 1/2 - sin a)``, ``a ~ U[0, pi]``,
    each point picked from either moon with probability 1/2; then ``x = 2 (p - (1/2, 1/4)) + 0.1 z``.

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
    a = math.pi * _rand((n,), gen, torch.float64)
    lower = _randint(2, (n,), gen).bool()
    px = torch.where(lower, 1.0 - torch.cos(a), torch.cos(a))
    py = torch.where(lower, 0.5 - torch.sin(a), torch.sin(a))
    p = torch.stack([px - 0.5, py - 0.25], dim=1)
    return _finish(2.0 * p + 0.1 * _randn((n, 2), gen, torch.float64), dtype, device)


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
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform density on the 8 "black" squares of a 4x4 checkerboard covering ``[-4, 4]^2``.

    Each square has side 2; a square with lower-left corner ``(2i - 4, 2j - 4)`` is occupied when
    ``i + j`` is even.

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
    x1 = 4.0 * _rand((n,), gen, torch.float64) - 2.0  # in [-2, 2)
    x2 = _rand((n,), gen, torch.float64) - 2.0 * _randint(2, (n,), gen).to(torch.float64)  # [-2, 1)
    x2 = x2 + torch.floor(x1) % 2  # shift every other column up by one unit
    return _finish(2.0 * torch.stack([x1, x2], dim=1), dtype, device)


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
) -> torch.Tensor:
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

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    _check_n(n)
    gen = _as_generator(generator)
    arm = _randint(num_arms, (n,), gen).to(torch.float64)
    f = _randn((n, 2), gen, torch.float64)
    f = torch.stack([1.0 + radial_std * f[:, 0], tangential_std * f[:, 1]], dim=1)
    angle = 2.0 * math.pi * arm / num_arms + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], dim=1)
    return _finish(2.0 * x, dtype, device)


def two_spirals(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Two interleaved spirals (point-symmetric), 1.5 turns each, as in FFJORD's ``2spirals``.

    ``r = sqrt(u) * 3 pi`` (``u ~ U[0, 1]``), ``p = (-r cos r + 0.5 v1, r sin r + 0.5 v2)``
    (``v ~ U[0, 1]^2``), a random sign picks the spiral, then ``x = p / 3 + 0.1 z``.

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
    r = torch.sqrt(_rand((n,), gen, torch.float64)) * 3.0 * math.pi  # 540 degrees
    jitter = 0.5 * _rand((n, 2), gen, torch.float64)
    p = torch.stack([-torch.cos(r) * r, torch.sin(r) * r], dim=1) + jitter
    sign = 1.0 - 2.0 * _randint(2, (n, 1), gen).to(torch.float64)
    return _finish(sign * p / 3.0 + 0.1 * _randn((n, 2), gen, torch.float64), dtype, device)


def circles(n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Two concentric circles of radii 3 and 1.5 (as ``make_circles(factor=0.5, noise=0.08)`` scaled by 3).

    Each point picks a circle with probability 1/2 and a uniform angle; then noise ``0.24 z``.

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
    a = 2.0 * math.pi * _rand((n,), gen, torch.float64)
    radius = 3.0 - 1.5 * _randint(2, (n,), gen).to(torch.float64)
    x = radius[:, None] * torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    return _finish(x + 0.24 * _randn((n, 2), gen, torch.float64), dtype, device)


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


def toy_data(name: str, n: int, generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Draw ``n`` samples of a named 2-D toy distribution.

    Args:
        name: One of :data:`TOY_DATASETS`.
        n: Number of samples.
        generator: ``torch.Generator``, ``int`` seed, or ``None`` for the global RNG.
        dtype: Floating dtype of the result.
        device: Device of the result (default: the generator's device, else CPU).

    Returns:
        Tensor of shape ``(n, 2)``.

    Raises:
        ValueError: If ``name`` is unknown or ``n`` is negative.
        TypeError: If ``generator`` is neither a generator, an int nor ``None``.
    """
    if name not in _TOY_SAMPLERS:
        raise ValueError(f"name must be one of {TOY_DATASETS}, got {name!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return _TOY_SAMPLERS[name](n, generator, dtype, device)


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

#: Grey levels of the digits images: integers ``0..16``.
DIGITS_NUM_LEVELS = 17

#: Sizes of the fixed split of the 1,797 digits (train and val together form the training pool).
DIGITS_SPLIT_SIZES: dict[str, int] = {"train": 1297, "val": 200, "test": 300}

_DIGITS_TOTAL = 1797
_DIGITS_SPLITS = ("train", "val", "test", "trainval")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; nothing is downloaded

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.int64)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    if images.shape[0] != _DIGITS_TOTAL:
        raise RuntimeError(f"expected {_DIGITS_TOTAL} digits from scikit-learn, got {images.shape[0]}")
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits_permutation() -> tuple[int, ...]:
    # Sort indices by a cryptographic hash: a fixed permutation that no library version can change.
    key = lambda i: hashlib.sha256(f"sdediff-digits-{i}".encode()).digest()  # noqa: E731
    return tuple(sorted(range(_DIGITS_TOTAL), key=key))


def digits_split_indices(split: str = "train") -> torch.Tensor:
    """Indices (into ``sklearn.datasets.load_digits()`` order) of a fixed digits split.

    The 1,797 images are ordered by a fixed pseudo-random permutation (indices sorted by the
    SHA-256 hash of ``"sdediff-digits-{i}"``, independent of any RNG or library version).
    The first 300 form ``"test"``; the remaining 1,497 form the training pool ``"trainval"``,
    of which the first 200 are ``"val"`` and the last 1,297 are ``"train"``. Test images never
    enter the training pool, and ``"val"`` is carved out of it.

    Args:
        split: ``"train"`` (1,297), ``"val"`` (200), ``"test"`` (300) or ``"trainval"`` (1,497).

    Returns:
        Sorted ``int64`` tensor of indices.

    Raises:
        ValueError: If ``split`` is unknown.
    """
    if split not in _DIGITS_SPLITS:
        raise ValueError(f"split must be one of {_DIGITS_SPLITS}, got {split!r}")
    perm = _digits_permutation()
    n_test, n_val = DIGITS_SPLIT_SIZES["test"], DIGITS_SPLIT_SIZES["val"]
    chosen = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
        "trainval": perm[n_test:],
    }[split]
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def load_digits_tensors(
    split: str = "train",
    *,
    output: str = "levels",
    low: float = -1.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The scikit-learn digits as tensors of shape ``(n, 1, 8, 8)``.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``; see :func:`digits_split_indices`.
        output: ``"levels"`` for the integer grey levels ``0..16`` (``int64``), or ``"range"`` for
            the bin centres in ``[low, high]`` (:func:`levels_to_range`). For likelihoods, load
            levels and :func:`dequantize` them.
        low: Lower end of the continuous range (``output="range"``).
        high: Upper end of the continuous range (``output="range"``).
        dtype: Floating dtype for ``output="range"``.
        return_labels: Also return the class labels ``0..9`` (``int64``, shape ``(n,)``).

    Returns:
        The images, or ``(images, labels)`` when ``return_labels`` is true.

    Raises:
        ValueError: If ``split`` or ``output`` is unknown, or ``low >= high``.
    """
    if output not in ("levels", "range"):
        raise ValueError(f"output must be one of ('levels', 'range'), got {output!r}")
    index = digits_split_indices(split).numpy()
    images, labels = _digits_arrays()
    levels = torch.from_numpy(images[index].copy()).unsqueeze(1)
    x = levels if output == "levels" else levels_to_range(levels, DIGITS_NUM_LEVELS, low, high, dtype=dtype)
    if return_labels:
        return x, torch.from_numpy(labels[index].copy())
    return x
