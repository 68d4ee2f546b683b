"""Models trained elsewhere as sdediff score models: diffusers, k-diffusion / EDM, score_sde.

Each adapter returns an ``nn.Module`` whose ``forward(x, t)`` is the score function of the
contract (``t`` of shape ``(B,)`` in ``[0, T]``), with ``.sde`` (the SDE its noise levels belong
to) and ``.time_of(labels)`` (the time of the source library's own timesteps / sigmas / labels):

* :func:`from_diffusers` -- ``UNet2DModel`` + scheduler, or a local ``save_pretrained`` folder;
  ``.sde`` is the :class:`~sdediff.sde.DiscreteVPSDE` of ``alphas_cumprod``.
* :func:`from_k_diffusion` -- a denoiser ``D(x, sigma)``; ``.sde`` is :class:`EDMSDE`
  (``std(t) = sigma(t)`` exactly) unless another is given.
* :func:`from_score_sde` -- a score_sde_pytorch network with its VP / sub-VP / VE SDE.

The source libraries are optional: an adapter imports one only when it must (loading a diffusers
folder; :func:`k_diffusion_sampling`), with an ``ImportError`` saying what to install.
"""
from ._base import AdaptedScoreModel
from .diffusers import PREDICTION_TYPES, DiffusersScoreModel, from_diffusers
from .k_diffusion import EDMSDE, KDiffusionScoreModel, from_k_diffusion, k_diffusion_sampling
from .score_sde import ScoreSDEModel, from_score_sde

__all__ = ["from_diffusers", "from_k_diffusion", "from_score_sde", "EDMSDE", "k_diffusion_sampling",
           "AdaptedScoreModel", "DiffusersScoreModel", "KDiffusionScoreModel", "ScoreSDEModel",
           "PREDICTION_TYPES"]
