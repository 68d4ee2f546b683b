"""The peers of the peer benchmark: diffusers' schedulers and the score-SDE reference samplers,
driven by the exact oracle score (see :mod:`sdediff.bench.peers` for the mapping).

Install the peers with ``pip install "sdediff[peers]"`` (``diffusers``).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import time
from typing import Callable

import torch

import sdediff as sd

from .problems import EPS, METRICS, metrics, prior

__all__ = ["TRAIN_CONFIG", "CHECK_STEPS", "CHECK_FIRST_ORDER_STEPS", "CHECK_ANCESTRAL_STEPS", "CHECK_RK45_TOL",
           "CHECK_SEEDS", "RK45_TOLERANCES",
           "require_diffusers", "NoiseLevel", "exact_eps", "Peer", "run_scheduler", "run_score_sde_vp", "run_rk45",
           "peer_variants", "run_one", "log_row", "run_peers"]

# the reference RK45 ODE sampler's tolerances (rtol = atol); its runs within a budget count,
# and the tighter ones measure how many NFE it needs to reach the noise floor
RK45_TOLERANCES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
CHECK_STEPS = 200
# Euler and the SDE solvers need more steps to hide their error; diffusers' integer grids
# need fewer than 1000 (more repeat a timestep: a zero-length step)
CHECK_FIRST_ORDER_STEPS = 500
CHECK_ANCESTRAL_STEPS = 2000  # first-order stochastic peers (on continuous grids)
CHECK_RK45_TOL = 1e-5
CHECK_SEEDS = (1, 2, 3)  # stochastic peers: metrics averaged over independent runs
# the discrete VP chain of VPSDE(): beta_i = beta(t_i) / 1000 for beta(t) = 0.1 + 19.9 t
TRAIN_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                    prediction_type="epsilon")


def require_diffusers(who: str = "the peer benchmark", extra: str = "peers"):
    """Import diffusers (its logging quietened) or fail naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"{who} needs the diffusers library: install the '{extra}' extra, "
                          f"pip install \"sdediff[{extra}]\" (or pip install -e \".[{extra}]\" in a checkout)") from err
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


# --------------------------------------------------------------------------- the oracle
class NoiseLevel:
    """A stand-in SDE whose marginal at every ``t`` is ``alpha x0 + sigma z``."""

    def __init__(self, alpha: float, sigma: float):
        self.alpha, self.sigma = alpha, sigma

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.alpha)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma)


def exact_eps(gm: sd.GaussianMixture, x: torch.Tensor, s: float) -> torch.Tensor:
    """The exact noise prediction at the VP state ``x`` of k-diffusion noise level ``s``.

    ``s = sigma / alpha``; the VP marginal there is ``alpha x0 + sigma z`` with
    ``alpha = 1 / sqrt(1 + s^2)``. Returns ``-sigma * score(x)`` in float64.
    """
    alpha = 1.0 / math.sqrt(1.0 + s * s)
    sigma = s * alpha
    x = x.to(torch.float64)
    t = torch.zeros(x.shape[0], dtype=torch.float64)
    return -sigma * gm.score_at(x, t, NoiseLevel(alpha, sigma))


def _model_sigma(scheduler) -> float:
    """The noise level at which ``scheduler`` evaluates the model in its current state."""
    if getattr(scheduler, "mid_point_sigma", None) is not None and not scheduler.state_in_first_order:
        return float(scheduler.mid_point_sigma)  # DPM++ SDE's second stage
    index = scheduler.step_index if scheduler.step_index is not None else 0
    return float(scheduler.sigmas[index])


# --------------------------------------------------------------------------- the peers
@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer sampler in one configuration.

    Attributes:
        label: a short unique name, e.g. ``dpmpp_3M_karras``.
        family: what it is, e.g. ``DPM-Solver++ 3M``.
        run: ``run(gm, z, generator, budget=, num_steps=, tol=) -> (x, nfe, steps)`` from the
            standard normal prior draw ``z``, given an NFE budget, a step count, or (adaptive
            peers) a tolerance.
        stochastic: whether it injects noise.
        adaptive: whether it picks its own steps (then it runs over tolerances).
        check_steps: the generous step count of the mapping check (:func:`check_peers`).
    """

    label: str
    family: str
    run: Callable
    stochastic: bool = False
    adaptive: bool = False
    check_steps: int = CHECK_STEPS


def _scheduler_steps(make, budget: int) -> int:
    """The most inference steps whose timestep list (one model call each) fits ``budget``."""
    for steps_ in range(budget, 0, -1):
        scheduler = make()
        scheduler.set_timesteps(steps_)
        if len(scheduler.timesteps) <= budget:
            return steps_
    return 0


def run_scheduler(make, gm: sd.GaussianMixture, z: torch.Tensor, generator: torch.Generator,
                  num_steps: int) -> tuple[torch.Tensor, int]:
    """The standard diffusers sampling loop with the exact oracle as the model.

    Returns the final sample and the number of model calls.
    """
    scheduler = make(generator)
    scheduler.set_timesteps(num_steps)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = z * scheduler.init_noise_sigma
    calls = 0
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        eps = exact_eps(gm, x_in, _model_sigma(scheduler))
        calls += 1
        kw = {"generator": generator} if takes_generator else {}
        x = scheduler.step(eps, t, x, return_dict=False, **kw)[0]
    return x.to(torch.float64), calls


def _diffusers_peer(label: str, family: str, cls_name: str, stochastic: bool = False,
                    check_steps: int = CHECK_STEPS, **config) -> Peer:
    """A diffusers scheduler class with ``config`` on top of :data:`TRAIN_CONFIG`."""
    def make(generator=None):
        cls = getattr(require_diffusers(), cls_name)
        extra = {}
        if generator is not None and "noise_sampler_seed" in inspect.signature(cls).parameters:
            # DPM++ SDE draws its Brownian tree from a seed: take it from the generator
            extra["noise_sampler_seed"] = int(torch.randint(2 ** 31, (1,), generator=generator))
        return cls(**TRAIN_CONFIG, **config, **extra)

    def run(gm, z, generator, budget=None, num_steps=None, tol=None):
        if budget is not None:
            num_steps = _scheduler_steps(make, budget)
        if num_steps < 1:
            raise ValueError(f"no step count fits {budget} model calls")
        x, calls = run_scheduler(make, gm, z, generator, num_steps)
        return x, calls, num_steps

    return Peer(label, family, run, stochastic, check_steps=check_steps)


def run_score_sde_vp(gm: sd.GaussianMixture, z: torch.Tensor, generator: torch.Generator,
                     num_steps: int) -> torch.Tensor:
    """The score-SDE reference VP Euler-Maruyama predictor; returns the last step's mean."""
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler
    sde = sd.VPSDE()
    scheduler = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20.0, sampling_eps=EPS)
    scheduler.set_timesteps(num_steps)
    x = x_mean = z
    for t in scheduler.timesteps:
        vec_t = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        eps = -sde.std(vec_t)[:, None] * gm.score_at(x, vec_t, sde)
        x, x_mean = scheduler.step_pred(eps, x, vec_t, generator=generator)
    return x_mean


def _score_sde_vp_peer() -> Peer:
    def run(gm, z, generator, budget=None, num_steps=None, tol=None):
        num_steps = num_steps if budget is None else budget
        return run_score_sde_vp(gm, z, generator, num_steps), num_steps, num_steps

    return Peer("score_sde_vp_em", "score-SDE reference VP predictor (Euler-Maruyama)", run, stochastic=True,
                check_steps=CHECK_ANCESTRAL_STEPS)


def run_rk45(gm: sd.GaussianMixture, z: torch.Tensor, tol: float) -> tuple[torch.Tensor, int]:
    """The score-SDE reference ODE sampler: SciPy RK45 on the probability-flow ODE, T -> eps."""
    from scipy import integrate
    sde = sd.VPSDE()
    shape = z.shape

    def drift(t, y):
        x = torch.from_numpy(y).reshape(shape)
        vec_t = torch.full((shape[0],), t, dtype=torch.float64)
        beta = float(sde.beta(vec_t[:1]))
        return (-0.5 * beta * (x + gm.score_at(x, vec_t, sde))).reshape(-1).numpy()

    sol = integrate.solve_ivp(drift, (sde.T, EPS), z.reshape(-1).numpy(), rtol=tol, atol=tol,
                              method="RK45")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape), int(sol.nfev)


def _rk45_peer() -> Peer:
    def run(gm, z, generator, budget=None, num_steps=None, tol=None):
        x, nfe = run_rk45(gm, z, tol)
        return x, nfe, None

    return Peer("rk45", "score-SDE reference ODE sampler (SciPy RK45)", run, adaptive=True)


def peer_variants() -> list[Peer]:
    """Every peer configuration: recommended settings and the usual alternatives.

    Left out as invalid or redundant in diffusers: UniPC's ``bh1`` with a final step to
    sigma 0 (NaN), ``final_sigmas_type="sigma_min"`` on the Karras / logSNR grids (they end
    at sigma_min already: a zero-length last step, NaN for 3M), ``euler_at_final`` (the
    same as ``lower_order_final`` here) and singlestep without ``lower_order_final``
    (diffusers forces it on with a final step to sigma 0).
    """
    first = CHECK_FIRST_ORDER_STEPS
    karras = {"use_karras_sigmas": True}
    smin = {"final_sigmas_type": "sigma_min"}
    peers = []
    add = peers.append
    for k in (2, 3):
        for name, opt in (("", {}), ("_smin", smin), ("_karras", karras), ("_logsnr", {"use_lu_lambdas": True})):
            add(_diffusers_peer(f"dpmpp_{k}M{name}", f"DPM-Solver++ {k}M", "DPMSolverMultistepScheduler",
                                algorithm_type="dpmsolver++", solver_order=k, **opt))
        for name, opt in (("", {}), ("_karras", karras)):
            add(_diffusers_peer(f"dpmpp_{k}S{name}", f"DPM-Solver++ {k}S (singlestep)",
                                "DPMSolverSinglestepScheduler", algorithm_type="dpmsolver++", solver_order=k,
                                lower_order_final=True, **opt))
            add(_diffusers_peer(f"deis_{k}{name}", f"DEIS-{k}", "DEISMultistepScheduler", solver_order=k, **opt))
        for name, opt in (("bh2", {}), ("bh2_smin", smin), ("bh1_smin", smin), ("bh2_karras", karras),
                          ("bh2_karras_smin", dict(karras, **smin)), ("bh1_karras_smin", dict(karras, **smin))):
            add(_diffusers_peer(f"unipc_{k}_{name}", f"UniPC-{k}", "UniPCMultistepScheduler", solver_order=k,
                                solver_type=name[:3], **opt))
    for name, opt in (("", {}), ("_karras", karras)):
        add(_diffusers_peer(f"lms{name}", "LMS (order 4)", "LMSDiscreteScheduler", **opt))
        add(_diffusers_peer(f"heun{name}", "Heun (EDM)", "HeunDiscreteScheduler", **opt))
        add(_diffusers_peer(f"euler{name}", "Euler", "EulerDiscreteScheduler", check_steps=first, **opt))
        add(_diffusers_peer(f"euler{name}_smin", "Euler", "EulerDiscreteScheduler", check_steps=first,
                            **opt, **smin))
        add(_diffusers_peer(f"dpmpp_2M_sde{name}", "DPM-Solver++ 2M SDE", "DPMSolverMultistepScheduler",
                            stochastic=True, check_steps=first, algorithm_type="sde-dpmsolver++",
                            solver_order=2, **opt))
        add(_diffusers_peer(f"dpmpp_sde{name}", "DPM++ SDE", "DPMSolverSDEScheduler", stochastic=True,
                            check_steps=first, **opt))
    add(_diffusers_peer("euler_ancestral", "Euler-ancestral", "EulerAncestralDiscreteScheduler",
                        stochastic=True, check_steps=CHECK_ANCESTRAL_STEPS))
    add(_score_sde_vp_peer())
    add(_rk45_peer())
    return peers



# --------------------------------------------------------------------------- running
def run_one(peer: Peer, gm, n, fresh, logp_ref, seed: int = 0, **setting) -> tuple[dict, torch.Tensor | None]:
    """One peer run (``setting``: ``budget``, ``num_steps`` or ``tol``): its row and its samples.

    The row holds the metrics and cost, or the error the peer raised (then no samples).
    """
    z, g = prior(n, gm.dim, seed)
    t0 = time.perf_counter()
    try:
        x, nfe, num_steps = peer.run(gm, z, g, **setting)
    except Exception as err:  # a peer that fails is reported, not fatal
        return dict(peer=peer.label, **setting, error=f"{type(err).__name__}: {err}"[:300]), None
    row = dict(peer=peer.label, family=peer.family, **{k: v for k, v in setting.items() if k != "num_steps"})
    row.update(nfe=int(nfe), steps=num_steps, seconds=time.perf_counter() - t0,
               **metrics(x, gm, fresh, logp_ref))
    return row, x


def log_row(log, prefix: str, row: dict, suffix: str = "") -> None:
    """One progress line: a run's NFE, metrics and time, or its error."""
    if "error" in row:
        log(f"  {prefix} {row['peer']}: {row['error'][:150]}")
    else:
        log(f"  {prefix} {row['peer']:24s} nfe={row['nfe']:4d} "
            + " ".join(f"{m}={row[m]:.3g}" for m in METRICS) + f" ({row['seconds']:.2f}s){suffix}")


def run_peers(name: str, gm: sd.GaussianMixture, n: int, nfes, peers, fresh, logp_ref, log=print) -> list[dict]:
    """Every peer at every budget (adaptive ones at every tolerance) on one problem."""
    runs = []
    for peer in peers:
        settings = [dict(tol=t) for t in RK45_TOLERANCES] if peer.adaptive else [dict(budget=b) for b in nfes]
        for setting in settings:
            row, _ = run_one(peer, gm, n, fresh, logp_ref, **setting)
            runs.append(row)
            log_row(log, name, row)
    return runs
