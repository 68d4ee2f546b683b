"""Distances between sample sets ``x`` of shape ``(n, d)`` and ``y`` of shape ``(m, d)``, and mode statistics.

All functions run on the inputs' device, compute in float64 (float32 on backends without it)
and are reproducible through an optional ``generator`` where randomness is involved.
Distances are returned as 0-d tensors (``float(result)`` for a number); :func:`mode_statistics`
returns a JSON-ready dict of Python numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

__all__ = [
    "sliced_wasserstein",
    "mmd",
    "gaussian_frechet",
    "frechet_to_gaussian",
    "frechet_distance",
    "mode_statistics",
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _as_samples(name: str, x: Any, min_n: int = 1) -> torch.Tensor:
    """Validate a sample set and return it as a 2-D tensor in the wide dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must have at least {min_n} samples, got {x.shape[0]}")
    return x.to(_wide(x.device))


def _pair(x: Any, y: Any, min_n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_samples("x", x, min_n)
    y = _as_samples("y", y, min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension d, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(device=x.device, dtype=x.dtype)


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and unbiased covariance (denominator ``max(n - 1, 1)``) of ``(n, d)`` samples."""
    mean = x.mean(dim=0)
    xc = x - mean
    return mean, xc.T @ xc / max(x.shape[0] - 1, 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a (numerically) positive semi-definite matrix by eigen-decomposition."""
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


# --------------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------------


def _wasserstein_1d_pow(xs: torch.Tensor, ys: torch.Tensor, p: float) -> torch.Tensor:
    """``W_p^p`` between empirical measures, given row-wise sorted samples ``(L, n)`` and ``(L, m)``.

    Exact for ``n != m``: both quantile functions are step functions, constant between the merged
    breakpoints ``{i/n} U {j/m}``, so ``int_0^1 |F^-1(u) - G^-1(u)|^p du`` is a finite sum.
    """
    n, m = xs.shape[1], ys.shape[1]
    if n == m:
        return (xs - ys).abs().pow(p).mean(dim=1)
    opts = {"dtype": xs.dtype, "device": xs.device}
    breaks = torch.sort(torch.cat([torch.arange(1, n + 1, **opts) / n, torch.arange(1, m + 1, **opts) / m]))[0]
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1))
    mids = breaks - 0.5 * widths  # one quantile level inside each interval
    ix = torch.clamp((mids * n).floor().long(), max=n - 1)
    iy = torch.clamp((mids * m).floor().long(), max=m - 1)
    return ((xs[:, ix] - ys[:, iy]).abs().pow(p) * widths).sum(dim=1)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 256,
    generator: torch.Generator | int | None = None,
    p: float = 2,
) -> torch.Tensor:
    """Sliced p-Wasserstein distance ``SW_p = (E_theta[W_p^p(theta.x, theta.y)])^(1/p)``.

    ``theta`` is uniform on the unit sphere (``num_projections`` Monte-Carlo directions). Each
    1-D distance is computed exactly between the empirical measures from sorted projections;
    when ``n != m`` the two empirical quantile functions are compared on the merged grid of
    quantile levels ``{i/n} U {j/m}`` (exact, no resampling).

    For ``N(0, I)`` against ``N(mu, I)`` in ``d`` dimensions, ``SW_2^2 = E[(theta.mu)^2] = ||mu||^2 / d``.

    Args:
        x: Samples of shape ``(n, d)``.
        y: Samples of shape ``(m, d)``.
        num_projections: Number of random directions.
        generator: ``torch.Generator`` or ``int`` seed for the directions (``None``: global RNG).
        p: Order ``p >= 1``.

    Returns:
        0-d float64 tensor on ``x``'s device.

    Raises:
        ValueError: On mismatched or malformed shapes, ``num_projections < 1`` or ``p < 1``.
    """
    x, y = _pair(x, y)
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a positive integer, got {num_projections!r}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p!r}")
    gen = _as_generator(generator)
    rng_device = gen.device if gen is not None else x.device
    theta = torch.randn(x.shape[1], num_projections, generator=gen, dtype=x.dtype, device=rng_device)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    xs = torch.sort((x @ theta).T.contiguous(), dim=1)[0]  # (L, n): contiguous rows sort fastest
    ys = torch.sort((y @ theta).T.contiguous(), dim=1)[0]
    return _wasserstein_1d_pow(xs, ys, p).mean().pow(1.0 / p)


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------


def _median_bandwidth(z: torch.Tensor) -> float:
    dist = torch.cdist(z, z)
    off_diagonal = dist[~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)]
    med = off_diagonal.median().item() if off_diagonal.numel() else 1.0
    return med if med > 0 else 1.0


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | float | None = None) -> torch.Tensor:
    """Unbiased estimate of the squared maximum mean discrepancy with a sum of RBF kernels.

    ``k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2))`` and
    ``MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    (Gretton et al. 2012, the U-statistic). Unbiased, so it can be slightly negative when the
    distributions agree. Memory is ``O((n + m)^2)``.

    Args:
        x: Samples of shape ``(n, d)``, ``n >= 2``.
        y: Samples of shape ``(m, d)``, ``m >= 2``.
        bandwidths: Kernel bandwidths ``s`` (a number or a sequence). Default: ``h * (0.5, 1, 2)``
            with ``h`` the median pairwise distance of the pooled first 500 samples of each set.

    Returns:
        0-d float64 tensor on ``x``'s device: the estimate of ``MMD^2``.

    Raises:
        ValueError: On malformed shapes or a non-positive bandwidth.
    """
    x, y = _pair(x, y, min_n=2)
    if bandwidths is None:
        h = _median_bandwidth(torch.cat([x[:500], y[:500]]))
        bandwidths = (0.5 * h, h, 2.0 * h)
    elif isinstance(bandwidths, (int, float)):
        bandwidths = (float(bandwidths),)
    bandwidths = tuple(float(s) for s in bandwidths)
    if not bandwidths or any(not s > 0 for s in bandwidths):
        raise ValueError(f"bandwidths must be positive numbers, got {bandwidths!r}")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-sq / (2.0 * s * s)) for s in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return term_x + term_y - 2.0 * kxy.mean()


# --------------------------------------------------------------------------------------------
# Frechet distances between Gaussians
# --------------------------------------------------------------------------------------------


def frechet_distance(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    """Squared Frechet (2-Wasserstein) distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)``.

    ``||mean1 - mean2||^2 + tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2})`` (the quantity
    FID reports). Computed with symmetric eigen-decompositions, eigenvalues clamped at 0, so
    rank-deficient covariances are fine and the result is never complex.

    Args:
        mean1: Mean of shape ``(d,)``.
        cov1: Covariance of shape ``(d, d)``.
        mean2: Mean of shape ``(d,)``.
        cov2: Covariance of shape ``(d, d)``.

    Returns:
        0-d float64 tensor (>= 0) on ``mean1``'s device.

    Raises:
        ValueError: If the shapes do not match.
    """
    if mean1.dim() != 1:
        raise ValueError(f"mean1 must have shape (d,), got {tuple(mean1.shape)}")
    d = mean1.shape[0]
    opts = {"device": mean1.device, "dtype": _wide(mean1.device)}
    mean1, cov1, mean2, cov2 = (torch.as_tensor(v).to(**opts) for v in (mean1, cov1, mean2, cov2))
    for name, v, shape in (("mean1", mean1, (d,)), ("mean2", mean2, (d,)), ("cov1", cov1, (d, d)), ("cov2", cov2, (d, d))):
        if tuple(v.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(v.shape)}")
    s1 = _sqrtm_psd(cov1)
    cross = s1 @ cov2 @ s1
    tr_sqrt_cross = torch.linalg.eigvalsh(0.5 * (cross + cross.T)).clamp_min(0.0).sqrt().sum()
    value = (mean1 - mean2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2.0 * tr_sqrt_cross
    return value.clamp_min(0.0)


def gaussian_frechet(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Frechet distance between Gaussians fitted to two sample sets (FID without the features).

    Means and unbiased covariances are estimated from each set, then :func:`frechet_distance`.
    The estimate is biased upwards by roughly ``tr(cov) / n`` per set for finite samples.

    Args:
        x: Samples of shape ``(n, d)``, ``n >= 2``.
        y: Samples of shape ``(m, d)``, ``m >= 2``.

    Returns:
        0-d float64 tensor on ``x``'s device.

    Raises:
        ValueError: On mismatched or malformed shapes.
    """
    x, y = _pair(x, y, min_n=2)
    return frechet_distance(*_mean_cov(x), *_mean_cov(y))


def frechet_to_gaussian(
    x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor | float
) -> torch.Tensor:
    """Squared Frechet distance between a Gaussian fitted to ``x`` and the exact ``N(mean, cov)``.

    Args:
        x: Samples of shape ``(n, d)``, ``n >= 2``.
        mean: Exact mean, shape ``(d,)``.
        cov: Exact covariance: a ``(d, d)`` matrix, a ``(d,)`` diagonal, or a scalar variance
            (isotropic ``cov * I``).

    Returns:
        0-d float64 tensor on ``x``'s device.

    Raises:
        ValueError: On malformed shapes.
    """
    x = _as_samples("x", x, min_n=2)
    d = x.shape[1]
    mean = torch.as_tensor(mean).to(device=x.device, dtype=x.dtype)
    cov = torch.as_tensor(cov).to(device=x.device, dtype=x.dtype)
    if cov.dim() == 0:
        cov = cov * torch.eye(d, dtype=x.dtype, device=x.device)
    elif cov.dim() == 1:
        if cov.shape[0] != d:
            raise ValueError(f"cov given as a diagonal must have shape ({d},), got {tuple(cov.shape)}")
        cov = torch.diag(cov)
    if tuple(mean.shape) != (d,):
        raise ValueError(f"mean must have shape ({d},) to match x, got {tuple(mean.shape)}")
    return frechet_distance(*_mean_cov(x), mean, cov)


# --------------------------------------------------------------------------------------------
# Mode statistics against an isotropic Gaussian mixture
# --------------------------------------------------------------------------------------------


def mode_statistics(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    weights: torch.Tensor,
) -> dict[str, Any]:
    """How well samples cover the modes of an isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)``.

    Each sample is assigned to its most probable component (posterior argmax:
    ``log w_k - d log s_k - ||x - mu_k||^2 / (2 s_k^2)``). With ``n_k`` samples assigned to mode ``k``,
    empirical frequency ``f_k = n_k / n``, empirical mean ``m_k`` and covariance ``C_k`` (denominator
    ``max(n_k - 1, 1)``, so a single sample has zero spread):

    * ``weights_tv = 1/2 sum_k |f_k - w_k|`` -- missing or over-populated modes.
    * ``mean_error``: average of ``||m_k - mu_k|| / (s_k sqrt(d))``, the RMS per-coordinate offset
      of the mode's centre in units of its std (about ``1 / sqrt(n_k)`` for exact samples).
    * ``spread_ratio``: average of ``sqrt(tr(C_k) / d) / s_k``, the RMS per-coordinate empirical std
      over the true std (about 1 for exact samples, < 1 for collapsed modes). Assigning by argmax
      truncates the tails slightly; with well separated modes the effect is negligible.
    * ``frechet``: average of the squared Frechet distance between ``N(m_k, C_k)`` and
      ``N(mu_k, s_k^2 I)`` (in data units squared).

    The averages are weighted by ``w_k`` renormalized over the non-empty modes; empty modes
    (``n_k = 0``) are excluded from them, counted in ``num_empty`` and penalized by ``weights_tv``.

    Args:
        x: Samples of shape ``(n, d)``, ``n >= 1``.
        means: Component means ``(K, d)``.
        stds: Component standard deviations ``(K,)`` (positive).
        weights: Component weights ``(K,)`` (non-negative, normalized here).

    Returns:
        Dict with floats ``weights_tv``, ``mean_error``, ``spread_ratio``, ``frechet``, int
        ``num_empty``, and per-mode lists ``counts`` and ``frequencies``.

    Raises:
        ValueError: On mismatched shapes or invalid mixture parameters.
    """
    x = _as_samples("x", x)
    n, d = x.shape
    means = torch.as_tensor(means).to(device=x.device, dtype=x.dtype)
    stds = torch.as_tensor(stds).to(device=x.device, dtype=x.dtype)
    weights = torch.as_tensor(weights).to(device=x.device, dtype=x.dtype)
    if means.dim() != 2 or means.shape[1] != d:
        raise ValueError(f"means must have shape (K, {d}) to match x, got {tuple(means.shape)}")
    k = means.shape[0]
    if tuple(stds.shape) != (k,):
        raise ValueError(f"stds must have shape ({k},), got {tuple(stds.shape)}")
    if tuple(weights.shape) != (k,):
        raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
    if not bool((stds > 0).all()):
        raise ValueError("stds must be positive")
    if not bool((weights >= 0).all()) or not weights.sum() > 0:
        raise ValueError("weights must be non-negative with a positive sum")
    weights = weights / weights.sum()

    # Posterior argmax under the mixture (the Gaussian normalizer's common factors cancel).
    sq = torch.cdist(x, means).pow(2)  # (n, K)
    log_post = torch.log(weights) - d * torch.log(stds) - sq / (2.0 * stds**2)
    assign = log_post.argmax(dim=1)
    counts = torch.bincount(assign, minlength=k)
    freqs = counts.to(x.dtype) / n
    weights_tv = 0.5 * (freqs - weights).abs().sum()

    mean_err = torch.zeros(k, dtype=x.dtype, device=x.device)
    spread = torch.zeros_like(mean_err)
    frechet = torch.zeros_like(mean_err)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    for j in torch.nonzero(counts).flatten().tolist():
        xj = x[assign == j]
        m_j, c_j = _mean_cov(xj)
        s_j = stds[j]
        mean_err[j] = (m_j - means[j]).norm() / (s_j * math.sqrt(d))
        spread[j] = torch.sqrt(torch.trace(c_j) / d) / s_j
        frechet[j] = frechet_distance(m_j, c_j, means[j], s_j**2 * eye)

    occupied = counts > 0
    w_occ = torch.where(occupied, weights, torch.zeros_like(weights))
    w_occ = w_occ / w_occ.sum() if w_occ.sum() > 0 else occupied.to(x.dtype) / occupied.sum()
    return {
        "weights_tv": float(weights_tv),
        "mean_error": float((w_occ * mean_err).sum()),
        "spread_ratio": float((w_occ * spread).sum()),
        "frechet": float((w_occ * frechet).sum()),
        "num_empty": int((~occupied).sum()),
        "counts": [int(c) for c in counts.tolist()],
        "frequencies": [float(f) for f in freqs.tolist()],
    }
