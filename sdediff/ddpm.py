"""DDPM: the discrete variance-preserving chain and its map onto the VP SDE.

Time convention (one for the whole library): the DDPM index ``n`` runs over
``1..N`` and corresponds to continuous time ``t = n / N`` of
``DDPM.to_sde()``; ``n = 0`` is the data. :meth:`DDPM.time` and
:meth:`DDPM.index` convert between the two and round-trip exactly.

Per-step tensors (``betas``, ``alphas``, ``alpha_bars``) have length ``N`` and
hold step ``n`` at position ``n - 1``; ``alpha_bar(0) = 1``.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .sde import VPSDE, broadcast_like

__all__ = ["DDPM", "VLBResult"]

_SCHEDULES = ("linear", "cosine")
_VARIANCES = ("beta", "beta_tilde")


class DDPM:
    """The discrete DDPM chain ``q(x_n | x_{n-1}) = N(sqrt(1 - beta_n) x_{n-1}, beta_n I)``.

    Args:
        num_steps: ``N``, the number of noising steps.
        beta_start: ``beta_1`` of the linear schedule.
        beta_end: ``beta_N`` of the linear schedule.
        schedule: ``"linear"`` (Ho et al. 2020) or ``"cosine"`` (Nichol & Dhariwal 2021,
            ``alpha_bar`` from ``cos^2``, betas clipped at 0.999; ``beta_start``/``beta_end`` unused).
        cosine_s: the cosine schedule's offset ``s``.

    All schedule tensors are float64 on the CPU; the methods cast them to the
    input's dtype and device.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 schedule: str = "linear", cosine_s: float = 0.008):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        self.num_steps = num_steps
        self.schedule = schedule
        if schedule == "linear":
            if not (0 < beta_start <= beta_end < 1):
                raise ValueError("need 0 < beta_start <= beta_end < 1, got "
                                 f"beta_start={beta_start}, beta_end={beta_end}")
            self.beta_start, self.beta_end = float(beta_start), float(beta_end)
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        else:
            if not cosine_s > 0:
                raise ValueError(f"cosine_s must be > 0, got {cosine_s}")
            steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
            abar = f / f[0]
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
            self.beta_start, self.beta_end = float(betas[0]), float(betas[-1])
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        # Posterior variance beta~_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n (zero at n = 1).
        self.posterior_variance = (1 - self.alpha_bars_prev) / (1 - self.alpha_bars) * betas

    # ------------------------------------------------------------ time mapping
    def time(self, n) -> Tensor:
        """Continuous time ``t = n / N`` of index ``n``."""
        n = self._index(n)
        return n.to(torch.float64) / self.num_steps

    def index(self, t) -> Tensor:
        """Nearest DDPM index ``n = round(t * N)`` of continuous time ``t`` in ``[0, 1]``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")
        return torch.round(t * self.num_steps).long()

    def to_sde(self) -> VPSDE:
        """The VP SDE this chain discretizes: ``beta_min = N beta_start``, ``beta_max = N beta_end``.

        Only the linear schedule maps onto :class:`VPSDE`'s linear ``b(t)``.
        """
        if self.schedule != "linear":
            raise ValueError("to_sde() needs schedule='linear': the cosine schedule is not a "
                             "linear b(t); use LinearSDE with its own f(t), g(t) instead")
        return VPSDE(beta_min=self.num_steps * self.beta_start,
                     beta_max=self.num_steps * self.beta_end)

    # ------------------------------------------------------------- the chain
    def alpha_bar(self, n) -> Tensor:
        """``alpha_bar_n`` for ``n`` in ``0..N`` (``alpha_bar_0 = 1``), float64."""
        n = self._index(n, allow_zero=True)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars])
        return padded[n]

    def q_sample(self, x0: Tensor, n, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_n ~ q(x_n | x0) = N(sqrt(abar_n) x0, (1 - abar_n) I)``."""
        n = self._batch_index(n, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        _check_same_shape("noise", noise, x0)
        abar = self._coef(self.alpha_bars, n, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_n: Tensor, n) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_{n-1} | x_n, x0)``.

        ``mu~ = sqrt(abar_{n-1}) beta_n / (1 - abar_n) x0 + sqrt(alpha_n) (1 - abar_{n-1}) / (1 - abar_n) x_n``,
        ``beta~_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n``. The variance has shape ``(B,)``.
        """
        _check_same_shape("x0", x0, x_n)
        n = self._batch_index(n, x_n)
        beta, alpha = self._coef(self.betas, n, x_n), self._coef(self.alphas, n, x_n)
        abar, abar_prev = self._coef(self.alpha_bars, n, x_n), self._coef(self.alpha_bars_prev, n, x_n)
        mean = (abar_prev.sqrt() * beta / (1 - abar)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * x_n
        var = self.posterior_variance[n - 1].to(dtype=x_n.dtype, device=x_n.device)
        return mean, var

    # ------------------------------------------ conversions between targets
    def x0_from_eps(self, x_n: Tensor, n, eps: Tensor) -> Tensor:
        """``x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n)``."""
        abar = self._coef(self.alpha_bars, self._batch_index(n, x_n), x_n)
        return (x_n - (1 - abar).sqrt() * eps) / abar.sqrt()

    def eps_from_x0(self, x_n: Tensor, n, x0: Tensor) -> Tensor:
        """``eps = (x_n - sqrt(abar_n) x0) / sqrt(1 - abar_n)``."""
        abar = self._coef(self.alpha_bars, self._batch_index(n, x_n), x_n)
        return (x_n - abar.sqrt() * x0) / (1 - abar).sqrt()

    def mean_from_eps(self, x_n: Tensor, n, eps: Tensor) -> Tensor:
        """Posterior mean ``mu~ = (x_n - beta_n / sqrt(1 - abar_n) eps) / sqrt(alpha_n)``."""
        n = self._batch_index(n, x_n)
        beta, abar = self._coef(self.betas, n, x_n), self._coef(self.alpha_bars, n, x_n)
        return (x_n - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()

    def eps_from_mean(self, x_n: Tensor, n, mean: Tensor) -> Tensor:
        """Inverse of :meth:`mean_from_eps`."""
        n = self._batch_index(n, x_n)
        beta, abar = self._coef(self.betas, n, x_n), self._coef(self.alpha_bars, n, x_n)
        return (x_n - (1 - beta).sqrt() * mean) * (1 - abar).sqrt() / beta

    def mean_from_x0(self, x_n: Tensor, n, x0: Tensor) -> Tensor:
        """Posterior mean from a prediction of ``x0`` (``q_posterior``'s mean)."""
        return self.q_posterior(x0, x_n, n)[0]

    def x0_from_mean(self, x_n: Tensor, n, mean: Tensor) -> Tensor:
        """Inverse of :meth:`mean_from_x0`."""
        n = self._batch_index(n, x_n)
        beta, alpha = self._coef(self.betas, n, x_n), self._coef(self.alphas, n, x_n)
        abar, abar_prev = self._coef(self.alpha_bars, n, x_n), self._coef(self.alpha_bars_prev, n, x_n)
        c0 = abar_prev.sqrt() * beta / (1 - abar)
        cn = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
        return (mean - cn * x_n) / c0

    def convert(self, x_n: Tensor, n, value: Tensor, source: str, target: str) -> Tensor:
        """Convert a network output between the ``"eps"``, ``"x0"`` and ``"mean"`` targets."""
        kinds = ("eps", "x0", "mean")
        for name, kind in (("source", source), ("target", target)):
            if kind not in kinds:
                raise ValueError(f"{name} must be one of {kinds}, got {kind!r}")
        if source == target:
            return value
        eps = {"eps": lambda: value, "x0": lambda: self.eps_from_x0(x_n, n, value),
               "mean": lambda: self.eps_from_mean(x_n, n, value)}[source]()
        return {"eps": lambda: eps, "x0": lambda: self.x0_from_eps(x_n, n, eps),
                "mean": lambda: self.mean_from_eps(x_n, n, eps)}[target]()

    # -------------------------------------------------------- ancestral step
    def ancestral_step(self, x_n: Tensor, n, eps: Tensor, generator: torch.Generator | None = None,
                       variance: str = "beta_tilde", clip_x0: float | None = None) -> Tensor:
        """One step of ancestral sampling: ``x_{n-1} = mu_theta(x_n, n) + sigma_n z``.

        Args:
            x_n: the current state.
            n: the current index (int or ``(B,)``), in ``1..N``.
            eps: the predicted noise ``eps_theta(x_n, n)``.
            generator: for the fresh noise ``z``.
            variance: ``sigma_n^2 = beta_n`` (``"beta"``) or ``beta~_n`` (``"beta_tilde"``).
            clip_x0: if given, clamp the implied ``x0`` to ``[-clip_x0, clip_x0]`` first.

        No noise is added at ``n = 1``.
        """
        if variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}")
        _check_same_shape("eps", eps, x_n)
        idx = self._batch_index(n, x_n)
        if clip_x0 is not None:
            x0 = self.x0_from_eps(x_n, idx, eps).clamp(-clip_x0, clip_x0)
            mean = self.mean_from_x0(x_n, idx, x0)
        else:
            mean = self.mean_from_eps(x_n, idx, eps)
        table = self.betas if variance == "beta" else self.posterior_variance
        sigma = self._coef(table, idx, x_n).sqrt()
        z = torch.randn(x_n.shape, generator=generator, dtype=x_n.dtype, device=x_n.device)
        not_last = broadcast_like((idx > 1).to(x_n.dtype), x_n)
        return mean + not_last * sigma * z

    # --------------------------------------------------------------- helpers
    def _index(self, n, allow_zero: bool = False) -> Tensor:
        n = torch.as_tensor(n)
        if n.is_floating_point():
            if not bool((n == n.round()).all()):
                raise TypeError(f"n must hold integer DDPM indices, got {n}")
            n = n.long()
        low = 0 if allow_zero else 1
        if bool(((n < low) | (n > self.num_steps)).any()):
            raise ValueError(f"n must lie in {low}..{self.num_steps}, got values in "
                             f"[{int(n.min())}, {int(n.max())}]")
        return n

    def _batch_index(self, n, x: Tensor) -> Tensor:
        n = self._index(n)
        if n.dim() == 0:
            n = n.expand(x.shape[0])
        elif n.shape != (x.shape[0],):
            raise ValueError(f"n must be an int or of shape (B,) = ({x.shape[0]},), got {tuple(n.shape)}")
        return n.to(x.device)

    @staticmethod
    def _coef(table: Tensor, n: Tensor, x: Tensor) -> Tensor:
        return broadcast_like(table.to(x.device)[n - 1].to(x.dtype), x)

    def __repr__(self) -> str:
        return (f"DDPM(num_steps={self.num_steps}, beta_start={self.beta_start:g}, "
                f"beta_end={self.beta_end:g}, schedule={self.schedule!r})")

    # ------------------------------------------------------- variational bound
    def vlb(self, x0: Tensor, eps_fn, *, variance: str = "beta_tilde", num_levels: int | None = None,
            low: float = -1.0, high: float = 1.0, num_terms: int | None = None,
            generator: torch.Generator | None = None, chunk_size: int | None = None) -> "VLBResult":
        """The variational bound on ``-log p_theta(x0)``, term by term (Ho et al. 2020, eq. 5).

        ``L = L_T + sum_{n=2}^N L_{n-1} + L_0`` with

        * ``L_T = KL(q(x_N | x0) || N(0, I))`` in closed form;
        * ``L_{n-1} = KL(q(x_{n-1} | x_n, x0) || p_theta(x_{n-1} | x_n))`` at one draw
          ``x_n ~ q(x_n | x0)`` per term (an unbiased estimate of ``E_q[KL]``), where
          ``p_theta = N(mu_theta, sigma_n^2 I)``, ``mu_theta = (x_n - beta_n / sqrt(1 - abar_n)
          eps_fn(x_n, n)) / sqrt(alpha_n)`` and ``sigma_n^2 = beta~_n`` or ``beta_n``;
        * ``L_0 = -log p_theta(x0 | x1)`` with ``p_theta(x0 | x1) = N(mu_theta(x1, 1), beta_1 I)``
          (``beta~_1 = 0``, so the decoder always uses ``beta_1``): a Gaussian density for
          continuous data (``num_levels=None``), or for ``K``-level data on ``[low, high]``
          the discretized Gaussian of Ho et al. 2020 sec. 3.3: the mass of the bin
          ``[low + l delta, low + (l + 1) delta)``, ``delta = (high - low) / K``, holding
          ``x0``, with the end bins open to ``-inf`` / ``+inf``.

        With ``K`` levels the total is a bound on the discrete ``-log P(levels)``; for
        continuous data it bounds ``-log p_theta(x0)`` of the density.

        Args:
            x0: data ``(B, *dims)`` (for ``num_levels`` a point of each bin, e.g. its centre).
            eps_fn: ``eps_fn(x_n, n) -> tensor like x_n``, ``n`` a ``(B,)`` long tensor of
                indices in ``1..N``.
            variance: ``sigma_n^2`` of the reverse kernels, ``"beta_tilde"`` or ``"beta"``.
            num_levels, low, high: the discretization of the data (``None``: continuous).
            num_terms: ``None`` for the full sum over ``n = 2..N``; an int ``k`` for the
                unbiased Monte-Carlo estimate ``(N - 1) / k * sum`` over ``k`` indices drawn
                uniformly (with replacement) from ``2..N``, independently per example.
            generator: the source of the ``x_n`` draws (and of the sampled indices).
            chunk_size: indices ``n`` per call of ``eps_fn`` (default: about ``2^20``
                entries per call).

        Returns:
            A :class:`VLBResult` with the per-example terms, the total in nats and bits/dim.

        Raises:
            ValueError: bad ``variance``, ``num_levels``, range, ``num_terms`` or ``x0``.
        """
        if variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}")
        if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
            raise ValueError("x0 must be a floating tensor of shape (B, *dims)")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 has NaN or inf entries")
        if num_levels is not None:
            if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
                raise ValueError(f"num_levels must be an int >= 2 or None, got {num_levels!r}")
            if not low < high:
                raise ValueError(f"need low < high, got low={low}, high={high}")
        N, batch, d = self.num_steps, x0.shape[0], x0[0].numel()
        dev = x0.device if generator is None else generator.device
        if num_terms is None:
            steps = torch.arange(2, N + 1, device=x0.device).expand(batch, N - 1)
        else:
            if isinstance(num_terms, bool) or not isinstance(num_terms, int) or num_terms < 1:
                raise ValueError(f"num_terms must be None (all terms) or an int >= 1, got {num_terms!r}")
            # Independent indices per example, so the sampling noise averages out over a batch.
            steps = torch.randint(0, max(N - 1, 1), (batch, num_terms if N > 1 else 0), generator=generator,
                                  device=dev).to(x0.device) + 2
        chunk = chunk_size or max(1, (1 << 20) // max(1, batch * d))

        # L_T: KL(N(sqrt(abar_N) x0, (1 - abar_N) I) || N(0, I)), summed over dimensions.
        abar_N = float(self.alpha_bars[-1])
        flat = x0.reshape(batch, d)
        # (1 - abar) - 1 - log(1 - abar) = -abar - log1p(-abar), free of cancellation.
        prior_term = 0.5 * (abar_N * flat.pow(2).sum(1) + d * (-abar_N - math.log1p(-abar_N)))

        # L_{n-1}, n >= 2: chunks of indices, every (example, n) pair of a chunk in one eps_fn call.
        terms = [self._vlb_kl_terms(x0, steps[:, start:start + chunk], eps_fn, variance, generator)
                 for start in range(0, steps.shape[1], chunk)]
        diffusion_terms = (torch.cat(terms, 1) if terms else
                           torch.zeros(batch, 0, dtype=x0.dtype, device=x0.device))

        # L_0 = -log p_theta(x0 | x1), decoder N(mu_theta(x1, 1), beta_1 I).
        one = torch.ones(batch, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev).to(x0.device)
        x1 = self.q_sample(x0, one, noise=noise)
        mean = self.mean_from_eps(x1, one, self._vlb_eps(eps_fn, x1, one))
        std = math.sqrt(float(self.betas[0]))
        if num_levels is None:
            z = (x0 - mean) / std
            decoder_term = (0.5 * z.pow(2) + math.log(std) + 0.5 * math.log(2 * math.pi)).reshape(batch, -1).sum(1)
        else:
            decoder_term = -_discretized_gaussian_log_prob(x0, mean, std, num_levels, low, high).reshape(
                batch, -1).sum(1)

        if num_terms is None:
            total = prior_term + diffusion_terms.sum(1) + decoder_term
        else:  # E[(N - 1) L_{n-1}] over n ~ U{2..N} is the full sum.
            total = prior_term + (N - 1) * diffusion_terms.mean(1) + decoder_term
        return VLBResult(prior_term=prior_term, diffusion_terms=diffusion_terms, steps=steps,
                         decoder_term=decoder_term, total=total, bpd=total / (d * math.log(2)),
                         dim=d, num_steps=N, exact_sum=num_terms is None)

    def _vlb_eps(self, eps_fn, x_n: Tensor, n: Tensor) -> Tensor:
        eps = eps_fn(x_n, n)
        if not isinstance(eps, Tensor) or eps.shape != x_n.shape:
            got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(f"eps_fn must return a tensor of x_n's shape {tuple(x_n.shape)}, got {got}")
        if not bool(torch.isfinite(eps).all()):
            raise FloatingPointError("eps_fn returned NaN or inf in the variational bound")
        return eps

    def _vlb_kl_terms(self, x0: Tensor, steps: Tensor, eps_fn, variance: str,
                      generator: torch.Generator | None) -> Tensor:
        """``L_{n-1}`` for every example ``b`` and index ``n = steps[b, j]``: ``(B, c)``."""
        batch, c = steps.shape
        x0_rep = x0.unsqueeze(0).expand(c, *x0.shape).reshape(c * batch, *x0.shape[1:])
        n = steps.T.reshape(-1)  # term-major: entry j * B + b is (example b, column j)
        dev = x0.device if generator is None else generator.device
        noise = torch.randn(x0_rep.shape, generator=generator, dtype=x0.dtype, device=dev).to(x0.device)
        x_n = self.q_sample(x0_rep, n, noise=noise)
        mean_q, var_q = self.q_posterior(x0_rep, x_n, n)
        mean_p = self.mean_from_eps(x_n, n, self._vlb_eps(eps_fn, x_n, n))
        table = self.betas if variance == "beta" else self.posterior_variance
        var_p = table.to(x0.device)[n - 1].to(x0.dtype)
        d = x0[0].numel()
        sq = (mean_q - mean_p).reshape(c * batch, -1).pow(2).sum(1)
        # KL(N(m_q, v_q I) || N(m_p, v_p I)) = 1/2 [d log(v_p / v_q) + d v_q / v_p + |m_q - m_p|^2 / v_p - d].
        kl = 0.5 * (d * torch.log(var_p / var_q) + d * var_q / var_p + sq / var_p - d)
        return kl.reshape(c, batch).T


def _check_same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name} must have shape {tuple(b.shape)}, got {tuple(a.shape)}")


@dataclasses.dataclass
class VLBResult:
    """The terms of :meth:`DDPM.vlb`, per example, in nats.

    Attributes:
        prior_term: ``(B,)`` ``L_T``.
        diffusion_terms: ``(B, k)`` ``L_{n-1}`` for the indices ``n = steps`` (all of
            ``2..N`` in order, or the ``k`` sampled ones).
        steps: ``(B, k)`` the index ``n`` of each entry of ``diffusion_terms``.
        decoder_term: ``(B,)`` ``L_0 = -log p_theta(x0 | x1)``.
        total: ``(B,)`` the bound (an unbiased estimate of it with sampled terms).
        bpd: ``(B,)`` ``total / (d ln 2)``.
        dim: ``d``.
        num_steps: ``N``.
        exact_sum: whether every ``n`` was summed (not sampled).
    """

    prior_term: Tensor
    diffusion_terms: Tensor
    steps: Tensor
    decoder_term: Tensor
    total: Tensor
    bpd: Tensor
    dim: int
    num_steps: int
    exact_sum: bool


def _log_gaussian_bin(lower: Tensor, upper: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standardized bin edges (``+-inf`` allowed), stably.

    Bins on the positive side are reflected (``Phi(u) - Phi(l) = Phi(-l) - Phi(-u)``) so
    both edges sit in the lower tail, where ``log_ndtr`` is accurate:
    ``log Phi(u) + log1p(-exp(log Phi(l) - log Phi(u)))``.
    """
    flip = (lower + upper) > 0
    lo = torch.where(flip, -upper, lower)
    hi = torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def _discretized_gaussian_log_prob(x0: Tensor, mean: Tensor, std: float, num_levels: int,
                                   low: float, high: float) -> Tensor:
    """Per-entry log-mass of ``N(mean, std^2)`` on the bin of ``x0`` (Ho et al. 2020, eq. 13)."""
    delta = (high - low) / num_levels
    level = torch.floor((x0 - low) / delta).clamp(0, num_levels - 1)
    lower = low + level * delta
    upper = lower + delta
    inf = torch.full_like(x0, math.inf)
    lower = torch.where(level == 0, -inf, lower)
    upper = torch.where(level == num_levels - 1, inf, upper)
    return _log_gaussian_bin((lower - mean) / std, (upper - mean) / std)
