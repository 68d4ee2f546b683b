"""A small time- (and optionally class-) conditioned U-Net for images ``(B, C, H, W)``
from 8x8 (scikit-learn digits) to 32x32.

The layout follows the DDPM U-Net (Ho et al. 2020), scaled down:

* ``conv_in`` (3x3) to ``base_channels``;
* contracting path: per resolution level, ``num_res_blocks`` residual blocks (GroupNorm, SiLU,
  3x3 conv, time embedding added per channel), optional self-attention, then a strided-conv
  downsample (except at the lowest level);
* middle: residual block, self-attention, residual block;
* expanding path: per level, ``num_res_blocks + 1`` residual blocks, each consuming a skip
  connection by channel concatenation, optional self-attention, nearest upsample + 3x3 conv;
* GroupNorm, SiLU, zero-initialized 3x3 conv to the output channels.

With ``num_classes`` set, a zero-initialized class embedding (``num_classes`` classes plus a null
class) is added to the time embedding, as in Dhariwal & Nichol 2021 (ADM).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sdediff.nets.embeddings import (
    TIME_EMBEDDINGS,
    ClassEmbedding,
    _time_for_batch,
    check_class_labels,
    check_num_classes,
    make_time_embedding,
)

__all__ = ["UNet"]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _SelfAttention(nn.Module):
    """Single-head self-attention over the spatial positions, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(dim=1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.proj(out)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> (+ time) -> GroupNorm -> SiLU -> dropout -> conv, plus a skip;
    optionally followed by self-attention."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float, attention: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = _SelfAttention(out_ch, groups) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # inject time per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attn(self.skip(x) + h)


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Time-conditioned U-Net ``(x, t[, y]) -> output like x`` for square images.

    Args:
        in_channels: Image channels ``C`` (1 for digits, 3 for RGB).
        base_channels: Channels at the highest resolution; level ``i`` has
            ``base_channels * channel_mults[i]``. Every such count must be divisible by ``groups``.
        channel_mults: Channel multipliers per resolution level; the image is halved between
            levels, so ``image_size`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: Residual blocks per level on the contracting path (``+1`` on the expanding one).
        attention_resolutions: Spatial sizes (e.g. ``(4,)``) at which self-attention is applied;
            the middle block always has attention unless ``middle_attention=False``.
        groups: GroupNorm groups.
        dropout: Dropout probability inside the residual blocks.
        image_size: Height and width ``H = W`` of the input.
        time_embedding: ``"fourier"`` or ``"sinusoidal"``.
        emb_dim: Dimension of the raw time embedding (even); defaults to ``base_channels``
            (rounded up to even).
        fourier_scale: Frequency scale of the Fourier embedding.
        seed: Seed of the Fourier embedding's fixed frequencies.
        out_channels: Output channels; defaults to ``in_channels``.
        middle_attention: Whether the middle block has self-attention.
        num_classes: Number of classes for class conditioning (labels ``0..K-1``, ``K`` the null
            class used for ``y=None``); ``None`` (default): unconditional.

    Attributes:
        config: The constructor arguments as a JSON-serializable dict;
            ``build_net("unet", **net.config)`` rebuilds the architecture (``num_classes`` appears
            only when set).

    Raises:
        ValueError: On an invalid argument (the message names it).
    """

    net_name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        groups: int = 8,
        dropout: float = 0.0,
        image_size: int = 8,
        time_embedding: str = "fourier",
        emb_dim: int | None = None,
        fourier_scale: float = 16.0,
        seed: int = 0,
        out_channels: int | None = None,
        middle_attention: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("base_channels", base_channels, 1)
        _check_int("num_res_blocks", num_res_blocks, 1)
        _check_int("groups", groups, 1)
        _check_int("image_size", image_size, 1)
        channel_mults = tuple(channel_mults)
        if not channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got {channel_mults!r}")
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {time_embedding!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        check_num_classes(num_classes)
        factor = 2 ** (len(channel_mults) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size must be divisible by 2**(len(channel_mults) - 1) = {factor}, "
                f"got image_size={image_size} with channel_mults={channel_mults}"
            )
        bad = [base_channels * m for m in channel_mults if (base_channels * m) % groups]
        if bad:
            raise ValueError(
                f"groups={groups} must divide every level's channel count base_channels * mult; "
                f"it does not divide {bad}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        _check_int("out_channels", out_channels, 1)
        if emb_dim is None:
            emb_dim = base_channels + base_channels % 2  # embeddings need an even dimension
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim must be an even integer >= 2, got {emb_dim!r}")
        temb_dim = 4 * base_channels

        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions),
            "groups": groups,
            "dropout": float(dropout),
            "image_size": image_size,
            "time_embedding": time_embedding,
            "emb_dim": emb_dim,
            "fourier_scale": float(fourier_scale),
            "seed": int(seed),
            "out_channels": out_channels,
            "middle_attention": bool(middle_attention),
        }
        if num_classes is not None:
            self.config["num_classes"] = num_classes
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size

        self.time_embed = nn.Sequential(
            make_time_embedding(time_embedding, emb_dim, fourier_scale=fourier_scale, seed=seed),
            nn.Linear(emb_dim, temb_dim),
            nn.SiLU(),
            nn.Linear(temb_dim, temb_dim),
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Contracting path; remember the channel count of every skip connection.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                self.down.append(_ResBlock(ch, out, temb_dim, groups, dropout, res in attention_resolutions))
                ch = out
                skip_channels.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(_Downsample(ch))
                res //= 2
                skip_channels.append(ch)

        self.middle = nn.ModuleList(
            [
                _ResBlock(ch, ch, temb_dim, groups, dropout, attention=middle_attention),
                _ResBlock(ch, ch, temb_dim, groups, dropout),
            ]
        )

        # Expanding path: each residual block consumes one skip connection.
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * channel_mults[level]
                attention = res in attention_resolutions
                self.up.append(_ResBlock(ch + skip_channels.pop(), out, temb_dim, groups, dropout, attention))
                ch = out
            if level != 0:
                self.up.append(_Upsample(ch))
                res *= 2

        self.out_norm = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # Created last, so the other parameters match an unconditional net built from the same RNG state.
        self.class_embed = ClassEmbedding(num_classes, temb_dim) if num_classes is not None else None

    @property
    def null_label(self) -> int | None:
        """The null-class index (``num_classes``) that means "no label"; ``None`` if unconditional."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the network.

        Args:
            x: Images of shape ``(B, in_channels, image_size, image_size)``.
            t: Times of shape ``(B,)`` (or a scalar, broadcast over the batch).
            y: Optional integer labels ``(B,)`` in ``[0, num_classes]`` (conditional nets only);
                ``None`` or the null index ``num_classes`` asks for the unconditional output.

        Returns:
            Tensor of shape ``(B, out_channels, image_size, image_size)``.

        Raises:
            ValueError: If ``x`` or ``t`` has the wrong shape, or ``y`` is out of range, of the wrong
                shape, or given to an unconditional net.
            TypeError: If ``y`` is not an integer tensor.
        """
        expected = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {got}")
        temb = self.time_embed(_time_for_batch(t, x))
        labels = check_class_labels(y, self.num_classes, x.shape[0], x.device)
        if labels is not None:
            temb = temb + self.class_embed(labels).to(temb.dtype)

        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:  # every residual block and downsample leaves a skip connection
            h = layer(h, temb) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)

        for block in self.middle:
            h = block(h, temb)

        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.out_norm(h)))
