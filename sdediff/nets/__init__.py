"""Time-conditioned networks ``net(x, t) -> tensor like x`` and a name-based builder for checkpoints.

With ``num_classes=K`` they are also class-conditioned: ``net(x, t, y)`` with integer labels ``y``
of shape ``(B,)`` in ``0..K``, where ``K`` is the null class that ``y=None`` stands for.

Every network has a ``net_name`` class attribute and a JSON-serializable ``config`` dict, so
``build_net(net.net_name, **net.config)`` rebuilds the same architecture (load the weights with
``load_state_dict``; the Fourier frequencies are a buffer and travel with them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sdediff.nets.embeddings import (
    TIME_EMBEDDINGS,
    ClassEmbedding,
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    make_time_embedding,
)
from sdediff.nets.mlp import ResidualMLP
from sdediff.nets.unet import UNet

__all__ = [
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "ClassEmbedding",
    "TIME_EMBEDDINGS",
    "make_time_embedding",
    "ResidualMLP",
    "UNet",
    "NETS",
    "build_net",
]

#: Registry of network classes by name, as accepted by :func:`build_net`.
NETS: dict[str, type[nn.Module]] = {"mlp": ResidualMLP, "unet": UNet}


def build_net(name: str, **config: Any) -> nn.Module:
    """Build a network from its registry name and constructor arguments.

    Args:
        name: ``"mlp"`` (:class:`ResidualMLP`) or ``"unet"`` (:class:`UNet`).
        **config: Constructor keyword arguments, typically a saved ``net.config``; add
            ``num_classes=K`` for a class-conditional network (omitted or ``None``: unconditional).

    Returns:
        A freshly initialized network.

    Raises:
        ValueError: If ``name`` is unknown.
        TypeError: If ``config`` has arguments the network does not accept.

    Example:
        >>> net = build_net("mlp", dim=2, hidden=64)
        >>> clone = build_net(net.net_name, **net.config)
        >>> cond = build_net("mlp", dim=2, hidden=64, num_classes=8)  # cond(x, t, y)
    """
    if name not in NETS:
        raise ValueError(f"name must be one of {tuple(NETS)}, got {name!r}")
    return NETS[name](**config)
