"""Peer benchmark: sdediff's samplers against established implementations, exact score.

The peers are the samplers of the ``diffusers`` library -- DPM-Solver++ 2M/3M (and its SDE
variant), DPM-Solver++ singlestep, UniPC, DEIS, LMS, Heun, Euler, Euler-ancestral and
DPM++ SDE -- plus the score-SDE reference Euler-Maruyama VP predictor (diffusers'
``ScoreSdeVpScheduler``) and the reference probability-flow ODE sampler (SciPy's RK45).
Each runs in its recommended settings and the usual alternatives (Karras / uniform-logSNR
sigmas, final step to sigma 0 or sigma_min, lower-order final steps, UniPC's B(h)
variants), and the best peer per metric is kept at each NFE budget.

Problems, metrics, sample sizes, fresh reference samples and noise floors are those of
:mod:`benchmarks.steps` (``ring2d`` and ``mix64``); sdediff's own sampler variants run in the
same process through :func:`benchmarks.steps.run_problem`, so both sides are measured on
the same data and from the same prior draw.

How the peers see the oracle: the schedulers are configured as the discrete VP chain that
matches ``VPSDE()`` (1000 linear betas from 1e-4 to 0.02, epsilon prediction). Every
scheduler, after ``scale_model_input``, hands the model the VP-scaled state
``x = alpha x0 + sigma z`` with ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s alpha``, where
``s`` is the scheduler's own noise level for that call (``scheduler.sigmas[step_index]``,
or the midpoint sigma of DPM++ SDE's second stage). The model returns the exact
``eps = -sigma * score(x)`` of the noised mixture at that ``(alpha, sigma)``, in float64.
So a peer gets the exact score at the noise level its update formula assumes, even where
diffusers rounds the timestep it would pass to a network. The prior draw is the same
standard normal draw as sdediff's (seed 0), scaled by ``init_noise_sigma``; the same
generator then drives the stochastic peers' noise. The two score-SDE reference samplers
run on ``VPSDE()`` itself with the exact score. NFE counts the model calls actually made;
the number of inference steps is the largest that stays within the budget (Heun and
DPM++ SDE call the model twice per step except on the last).

Check of that mapping (reported as ``check``): every peer at a generous number of steps
on ``ring2d`` must reproduce the exact answer -- a deterministic peer the converged ODE
solution from the same prior draw (sdediff's DPM-Solver 3M at 1000 steps), sample by
sample; a stochastic one, averaged over three independent runs, the exact-sample value
of every metric (see :func:`check_peers`).

Reported per problem and NFE budget: for each metric, the best peer and sdediff's best
(the bar: sdediff's value <= the peer's), and on each side the all-round best run (the
smallest worst value / noise floor over the six metrics), since a per-metric best can
come from a run that is poor on the other metrics.

Install the peers with ``pip install -e ".[peers]"`` (``diffusers``; an installed torch is
kept). Run ``python -m benchmarks.peers [--quick]``; results go to
``benchmarks/results/peers.{json,md,png}``. ``--quick`` (under a minute) uses the smaller
sample sets of ``steps --quick``, NFE 5 and 10 only, and skips the mapping check.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch

import sdediff as sd
from benchmarks import steps
from benchmarks.steps import METRICS, mix64, ring2d

NFES = (5, 10, 20)
QUICK_NFES = (5, 10)
SIZES = {"ring2d": 2000, "mix64": 1000}
QUICK_SIZES = {"ring2d": 1000, "mix64": 500}
# sdediff's adaptive samplers at the tolerances loose enough to fit the budgets
SDEDIFF_TOLERANCES = (0.2, 0.1)
# the reference RK45 ODE sampler's tolerances (rtol = atol); its runs within a budget count,
# and the tighter ones measure how many NFE it needs to reach the noise floor
RK45_TOLERANCES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
# sdediff's adaptive samplers, for the NFE-to-noise-floor comparison (rtol; atol = rtol / 5)
ADAPTIVE_TOLERANCES = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
QUICK_ADAPTIVE_TOLERANCES = (0.1, 0.02)
# sdediff's adaptive samplers (registry names) in that comparison
ADAPTIVE_SAMPLERS = ("dpm_solver_adaptive", "ode")
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
RESULTS = Path(__file__).resolve().parent / "results"


def _require_diffusers():
    """Import diffusers (its logging quietened) or fail naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("benchmarks.peers needs the diffusers library: install the 'peers' extra, "
                          "pip install -e \".[peers]\"") from err
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


# --------------------------------------------------------------------------- the oracle
class _NoiseLevel:
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
    return -sigma * gm.score_at(x, t, _NoiseLevel(alpha, sigma))


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
        cls = getattr(_require_diffusers(), cls_name)
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
    scheduler = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20.0, sampling_eps=steps.EPS)
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

    sol = integrate.solve_ivp(drift, (sde.T, steps.EPS), z.reshape(-1).numpy(), rtol=tol, atol=tol,
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
def reference(gm: sd.GaussianMixture, n: int) -> tuple[torch.Tensor, float, dict]:
    """Fresh exact samples, ``E log p0`` and the noise floors, exactly as in ``steps.run_problem``."""
    g = torch.Generator().manual_seed(2024)
    fresh = gm.sample(n, generator=g, dtype=torch.float64)
    logp_ref = float(gm.log_prob(gm.sample(200_000, generator=g, dtype=torch.float64)).mean())
    return fresh, logp_ref, steps._noise_floor(gm, n, fresh, logp_ref)


def _prior(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    """The standard normal prior draw and the generator, positioned after it, for the noise.

    With seed 0 this is sdediff's prior draw in :func:`benchmarks.steps.run_problem`.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), g


def _run_one(peer: Peer, gm, n, fresh, logp_ref, seed: int = 0, **setting) -> tuple[dict, torch.Tensor | None]:
    """One peer run (``setting``: ``budget``, ``num_steps`` or ``tol``): its row and its samples.

    The row holds the metrics and cost, or the error the peer raised (then no samples).
    """
    z, g = _prior(n, gm.dim, seed)
    t0 = time.perf_counter()
    try:
        x, nfe, num_steps = peer.run(gm, z, g, **setting)
    except Exception as err:  # a peer that fails is reported, not fatal
        return dict(peer=peer.label, **setting, error=f"{type(err).__name__}: {err}"[:300]), None
    row = dict(peer=peer.label, family=peer.family, **{k: v for k, v in setting.items() if k != "num_steps"})
    row.update(nfe=int(nfe), steps=num_steps, seconds=time.perf_counter() - t0,
               **steps._metrics(x, gm, fresh, logp_ref))
    return row, x


def _log_row(log, prefix: str, row: dict, suffix: str = "") -> None:
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
            row, _ = _run_one(peer, gm, n, fresh, logp_ref, **setting)
            runs.append(row)
            _log_row(log, name, row)
    return runs


def exact_spread(gm: sd.GaussianMixture, n: int, fresh, logp_ref, draws: int = 10, seed: int = 321) -> dict:
    """Mean and standard deviation of each metric over ``draws`` exact sample sets of size ``n``."""
    g = torch.Generator().manual_seed(seed)
    rows = [steps._metrics(gm.sample(n, generator=g, dtype=torch.float64), gm, fresh, logp_ref)
            for _ in range(draws)]
    out = {}
    for m in METRICS:
        v = torch.tensor([r[m] for r in rows], dtype=torch.float64)
        out[m] = dict(mean=float(v.mean()), std=float(v.std()))
    return out


def _check_setting(peer: Peer, coarse: bool = False) -> dict:
    """The generous setting of the mapping check (``coarse``: a cheaper one, for the trend)."""
    if peer.adaptive:
        return dict(tol=CHECK_RK45_TOL * (100 if coarse else 1))
    return dict(num_steps=peer.check_steps // (4 if coarse else 1))


def _check_one(peer: Peer, gm, n, fresh, logp_ref, reference_, coarse=False) -> dict:
    """One peer at its check setting, judged against the exact answer (see :func:`check_peers`)."""
    x_ref, converged, spread, floor = reference_
    setting = _check_setting(peer, coarse)
    if not peer.stochastic:
        row, x = _run_one(peer, gm, n, fresh, logp_ref, **setting)
        if x is None:
            return dict(row, ok=False)
        row["rms_to_converged"] = float((x - x_ref).pow(2).sum(1).mean().sqrt())
        row["ok"] = row["rms_to_converged"] < 0.05 and all(abs(row[m] - converged[m]) <= 0.5 * floor[m]
                                                            for m in METRICS)
        return row
    runs = [_run_one(peer, gm, n, fresh, logp_ref, seed=seed, **setting)[0] for seed in CHECK_SEEDS]
    if any("error" in r for r in runs):
        return dict(next(r for r in runs if "error" in r), ok=False)
    row = dict(runs[0], seconds=sum(r["seconds"] for r in runs), seeds=list(CHECK_SEEDS),
               **{m: sum(r[m] for r in runs) / len(runs) for m in METRICS})
    k = len(runs) ** 0.5
    row["ok"] = all(row[m] <= spread[m]["mean"] + 3 * spread[m]["std"] / k for m in METRICS)
    return row


def check_peers(gm: sd.GaussianMixture, n: int, peers, fresh, logp_ref, floor, log=print) -> dict:
    """Each peer at a generous setting on ``gm`` (the ring): does it reach the exact answer?

    A deterministic peer must land on the converged ODE solution from the same prior draw
    (sdediff's DPM-Solver 3M, 1000 steps): RMS distance per sample below 0.05 (a tenth of
    a mode's std) and every metric within half its noise floor of that solution's. A
    stochastic one, its metrics averaged over runs from the independent seeds
    :data:`CHECK_SEEDS` (prior draw and noise), must have every average within three
    standard errors above the mean of that metric for exact samples (10 draws; standard
    error = their std / sqrt(len(CHECK_SEEDS))). A peer that fails is also run at a
    quarter of the steps (RK45: 100x the tolerance), to tell a discretization error that
    is still shrinking from one that is not.
    """
    sde = sd.VPSDE()
    x_ref = sd.sample(gm.score_fn(sde), sde, (n, gm.dim), sampler="dpm_solver", order=3, steps=1000,
                      grid="logsnr", eps=steps.EPS, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64, denoise=False)
    converged = steps._metrics(x_ref, gm, fresh, logp_ref)
    spread = exact_spread(gm, n, fresh, logp_ref)
    reference_ = (x_ref, converged, spread, floor)
    rows = []
    for peer in peers:
        row = _check_one(peer, gm, n, fresh, logp_ref, reference_)
        rms = f" rms={row['rms_to_converged']:.2g}" if "rms_to_converged" in row else ""
        _log_row(log, "check", row, f"{rms} -> {'ok' if row['ok'] else 'FAILED'}")
        if not row["ok"] and "error" not in row:
            row["coarse"] = _check_one(peer, gm, n, fresh, logp_ref, reference_, coarse=True)
            _log_row(log, "check (coarser)", row["coarse"])
        rows.append(row)
    return {"problem": "ring2d", "n": n, "converged": converged, "exact_spread": spread, "runs": rows}


# --------------------------------------------------------------------------- comparison
def _best(runs, metric, budget):
    """The run with the lowest ``metric`` among those within ``budget`` NFE."""
    ok = [r for r in runs if "error" not in r and r["nfe"] <= budget and math.isfinite(r[metric])]
    return min(ok, key=lambda r: r[metric]) if ok else None


def compare(problem: dict, nfes) -> dict:
    """Per NFE budget and metric: the best peer, sdediff's best, and whether sdediff wins."""
    floor = problem["noise_floor"]
    out = {}
    for budget in nfes:
        row = {}
        for m in METRICS:
            p = _best(problem["peer_runs"], m, budget)
            s = _best(problem["sdediff_runs"], m, budget)
            row[m] = dict(floor=floor[m],
                          peer=None if p is None else dict(name=p["peer"], nfe=p["nfe"], value=p[m]),
                          sdediff=None if s is None else dict(name=s["sampler"], nfe=s["nfe"], value=s[m]))
            if p and s:
                row[m]["sdediff_wins"] = s[m] <= p[m]
                row[m]["ratio"] = s[m] / p[m] if p[m] > 0 else float("inf")
                row[m]["both_at_floor"] = max(s[m], p[m]) <= 1.5 * floor[m]
        out[budget] = row
    return out


def _worst_ratio(run: dict, floor: dict) -> float:
    """A run's largest value / noise floor over the six metrics (its weakest side)."""
    ratios = [run[m] / floor[m] for m in METRICS]
    return max(ratios) if all(math.isfinite(r) for r in ratios) else float("inf")


def all_round(problem: dict, nfes) -> dict:
    """Per NFE budget: the one peer run and the one sdediff run whose worst metric is best.

    A per-metric best may come from a run that is poor on the other metrics (a sample that
    collapses its modes onto their centres has a small ``mean_error``); this picks, on each
    side, the run with the smallest largest value / noise floor.
    """
    floor = problem["noise_floor"]
    out = {}
    for budget in nfes:
        row = {}
        for side, key in (("peer", "peer"), ("sdediff", "sampler")):
            runs = problem[f"{side}_runs"]
            ok = [r for r in runs if "error" not in r and r["nfe"] <= budget]
            best = min(ok, key=lambda r: _worst_ratio(r, floor), default=None)
            row[side] = None if best is None else dict(name=best[key], nfe=best["nfe"],
                                                       worst_ratio=_worst_ratio(best, floor),
                                                       **{m: best[m] for m in METRICS})
        out[budget] = row
    return out


def converged_metrics(gm: sd.GaussianMixture, n: int, fresh, logp_ref) -> dict:
    """The metrics of the converged probability-flow ODE solution from the common prior draw."""
    sde = sd.VPSDE()
    z, _ = _prior(n, gm.dim)
    x = sd.sample(gm.score_fn(sde), sde, (n, gm.dim), sampler="ode", x_T=z, eps=steps.EPS, denoise=False,
                  rtol=1e-9, atol=1e-9, dtype=torch.float64)
    return steps._metrics(x, gm, fresh, logp_ref)


def adaptive_to_floor(problem: dict) -> dict:
    """Fewest NFE at which each adaptive sampler (both sides) reaches the noise floor.

    Two readings, as in :func:`benchmarks.steps.headline`: (a) every metric within 1.5x its
    noise floor; (b) every metric within half its noise floor of the converged ODE solution
    from the same prior draw (the discretization error hidden under the sampling noise;
    robust to the luck of the draw, which (a) is not).
    """
    floor, conv = problem["noise_floor"], problem["converged"]
    out = {}
    for side, key in (("peer", "peer"), ("sdediff", "sampler")):
        runs = [r for r in problem[f"{side}_runs"] + problem.get(f"{side}_adaptive_runs", [])
                if "error" not in r and (r.get("tol") is not None if side == "peer" else r.get("budget") is None)]
        for label in sorted({r[key] for r in runs}):
            mine = [r for r in runs if r[key] == label]
            out[label] = dict(
                side=side,
                floor=min((r["nfe"] for r in mine if all(r[m] <= 1.5 * floor[m] for m in METRICS)), default=None),
                converged=min((r["nfe"] for r in mine
                               if all(abs(r[m] - conv[m]) <= 0.5 * floor[m] for m in METRICS)), default=None),
                tried=sorted(r["nfe"] for r in mine))
    return out


def verdict(row: dict) -> str:
    """One line: on how many metrics sdediff is at least as accurate, and where it loses."""
    cells = [(m, c) for m, c in row.items() if "sdediff_wins" in c]
    wins = sum(c["sdediff_wins"] for _, c in cells)
    losses = [f"{m} x{c['ratio']:.2f}" + (" (both within 1.5x floor)" if c["both_at_floor"] else "")
              for m, c in cells if not c["sdediff_wins"]]
    text = f"sdediff at least as accurate on {wins}/{len(cells)} metrics"
    return text + (f"; behind on {', '.join(losses)}" if losses else " -- bar met")


# --------------------------------------------------------------------------- reporting
def _check_lines(check: dict) -> list[str]:
    """The mapping-check section of the report."""
    lines = ["## Mapping check", "",
             f"Every peer on {check['problem']} (n={check['n']}) at a generous setting ({CHECK_STEPS} steps, "
             f"{CHECK_FIRST_ORDER_STEPS} for Euler and the DPM SDE solvers, {CHECK_ANCESTRAL_STEPS} for "
             f"Euler-ancestral and Euler-Maruyama, RK45 at tol "
             f"{CHECK_RK45_TOL:g}). Deterministic: RMS distance per sample to the converged ODE solution "
             "from the same prior draw < 0.05 and every metric within 0.5x its noise floor of that "
             f"solution's; stochastic: every metric, averaged over {len(CHECK_SEEDS)} independent runs, <= "
             f"mean + 3 std / sqrt({len(CHECK_SEEDS)}) of the metric over exact sample sets.", "",
             "| peer | NFE | RMS to converged | " + " | ".join(METRICS) + " | ok |",
             "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    lines.append("| (converged ODE solution) | | 0 | "
                 + " | ".join(f"{check['converged'][m]:.3g}" for m in METRICS) + " | |")
    k = len(CHECK_SEEDS) ** 0.5
    lines.append(f"| (exact samples: mean + 3 std / sqrt({len(CHECK_SEEDS)})) | | | "
                 + " | ".join(f"{v['mean'] + 3 * v['std'] / k:.3g}" for v in check["exact_spread"].values())
                 + " | |")
    for r in check["runs"]:
        if "error" in r:
            lines.append(f"| {r['peer']} | | | " + " | ".join("" for _ in METRICS) + f" | error: {r['error']} |")
            continue
        for row, ok in ((r, "yes" if r["ok"] else "NO"), (r.get("coarse"), "(coarser run)")):
            if row and "error" not in row:
                rms = f"{row['rms_to_converged']:.2g}" if "rms_to_converged" in row else "(stochastic)"
                lines.append(f"| {row['peer']} | {row['nfe']} | {rms} | "
                             + " | ".join(f"{row[m]:.3g}" for m in METRICS) + f" | {ok} |")
    failed = [r["peer"] for r in check["runs"] if not r["ok"]]
    lines += ["", (f"Failed: {', '.join(failed)}. Each failure is followed by a coarser run of the same peer: "
                   "an error that grows with the steps is not discretization error (round-off or a defect "
                   "of the peer, or a wrong mapping); one that shrinks is discretization error still visible "
                   "at the check setting.") if failed else "All peers pass.", ""]
    return lines


def write_markdown(results: dict, path: Path) -> None:
    """The comparison tables, verdicts, the mapping check and every peer run."""
    cfg = results["config"]
    lines = ["# Peer benchmark: sdediff vs established samplers", "",
             f"VP SDE, eps={steps.EPS}, exact oracle score on both sides. Config: `{json.dumps(cfg)}`.",
             "Peers: diffusers schedulers on the matching discrete VP chain, the score-SDE reference VP "
             "predictor and RK45 ODE sampler; see `benchmarks/peers.py`. Each cell is the best value "
             "over all variants within the NFE budget (lower is better); `wins` means sdediff's value "
             "<= the peer's. `ratio` = sdediff / peer. A pair with both values within 1.5x the noise "
             "floor differs only by sampling noise.", ""]
    for pname, prob in results["problems"].items():
        lines += [f"## {pname} (d={prob['dim']}, n={prob['n']})", "",
                  f"{len(prob['peer_labels'])} peer variants, {len(prob['sdediff_labels'])} sdediff variants.", ""]
        for budget, row in prob["comparison"].items():
            lines += [f"### NFE <= {budget}", "",
                      "| metric | noise floor | best peer | NFE | value | best sdediff | NFE | value | ratio | wins |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for m, c in row.items():
                p, s = c["peer"], c["sdediff"]
                if not (p and s):
                    continue
                tie = " (noise)" if c["both_at_floor"] else ""
                lines.append(f"| {m} | {c['floor']:.4g} | {p['name']} | {p['nfe']} | {p['value']:.4g} | "
                             f"{s['name']} | {s['nfe']} | {s['value']:.4g} | {c['ratio']:.2f} | "
                             f"{'yes' if c['sdediff_wins'] else 'no'}{tie} |")
            lines += ["", f"**Verdict at {budget} NFE:** {verdict(row)}.", ""]
        lines += ["### All-round best (smallest worst value / noise floor over the six metrics)", "",
                  "| NFE | side | run | NFE used | worst ratio | " + " | ".join(METRICS) + " |",
                  "|---|---|---|---|---|" + "---|" * len(METRICS)]
        for budget, row in prob["all_round"].items():
            for side in ("peer", "sdediff"):
                r = row[side]
                if r:
                    lines.append(f"| {budget} | {side} | {r['name']} | {r['nfe']} | {r['worst_ratio']:.3g} | "
                                 + " | ".join(f"{r[m]:.3g}" for m in METRICS) + " |")
        lines.append("")
        if prob.get("adaptive"):
            lines += ["### Adaptive samplers: fewest NFE to reach the noise floor", "",
                      "(a) every metric within 1.5x its noise floor; (b) every metric within half its noise "
                      "floor of the converged ODE solution from the same prior draw. `-`: not reached at "
                      "the tolerances tried (their NFE listed).", "",
                      "| side | sampler | (a) NFE | (b) NFE | NFE tried |", "|---|---|---|---|---|"]
            for label, a in sorted(prob["adaptive"].items(), key=lambda kv: (kv[1]["side"], kv[0])):
                lines.append(f"| {a['side']} | {label} | {a['floor'] if a['floor'] is not None else '-'} | "
                             f"{a['converged'] if a['converged'] is not None else '-'} | "
                             f"{', '.join(map(str, a['tried']))} |")
            lines.append("")
    if results.get("check"):
        lines += _check_lines(results["check"])
    for pname, prob in results["problems"].items():
        lines += [f"## All peer runs: {pname}", "", "<details><summary>table</summary>", "",
                  "| peer | NFE | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for r in prob["peer_runs"]:
            if "error" in r:
                lines.append(f"| {r['peer']} | ({r.get('budget', r.get('tol'))}) | error: {r['error']} |")
            else:
                lines.append(f"| {r['peer']} | {r['nfe']} | " + " | ".join(f"{r[m]:.3g}" for m in METRICS) + " |")
        lines += ["", "</details>", ""]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    """Per problem and metric: best peer and best sdediff value against NFE, floor dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    probs = list(results["problems"].items())
    fig, axes = plt.subplots(len(probs), len(METRICS), figsize=(3.6 * len(METRICS), 3.3 * len(probs)),
                             squeeze=False)
    for row, (pname, prob) in enumerate(probs):
        comp = {int(b): row for b, row in prob["comparison"].items()}
        budgets = sorted(comp)
        for col, m in enumerate(METRICS):
            ax = axes[row][col]
            for side, style in (("peer", dict(color="tab:orange", marker="s")),
                                ("sdediff", dict(color="tab:blue", marker="o"))):
                pts = [(b, comp[b][m][side]["value"]) for b in budgets if comp[b][m][side]]
                pts = [(b, v) for b, v in pts if v > 0]
                if pts:
                    ax.plot(*zip(*pts), ms=4, label=f"best {side}", **style)
            ax.axhline(prob["noise_floor"][m], color="k", ls="--", lw=1, label="noise floor")
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_xticks([], minor=True)
            ax.set_title(f"{pname}: {m}", fontsize=9)
            ax.set_xlabel("NFE budget")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out_dir: Path | str = RESULTS) -> None:
    """Write ``peers.json``, ``peers.md`` and ``peers.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(results, out_dir / "peers.md")
    plot(results, out_dir / "peers.png")


def run(quick: bool = False, out_dir: Path | str = RESULTS, log=print, check: bool | None = None) -> dict:
    """Run the comparison and write ``peers.{json,md,png}`` to ``out_dir``.

    Args:
        quick: NFE 5 and 10 and the smaller sample sets (< 1 min).
        out_dir: where the results go.
        log: a print-like function for progress lines.
        check: first verify every peer's oracle mapping on ``ring2d`` (see :func:`check_peers`);
            default: in the full run only.

    Returns:
        The results dict (also written as JSON).
    """
    _require_diffusers()
    torch.set_num_threads(1)
    check = not quick if check is None else check
    nfes = QUICK_NFES if quick else NFES
    sizes = QUICK_SIZES if quick else SIZES
    peers = peer_variants()
    t0 = time.perf_counter()
    results = {"config": {"quick": quick, "nfes": list(nfes), "sizes": sizes, "sde": "VPSDE()",
                          "eps": steps.EPS, "threads": 1, "diffusers": _require_diffusers().__version__,
                          "scheduler_config": TRAIN_CONFIG},
               "problems": {}, "check": None}
    for pname, gm in (("ring2d", ring2d()), ("mix64", mix64())):
        n = sizes[pname]
        fresh, logp_ref, floor = reference(gm, n)
        if check and pname == "ring2d":
            log(f"checking the oracle mapping of {len(peers)} peers on {pname}")
            results["check"] = check_peers(gm, n, peers, fresh, logp_ref, floor, log)
        log(f"{pname}: sdediff samplers")
        ours = steps.run_problem(pname, gm, n, nfes, SDEDIFF_TOLERANCES, log=log)
        if ours["noise_floor"] != floor:
            raise RuntimeError("benchmarks.steps changed its reference data: update peers.reference")
        log(f"{pname}: sdediff adaptive samplers")
        tols = QUICK_ADAPTIVE_TOLERANCES if quick else ADAPTIVE_TOLERANCES
        adaptive = steps.run_problem(pname, gm, n, (), [t for t in tols if t not in SDEDIFF_TOLERANCES],
                                     names=ADAPTIVE_SAMPLERS, log=log)
        log(f"{pname}: peers")
        prob = {"n": n, "dim": gm.dim, "noise_floor": floor,
                "converged": converged_metrics(gm, n, fresh, logp_ref),
                "peer_labels": [p.label for p in peers],
                "sdediff_labels": sorted({r["sampler"] for r in ours["runs"]}),
                "peer_runs": run_peers(pname, gm, n, nfes, peers, fresh, logp_ref, log),
                "sdediff_runs": ours["runs"], "sdediff_adaptive_runs": adaptive["runs"]}
        prob["comparison"] = compare(prob, nfes)
        prob["all_round"] = all_round(prob, nfes)
        prob["adaptive"] = adaptive_to_floor(prob)
        results["problems"][pname] = prob
        for budget, row in prob["comparison"].items():
            log(f"{pname} NFE {budget}: {verdict(row)}")
    results["seconds"] = time.perf_counter() - t0
    write_report(results, out_dir)
    log(f"wrote {Path(out_dir) / 'peers.json'}, peers.md, peers.png in {results['seconds']:.0f}s")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="NFE 5 and 10, smaller sample sets (< 1 min)")
    parser.add_argument("--out", default=str(RESULTS), help="output directory")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="verify the peers' oracle mapping first (default: in the full run only)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite peers.md/png from OUT/peers.json without running")
    args = parser.parse_args(argv)
    if args.report_only:
        write_report(json.loads((Path(args.out) / "peers.json").read_text()), args.out)
        return
    run(quick=args.quick, out_dir=args.out, check=args.check)


if __name__ == "__main__":
    main()
