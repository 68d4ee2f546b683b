"""Checks and closed forms behind :class:`sdediff.GaussianMixture`'s conditional methods.

Component ``k`` has class ``c_k = labels[k]``. Under a linear SDE the noised joint is
``p_t(x, y) = sum_{k: c_k = y} w_k N(x; a mu_k, v_k I)``, so with the per-component log terms
``l_k(x) = log w_k + log N(x; a mu_k, v_k I)``:

* noisy classifier: ``log p_t(y | x) = logsumexp_{k: c_k = y} l_k - logsumexp_k l_k``;
* conditional score: ``grad log p_t(x | y) = sum_{k: c_k = y} r_k^y (a mu_k - x) / v_k`` with
  ``r^y = softmax`` of ``l_k`` over class ``y``'s components only.

Conditioning ``x0`` on observed coordinates ``x0[O] = o`` (isotropic components factorize over
coordinates): ``p(x0[U] | o) = sum_k w'_k N(mu_k[U], sigma_k^2 I)`` with
``log w'_k = log w_k + log N(o; mu_k[O], sigma_k^2 I) - log p(o)``.

Functions here return tensors only; ``analytic.py`` builds the mixtures.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _is_integer_tensor(x: Tensor) -> bool:
    return not (x.dtype == torch.bool or x.is_floating_point() or x.is_complex())


def check_component_labels(labels, num_components: int) -> Tensor | None:
    """``labels`` as a ``(K,)`` int64 tensor covering every class in ``[0, labels.max()]``."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if not _is_integer_tensor(labels):
        raise TypeError(f"labels must be an integer tensor of shape (K,) = ({num_components},), "
                        f"got dtype {labels.dtype}")
    if labels.shape != (num_components,):
        raise ValueError(f"labels must have shape (K,) = ({num_components},), got {tuple(labels.shape)}")
    labels = labels.detach().to(device="cpu", dtype=torch.long)
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices, got {labels.tolist()}")
    num_classes = int(labels.max()) + 1
    empty = [c for c in range(num_classes) if not bool((labels == c).any())]
    if empty:
        raise ValueError(f"labels give num_classes = labels.max() + 1 = {num_classes}, but classes {empty} "
                         f"have no component; renumber the classes as 0..C-1 with none left empty")
    return labels


def check_class(y, num_classes: int) -> int:
    """A single class label ``y`` (a Python int or a 0-d integer tensor) in ``[0, num_classes)``."""
    if isinstance(y, Tensor) and y.dim() == 0 and _is_integer_tensor(y):
        y = int(y)
    if isinstance(y, bool) or not isinstance(y, int):
        raise TypeError(f"y must be an int class label, got {type(y).__name__}")
    if not 0 <= y < num_classes:
        raise ValueError(f"y must be a class label in [0, {num_classes}), got {y}")
    return y


def check_batch_labels(y, num_classes: int, batch: int) -> Tensor:
    """Per-example labels ``y``: an integer tensor of shape ``(batch,)`` in ``[0, num_classes)``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be None or an integer tensor of shape (B,) = ({batch},), got "
                        f"{type(y).__name__}; for one class c use torch.full(({batch},), c)")
    if not _is_integer_tensor(y):
        raise TypeError(f"y must be an integer tensor of shape (B,) = ({batch},), got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape (B,) = ({batch},) to match x, got {tuple(y.shape)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"y must hold class labels in [0, {num_classes}), got {lo if lo < 0 else hi}")
    return y.long()


def class_log_joint(log_comp: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``log p_t(x, y=c) = logsumexp_{k: c_k = c} l_k``, shape ``(B, C)``, from ``l = log_comp (B, K)``."""
    member = labels.to(log_comp.device)[None, :] == torch.arange(num_classes, device=log_comp.device)[:, None]
    masked = torch.where(member[None], log_comp[:, None, :], torch.tensor(-math.inf, dtype=log_comp.dtype,
                                                                           device=log_comp.device))
    return masked.logsumexp(-1)


def restrict_to_class(log_comp: Tensor, labels: Tensor, y: Tensor) -> Tensor:
    """``l_k`` where ``c_k = y_b`` and ``-inf`` elsewhere, shape ``(B, K)``."""
    member = labels.to(log_comp.device)[None, :] == y.to(log_comp.device)[:, None]
    return log_comp.masked_fill(~member, -math.inf)


def check_mask_observed(mask, observed, dim: int) -> tuple[Tensor, Tensor]:
    """Flattened ``(d,)`` bool mask and ``(d,)`` float64 observations (ignored entries zeroed)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor of the example shape ({dim} entries), got {got}")
    if mask.numel() != dim:
        raise ValueError(f"mask must have the example shape ({dim} entries, e.g. ({dim},)), "
                         f"got {tuple(mask.shape)}")
    if bool(mask.all()):
        raise ValueError("mask observes every coordinate, so nothing is left to condition on; "
                         "leave at least one entry False")
    observed = torch.as_tensor(observed)
    if observed.shape != mask.shape:
        raise ValueError(f"observed must have mask's (the example's) shape {tuple(mask.shape)}, with "
                         f"entries where mask is False ignored; got {tuple(observed.shape)}")
    if not observed.is_floating_point():
        raise TypeError(f"observed must be a floating tensor, got dtype {observed.dtype}")
    flat_mask = mask.detach().reshape(dim).cpu()
    flat_obs = observed.detach().reshape(dim).to(device="cpu", dtype=torch.float64)
    flat_obs = torch.where(flat_mask, flat_obs, torch.zeros_like(flat_obs))
    if not bool(torch.isfinite(flat_obs).all()):
        raise ValueError("observed must be finite where mask is True")
    return flat_mask, flat_obs


def observed_log_weights(log_weights: Tensor, means: Tensor, stds: Tensor, mask: Tensor,
                         obs: Tensor) -> Tensor:
    """Normalized posterior log-weights ``log w_k + log N(o; mu_k[O], sigma_k^2 I) - log p(o)``, ``(K,)``."""
    n_obs = int(mask.sum())
    sq = (obs[mask][None, :] - means[:, mask]).pow(2).sum(1)
    log_lik = -0.5 * (sq / stds ** 2 + n_obs * torch.log(2 * math.pi * stds ** 2))
    joint = log_weights + log_lik
    return joint - joint.logsumexp(0)


def embed(free: Tensor, mask: Tensor, observed: Tensor) -> Tensor:
    """Samples ``(n, num_free)`` of the unobserved coordinates as full examples ``(n, *mask.shape)``."""
    if not isinstance(free, Tensor) or free.dim() != 2:
        shape = tuple(free.shape) if isinstance(free, Tensor) else type(free).__name__
        raise ValueError(f"free must be a tensor of shape (n, num_free), got {shape}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor of the example shape")
    observed = torch.as_tensor(observed)
    if observed.shape != mask.shape:
        raise ValueError(f"observed must have mask's shape {tuple(mask.shape)}, got {tuple(observed.shape)}")
    flat_mask = mask.reshape(-1).to(free.device)
    num_free = int((~flat_mask).sum())
    if free.shape[1] != num_free:
        raise ValueError(f"free must have shape (n, {num_free}) (one column per False entry of mask), "
                         f"got {tuple(free.shape)}")
    full = observed.reshape(-1).to(free).expand(free.shape[0], -1).clone()
    full[:, ~flat_mask] = free
    return full.reshape(free.shape[0], *mask.shape)
