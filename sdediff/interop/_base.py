"""What every adapter returns: a score model, ``score(x, t)`` with ``.sde`` and ``.time_of``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sde import LinearSDE, broadcast_like

__all__ = ["AdaptedScoreModel"]


class AdaptedScoreModel(nn.Module):
    """A network trained elsewhere, seen as a score function of a :class:`LinearSDE`.

    Subclasses implement :meth:`_eps` (the noise prediction ``eps_hat ~ z`` of ``x = a x0 + s z``,
    given the checked time and its ``a``, ``s``) and :meth:`time_of`; ``forward(x, t)`` is the
    score ``-eps_hat / s``, ``t`` of shape ``(B,)`` in ``[0, T]``. :meth:`denoise` is Tweedie's
    ``(x - s eps_hat) / a``. Each call looks the schedule up once.

    Attributes:
        sde: the SDE the network's noise levels belong to.
        accepts_any_dtype: ``True``: ``x`` of any floating dtype is cast to the network's dtype
            at the network's call only (the schedule stays in float64) and the output comes back
            in ``x``'s dtype, so callers (the likelihood) need not cast.
    """

    accepts_any_dtype = True

    def __init__(self, sde: LinearSDE):
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (scale/std), got {type(sde).__name__}")
        self.sde = sde

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``a(t)`` and ``s(t)`` as float64 ``(B,)`` tensors (``t`` checked to lie in ``[0, T]``)."""
        return self.sde.scale_and_std(self._batch_time(x, t))

    def _schedule(self, x: Tensor, t) -> tuple[Tensor, Tensor | float, Tensor | float]:
        """``t`` as a checked float64 ``(B,)`` tensor, with ``a(t)`` and ``s(t)``: float64 ``(B,)``
        tensors, or Python floats when every example has the same time."""
        t = self._batch_time(x, t)
        if t.numel():
            lo, hi = torch.aminmax(t)
            lo = float(lo)
            if lo == float(hi):  # the whole batch at one time (sampling): a float look-up
                return t, *self.sde.scale_and_std_at(lo)
        a, s = self.sde.scale_and_std(t)
        return t, a, s

    def _batch_time(self, x: Tensor, t) -> Tensor:
        t = t.to(device=x.device, dtype=torch.float64) if isinstance(t, Tensor) else \
            torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def _eps(self, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """The noise prediction at the float64 ``(B,)`` time ``t`` with its ``a`` and ``s``."""
        raise NotImplementedError

    def eps(self, x: Tensor, t) -> Tensor:
        """The noise prediction ``eps_hat(x, t)``."""
        return self._eps(x, *self._schedule(x, t))

    def time_of(self, labels) -> Tensor:
        """The time ``t`` of the source library's own time labels (float64)."""
        raise NotImplementedError

    def denoise(self, x: Tensor, t) -> Tensor:
        """``E[x0 | x_t] = (x - s eps_hat) / a``."""
        t, a, s = self._schedule(x, t)
        eps = self._eps(x, t, a, s)
        return (x - like(s, x) * eps) / like(a, x)

    def forward(self, x: Tensor, t) -> Tensor:
        """The score ``grad log p_t(x) = -eps_hat / s``."""
        t, a, s = self._schedule(x, t)
        return self._eps(x, t, a, s).div(like(-s, x))


def like(c: Tensor | float, x: Tensor) -> Tensor | float:
    """A per-example ``(B,)`` coefficient shaped to broadcast against ``x``, in ``x``'s dtype
    (a float stays a float)."""
    return c if isinstance(c, float) else broadcast_like(c, x).to(x.dtype)


class NetworkDtype:
    """The dtype a wrapped network computes in: its first floating parameter's (``None`` if it has
    none). The parameter is found once; its dtype is read at every call, so ``.to(dtype)`` is seen."""

    def __init__(self, module):
        self._param = None
        if isinstance(module, nn.Module):
            self._param = next((p for p in module.parameters() if p.is_floating_point()), None)

    def __call__(self, x: Tensor) -> torch.dtype:
        """The network's dtype, or ``x``'s when it has no floating parameter."""
        return self._param.dtype if self._param is not None else x.dtype


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
