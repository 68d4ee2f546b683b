"""sdediff: score-based SDE/ODE diffusion toolkit.

Forward SDEs (VP, sub-VP, VE, any linear or user-written SDE), DDPM as the
discrete VP chain, samplers behind one ``sample`` call, exact log-likelihoods
through the probability-flow ODE, and a Gaussian-mixture oracle that knows the
right answer for all of them.
"""
from .analytic import GaussianMixture
from .ddpm import DDPM
from .samplers import available_samplers, register_sampler, sample, time_grid
from .sde import SDE, LinearSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE",
    "DDPM", "GaussianMixture",
    "sample", "register_sampler", "available_samplers", "time_grid",
]
