"""One way to accept randomness, and per-example noise streams.

* :func:`as_generator` turns what a user passes as ``generator`` (a ``torch.Generator``, an
  int seed or ``None`` for torch's global generator) into a ``torch.Generator`` or ``None``.
* A *noise source* is what a sampler draws its Gaussian noise from: ``noise.randn_like(x)``.
  :class:`GeneratorNoise` draws from a ``torch.Generator`` (or the global one), exactly as
  ``torch.randn(x.shape, generator=g)`` does. :class:`SeededNoise` gives every example its
  own stream: the draw for example ``j`` at the run's ``k``-th call and coordinate ``c`` is a
  pure function of ``(seeds[j], k, c)`` (a counter-based RNG: splitmix64 hashes and
  Box-Muller), so an example's noise does not depend on its batch, the batch size or the
  process that draws it. :func:`as_noise` accepts either, or anything :func:`as_generator` does.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

__all__ = ["as_generator", "as_noise", "check_seeds", "GeneratorNoise", "SeededNoise"]

_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    """A 64-bit pattern as the int64 with the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """The splitmix64 finalizer on int64 tensors (wrapping arithmetic): a counter-based RNG."""
    z = z + _GOLDEN
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def splitmix64_int(v: int) -> int:
    """:func:`splitmix64` on a Python int (no tensor round trip)."""
    z = (v + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(z ^ (z >> 31))


def as_generator(generator_or_seed, device=None) -> torch.Generator | None:
    """A ``torch.Generator`` (or ``None``: torch's global generator) from what a user passed.

    Args:
        generator_or_seed: a ``torch.Generator`` (returned as is), an int seed (a new
            generator on ``device`` seeded with it) or ``None``.
        device: the device of a generator made from a seed (default CPU).

    Raises:
        TypeError: anything else (a float, a bool, a string, ...).
        ValueError: a seed outside ``[-2^63, 2^64)``.
    """
    if generator_or_seed is None or isinstance(generator_or_seed, torch.Generator):
        return generator_or_seed
    if isinstance(generator_or_seed, bool) or not _is_int(generator_or_seed):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, "
                        f"got {type(generator_or_seed).__name__}")
    seed = operator.index(generator_or_seed)
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"a seed must fit in 64 bits, got {seed}")
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    return gen.manual_seed(seed & _MASK64)


def _is_int(v) -> bool:
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def check_seeds(seeds, batch: int | None = None) -> list[int]:
    """``seeds`` (a sequence of ints or a 1-D integer tensor) as a list of Python ints.

    Raises:
        TypeError: not a sequence of ints / an integer tensor.
        ValueError: not 1-D, empty, or (with ``batch``) not ``batch`` of them.
    """
    if isinstance(seeds, Tensor):
        if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
            raise TypeError(f"seeds must be an integer tensor, got dtype {seeds.dtype}")
        if seeds.dim() != 1:
            raise ValueError(f"seeds must be 1-D (one per example), got shape {tuple(seeds.shape)}")
        out = seeds.tolist()
    else:
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
            raise TypeError(f"seeds must be a sequence of ints or a 1-D integer tensor, got "
                            f"{type(seeds).__name__}")
        out = list(seeds)
        if not all(_is_int(s) and not isinstance(s, bool) for s in out):
            raise TypeError("seeds must be ints (one per example)")
        out = [operator.index(s) for s in out]
    if not out:
        raise ValueError("seeds must not be empty")
    if not all(-(1 << 63) <= s < (1 << 64) for s in out):
        raise ValueError("every seed must fit in 64 bits")
    if batch is not None and len(out) != batch:
        raise ValueError(f"seeds must hold one int per example: {batch} for a batch of {batch}, "
                         f"got {len(out)}")
    return out


class GeneratorNoise:
    """Noise from a ``torch.Generator`` (``None``: the global one): ``torch.randn``'s numbers."""

    per_example = False

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise of ``x``'s shape, dtype and device."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def seeds(self, n: int, device=None) -> list[int]:
        """``n`` fresh non-negative int seeds drawn from the generator (e.g. for Brownian trees)."""
        if device is None:
            device = self.generator.device if self.generator is not None else "cpu"
        return torch.randint(0, 2 ** 62, (n,), generator=self.generator, device=device).tolist()

    def __repr__(self) -> str:
        return f"GeneratorNoise({self.generator!r})"


class SeededNoise:
    """Per-example Gaussian noise streams, vectorized over the batch (a counter-based RNG).

    Every call of :meth:`randn_like` advances the run's draw counter ``k``; the value for
    example ``j`` at coordinate ``c`` (its flat index within the example) is
    ``sqrt(-2 log u1) cos(2 pi u2)`` with ``u1, u2`` from splitmix64 hashes of
    ``(seeds[j], k, c)``. Integer hashing and IEEE float arithmetic are elementwise, so an
    example's draws are bitwise the same in any batch. Two runs built from the same seeds
    draw the same sequence.

    Args:
        seeds: one int per example (a sequence or a 1-D integer tensor).
        device: where the draws are made (default: the device of ``x`` at each draw).
    """

    per_example = True

    def __init__(self, seeds, device=None):
        self.seed_list = check_seeds(seeds)
        self.device = torch.device(device) if device is not None else None
        self.counter = 0
        self._bases: dict = {}

    @classmethod
    def _from_bases(cls, bases: Tensor) -> "SeededNoise":
        out = cls.__new__(cls)
        out.seed_list, out.device, out.counter = None, bases.device, 0
        out._bases = {bases.device: bases}
        return out

    def __len__(self) -> int:
        return len(self.seed_list) if self.seed_list is not None else next(iter(self._bases.values())).shape[0]

    def _base(self, device) -> Tensor:
        """``splitmix64(seed_j)`` as a ``(B, 1)`` int64 tensor on ``device``."""
        device = torch.device(device)
        base = self._bases.get(device)
        if base is None:
            src = next(iter(self._bases.values()), None)
            if src is not None:
                base = src.to(device)
            else:
                seed = torch.tensor([_signed(s) for s in self.seed_list], dtype=torch.int64, device=device)
                base = splitmix64(seed)[:, None]
            self._bases[device] = base
        return base

    def normal(self, counter: int, d: int, device=None) -> Tensor:
        """Draw number ``counter`` of every stream: float64 standard normals of shape ``(B, d)``.

        A pure function of the seeds, ``counter`` and the coordinate (no state is advanced).
        """
        device = device if device is not None else (self.device or "cpu")
        key = (self._base(device) ^ splitmix64_int(counter)) \
            + 2 * torch.arange(d, dtype=torch.int64, device=device)[None, :]
        bits = splitmix64(key), splitmix64(key + 1)
        u1, u2 = ((_srl(b, 11).to(torch.float64) + 0.5) * 2.0 ** -53 for b in bits)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise of ``x``'s shape, dtype and device; advances the draw counter."""
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randn(self, shape, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Standard normals of ``shape`` (batch first, ``shape[0]`` = number of seeds)."""
        shape = torch.Size(shape)
        if not shape or shape[0] != len(self):
            raise ValueError(f"seeds: {len(self)} seeds for a batch of shape {tuple(shape)}")
        device = device if device is not None else (self.device or "cpu")
        z = self.normal(self.counter, math.prod(shape[1:]), device)
        self.counter += 1
        return z.to(dtype or torch.get_default_dtype()).reshape(shape)

    def spawn(self) -> "SeededNoise":
        """An independent family of streams (one per example), e.g. for Brownian trees.

        Takes one draw counter; the child's base keys are hashes of the parent's at it.
        """
        device = self.device or "cpu"
        key = splitmix64(self._base(device) ^ splitmix64_int(self.counter) ^ _signed(0x5DEECE66D))
        self.counter += 1
        return SeededNoise._from_bases(key)

    def int_seeds(self) -> list[int]:
        """One fresh int seed per example (int64 range), from a stream made by :meth:`spawn`."""
        return self.spawn()._base(self.device or "cpu").flatten().tolist()

    def seeds(self, n: int, device=None) -> "SeededNoise":
        """The per-example streams for a Brownian tree: :meth:`spawn`."""
        if n != len(self):
            raise ValueError(f"seeds: {len(self)} seeds for a batch of {n}")
        return self.spawn()

    def __repr__(self) -> str:
        return f"SeededNoise({len(self)} streams, counter={self.counter})"


def as_noise(source, device=None):
    """A noise source (``.randn_like(x)``) from a noise source, a generator, a seed or ``None``."""
    if hasattr(source, "randn_like"):
        return source
    return GeneratorNoise(as_generator(source, device))
