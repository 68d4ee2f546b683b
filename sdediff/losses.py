"""Denoising score matching (DSM) and the DDPM "simple" loss.

With ``x_t = a(t) x0 + s(t) z`` and ``t ~ U(eps, T)`` (MATH.md, "Denoising score matching")::

    L(theta) = E_t E_x0 E_z [ lambda(t) || score_theta(x_t, t) + z / s ||^2 ]
             = E_t E_x0 E_z [ lambda(t) / s^2 || eps_hat(x_t, t) - z ||^2 ],   eps_hat = -s score_theta

(the second line is how it is computed: it stays O(1) as ``s -> 0``). Weightings:

* ``"score"``: ``lambda = s^2``: eps-matching ``|| eps_hat - z ||^2`` (Ho et al. 2020's simple loss).
* ``"likelihood"``: ``lambda = g(t)^2`` (Song, Durkan, Murray & Ermon 2021, Thm. 1): then
  ``(T - eps)/2 * L`` plus a constant bounds ``-E log p_eps`` of the probability-flow model.
* ``"none"``: ``lambda = 1``: the plain ``|| score + z / s ||^2``.

Importance sampling for the likelihood weighting. The weight on ``||eps_hat - z||^2`` is
``w(t) = g^2 / s^2``, which grows like ``1/t`` as ``t -> 0`` (VP: ``g^2/s^2 = b(t) / (1 - e^{-B(t)})``),
so uniform ``t`` gives a heavy-tailed estimator. For any linear SDE ``s^2/a^2 = int_0^t g^2/a^2``,
hence ``d/dt log(s^2/a^2) = g^2 / s^2``: the weight is ``-2 d(lambda)/dt`` with
``lambda(t) = log(a/s)`` the log-SNR. Drawing ``t`` with density ``p(t) = w(t) / Z``,
``Z = 2 (lambda(eps) - lambda(T))``, is therefore *exact in closed form*: ``lambda`` uniform between
``lambda(eps)`` and ``lambda(T)`` and ``t = sde.t_from_log_snr(lambda)`` (closed form for VP and VE,
bisection for a tabulated ``LinearSDE``). The unbiased per-example loss becomes
``Z / (T - eps) * ||eps_hat - z||^2``: a constant weight, so the estimator is no heavier-tailed
than eps-matching. Measured at the exact score of a 2-D Gaussian ring, VP SDE, ``eps = 1e-3``: the
per-example variance of the likelihood-weighted loss drops about 12-fold with importance sampling,
same mean (``tests/test_losses.py``).

Safeguards at small ``t``: the floor ``eps`` (default ``1e-5``) bounds ``Z`` (it grows like
``log(1/eps)``) and the uniform-``t`` weight (``<= w(eps)``); for uniform ``t`` with the likelihood
weighting ``max_weight`` clips ``w(t)`` (a biased but bounded loss). Prefer ``importance_sampling=True``.

Labels (classifier-free guidance, Ho & Salimans 2022). Given labels ``y`` the model is trained on
``score_theta(x_t, t, y')`` where ``y'`` is ``y`` with each entry replaced by the null class
(``num_classes``) with probability ``p_uncond`` (:func:`drop_labels`): one network learns the
conditional score ``grad log p_t(x | y)`` and the unconditional one ``grad log p_t(x)``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .ddpm import DDPM
from .sde import LinearSDE, broadcast_like

__all__ = ["WEIGHTINGS", "REDUCTIONS", "dsm_loss", "ddpm_loss", "explicit_score_matching_loss",
           "sample_time", "loss_weight", "likelihood_normalizer", "drop_labels"]

#: Weightings accepted by :func:`dsm_loss`.
WEIGHTINGS: tuple[str, ...] = ("score", "likelihood", "none")
#: Reductions over the batch: mean / sum of the per-example losses, or the ``(B,)`` vector.
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _check_args(sde, weighting: str, eps: float, reduction: str, importance_sampling: bool) -> None:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (it needs scale(t), std(t), g(t)), got {type(sde).__name__}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling=True is only defined for weighting='likelihood' "
                         f"(t ~ g^2/s^2), got weighting={weighting!r}")


def likelihood_normalizer(sde: LinearSDE, eps: float) -> float:
    """``Z = int_eps^T g^2/s^2 dt = 2 (lambda(eps) - lambda(T))``, ``lambda`` the log-SNR."""
    lam = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    return float(2 * (lam[0] - lam[1]))


def sample_time(sde: LinearSDE, n: int, *, eps: float = 1e-5, importance_sampling: bool = False,
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                device=None) -> Tensor:
    """Draw ``n`` training times: ``U(eps, T)``, or ``p(t) ∝ g(t)^2 / s(t)^2`` on ``[eps, T]``.

    The importance density is sampled exactly through the log-SNR (see the module docstring):
    ``u ~ U(0, 1)``, ``lambda = lambda(eps) + u (lambda(T) - lambda(eps))``, ``t = t(lambda)``.

    Args:
        sde: the linear SDE.
        n: number of times.
        eps: the smallest time, in ``(0, T)``.
        importance_sampling: draw from ``g^2/s^2`` instead of uniformly.
        generator: the source of randomness (its device is where ``u`` is drawn).
        dtype, device: of the result.

    Returns:
        ``(n,)`` times in ``[eps, T]``.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)
    if importance_sampling:
        lam = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64)).to(gen_device)
        t = sde.t_from_log_snr(lam[0] + u * (lam[1] - lam[0])).to(torch.float64)
        t = t.clamp(eps, sde.T)  # round-off of the inversion
    else:
        t = eps + (sde.T - eps) * u
    return t.to(dtype=dtype, device=device if device is not None else gen_device)


def loss_weight(sde: LinearSDE, t: Tensor, weighting: str, *, eps: float = 1e-5,
                importance_sampling: bool = False, max_weight: float | None = None) -> Tensor:
    """The weight ``lambda(t) / s(t)^2`` on ``||eps_hat - z||^2`` (divided by ``p(t) (T - eps)`` under IS).

    Args:
        sde: the linear SDE.
        t: ``(B,)`` times.
        weighting: one of :data:`WEIGHTINGS`.
        eps: the smallest training time (enters the importance-sampling normalizer).
        importance_sampling: ``t`` was drawn from ``p(t) ∝ g^2/s^2`` (likelihood weighting only).
        max_weight: clip the weight from above (uniform ``t`` only; ``None``: no clip).

    Returns:
        ``(B,)`` weights in ``t``'s dtype.
    """
    if weighting == "score":
        w = torch.ones_like(t)
    elif importance_sampling:
        w = torch.full_like(t, likelihood_normalizer(sde, eps) / (sde.T - eps))
    else:
        s = sde.std(t).to(t.dtype)
        if weighting == "likelihood":
            w = sde.g(t).to(t.dtype) ** 2 / s ** 2
        else:
            w = 1.0 / s ** 2
    if max_weight is not None and not importance_sampling:
        w = w.clamp_max(max_weight)
    return w


def _null_label_of(model, num_classes: int | None) -> int | None:
    """The null class of ``model``: ``num_classes`` if given, else ``model.null_label`` (through a DDP ``.module``)."""
    if num_classes is not None:
        return num_classes
    for obj in (model, getattr(model, "module", None)):
        label = getattr(obj, "null_label", None) if obj is not None else None
        if label is not None:
            return int(label)
    return None


def drop_labels(y: Tensor, null_label: int, p_uncond: float,
                generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p_uncond`` (classifier-free guidance training).

    One uniform number is drawn per example from ``generator`` (on its device) when
    ``0 < p_uncond < 1``; ``p_uncond = 0`` returns ``y`` and ``p_uncond = 1`` only the null class,
    without drawing.

    Args:
        y: ``(B,)`` integer labels.
        null_label: the null class index (the net's ``num_classes``).
        p_uncond: drop probability in ``[0, 1]``.
        generator: source of the draws.

    Returns:
        ``(B,)`` labels on ``y``'s device.

    Raises:
        ValueError: ``p_uncond`` outside ``[0, 1]`` or ``y`` not of shape ``(B,)``.
        TypeError: ``y`` not an integer tensor.
    """
    _check_label_tensor(y, y.shape[0] if isinstance(y, Tensor) and y.dim() == 1 else None)
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond!r}")
    if p_uncond == 0:
        return y
    if p_uncond == 1:
        return torch.full_like(y, int(null_label))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    drop = torch.rand(y.shape[0], generator=generator, dtype=torch.float64, device=gen_device) < p_uncond
    return torch.where(drop.to(y.device), torch.full_like(y, int(null_label)), y)


def _check_label_tensor(y, batch: int | None) -> None:
    if not isinstance(y, Tensor) or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        got = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"y must be an integer tensor of class labels of shape (B,), got {got}")
    if batch is None or y.shape != (batch,):
        want = "(B,)" if batch is None else f"(B,) = ({batch},) to match x0"
        raise ValueError(f"y must have shape {want}, got {tuple(y.shape)}")


def _training_labels(model, y: Tensor | None, p_uncond: float, num_classes: int | None, batch: int,
                     generator: torch.Generator | None, device) -> Tensor | None:
    """Validate ``y`` against the batch and drop labels to the null class with probability ``p_uncond``."""
    if y is None:
        if p_uncond != 0:
            raise ValueError(f"p_uncond={p_uncond!r} needs labels y; without y the loss is unconditional")
        return None
    _check_label_tensor(y, batch)
    null_label = _null_label_of(model, num_classes)
    if p_uncond != 0 and null_label is None:
        raise ValueError("p_uncond > 0 needs the null class: the model has no num_classes/null_label "
                         "attribute, so pass num_classes=K")
    return drop_labels(y, null_label if null_label is not None else 0, p_uncond, generator).to(device)


def _call(model, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
    return model(x, t) if y is None else model(x, t, y)


def _reduce(per_example: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


def _draw_noise(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else x0.device
    return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device).to(x0.device)


def dsm_loss(model: ScoreFn, sde: LinearSDE, x0: Tensor, weighting: str = "score",
             importance_sampling: bool = False, eps: float = 1e-5,
             generator: torch.Generator | None = None, reduction: str = "mean", *,
             t: Tensor | None = None, noise: Tensor | None = None,
             max_weight: float | None = None, y: Tensor | None = None, p_uncond: float = 0.0,
             num_classes: int | None = None) -> Tensor:
    """Denoising score-matching loss ``E lambda(t) ||score(x_t, t) + z / s||^2`` (MATH.md).

    Computed as ``w(t) ||eps_hat - z||^2`` with ``eps_hat = -s(t) * model(x_t, t)`` and
    ``w`` from :func:`loss_weight`, summed over the data dimensions of each example. Any score
    function works as ``model`` (a :class:`~sdediff.parameterization.ScoreModel`, its DDP wrapper,
    or an oracle's ``score_fn``); gradients flow through it.

    Args:
        model: ``model(x, t) -> score`` with ``t`` of shape ``(B,)``.
        sde: the linear SDE.
        x0: ``(B, *dims)`` clean data.
        weighting: ``"score"`` (``lambda = s^2``), ``"likelihood"`` (``g^2``) or ``"none"`` (1).
        importance_sampling: draw ``t ∝ g^2/s^2`` (``weighting="likelihood"`` only).
        eps: the smallest time, in ``(0, T)``.
        generator: source of ``t`` and ``z`` when they are not given.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for the ``(B,)`` vector.
        t: optional ``(B,)`` times, drawn by the caller from the same distribution
            (:func:`sample_time`); used for common random numbers and data-parallel training.
        noise: optional ``z`` of ``x0``'s shape.
        max_weight: clip the weight (uniform ``t`` with the likelihood weighting; see module doc).
        y: optional ``(B,)`` integer labels; the model is then called as ``model(x_t, t, y')``.
        p_uncond: probability of replacing each label by the null class (:func:`drop_labels`); the
            draws come from ``generator`` after ``t`` and ``z``.
        num_classes: the null class index; default ``model.null_label`` (or ``model.module``'s).

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Raises:
        ValueError: unknown ``weighting``/``reduction``, bad ``eps``, ``t``/``noise``/``y`` of the wrong
            shape, ``p_uncond`` outside ``[0, 1]`` or without labels or a known null class.
        TypeError: ``sde`` not a :class:`~sdediff.sde.LinearSDE`, ``y`` not an integer tensor.
    """
    _check_args(sde, weighting, eps, reduction, importance_sampling)
    if not isinstance(x0, Tensor) or x0.dim() < 2:
        raise ValueError(f"x0 must be a tensor of shape (B, *dims), got "
                         f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
    batch = x0.shape[0]
    if t is None:
        t = sample_time(sde, batch, eps=eps, importance_sampling=importance_sampling,
                        generator=generator, dtype=x0.dtype, device=x0.device)
    elif t.shape != (batch,):
        raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
    t = t.to(dtype=x0.dtype, device=x0.device)
    if noise is None:
        noise = _draw_noise(x0, generator)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    y = _training_labels(model, y, p_uncond, num_classes, batch, generator, x0.device)
    a = broadcast_like(sde.scale(t).to(x0.dtype), x0)
    s = broadcast_like(sde.std(t).to(x0.dtype), x0)
    x_t = a * x0 + s * noise
    eps_hat = -s * _call(model, x_t, t, y)  # score = -eps / s
    sq = (eps_hat - noise).pow(2).reshape(batch, -1).sum(dim=1)
    w = loss_weight(sde, t, weighting, eps=eps, importance_sampling=importance_sampling,
                    max_weight=max_weight)
    return _reduce(w * sq, reduction)


def explicit_score_matching_loss(model: ScoreFn, true_score: ScoreFn, sde: LinearSDE, x0: Tensor,
                                 weighting: str = "score", eps: float = 1e-5,
                                 generator: torch.Generator | None = None, reduction: str = "mean", *,
                                 t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """Explicit score matching ``E lambda(t) ||score(x_t, t) - grad log p_t(x_t)||^2``.

    Uses the same draws of ``t``, ``x0`` and ``z`` as :func:`dsm_loss` (pass ``t`` and ``noise`` for
    common random numbers). DSM and explicit score matching differ by a constant independent of
    ``model`` (Vincent 2011): a check of both, given a known ``true_score`` (the oracle's).

    Args:
        model: the score function to judge.
        true_score: the exact score ``grad log p_t`` of the noised data.
        sde, x0, weighting, eps, generator, reduction, t, noise: as in :func:`dsm_loss`
            (uniform ``t`` only).

    Returns:
        The loss (scalar, or ``(B,)`` for ``reduction="none"``).
    """
    _check_args(sde, weighting, eps, reduction, False)
    batch = x0.shape[0]
    if t is None:
        t = sample_time(sde, batch, eps=eps, generator=generator, dtype=x0.dtype, device=x0.device)
    t = t.to(dtype=x0.dtype, device=x0.device)
    if noise is None:
        noise = _draw_noise(x0, generator)
    a = broadcast_like(sde.scale(t).to(x0.dtype), x0)
    s = broadcast_like(sde.std(t).to(x0.dtype), x0)
    x_t = a * x0 + s * noise
    # lambda ||score - true||^2 = (lambda / s^2) ||s score - s true||^2
    diff = s * (model(x_t, t) - true_score(x_t, t))
    sq = diff.pow(2).reshape(batch, -1).sum(dim=1)
    return _reduce(loss_weight(sde, t, weighting, eps=eps) * sq, reduction)


def ddpm_loss(model: ScoreFn, ddpm: DDPM, x0: Tensor, generator: torch.Generator | None = None,
              reduction: str = "mean", *, n: Tensor | None = None, noise: Tensor | None = None,
              y: Tensor | None = None, p_uncond: float = 0.0, num_classes: int | None = None) -> Tensor:
    """DDPM's simple loss ``E_n ||eps_hat(x_n, n) - z||^2`` over uniform ``n in {1..N}`` (Ho et al. 2020, eq. 14).

    ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) z`` on the discrete chain, and
    ``eps_hat = -sqrt(1 - abar_n) * model(x_n, n / N)`` (``model`` is a score function in continuous
    time ``t = n / N``; a :class:`~sdediff.parameterization.DiscreteScoreModel` recovers ``n`` exactly).
    Summed over the data dimensions of each example, like :func:`dsm_loss` with ``weighting="score"``.

    Args:
        model: ``model(x, t) -> score``.
        ddpm: the discrete chain.
        x0: ``(B, *dims)`` clean data.
        generator: source of ``n`` and ``z`` when they are not given.
        reduction: one of :data:`REDUCTIONS`.
        n: optional ``(B,)`` integer indices in ``1..N``.
        noise: optional ``z`` of ``x0``'s shape.
        y, p_uncond, num_classes: labels and their drop rate, as in :func:`dsm_loss`.

    Returns:
        The loss (scalar, or ``(B,)`` for ``reduction="none"``).
    """
    if not isinstance(ddpm, DDPM):
        raise TypeError(f"ddpm must be an sdediff DDPM, got {type(ddpm).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    batch = x0.shape[0]
    if n is None:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        n = torch.randint(1, ddpm.num_steps + 1, (batch,), generator=generator, device=gen_device)
    n = n.to(x0.device)
    if noise is None:
        noise = _draw_noise(x0, generator)
    y = _training_labels(model, y, p_uncond, num_classes, batch, generator, x0.device)
    x_n = ddpm.q_sample(x0, n, noise=noise)
    s = broadcast_like((1 - ddpm.alpha_bar(n.cpu())).sqrt().to(dtype=x0.dtype, device=x0.device), x0)
    eps_hat = -s * _call(model, x_n, ddpm.time(n.cpu()).to(dtype=x0.dtype, device=x0.device), y)
    sq = (eps_hat - noise).pow(2).reshape(batch, -1).sum(dim=1)
    return _reduce(sq, reduction)
