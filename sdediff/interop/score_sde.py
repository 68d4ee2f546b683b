"""score_sde_pytorch-style networks (Song et al. 2021, the reference score-SDE code).

The reference code conditions its networks on a time label and reads their output by SDE
(its ``mutils.get_score_fn`` for continuously trained models):

========================  ====================================  =======================
SDE                       the network's label                   score
========================  ====================================  =======================
VP, sub-VP (continuous)   ``999 t`` (``(num_scales - 1) t``)    ``-out / std(t)`` (eps)
VE                        ``sigma(t) = s_min (s_max/s_min)^t``  ``out`` (NCSN++ divides by sigma)
========================  ====================================  =======================

For VE the reference's kernel std is ``sigma(t)``, whereas :class:`~sdediff.VESDE`'s is the exact
``sqrt(sigma(t)^2 - sigma_min^2)``: labelling with ``sigma(t)`` makes ``VESDE`` describe the
reference process exactly, with the data taken to be the training data perturbed by
``N(0, sigma_min^2)`` -- the distribution the reference code samples and evaluates.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sde import LinearSDE, SubVPSDE, VESDE, VPSDE
from ._base import AdaptedScoreModel, NetworkDtype, check_output, like

__all__ = ["ScoreSDEModel", "from_score_sde"]


class ScoreSDEModel(AdaptedScoreModel):
    """A score_sde_pytorch network as a score model (see the module notes).

    Args:
        net: ``net(x, labels) -> tensor like x``, ``labels`` of shape ``(B,)``.
        sde: a :class:`~sdediff.VPSDE`, :class:`~sdediff.SubVPSDE` or :class:`~sdediff.VESDE`.
        num_scales: the reference's ``N`` (VP/sub-VP labels are ``(N - 1) t``).
    """

    def __init__(self, net, sde: LinearSDE, num_scales: int = 1000):
        if not isinstance(sde, (VPSDE, SubVPSDE, VESDE)):
            raise TypeError(f"sde must be a VPSDE, SubVPSDE or VESDE (the reference code's SDEs), "
                            f"got {type(sde).__name__}")
        super().__init__(sde)
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, labels), got {type(net).__name__}")
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 2:
            raise ValueError(f"num_scales must be an int >= 2, got {num_scales!r}")
        self.net = net
        self.num_scales = num_scales
        self.ve = isinstance(sde, VESDE)
        self._dtype = NetworkDtype(net)

    def label_of(self, t: Tensor) -> Tensor:
        """The network's label at time ``t``: ``(N - 1) t`` (VP, sub-VP) or ``sigma(t)`` (VE)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.sde.sigma(t) if self.ve else (self.num_scales - 1) * t

    def time_of(self, labels) -> Tensor:
        """The time of a label: ``label / (N - 1)`` or ``T log(sigma / s_min) / log(s_max / s_min)``."""
        labels = torch.as_tensor(labels).to(torch.float64)
        if self.ve:
            sde = self.sde
            return sde.T * torch.log(labels / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        return labels / (self.num_scales - 1)

    def _net(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = self._dtype(x)
        return check_output(self.net(x.to(dtype), self.label_of(t).to(dtype)), x, "net")

    def _eps(self, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        out = self._net(x, t)
        return -like(s, x) * out if self.ve else out  # VE: the net is the score -eps / s

    def forward(self, x: Tensor, t) -> Tensor:
        """The score: ``-net / std(t)`` (VP, sub-VP) or ``net`` itself (VE)."""
        t, _, s = self._schedule(x, t)
        out = self._net(x, t)
        return out if self.ve else out.div(like(-s, x))


def from_score_sde(net, sde: LinearSDE, *, num_scales: int = 1000) -> ScoreSDEModel:
    """A network of the reference score-SDE code (continuously trained) as a score model.

    Args:
        net: ``net(x, labels)``; for VP/sub-VP it predicts the noise (the reference's
            ``continuous=True`` models), for VE the score.
        sde: the SDE it was trained with, as an sdediff :class:`~sdediff.VPSDE`,
            :class:`~sdediff.SubVPSDE` or :class:`~sdediff.VESDE` (same ``beta_min``/``beta_max``
            or ``sigma_min``/``sigma_max``).
        num_scales: the reference's ``N``; VP/sub-VP labels are ``(N - 1) t``.

    Returns:
        A :class:`ScoreSDEModel` (``score(x, t)``, ``.sde``, ``.time_of(labels)``).

    Raises:
        TypeError: ``sde`` not one of the three reference SDEs, or ``net`` not callable.
        ValueError: ``num_scales < 2``, or an output of the wrong shape (at call time).
    """
    return ScoreSDEModel(net, sde, num_scales)
