"""Peer benchmark: sdediff's samplers against established implementations, exact score.

The peers are the samplers of the ``diffusers`` library -- DPM-Solver++ 2M/3M (and its SDE
variant), DPM-Solver++ singlestep, UniPC, DEIS, LMS, Heun, Euler, Euler-ancestral and
DPM++ SDE -- plus the score-SDE reference Euler-Maruyama VP predictor (diffusers'
``ScoreSdeVpScheduler``) and the reference probability-flow ODE sampler (SciPy's RK45).
Each runs in its recommended settings and the usual alternatives (Karras / uniform-logSNR
sigmas, final step to sigma 0 or sigma_min, lower-order final steps, UniPC's B(h)
variants), and the best peer per metric is kept at each NFE budget.

Problems, metrics, sample sizes, fresh reference samples and noise floors are those of
:mod:`sdediff.bench.steps` (``ring2d`` and ``mix64``); sdediff's own sampler variants run in the
same process through :func:`sdediff.bench.steps.run_problem`, so both sides are measured on
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

Install the peers with ``pip install "sdediff[peers]"`` (``diffusers``; an installed torch is
kept). Run ``sdediff bench peers [--quick] [--out DIR]``; results go to ``DIR/peers.{json,md,png}``. ``--quick`` (under a minute) uses the smaller
sample sets of ``steps --quick``, NFE 5 and 10 only, and skips the mapping check.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sdediff as sd

from . import steps
from .peer_samplers import (CHECK_RK45_TOL, CHECK_SEEDS, TRAIN_CONFIG, Peer, log_row, peer_variants,
                            require_diffusers, run_one, run_peers)
from .peers_report import adaptive_to_floor, all_round, compare, plot, verdict, write_markdown
from .problems import EPS, METRICS, metrics, mix64, prior, reference, ring2d
from .report import Progress, add_output_args, announce, guard_quick, output_dir, rewrite_report, write_json

__all__ = ["NFES", "QUICK_NFES", "check_peers", "exact_spread", "converged_metrics", "run", "write_report", "main"]

NFES = (5, 10, 20)
QUICK_NFES = (5, 10)
SIZES = {"ring2d": 2000, "mix64": 1000}
QUICK_SIZES = {"ring2d": 1000, "mix64": 500}
# sdediff's adaptive samplers at the tolerances loose enough to fit the budgets
SDEDIFF_TOLERANCES = (0.2, 0.1)
# sdediff's adaptive samplers, for the NFE-to-noise-floor comparison (rtol; atol = rtol / 5)
ADAPTIVE_TOLERANCES = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
QUICK_ADAPTIVE_TOLERANCES = (0.1, 0.02)
# sdediff's adaptive samplers (registry names) in that comparison
ADAPTIVE_SAMPLERS = ("dpm_solver_adaptive", "ode")


def exact_spread(gm: sd.GaussianMixture, n: int, fresh, logp_ref, draws: int = 10, seed: int = 321) -> dict:
    """Mean and standard deviation of each metric over ``draws`` exact sample sets of size ``n``."""
    g = torch.Generator().manual_seed(seed)
    rows = [metrics(gm.sample(n, generator=g, dtype=torch.float64), gm, fresh, logp_ref)
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
        row, x = run_one(peer, gm, n, fresh, logp_ref, **setting)
        if x is None:
            return dict(row, ok=False)
        row["rms_to_converged"] = float((x - x_ref).pow(2).sum(1).mean().sqrt())
        row["ok"] = row["rms_to_converged"] < 0.05 and all(abs(row[m] - converged[m]) <= 0.5 * floor[m]
                                                            for m in METRICS)
        return row
    runs = [run_one(peer, gm, n, fresh, logp_ref, seed=seed, **setting)[0] for seed in CHECK_SEEDS]
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
                      grid="logsnr", eps=EPS, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64, denoise=False)
    converged = metrics(x_ref, gm, fresh, logp_ref)
    spread = exact_spread(gm, n, fresh, logp_ref)
    reference_ = (x_ref, converged, spread, floor)
    rows = []
    for peer in peers:
        row = _check_one(peer, gm, n, fresh, logp_ref, reference_)
        rms = f" rms={row['rms_to_converged']:.2g}" if "rms_to_converged" in row else ""
        log_row(log, "check", row, f"{rms} -> {'ok' if row['ok'] else 'FAILED'}")
        if not row["ok"] and "error" not in row:
            row["coarse"] = _check_one(peer, gm, n, fresh, logp_ref, reference_, coarse=True)
            log_row(log, "check (coarser)", row["coarse"])
        rows.append(row)
    return {"problem": "ring2d", "n": n, "converged": converged, "exact_spread": spread, "runs": rows}



def converged_metrics(gm: sd.GaussianMixture, n: int, fresh, logp_ref) -> dict:
    """The metrics of the converged probability-flow ODE solution from the common prior draw."""
    sde = sd.VPSDE()
    z, _ = prior(n, gm.dim)
    x = sd.sample(gm.score_fn(sde), sde, (n, gm.dim), sampler="ode", x_T=z, eps=EPS, denoise=False,
                  rtol=1e-9, atol=1e-9, dtype=torch.float64)
    return metrics(x, gm, fresh, logp_ref)



def write_report(results: dict, out_dir: Path | str) -> None:
    """Write ``peers.json``, ``peers.md`` and ``peers.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    write_json(out_dir / "peers.json", results)
    write_markdown(results, out_dir / "peers.md")
    plot(results, out_dir / "peers.png")


def run(quick: bool = False, out_dir: Path | str | None = None, log=print, check: bool | None = None) -> dict:
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
    diffusers = require_diffusers()
    out_dir = output_dir(out_dir, quick)
    torch.set_num_threads(1)
    check = not quick if check is None else check
    nfes = QUICK_NFES if quick else NFES
    sizes = QUICK_SIZES if quick else SIZES
    peers = peer_variants()
    t0 = time.perf_counter()
    results = {"config": {"quick": quick, "nfes": list(nfes), "sizes": sizes, "sde": "VPSDE()",
                          "eps": EPS, "threads": 1, "diffusers": diffusers.__version__,
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
    announce(out_dir, ("peers.json", "peers.md", "peers.png"), log)
    return results


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench peers`` / ``python -m benchmarks.peers``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "NFE 5 and 10, smaller sample sets (< 1 min)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="verify the peers' oracle mapping first (default: in the full run only)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite peers.md/png from OUT/peers.json without running")
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    if args.report_only:
        return rewrite_report(out, "peers", write_report)
    guard_quick(out, "peers", args.quick, args.force)
    log = Progress()
    log(f"peer benchmark{' (quick)' if args.quick else ''}; results will go to {out.resolve()}")
    run(quick=args.quick, out_dir=out, check=args.check, log=log)
