"""Time-dependent (noise-conditional) classifiers ``p_t(y | x_t)`` for classifier guidance.

Classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, sec. 5) adds
``scale * grad_x log p_t(y | x)`` to an unconditional score. The classifier must know the noise
level: it is trained with cross-entropy on noised inputs ``x_t = a(t) x0 + s(t) z``,
``t ~ U(eps, T)``, ``z ~ N(0, I)``, the same corruption as denoising score matching::

    L(phi) = E_t E_(x0, y) E_z [ -log softmax(f_phi(x_t, t))_y ]

Its minimizer is the exact noisy classifier ``p_t(y | x_t)`` (for a Gaussian mixture: the
class responsibilities of the noised mixture, ``GaussianMixture.classifier_fn``).

* :class:`NoisyClassifier`: logits ``(B, num_classes)`` from ``(x_t, t)``, a residual MLP with the
  nets' time embedding (:class:`~sdediff.nets.ResidualMLP` with ``out_dim = num_classes``).
* :func:`classifier_log_prob_fn`: the ``log_prob_fn(x, t) -> (B, num_classes)`` that
  :func:`sdediff.classifier_guidance` takes.
* :func:`train_classifier`: the training loop above (AdamW, a tqdm bar).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .losses import sample_time
from .nets import ResidualMLP
from .sde import LinearSDE, broadcast_like

__all__ = ["NoisyClassifier", "classifier_log_prob_fn", "train_classifier"]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class NoisyClassifier(nn.Module):
    """A noise-conditional classifier ``(x_t, t) -> logits`` of shape ``(B, num_classes)``.

    A residual MLP on the flattened input (``x`` of shape ``(B, dim)`` or ``(B, *dims)`` with
    ``prod(dims) = dim``, e.g. 8x8 digits with ``dim = 64``), conditioned on ``t`` through the
    same time embedding and FiLM blocks as :class:`~sdediff.nets.ResidualMLP`. The output layer is
    zero-initialized: a fresh classifier predicts the uniform distribution.

    Args:
        dim: Number of entries per example ``d``.
        num_classes: Number of classes ``K`` (at least 2).
        hidden: Width of the residual stream.
        depth: Number of residual blocks.
        time_embedding: ``"fourier"`` or ``"sinusoidal"``.
        emb_dim: Dimension of the raw time embedding (even).
        dropout: Dropout probability inside the residual blocks.
        layer_norm: Whether the blocks use LayerNorm.
        fourier_scale: Frequency scale of the Fourier embedding (16 suits ``t`` in ``[0, 1]``).
        seed: Seed of the Fourier embedding's fixed frequencies.

    Attributes:
        config: The constructor arguments as a JSON-serializable dict;
            ``NoisyClassifier(**clf.config)`` rebuilds the architecture.

    Raises:
        ValueError: On an invalid argument (the message names it).
    """

    net_name = "classifier"

    def __init__(
        self,
        dim: int,
        num_classes: int,
        hidden: int = 128,
        depth: int = 2,
        time_embedding: str = "fourier",
        emb_dim: int = 64,
        dropout: float = 0.0,
        layer_norm: bool = True,
        fourier_scale: float = 16.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_int("num_classes", num_classes, 2)
        self.trunk = ResidualMLP(dim, hidden=hidden, depth=depth, time_embedding=time_embedding, emb_dim=emb_dim,
                                 dropout=dropout, layer_norm=layer_norm, fourier_scale=fourier_scale, seed=seed,
                                 out_dim=num_classes)
        self.config: dict[str, Any] = {"dim": dim, "num_classes": num_classes, **self.trunk.config}
        del self.config["out_dim"]
        self.dim = dim
        self.num_classes = num_classes

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Logits of ``p_t(y | x_t = x)``.

        Args:
            x: ``(B, dim)`` or ``(B, *dims)`` noised inputs.
            t: ``(B,)`` times (or a scalar, broadcast over the batch).

        Returns:
            ``(B, num_classes)`` unnormalized log-probabilities.

        Raises:
            ValueError: If ``x`` does not have ``dim`` entries per example or ``t`` the wrong shape.
        """
        if not isinstance(x, Tensor) or x.dim() < 2 or x[0].numel() != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}) or (B, *dims) with {self.dim} entries "
                             f"per example, got {got}")
        return self.trunk(x.reshape(x.shape[0], self.dim), t)


def classifier_log_prob_fn(classifier: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The noisy classifier as ``log_prob_fn(x, t) -> (B, num_classes)``, for classifier guidance.

    Returns ``log_softmax`` of the logits, differentiable in ``x`` (guidance takes its gradient).
    The classifier's train/eval mode is left as it is: call ``classifier.eval()`` first if it
    has dropout.

    Args:
        classifier: ``classifier(x, t) -> logits (B, num_classes)``, e.g. a :class:`NoisyClassifier`.

    Returns:
        ``log_prob(x, t)``, with a ``num_classes`` attribute when the classifier has one.

    Raises:
        TypeError: If ``classifier`` is not callable.
    """
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        logits = classifier(x, t)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the classifier must return logits of shape (B, num_classes) with B = {x.shape[0]}, "
                             f"got {got}")
        return torch.log_softmax(logits, dim=-1)

    log_prob.num_classes = getattr(classifier, "num_classes", None)
    return log_prob


def train_classifier(
    classifier: nn.Module,
    sde: LinearSDE,
    data: Tensor,
    labels: Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 2e-3,
    eps: float = 1e-5,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train a noisy classifier by cross-entropy on ``x_t = a(t) x0 + s(t) z``, ``t ~ U(eps, T)``.

    Each step draws a minibatch of ``(x0, y)`` pairs with replacement, a time per example and the
    noise, all from one ``torch.Generator`` seeded with ``seed`` (the run is reproducible), and
    takes one AdamW step. The classifier is left in eval mode.

    Args:
        classifier: ``classifier(x, t) -> logits (B, num_classes)`` with parameters (e.g. a
            :class:`NoisyClassifier`); trained in place on its own device and dtype.
        sde: The linear SDE whose noising the classifier must undo (needs ``scale`` and ``std``).
        data: ``(N, *dims)`` clean examples.
        labels: ``(N,)`` integer classes in ``[0, num_classes)``.
        steps: Number of optimizer steps.
        batch_size: Examples per step.
        lr: AdamW learning rate.
        eps: The smallest training time, in ``(0, T)``.
        weight_decay: AdamW weight decay.
        seed: Seed of the minibatch, time and noise draws.
        progress: Show a tqdm bar with the running loss.

    Returns:
        The training loss (mean cross-entropy in nats) of every step.

    Raises:
        TypeError: ``sde`` not a :class:`~sdediff.sde.LinearSDE`, ``classifier`` not an ``nn.Module``,
            ``labels`` not an integer tensor.
        ValueError: mismatched ``data``/``labels``, a negative label or one beyond the classifier's
            ``num_classes``, or a bad ``steps``/``batch_size``/``lr``/``eps``.
    """
    from tqdm.auto import tqdm

    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (it needs scale(t) and std(t)), got {type(sde).__name__}")
    if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 1:
        got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor of shape (N, *dims), got {got}")
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_floating_point():
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor of shape (N,), got {got}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"labels must have shape (N,) = ({data.shape[0]},) to match data, got {tuple(labels.shape)}")
    num_classes = getattr(classifier, "num_classes", None)
    if int(labels.min()) < 0 or (num_classes is not None and int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes if num_classes is not None else 'num_classes'}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")

    param = next(classifier.parameters(), None)
    if param is None:
        raise ValueError("classifier has no parameters to train")
    device, dtype = param.device, param.dtype
    data, labels = data.to(device=device, dtype=dtype), labels.to(device=device, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=float(lr), weight_decay=float(weight_decay))

    classifier.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="classifier", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(device)
        x0, y = data[idx], labels[idx]
        t = sample_time(sde, batch_size, eps=eps, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        z = torch.randn(x0.shape, generator=gen, dtype=dtype).to(device)
        a = broadcast_like(sde.scale(t).to(dtype), x0)
        s = broadcast_like(sde.std(t).to(dtype), x0)
        loss = F.cross_entropy(classifier(a * x0 + s * z, t), y)  # -log p_phi(y | x_t, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    classifier.eval()
    return losses
