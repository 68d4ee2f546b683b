"""Shared pieces of the interop tests: a tiny random UNet2DModel and the oracle as a fake unet."""
from __future__ import annotations

import torch
from torch import nn

import sdediff as sd


def tiny_unet(seed: int = 0, out_channels: int = 1):
    """A random-initialized 8x8, 1-channel ``diffusers.UNet2DModel`` in float64 (built offline)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet.double().eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class _Output:
    def __init__(self, sample):
        self.sample = sample


class OracleUNet(nn.Module):
    """The oracle's exact noise prediction ``eps = -s score`` under ``sde``, called like a diffusers unet.

    ``timesteps`` are diffusers' ``k = N t - 1``; the time is ``t = (k + 1) / N``.
    """

    def __init__(self, oracle: sd.GaussianMixture, sde, shape=None):
        super().__init__()
        self.oracle, self.sde, self.shape = oracle, sde, shape
        self.calls = 0

    def forward(self, x, timesteps):
        self.calls += 1
        t = (torch.as_tensor(timesteps, dtype=torch.float64) + 1) * self.sde.T / self.sde.num_steps
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        s = self.sde.std(t).to(x.dtype)
        flat = x.reshape(x.shape[0], -1)
        score = self.oracle.score_fn(self.sde)(flat, t.to(x.dtype)).reshape(x.shape)
        return _Output(-s.reshape(-1, *([1] * (x.dim() - 1))) * score)
