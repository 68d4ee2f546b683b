"""Time (noise-level) embeddings: map a batch of scalars ``t`` of shape ``(B,)`` to ``(B, dim)``.

Two standard choices:

* :class:`GaussianFourierEmbedding` -- random Fourier features
  ``[sin(2 pi W t), cos(2 pi W t)]`` with fixed frequencies ``W ~ N(0, scale^2)``
  (Tancik et al. 2020; used for continuous time by Song et al. 2021).
* :class:`SinusoidalEmbedding` -- the deterministic transformer / DDPM embedding
  ``[cos(w_i t'), sin(w_i t')]`` with ``w_i = max_period^(-i / half)`` and ``t' = time_scale * t``.

Both accept continuous time in ``[0, T]`` or any other scalar conditioning (e.g. ``log std``),
and follow the device and floating dtype of ``t``.

Class conditioning: :class:`ClassEmbedding` maps integer labels ``y`` of shape ``(B,)`` to
``(B, dim)``, with ``num_classes`` classes plus a *null class* (index ``num_classes``) that stands
for "no label" (the unconditional score); the nets add it to their time embedding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "ClassEmbedding",
    "TIME_EMBEDDINGS",
    "make_time_embedding",
    "check_class_labels",
]

#: Names accepted by :func:`make_time_embedding` (and by the ``time_embedding`` argument of the nets).
TIME_EMBEDDINGS: tuple[str, ...] = ("fourier", "sinusoidal")


def _check_dim(dim: int) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")


def _prepare_t(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a floating tensor of shape ``(B,)`` (a 0-d tensor becomes ``(1,)``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar: ``[sin(2 pi W t), cos(2 pi W t)]``.

    The frequencies ``W`` (``dim // 2`` of them) are drawn once from ``N(0, scale^2)`` and stored
    as a buffer: they are saved in the ``state_dict`` but never trained.

    Args:
        dim: Output dimension (even).
        scale: Standard deviation of the frequencies. 16 suits ``t`` in ``[0, 1]``; use a smaller
            value (e.g. 1) for inputs with a wider range such as ``log std``.
        seed: Seed of the frequency draw, used when ``generator`` is ``None``. Keeps the
            embedding reproducible from its ``config`` alone.
        generator: Optional ``torch.Generator`` to draw the frequencies from (overrides ``seed``).

    Raises:
        ValueError: If ``dim`` is not an even integer >= 2 or ``scale`` is not positive.
    """

    def __init__(
        self,
        dim: int,
        scale: float = 16.0,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dim(dim)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(dim // 2, generator=generator, device=generator.device) * scale
        self.dim = dim
        self.scale = float(scale)
        self.register_buffer("weight", weight.to(torch.get_default_dtype()).cpu())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed ``t``.

        Args:
            t: Tensor of shape ``(B,)`` (a 0-d tensor is treated as ``B = 1``).

        Returns:
            Tensor of shape ``(B, dim)`` with the dtype and device of ``t``
            (integer ``t`` gives the default floating dtype).
        """
        t = _prepare_t(t)
        w = self.weight.to(device=t.device, dtype=t.dtype)
        angles = 2.0 * math.pi * t[:, None] * w[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class SinusoidalEmbedding(nn.Module):
    """Deterministic sinusoidal embedding ``[cos(w_i t'), sin(w_i t')]``, ``t' = time_scale * t``.

    Frequencies are ``w_i = max_period ** (-i / half)`` for ``i = 0..half-1``, ``half = dim // 2``
    (Vaswani et al. 2017; Ho et al. 2020). With ``time_scale = 1000`` continuous time in ``[0, 1]``
    covers the same phases as DDPM's integer step index.

    Args:
        dim: Output dimension (even).
        max_period: Longest period of the frequencies.
        time_scale: Multiplier applied to ``t`` before embedding.

    Raises:
        ValueError: If ``dim`` is not an even integer >= 2, or ``max_period``/``time_scale`` is not positive.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1000.0) -> None:
        super().__init__()
        _check_dim(dim)
        if not max_period > 0:
            raise ValueError(f"max_period must be positive, got {max_period!r}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self.dim = dim
        self.max_period = float(max_period)
        self.time_scale = float(time_scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed ``t``.

        Args:
            t: Tensor of shape ``(B,)`` (a 0-d tensor is treated as ``B = 1``).

        Returns:
            Tensor of shape ``(B, dim)`` with the dtype and device of ``t``
            (integer ``t`` gives the default floating dtype).
        """
        t = _prepare_t(t)
        half = self.dim // 2
        exponents = torch.arange(half, device=t.device, dtype=t.dtype) / half
        freqs = torch.exp(-math.log(self.max_period) * exponents)
        angles = (self.time_scale * t)[:, None] * freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"


def make_time_embedding(
    name: str,
    dim: int,
    *,
    fourier_scale: float = 16.0,
    seed: int = 0,
) -> nn.Module:
    """Build a time embedding by name.

    Args:
        name: ``"fourier"`` (:class:`GaussianFourierEmbedding`) or ``"sinusoidal"``
            (:class:`SinusoidalEmbedding`).
        dim: Output dimension (even).
        fourier_scale: ``scale`` of the Fourier embedding (ignored for ``"sinusoidal"``).
        seed: Seed of the Fourier frequencies (ignored for ``"sinusoidal"``).

    Returns:
        The embedding module.

    Raises:
        ValueError: If ``name`` is not one of :data:`TIME_EMBEDDINGS`.
    """
    if name == "fourier":
        return GaussianFourierEmbedding(dim, scale=fourier_scale, seed=seed)
    if name == "sinusoidal":
        return SinusoidalEmbedding(dim)
    raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {name!r}")


def _time_for_batch(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as shape ``(B,)`` on ``x``'s device and dtype, broadcasting a scalar.

    Accepts a Python number, a 0-d tensor, a ``(1,)`` tensor or a ``(B,)`` tensor.

    Raises:
        ValueError: If ``t`` cannot be broadcast to ``(B,)`` with ``B = x.shape[0]``.
    """
    batch = x.shape[0]
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t))
    t = t.to(device=x.device, dtype=x.dtype)
    if t.dim() == 0 or t.shape == (1,):
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape (B,) = ({batch},) to match x, or be a scalar; got {tuple(t.shape)}")
    return t


def check_class_labels(y: Any, num_classes: int | None, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Validate class labels for a net with ``num_classes`` classes and return them as ``(B,)`` int64.

    ``y = None`` becomes the null class ``num_classes`` for every example.

    Args:
        y: ``None`` or an integer tensor of shape ``(B,)`` with values in ``[0, num_classes]``
            (``num_classes`` itself is the null class, i.e. "unconditional" for that example).
        num_classes: The number of classes of the net; ``None`` for an unconditional net.
        batch: The batch size ``B``.
        device: Device of the result (default: ``y``'s).

    Returns:
        The labels, ``(B,)`` ``torch.long``; ``None`` if the net is unconditional and ``y`` is ``None``.

    Raises:
        ValueError: If ``y`` is given to an unconditional net, has a shape other than ``(B,)``, or
            has a value outside ``[0, num_classes]``.
        TypeError: If ``y`` is not an integer tensor.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError(
                "y was given, but this network is unconditional (num_classes=None); build it with "
                "num_classes=K to condition on labels, or pass y=None"
            )
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be an integer torch.Tensor of shape (B,) or None, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must be an integer tensor of class labels, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape (B,) = ({batch},) to match x, got {tuple(y.shape)}")
    if batch and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"y must hold labels in [0, {num_classes}] ({num_classes} classes, index {num_classes} is the null "
            f"class), got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y.to(device=device if device is not None else y.device, dtype=torch.long)


class ClassEmbedding(nn.Module):
    """Learned embedding of ``num_classes`` class labels plus the null class (index ``num_classes``).

    Zero-initialized: a fresh class-conditional net ignores its label and behaves exactly like the
    unconditional net it grows from; training moves each class away from zero.

    Args:
        num_classes: Number of classes ``K`` (labels ``0..K-1``; ``K`` is the null class).
        dim: Embedding dimension.

    Raises:
        ValueError: If ``num_classes`` or ``dim`` is not a positive integer.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes is None:
            raise ValueError("num_classes must be a positive integer, got None")
        check_num_classes(num_classes)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Embed labels ``y`` of shape ``(B,)`` (already validated) to ``(B, dim)``."""
        return self.embedding(y)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+1 null), dim={self.embedding.embedding_dim}"


def check_num_classes(num_classes: Any) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is ``None`` or a positive integer."""
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
