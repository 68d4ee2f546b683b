"""UniPC (Zhao et al. 2023): DPM-Solver++ multistep with the UniC corrector, 1 NFE per step.

The predictor and the corrector share :func:`sdediff.samplers.dpm_solver.dpm_solver`'s
multistep loop (``corrector=True``); this module registers the named sampler.
"""
from __future__ import annotations

from torch import Tensor

from ..sde import LinearSDE
from . import register_sampler
from .dpm_solver import dpm_solver

__all__ = ["unipc"]


@register_sampler("unipc", nfe_per_step=1, order=3, stochastic=False, linear_only=True,
                  grid="quadratic", steps=20, denoise=False)
def unipc(score, sde: LinearSDE, x: Tensor, ts: Tensor, *, generator=None, progress: bool = False,
          callback=None, order: int = 2, max_step_ratio: float | None = 1.0,
          lower_order_final: bool = False, prediction: str = "data") -> Tensor:
    """UniPC (Zhao et al. 2023): DPM-Solver++ multistep with the UniC corrector, 1 NFE/step.

    The predictor is the ``order``-node multistep update; the corrector redoes each step
    with the denoiser at its end point as one more node (integrated exactly against
    ``exp(u - h)``), reaching order ``order + 1`` without another evaluation. The final
    step is not corrected (that would cost one more NFE).

    Args:
        score, sde, x, ts, generator, progress, callback: the sampler contract.
        order: predictor order, 1-3 (``order=1``: a DDIM predictor with a trapezoid-like
            corrector, order 2).
        max_step_ratio, lower_order_final, prediction: as in :func:`dpm_solver`
            (``prediction="noise"``: UniPC with noise prediction, Zhao et al. 2023's
            ``predict_x0=False``).
    """
    return dpm_solver(score, sde, x, ts, progress=progress, callback=callback, order=order,
                      method="multistep", max_step_ratio=max_step_ratio,
                      lower_order_final=lower_order_final, corrector=True,
                      prediction=prediction)


