"""Quantized data <-> continuous data: dequantization, bin maps and bits per dimension.

One convention, score_sde's, is the default of every function here: ``K = 256`` levels
``0..255`` mapped to ``[low, high] = [-1, 1]`` with uniform dequantization, so that bits/dim
carry the offset ``log2(K / (high - low)) = log2(256 / 2) = 7``. Other data says so
explicitly (the scikit-learn digits: ``num_levels=DIGITS_NUM_LEVELS = 17``).

Change of variables. Level ``l`` is spread over its bin by ``x = low + (l + u) delta``,
``delta = (high - low) / K``, ``u ~ U[0, 1)``. On the level scale ``y = l + u`` (bins of width
1, where a discrete model puts probability on levels) the density is ``q(y) = p(x) delta^d``::

    log q(y) = log p(x) + d log((high - low) / K)            # dequantization_log_jacobian
    bpd      = -log q(y) / (d ln 2)
             = -log p(x) / (d ln 2) + log2(K / (high - low))  # dequantization_bpd_offset

and by Jensen's inequality ``E_u[bpd]`` upper-bounds the discrete model's bits/dim (Theis et
al. 2016). E.g. 256 levels on ``[-1, 1]``: offset 7 bits; on ``[0, 1]``: 8; the 17 digit levels
on ``[-1, 1]``: ``log2(8.5) = 3.087``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["NUM_LEVELS", "LOW", "HIGH", "dequantize", "bits_per_dim", "levels_to_range",
           "range_to_levels", "dequantization_log_jacobian", "dequantization_bpd_offset"]

#: The default convention (score_sde's): 256 levels on ``[-1, 1]``.
NUM_LEVELS, LOW, HIGH = 256, -1.0, 1.0


# ------------------------------------------------------------------------------ checks
def _check_range_args(num_levels: int, low: float, high: float) -> None:
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive integer, got {num_levels!r}")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                            "(generator and dtype are keyword-only)")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")


def _check_levels(levels: Tensor, num_levels: int, name: str = "levels") -> None:
    """``levels`` must hold integers in ``0..num_levels - 1``."""
    if not isinstance(levels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(levels).__name__}")
    if levels.numel() == 0:
        return
    if levels.is_floating_point() and not bool(torch.equal(levels, torch.round(levels))):
        raise ValueError(f"{name} must hold integer values")
    if levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {levels.dtype}")
    if levels.min() < 0 or levels.max() > num_levels - 1:
        raise ValueError(f"{name} must lie in 0..{num_levels - 1} (num_levels={num_levels}), "
                         f"got values in {levels.min().item()}..{levels.max().item()}")


def _wide_dtype(device: torch.device) -> torch.dtype:
    """float64 for exact bin arithmetic, except on backends without it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


# ------------------------------------------------------------------------ the maps
def dequantize(levels: Tensor, num_levels: int = NUM_LEVELS, low: float = LOW, high: float = HIGH, *,
               generator: torch.Generator | int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform dequantization: ``x = low + (levels + u) (high - low) / K``, ``u ~ U[0, 1)``.

    Pair it with :func:`bits_per_dim` (same ``num_levels``, ``low``, ``high``). ``u`` is kept a
    few units of rounding away from the bin edges (a shift of order ``1e-5`` in float32,
    ``1e-14`` in float64, immaterial for the density) so that :func:`range_to_levels` recovers
    ``levels`` exactly in the working precision.

    Args:
        levels: integer levels in ``0..K-1`` (an integer or integer-valued float tensor), any shape.
        num_levels: ``K`` (default 256).
        low, high: the target range (default ``[-1, 1]``).
        generator: a ``torch.Generator``, an ``int`` seed, or ``None`` (torch's global RNG).
        dtype: floating dtype of the result (default: ``levels``' dtype if floating, else the
            default dtype).

    Returns:
        A tensor like ``levels`` with values in ``[low, high)``, on ``levels``' device.

    Raises:
        ValueError: levels outside ``0..K-1`` or not integer, or an empty range.
        TypeError: ``levels`` not a tensor, or ``low``/``high`` not numbers.
    """
    _check_range_args(num_levels, low, high)
    _check_levels(levels, num_levels)
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    gen = _as_generator(generator)
    wide = _wide_dtype(levels.device)
    rng_device = gen.device if gen is not None else torch.device("cpu")
    u = torch.rand(tuple(levels.shape), generator=gen, dtype=wide, device=rng_device).to(levels.device)
    delta = (high - low) / num_levels
    # A few times the rounding error of x in ``dtype``, measured in bin units.
    margin = min(8.0 * torch.finfo(dtype).eps * (1.0 + max(abs(low), abs(high))) / delta, 0.25)
    u = u.clamp(margin, 1.0 - margin)
    return (low + (levels.to(wide) + u) * delta).to(dtype)


def levels_to_range(levels: Tensor, num_levels: int = NUM_LEVELS, low: float = LOW, high: float = HIGH,
                    dtype: torch.dtype | None = None) -> Tensor:
    """The centres of the levels' bins: ``low + (levels + 1/2) (high - low) / K``.

    Args:
        levels: integer levels in ``0..K-1``, any shape.
        num_levels: ``K``.
        low, high: the range.
        dtype: floating dtype of the result (default as in :func:`dequantize`).

    Returns:
        A tensor like ``levels`` with values in ``(low, high)``.

    Raises:
        ValueError: levels out of range or an empty range.
    """
    _check_range_args(num_levels, low, high)
    _check_levels(levels, num_levels)
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    wide = _wide_dtype(levels.device)
    return (low + (levels.to(wide) + 0.5) * ((high - low) / num_levels)).to(dtype)


def range_to_levels(x: Tensor, num_levels: int = NUM_LEVELS, low: float = LOW, high: float = HIGH) -> Tensor:
    """Inverse of :func:`levels_to_range` and :func:`dequantize`: the index of the bin holding ``x``.

    ``clamp(floor((x - low) / delta), 0, K - 1)``: bin centres and dequantized values map back
    to their level; values outside ``[low, high)`` (e.g. samples) go to the end bins.

    Args:
        x: a floating tensor, any shape.
        num_levels: ``K``.
        low, high: the range.

    Returns:
        An ``int64`` tensor like ``x`` with values in ``0..K-1``.

    Raises:
        ValueError: an empty range.
        TypeError: ``x`` is not a floating tensor.
    """
    _check_range_args(num_levels, low, high)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating torch.Tensor")
    wide = _wide_dtype(x.device)
    y = torch.nan_to_num((x.to(wide) - low) / ((high - low) / num_levels), nan=0.0)
    return torch.floor(y).clamp(0, num_levels - 1).to(torch.int64)


def dequantization_log_jacobian(d: int, num_levels: int = NUM_LEVELS, low: float = LOW,
                                high: float = HIGH) -> float:
    """Nats to add to ``log p(x)`` of one example for its log-density on the level scale.

    ``d log((high - low) / K)``: the log-determinant of ``y -> x = low + y delta`` (see the
    module notes). The result is the dequantization lower bound on the discrete log-likelihood.

    Args:
        d: entries of one example (64 for a digit).
        num_levels: ``K``.
        low, high: the range.

    Returns:
        The per-example correction in nats (negative when ``delta < 1``).

    Raises:
        ValueError: ``d < 1`` or an empty range.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    _check_range_args(num_levels, low, high)
    return float(d) * math.log((high - low) / num_levels)


def dequantization_bpd_offset(num_levels: int = NUM_LEVELS, low: float = LOW, high: float = HIGH) -> float:
    """Bits per dimension to add to ``-log p(x) / (d ln 2)``: ``log2(K / (high - low))``.

    Args:
        num_levels: ``K``.
        low, high: the range.

    Returns:
        The offset in bits (7 for 256 levels on ``[-1, 1]``; 3.087 for 17 levels on ``[-1, 1]``).

    Raises:
        ValueError: an empty range.
    """
    _check_range_args(num_levels, low, high)
    return math.log2(num_levels / (high - low))


def bits_per_dim(logp: Tensor, dim: int, num_levels: int | None = NUM_LEVELS, low: float = LOW,
                 high: float = HIGH, *, data: Tensor | None = None) -> Tensor:
    """Convert log-densities (nats) of ``d``-dimensional examples to bits per dimension.

    ``bpd = -log p(x) / (d ln 2) + log2(K / (high - low))`` for data quantized to ``K`` levels,
    mapped to ``[low, high]`` and uniformly dequantized (:func:`dequantize`, derivation in the
    module notes); ``num_levels=None``: continuous data, ``bpd = -log p(x) / (d ln 2)``.

    Args:
        logp: log-densities in nats, any shape.
        dim: ``d``, the number of entries of one example, ``>= 1``.
        num_levels: ``K`` for quantized data (default 256), or ``None`` for continuous data.
        low, high: the range the levels were mapped to (default ``[-1, 1]``).
        data: optionally the integer levels the log-densities belong to: checked to be integer
            in ``0..K-1``, so that a mismatched ``num_levels`` fails instead of giving a wrong offset.

    Returns:
        Bits per dimension, shape of ``logp``.

    Raises:
        ValueError: ``dim < 1``, ``num_levels < 2``, ``low >= high``, non-finite ``logp``, or
            ``data`` not integer in ``0..num_levels - 1``.
    """
    if not isinstance(logp, Tensor):
        logp = torch.as_tensor(logp, dtype=torch.float64)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int (entries per example), got {dim!r}")
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("logp has NaN or inf entries; bits/dim would be meaningless")
    bits = -logp / (int(dim) * math.log(2.0))
    if num_levels is None:
        if data is not None:
            raise ValueError("data (integer levels) needs num_levels; num_levels=None means continuous data")
        return bits
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2 or None (continuous data), got {num_levels!r}")
    if data is not None:
        _check_levels(data, int(num_levels), name="data")
    return bits + dequantization_bpd_offset(int(num_levels), low, high)
