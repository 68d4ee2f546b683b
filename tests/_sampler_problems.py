"""Shared sampler test problems (stable: other sampler tests import these).

* :func:`ring` -- 8 equal-weight isotropic modes on a circle of radius 4, std 0.5 (2-D);
  the modes are 8 std apart along the ring's chords (chord 2 * 4 * sin(pi/8) = 3.06), so
  mode weights and shapes are both visible to sliced-W2.
* :func:`gaussian` -- a 2-D Gaussian target (a one-component mixture), mean (1, -2), std 0.5:
  every marginal is Gaussian in closed form, so mean and covariance errors are exact.
* :func:`sw_noise_floor` -- the two-sample sliced-W2 noise floor for a sample size.
"""
from __future__ import annotations


import torch

import sdediff as sd

try:
    from sdediff.metrics import sliced_wasserstein
except ImportError:  # pragma: no cover - metrics.py not present
    def sliced_wasserstein(x, y, num_projections=256, generator=None):
        """Sliced 2-Wasserstein between equal-size sample sets (Monte-Carlo directions)."""
        gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        theta = torch.randn(x.shape[1], num_projections, generator=gen, dtype=torch.float64)
        theta = theta / theta.norm(dim=0, keepdim=True)
        xs = torch.sort(x.double() @ theta, dim=0)[0]
        ys = torch.sort(y.double() @ theta, dim=0)[0]
        return ((xs - ys) ** 2).mean().sqrt()

RING_RADIUS = 4.0
RING_STD = 0.5
GAUSS_MEAN = (1.0, -2.0)
GAUSS_STD = 0.5
SW_PROJECTIONS = 128


def ring(num_modes: int = 8, radius: float = RING_RADIUS, std: float = RING_STD) -> sd.GaussianMixture:
    """The 2-D ring mixture (8 modes, radius 4, std 0.5)."""
    return sd.GaussianMixture(*sd.ring_params(num_modes, radius, std))


def gaussian() -> sd.GaussianMixture:
    """The 2-D Gaussian target N((1, -2), 0.25 I) as a one-component mixture."""
    return sd.GaussianMixture(torch.tensor([GAUSS_MEAN], dtype=torch.float64), GAUSS_STD)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Sliced-W2 with fixed projection directions (seeded) so comparisons share them."""
    return float(sliced_wasserstein(x.double(), y.double(), num_projections=SW_PROJECTIONS,
                                    generator=torch.Generator().manual_seed(seed)))


def sw_noise_floor(target: sd.GaussianMixture, n: int, repeats: int = 8, seed: int = 10_000) -> float:
    """Mean sliced-W2 between two independent true sample sets of size ``n`` (``repeats`` seeds)."""
    total = 0.0
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + r)
        total += sliced_w2(target.sample(n, g, torch.float64), target.sample(n, g, torch.float64), seed=r)
    return total / repeats


def gaussian_marginal(target: sd.GaussianMixture, sde, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean ``(d,)`` and covariance ``(d, d)`` of a one-component target noised to time ``t``."""
    noised = target.noised(t, sde)
    d = target.dim
    return noised.means[0], noised.stds[0] ** 2 * torch.eye(d, dtype=torch.float64)
