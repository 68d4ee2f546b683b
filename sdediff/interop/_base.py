"""What every adapter returns: a score model, ``score(x, t)`` with ``.sde`` and ``.time_of``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sde import LinearSDE, broadcast_like

__all__ = ["AdaptedScoreModel"]


class AdaptedScoreModel(nn.Module):
    """A network trained elsewhere, seen as a score function of a :class:`LinearSDE`.

    Subclasses implement :meth:`eps` (the noise prediction ``eps_hat ~ z`` of ``x = a x0 + s z``)
    and :meth:`time_of`; ``forward(x, t)`` is the score ``-eps_hat / s``, ``t`` of shape ``(B,)``
    in ``[0, T]``. :meth:`denoise` is Tweedie's ``(x - s eps_hat) / a``.

    Attributes:
        sde: the SDE the network's noise levels belong to.
    """

    def __init__(self, sde: LinearSDE):
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (scale/std), got {type(sde).__name__}")
        self.sde = sde

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``a(t)`` and ``s(t)`` as float64 ``(B,)`` tensors (``t`` checked to lie in ``[0, T]``)."""
        t = self._time(x, t)
        return self.sde.scale(t), self.sde.std(t)

    def _time(self, x: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, device=x.device).to(torch.float64)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return self.sde.check_time(t)

    def eps(self, x: Tensor, t) -> Tensor:
        """The noise prediction ``eps_hat(x, t)``."""
        raise NotImplementedError

    def time_of(self, labels) -> Tensor:
        """The time ``t`` of the source library's own time labels (float64)."""
        raise NotImplementedError

    def denoise(self, x: Tensor, t) -> Tensor:
        """``E[x0 | x_t] = (x - s eps_hat) / a``."""
        a, s = self.coefficients(x, t)
        return (x - broadcast_like(s, x) * self.eps(x, t)) / broadcast_like(a, x)

    def forward(self, x: Tensor, t) -> Tensor:
        """The score ``grad log p_t(x) = -eps_hat / s``."""
        _, s = self.coefficients(x, t)
        return -self.eps(x, t) / broadcast_like(s, x)


def check_output(out, x: Tensor, what: str, allow_learned_variance: bool = False) -> Tensor:
    """``out`` checked to be a tensor of ``x``'s shape; ``2C`` channels keep the first ``C``."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
    if (allow_learned_variance and out.dim() == x.dim() and out.dim() >= 2 and out.shape[0] == x.shape[0]
            and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]):
        out = out[:, :x.shape[1]]  # learned variance (Nichol & Dhariwal 2021): the mean part
    if out.shape != x.shape:
        extra = " (or 2C channels: a learned variance)" if allow_learned_variance else ""
        raise ValueError(f"{what} returned shape {tuple(out.shape)}; expected x's shape "
                         f"{tuple(x.shape)}{extra}")
    return out.to(x.dtype)


def module_dtype(module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating parameter (``None`` if it has none)."""
    if isinstance(module, nn.Module):
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return None
