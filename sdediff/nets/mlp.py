"""Time- (and optionally class-) conditioned residual MLP for flat data ``x`` of shape ``(B, dim)``
(2-D toys, flattened digits)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdediff.nets.embeddings import (
    TIME_EMBEDDINGS,
    ClassEmbedding,
    _time_for_batch,
    check_class_labels,
    check_num_classes,
    make_time_embedding,
)

__all__ = ["ResidualMLP"]


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _ResidualBlock(nn.Module):
    """``h + Linear(drop(act(Linear(act(FiLM(norm(h), temb))))))``.

    The time embedding modulates the normalized features: ``n * (1 + gamma) + beta`` (FiLM).
    """

    def __init__(self, hidden: int, temb_dim: int, dropout: float, layer_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if layer_norm else nn.Identity()
        self.film = nn.Linear(temb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(self.act(temb)).chunk(2, dim=-1)
        n = self.norm(h) * (1.0 + gamma) + beta  # FiLM conditioning on time
        n = self.fc1(self.act(n))
        n = self.fc2(self.dropout(self.act(n)))
        return h + n


class ResidualMLP(nn.Module):
    """Residual MLP ``(x, t[, y]) -> output like x`` for ``x`` of shape ``(B, dim)``.

    Layout: ``x -> Linear(dim, hidden) -> depth x residual block -> norm -> SiLU -> Linear(hidden, dim)``.
    The time ``t`` is embedded (:data:`~sdediff.nets.embeddings.TIME_EMBEDDINGS`), passed through a
    two-layer MLP and fed to every residual block as a FiLM scale and shift. The output layer is
    zero-initialized, so a fresh network returns exactly 0 (a neutral eps / score at step 0).

    With ``num_classes=K`` the network also takes labels ``y`` (``(B,)`` integers in ``0..K``, ``K``
    the null class, used for ``y=None``): a zero-initialized :class:`~sdediff.nets.embeddings.ClassEmbedding`
    is added to the time embedding, so one network gives both the conditional and the
    unconditional score.

    Args:
        dim: Data dimension ``d``.
        hidden: Width of the residual stream.
        depth: Number of residual blocks.
        time_embedding: ``"fourier"`` or ``"sinusoidal"``.
        emb_dim: Dimension of the raw time embedding (even).
        dropout: Dropout probability inside the residual blocks.
        layer_norm: Whether to apply LayerNorm at the start of each block and before the output.
        fourier_scale: Frequency scale of the Fourier embedding.
        seed: Seed of the Fourier embedding's fixed frequencies.
        num_classes: Number of classes for class conditioning; ``None`` (default): unconditional.
        out_dim: Output dimension; defaults to ``dim`` (set it to use the trunk for other outputs,
            e.g. class logits).

    Attributes:
        config: The constructor arguments as a JSON-serializable dict;
            ``build_net("mlp", **net.config)`` rebuilds the architecture. ``num_classes`` and
            ``out_dim`` appear only when set, so unconditional configs are unchanged.

    Raises:
        ValueError: On an invalid argument (the message names it).
    """

    net_name = "mlp"

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_embedding: str = "fourier",
        emb_dim: int = 128,
        dropout: float = 0.0,
        layer_norm: bool = True,
        fourier_scale: float = 16.0,
        seed: int = 0,
        num_classes: int | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("hidden", hidden)
        _check_positive_int("depth", depth, minimum=0)
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {time_embedding!r}")
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim must be an even integer >= 2, got {emb_dim!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        check_num_classes(num_classes)
        if out_dim is not None:
            _check_positive_int("out_dim", out_dim)
        self.config: dict[str, Any] = {
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "time_embedding": time_embedding,
            "emb_dim": emb_dim,
            "dropout": float(dropout),
            "layer_norm": bool(layer_norm),
            "fourier_scale": float(fourier_scale),
            "seed": int(seed),
        }
        if num_classes is not None:
            self.config["num_classes"] = num_classes
        if out_dim is not None:
            self.config["out_dim"] = out_dim
        self.dim = dim
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(
            make_time_embedding(time_embedding, emb_dim, fourier_scale=fourier_scale, seed=seed),
            nn.Linear(emb_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden, dropout, layer_norm) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden) if layer_norm else nn.Identity()
        self.act = nn.SiLU()
        self.output = nn.Linear(hidden, dim if out_dim is None else out_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        # Created last, so the other parameters match an unconditional net built from the same RNG state.
        self.class_embed = ClassEmbedding(num_classes, hidden) if num_classes is not None else None

    @property
    def null_label(self) -> int | None:
        """The null-class index (``num_classes``) that means "no label"; ``None`` if unconditional."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the network.

        Args:
            x: Tensor of shape ``(B, dim)``.
            t: Times of shape ``(B,)`` (or a scalar, broadcast over the batch).
            y: Optional integer labels ``(B,)`` in ``[0, num_classes]`` (conditional nets only);
                ``None`` or the null index ``num_classes`` asks for the unconditional output.

        Returns:
            Tensor of shape ``(B, dim)`` (``(B, out_dim)`` if ``out_dim`` was set).

        Raises:
            ValueError: If ``x`` or ``t`` has the wrong shape, or ``y`` is out of range, of the wrong
                shape, or given to an unconditional net.
            TypeError: If ``y`` is not an integer tensor.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {got}")
        temb = self.time_embed(_time_for_batch(t, x))
        labels = check_class_labels(y, self.num_classes, x.shape[0], x.device)
        if labels is not None:
            temb = temb + self.class_embed(labels).to(temb.dtype)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(self.act(self.out_norm(h)))
