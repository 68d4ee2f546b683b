"""sdediff: score-based SDE/ODE diffusion toolkit.

Forward SDEs (VP, sub-VP, VE, any linear or user-written SDE), DDPM as the
discrete VP chain, samplers behind one ``sample`` call, exact log-likelihoods
through the probability-flow ODE, and a Gaussian-mixture oracle that knows the
right answer for all of them.
"""
from .analytic import GaussianMixture
from .classifier import NoisyClassifier, classifier_log_prob_fn, train_classifier
from .datasets import TOY_DATASETS, load_digits_tensors, ring_params, toy_data
from .ddpm import DDPM, VLBResult
from .guidance import classifier_free_guidance, classifier_guidance, inpaint, plug_and_play
from .likelihood import (ERROR_NORMS, TRACE_ESTIMATORS, EvaluationResult, LikelihoodResult, SolverOptions, evaluate,
                         log_likelihood)
from .losses import ddpm_loss, dsm_loss, explicit_score_matching_loss
from .metrics import gaussian_frechet, mmd, mode_statistics, sliced_wasserstein
from .nets import ResidualMLP, UNet, build_net
from .parameterization import DiscreteScoreModel, ScoreModel
from .quantization import bits_per_dim, dequantize
from .samplers import available_samplers, register_sampler, sample, time_grid
from .sde import SDE, DiscreteVPSDE, LinearSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE
from .interop import EDMSDE, from_diffusers, from_k_diffusion, from_score_sde
from .training import Trainer, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    # SDEs and the discrete chain
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "DiscreteVPSDE", "ReverseSDE", "DDPM", "VLBResult",
    # models trained elsewhere
    "from_diffusers", "from_k_diffusion", "from_score_sde", "EDMSDE",
    # ground truth
    "GaussianMixture",
    # sampling
    "sample", "register_sampler", "available_samplers", "time_grid",
    # conditional generation
    "classifier_free_guidance", "classifier_guidance", "inpaint", "plug_and_play",
    "NoisyClassifier", "classifier_log_prob_fn", "train_classifier",
    # likelihood
    "log_likelihood", "evaluate", "bits_per_dim", "dequantize", "LikelihoodResult",
    "EvaluationResult", "SolverOptions", "TRACE_ESTIMATORS", "ERROR_NORMS",
    # models and training
    "ScoreModel", "DiscreteScoreModel", "dsm_loss", "ddpm_loss", "explicit_score_matching_loss",
    "Trainer", "load_checkpoint",
    # networks and data
    "ResidualMLP", "UNet", "build_net", "toy_data", "ring_params", "TOY_DATASETS",
    "load_digits_tensors",
    # metrics
    "sliced_wasserstein", "mmd", "gaussian_frechet", "mode_statistics",
]
