"""Closed-form ground truth: a mixture of isotropic Gaussians pushed through a linear SDE.

If ``x0 ~ sum_k w_k N(mu_k, sigma_k^2 I)`` and ``x_t = a(t) x0 + s(t) z``, then
``x_t ~ sum_k w_k N(a mu_k, v_k I)`` with ``v_k = a^2 sigma_k^2 + s^2``. Hence,
with responsibilities ``r_k(x) = softmax_k(log w_k + log N(x; a mu_k, v_k I))``:

* score: ``grad log p_t(x) = sum_k r_k (a mu_k - x) / v_k``;
* denoiser: ``E[x0 | x_t = x] = sum_k r_k (mu_k + a sigma_k^2 / v_k (x - a mu_k))``.

Any SDE with ``scale(t)`` and ``std(t)`` works (VP, sub-VP, VE, ``LinearSDE``).

With class ``labels`` per component, the oracle also knows the conditional answers: the
class-conditional score ``grad log p_t(x | y)``, the noisy classifier ``log p_t(y | x)`` and the
posterior of the unobserved coordinates of ``x0`` given the observed ones (for inpainting);
the formulas are in ``_mixture_conditional.py``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _mixture_conditional as _cond

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A mixture of isotropic Gaussians in ``R^d``: the project's exact oracle.

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K,)`` component standard deviations, ``> 0`` (a scalar is broadcast).
        weights: ``(K,)`` positive weights (normalized here); uniform if omitted.
        labels: optional ``(K,)`` integer tensor, the class of each component in
            ``[0, num_classes)`` with ``num_classes = labels.max() + 1``; every class needs at
            least one component. Required by the conditional methods.

    Inputs ``x`` may have shape ``(B, d)`` or ``(B, *dims)`` with ``prod(dims) = d``;
    computations run in ``x``'s dtype and device (float64 stays float64).
    """

    def __init__(self, means, stds, weights=None, labels=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        k, _ = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.dim() == 0:
            stds = stds.expand(k).clone()
        if stds.shape != (k,):
            raise ValueError(f"stds must have shape (K,) = ({k},), got {tuple(stds.shape)}")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(stds).all()):
            raise ValueError(f"stds must be finite and > 0, got {stds.tolist()}")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape (K,) = ({k},), got {tuple(weights.shape)}")
        if not bool((weights > 0).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()
        self._log_weights = self.weights.log()
        self.labels = _cond.check_component_labels(labels, k)

    @classmethod
    def _from_log_weights(cls, means: Tensor, stds: Tensor, log_weights: Tensor,
                          labels: Tensor | None) -> "GaussianMixture":
        """A mixture with normalized log-weights given directly (their exp may underflow to 0)."""
        out = cls(means, stds, None, labels)
        out._log_weights = log_weights
        out.weights = log_weights.exp()
        return out

    @property
    def dim(self) -> int:
        """The data dimension ``d``."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """The number of components ``K``."""
        return self.means.shape[0]

    @property
    def num_classes(self) -> int | None:
        """``labels.max() + 1``, or ``None`` for a mixture without labels."""
        return None if self.labels is None else int(self.labels.max()) + 1

    # ------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None, return_labels: bool = False):
        """Draw ``n`` samples ``(n, d)`` (and their component indices if asked; classes are ``labels[idx]``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if device is None and generator is not None:
            device = generator.device
        w = self.weights.to(device)
        labels = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        x = self.means.to(device)[labels] + self.stds.to(device)[labels, None] * z
        x = x.to(dtype)
        return (x, labels) if return_labels else x

    # ---------------------------------------------------------- densities
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p0(x)`` of the mixture itself, shape ``(B,)``."""
        flat = self._flatten(x)
        one = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
        return self._log_components(flat, one, torch.zeros_like(one)).logsumexp(-1)

    def marginal_log_prob(self, x: Tensor, t, sde) -> Tensor:
        """``log p_t(x)`` of the noised marginal under the linear SDE ``sde``, shape ``(B,)``."""
        flat = self._flatten(x)
        a, s = self._coefs(t, sde, flat)
        return self._log_components(flat, a, s).logsumexp(-1)

    def score_at(self, x: Tensor, t, sde) -> Tensor:
        """The exact score ``grad_x log p_t(x)``, shape of ``x``."""
        return self._score(x, t, sde)

    def _score(self, x: Tensor, t, sde, y: Tensor | None = None) -> Tensor:
        """``grad_x log p_t(x)``, or ``grad_x log p_t(x | y)`` for checked labels ``y`` of shape ``(B,)``."""
        flat = self._flatten(x)
        a, s = self._coefs(t, sde, flat)
        resp, v = self._posterior(flat, a, s, y)
        # sum_k r_k (a mu_k - x) / v_k, as matrix products (no (B, K, d) temporaries)
        w = resp / v
        score = a[:, None] * (w @ self.means.to(flat)) - w.sum(1, keepdim=True) * flat
        return score.reshape(x.shape)

    def denoise(self, x: Tensor, t, sde) -> Tensor:
        """The exact denoiser ``E[x0 | x_t = x]``, shape of ``x``."""
        flat = self._flatten(x)
        a, s = self._coefs(t, sde, flat)
        resp, v = self._posterior(flat, a, s)
        mu = self.means.to(flat)
        # sum_k r_k (mu_k + c_k (x - a mu_k)) with the gain c_k = a sigma_k^2 / v_k
        rc = resp * (a[:, None] * self.stds.to(flat)[None, :] ** 2 / v)
        out = (resp - a[:, None] * rc) @ mu + rc.sum(1, keepdim=True) * flat
        return out.reshape(x.shape)

    def score_fn(self, sde):
        """A score function ``score_fn(x, t)`` of the contract, exact for ``sde``."""
        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score_at(x, t, sde)
        return score_fn

    def denoiser_fn(self, sde):
        """A denoiser ``D(x, t) = E[x0 | x_t = x]``, exact for ``sde``."""
        def denoiser_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.denoise(x, t, sde)
        return denoiser_fn

    # -------------------------------------------------------- conditional
    def conditional_score_fn(self, sde):
        """The exact class-conditional score ``score(x, t, y=None)`` of the conditional contract.

        ``score(x, t, y)`` is ``grad_x log p_t(x | y)`` with ``y`` an integer tensor of shape
        ``(B,)`` (each example its own class); ``score(x, t, None)`` is the unconditional score.
        The returned function carries ``num_classes`` (read by the guidance functions).

        Raises:
            ValueError: the mixture has no ``labels``; at call time, ``y`` not of shape ``(B,)``
                or outside ``[0, num_classes)``.
            TypeError: at call time, ``y`` not an integer tensor.
        """
        num_classes = self._require_labels("conditional_score_fn")

        def score(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            if y is None:
                return self._score(x, t, sde)
            return self._score(x, t, sde, _cond.check_batch_labels(y, num_classes, x.shape[0]))
        score.num_classes = num_classes
        return score

    def classifier_fn(self, sde):
        """The exact noisy classifier ``log_prob(x, t) -> (B, num_classes)``: ``log p_t(y | x)``.

        Row ``b`` is ``logsumexp`` of the components' log-joints per class minus their total,
        so ``logsumexp`` over classes is 0; differentiable in ``x`` (classifier guidance).

        Raises:
            ValueError: the mixture has no ``labels``.
        """
        num_classes = self._require_labels("classifier_fn")

        def log_prob(x: Tensor, t: Tensor) -> Tensor:
            flat = self._flatten(x)
            a, s = self._coefs(t, sde, flat)
            log_joint = _cond.class_log_joint(self._log_components(flat, a, s), self.labels, num_classes)
            return log_joint - log_joint.logsumexp(-1, keepdim=True)
        return log_prob

    def class_prior(self) -> Tensor:
        """``p(y)``: the total weight of each class's components, shape ``(num_classes,)``."""
        num_classes = self._require_labels("class_prior")
        return _cond.class_log_joint(self._log_weights[None], self.labels, num_classes)[0].exp()

    def class_conditional(self, y: int) -> "GaussianMixture":
        """``p0(x | y)``: the mixture of class ``y``'s components, weights renormalized, without labels."""
        y = _cond.check_class(y, self._require_labels("class_conditional"))
        keep = self.labels == y
        log_w = self._log_weights[keep]
        return GaussianMixture._from_log_weights(self.means[keep], self.stds[keep],
                                                 log_w - log_w.logsumexp(0), None)

    def condition(self, mask: Tensor, observed: Tensor) -> "GaussianMixture":
        """The exact posterior of the unobserved coordinates of ``x0`` given ``x0[mask] = observed[mask]``.

        Component ``k`` keeps its free part ``N(mu_k[~mask], sigma_k^2 I)``; its weight becomes
        ``w_k N(observed[mask]; mu_k[mask], sigma_k^2 I)``, renormalized in log space. The result
        lives in ``R^m``, ``m = (~mask).sum()``, coordinates in flattened (row-major) order, and
        keeps the labels. :meth:`embed` puts its samples back into full examples.

        Args:
            mask: bool tensor of the example shape (``(d,)`` or ``dims``), ``True`` = observed.
            observed: float tensor of the example shape; entries where ``mask`` is ``False``
                are ignored (they may be anything, NaN included).

        Raises:
            TypeError: ``mask`` not a bool tensor, ``observed`` not floating.
            ValueError: ``mask`` without ``d`` entries or all ``True``; ``observed`` not of
                ``mask``'s shape or not finite where observed.
        """
        flat_mask, obs = _cond.check_mask_observed(mask, observed, self.dim)
        log_w = _cond.observed_log_weights(self._log_weights, self.means, self.stds, flat_mask, obs)
        return GaussianMixture._from_log_weights(self.means[:, ~flat_mask].contiguous(), self.stds, log_w,
                                                 self.labels)

    @staticmethod
    def embed(free: Tensor, mask: Tensor, observed: Tensor) -> Tensor:
        """Full examples ``(n, *mask.shape)`` from samples ``(n, m)`` of :meth:`condition`'s posterior.

        Entries where ``mask`` is ``True`` are ``observed``'s; the others are ``free``'s columns
        in flattened order. E.g. ``GaussianMixture.embed(gm.condition(mask, obs).sample(n), mask, obs)``.
        """
        return _cond.embed(free, mask, observed)

    def _require_labels(self, what: str) -> int:
        if self.labels is None:
            raise ValueError(f"{what} needs class labels: build the mixture with "
                             f"GaussianMixture(means, stds, weights, labels=...)")
        return self.num_classes

    def noised(self, t, sde) -> "GaussianMixture":
        """The marginal at one time ``t`` (a float) as a mixture in its own right."""
        t = torch.as_tensor(float(t), dtype=torch.float64)
        a, s = float(sde.scale(t)), float(sde.std(t))
        return GaussianMixture._from_log_weights(a * self.means, torch.sqrt(a ** 2 * self.stds ** 2 + s ** 2),
                                                 self._log_weights, self.labels)

    def entropy(self, num_samples: int = 200_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Monte-Carlo estimate of the differential entropy ``-E log p0`` in nats, with its standard error."""
        x = self.sample(num_samples, generator=generator, dtype=torch.float64)
        lp = self.log_prob(x)
        return float(-lp.mean()), float(lp.std() / math.sqrt(num_samples))

    # ------------------------------------------------------------ helpers
    def _flatten(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) or (B, *dims) with {self.dim} "
                             f"entries per example, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    @staticmethod
    def _coefs(t, sde, flat: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=flat.dtype, device=flat.device)
        if t.dim() == 0:
            t = t.expand(flat.shape[0])
        elif t.shape != (flat.shape[0],):
            raise ValueError(f"t must be a scalar or of shape (B,) = ({flat.shape[0]},), got {tuple(t.shape)}")
        return sde.scale(t).to(flat), sde.std(t).to(flat)

    def _log_components(self, flat: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """``log w_k + log N(x; a mu_k, v_k I)``, shape ``(B, K)``."""
        return self._log_components_and_var(flat, a, s)[0]

    def _log_components_and_var(self, flat: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.means.to(flat)
        v = a[:, None] ** 2 * self.stds.to(flat)[None, :] ** 2 + s[:, None] ** 2
        # ||x - a mu_k||^2 = ||x||^2 - 2 a x.mu_k + a^2 ||mu_k||^2, clamped against round-off
        sq = (flat.pow(2).sum(1, keepdim=True) - 2 * a[:, None] * (flat @ mu.T)
              + a[:, None] ** 2 * mu.pow(2).sum(1)[None, :]).clamp_min(0)
        d = self.dim
        log_comp = self._log_weights.to(flat) - 0.5 * (sq / v + d * torch.log(2 * math.pi * v))
        return log_comp, v

    def _posterior(self, flat: Tensor, a: Tensor, s: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Responsibilities ``(B, K)`` (among class ``y_b``'s components if ``y`` is given) and variances ``(B, K)``."""
        log_comp, v = self._log_components_and_var(flat, a, s)
        if y is not None:
            log_comp = _cond.restrict_to_class(log_comp, self.labels, y)
        # softmax over the K components, written out: torch.softmax over a short last
        # dimension runs ~4x slower on CPU than these three elementwise passes.
        e = (log_comp - log_comp.amax(-1, keepdim=True).detach()).exp()
        return e / e.sum(-1, keepdim=True), v

    def __repr__(self) -> str:
        classes = "" if self.labels is None else f", classes={self.num_classes}"
        return f"GaussianMixture(K={self.num_components}, d={self.dim}{classes})"
