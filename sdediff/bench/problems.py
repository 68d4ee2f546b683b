"""The benchmark problems (exact Gaussian mixtures), their metrics and noise floors.

* ``ring2d``: 8 equal modes of std 0.5 on a circle of radius 4.
* ``mix64``: 10 components in 64-D, means ``N(0, I)``, stds ``U(0.2, 0.5)``, weights
  ``U(0.5, 1.5)`` (normalized), all drawn from ``torch.Generator().manual_seed(0)``.

Metrics of a sample set: per-mode statistics (:func:`sdediff.mode_statistics`: ``weights_tv``,
``mean_error``, ``spread_err = |spread_ratio - 1|``, ``frechet``), the sliced W2 to fresh exact
samples, and ``logp_gap = |mean log p0(samples) - E log p0|``. The noise floor of each is the
same statistic for exact samples of the same size.
"""
from __future__ import annotations

import torch

import sdediff as sd

__all__ = ["EPS", "METRICS", "ring2d", "mix64", "metrics", "noise_floor", "reference", "prior"]

EPS = 1e-3  # the final sampling time
METRICS = ("weights_tv", "mean_error", "spread_err", "frechet", "sw2", "logp_gap")


def ring2d() -> sd.GaussianMixture:
    """8 equal modes of std 0.5 on the circle of radius 4."""
    return sd.GaussianMixture(*sd.ring_params(8, radius=4.0, std=0.5))


def mix64(seed: int = 0) -> sd.GaussianMixture:
    """10 components in 64-D with random means, stds and weights (``seed``)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(10, 64, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.3 * torch.rand(10, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(10, generator=g, dtype=torch.float64)
    return sd.GaussianMixture(means, stds, weights)


def metrics(x: torch.Tensor, gm: sd.GaussianMixture, fresh: torch.Tensor, logp_ref: float) -> dict:
    """The six metrics of the sample set ``x`` (NaN for all if ``x`` is not finite)."""
    if not bool(torch.isfinite(x).all()):
        return {m: float("nan") for m in METRICS}
    ms = sd.mode_statistics(x, gm.means, gm.stds, gm.weights)
    return {"weights_tv": ms["weights_tv"], "mean_error": ms["mean_error"],
            "spread_err": abs(ms["spread_ratio"] - 1.0), "frechet": ms["frechet"],
            "sw2": float(sd.sliced_wasserstein(x, fresh, num_projections=256, generator=17)),
            "logp_gap": abs(float(gm.log_prob(x).mean()) - logp_ref)}


def noise_floor(gm: sd.GaussianMixture, n: int, fresh: torch.Tensor, logp_ref: float, seed: int = 123,
                draws: int = 3) -> dict:
    """Each metric for exact sample sets of size ``n``, averaged over ``draws``."""
    g = torch.Generator().manual_seed(seed)
    rows = [metrics(gm.sample(n, generator=g, dtype=torch.float64), gm, fresh, logp_ref) for _ in range(draws)]
    return {m: sum(r[m] for r in rows) / draws for m in METRICS}


def reference(gm: sd.GaussianMixture, n: int) -> tuple[torch.Tensor, float, dict]:
    """Fresh exact samples, ``E log p0`` (200,000 draws) and the noise floors of problem ``gm``."""
    g = torch.Generator().manual_seed(2024)
    fresh = gm.sample(n, generator=g, dtype=torch.float64)
    logp_ref = float(gm.log_prob(gm.sample(200_000, generator=g, dtype=torch.float64)).mean())
    return fresh, logp_ref, noise_floor(gm, n, fresh, logp_ref)


def prior(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    """The standard normal prior draw and its generator, positioned after it (for the noise).

    With seed 0 this is the prior draw every sampler of :func:`sdediff.bench.steps.run_problem` starts from.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), g
