"""The built-in SDEs of Song et al. (2021) with their closed-form marginals: VP, sub-VP and VE.

| SDE | f(t) | g(t)^2 | scale a(t) | std s(t) | prior |
|---|---|---|---|---|---|
| VP | -b(t)/2 | b(t) | exp(-B(t)/2) | sqrt(1 - a^2) | N(0, I) |
| sub-VP | -b(t)/2 | b(t) (1 - exp(-2 B(t))) | exp(-B(t)/2) | 1 - a^2 | N(0, I) |
| VE | 0 | d sigma^2/dt | 1 | sqrt(sigma(t)^2 - sigma_min^2) | N(0, sigma_max^2 I) |

with ``b(t) = b_min + (t/T)(b_max - b_min)`` and ``B(t) = int_0^t b``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import _check_finite_positive
from .linear import LinearSDE

__all__ = ["VPSDE", "SubVPSDE", "VESDE"]


class _BetaSchedule(LinearSDE):
    """Shared pieces of VP and sub-VP: ``b(t) = b_min + (t / T) (b_max - b_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T=T)
        self.beta_min = _check_finite_positive("beta_min", beta_min)
        self.beta_max = _check_finite_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"need beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")

    def beta(self, t: Tensor) -> Tensor:
        """``b(t) = b_min + (t / T) (b_max - b_min)``."""
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t b = b_min t + t^2 (b_max - b_min) / (2 T)``."""
        return self.beta_min * t + 0.5 * t ** 2 * (self.beta_max - self.beta_min) / self.T

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def scale(self, t) -> Tensor:
        t = self.check_time(t)
        return torch.exp(-0.5 * self.integrated_beta(t))

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"


class VPSDE(_BetaSchedule):
    """Variance-preserving SDE ``dx = -b(t)/2 x dt + sqrt(b(t)) dW`` (the continuous DDPM).

    ``a(t) = exp(-B(t)/2)``, ``s(t)^2 = 1 - a(t)^2``, prior ``N(0, I)``.

    Args:
        beta_min: ``b(0) > 0``.
        beta_max: ``b(T) >= beta_min``.
        T: end time.
    """

    def g(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def std(self, t) -> Tensor:
        t = self.check_time(t)
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def log_snr(self, t) -> Tensor:
        t = self.check_time(t)
        return -0.5 * torch.log(torch.expm1(self.integrated_beta(t)))

    def t_from_log_snr(self, lam) -> Tensor:
        """Closed-form inverse: solve ``B(t) = log(1 + exp(-2 lambda))`` for ``t``."""
        lam = torch.as_tensor(lam)
        big_b = torch.nn.functional.softplus(-2 * lam)
        db = (self.beta_max - self.beta_min) / self.T
        # The root of b_min t + db t^2 / 2 = B in the form without cancellation.
        return 2 * big_b / (torch.sqrt(self.beta_min ** 2 + 2 * db * big_b) + self.beta_min)


class SubVPSDE(_BetaSchedule):
    """Sub-VP SDE: VP's drift with ``g(t)^2 = b(t) (1 - exp(-2 B(t)))``.

    ``a(t) = exp(-B(t)/2)``, ``s(t) = 1 - a(t)^2`` (so ``s^2`` is below VP's), prior ``N(0, I)``.
    """

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t)))

    def std(self, t) -> Tensor:
        t = self.check_time(t)
        return -torch.expm1(-self.integrated_beta(t))


class VESDE(LinearSDE):
    """Variance-exploding SDE ``dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dW``.

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``; the kernel started at ``x0``
    at ``t = 0`` has ``a = 1`` and ``s(t)^2 = sigma(t)^2 - sigma_min^2`` (the exact
    solution of the SDE; the reference score-SDE code instead uses ``sigma(t)``,
    i.e. data already perturbed by ``sigma_min``). Prior ``N(0, sigma_max^2 I)``.

    Args:
        sigma_min: ``> 0``.
        sigma_max: ``> sigma_min``.
        T: end time.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        super().__init__(T=T)
        self.sigma_min = _check_finite_positive("sigma_min", sigma_min)
        self.sigma_max = _check_finite_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)``."""
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def scale(self, t) -> Tensor:
        t = self.check_time(t)
        return torch.ones_like(t)

    def std(self, t) -> Tensor:
        t = self.check_time(t)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_ratio * t / self.T))

    def log_snr(self, t) -> Tensor:
        return -self.std(t).log()

    def t_from_log_snr(self, lam) -> Tensor:
        """Closed-form inverse: ``s = exp(-lambda)``, ``t = T log(1 + s^2/sigma_min^2) / (2 log r)``."""
        lam = torch.as_tensor(lam)
        return self.T * torch.log1p(torch.exp(-2 * lam) / self.sigma_min ** 2) / (2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T})"
