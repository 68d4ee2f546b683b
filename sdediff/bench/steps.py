"""Step-count benchmark: every registered sampler at a range of NFE on the exact oracle.

Problems and metrics: :mod:`sdediff.bench.problems` (``ring2d``, ``mix64``; VP SDE, eps = 1e-3,
exact score from :class:`sdediff.GaussianMixture`), each metric next to its noise floor (the
same statistic for exact samples of the same size, averaged over 3 draws). Every sampler
starts from the same prior draw (common random numbers). Deterministic samplers run with
``denoise=False`` (but for the ``*_denoised`` variants, and the ``*_to0`` ones, whose grid
of ``nfe`` equal intervals on ``[0, T]`` ends with the Tweedie step as the step to ``t = 0``);
stochastic ones end with the Tweedie step (its NFE counted).

Also measured: the per-step overhead of the main samplers with the model cost excluded
(:mod:`sdediff.bench.overhead`).

Run ``sdediff bench steps [--quick] [--out DIR]``; writes ``steps.{json,md,png}`` to ``DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.samplers import available_samplers

from .problems import EPS, METRICS, metrics, mix64, reference, ring2d
from .report import (Progress, add_output_args, announce, guard_quick, output_dir, pyplot, rewrite_report,
                     save_figure, write_json, write_text)

__all__ = ["NFES", "QUICK_NFES", "KNOWN_VARIANTS", "run_problem", "headline", "run", "write_report", "main"]

NFES = (5, 10, 20, 50, 100, 250, 1000)
QUICK_NFES = (5, 10, 20, 50)
TOLERANCES = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
QUICK_TOLERANCES = (0.05, 0.01)

# The "final step to t = 0" of DPM-Solver++ / UniPC in their diffusers defaults: a grid of
# ``nfe`` equal intervals on [0, T] whose last interval is the Tweedie step (the exact
# first-order step to lambda = inf), so ``eps = T / nfe``; the solver's own steps keep
# their full order (the Tweedie step is the low-order final one).
_TO_ZERO = {"denoise": True, "lower_order_final": False, "eps": lambda nfe, T: T / nfe}

# Variants of the samplers this benchmark knows: name -> [(label, options, grid, steps(nfe))].
# ``steps(nfe)`` returns the number of steps that spends at most ``nfe`` evaluations; an
# ``eps`` in the options, if any, is a function of the NFE budget and ``T`` (default ``EPS``).
KNOWN_VARIANTS = {
    "ddim": [("ddim", {}, "logsnr", lambda n: n),
             ("ddim_eta1", {"eta": 1.0}, "logsnr", lambda n: n - 1)],
    "dpm_solver": [("dpm_solver_2M", {"order": 2}, "logsnr", lambda n: n),
                   ("dpm_solver_3M", {"order": 3}, "logsnr", lambda n: n),
                   ("dpm_solver_2M_quad", {"order": 2}, "quadratic", lambda n: n),
                   ("dpm_solver_3M_quad", {"order": 3}, "quadratic", lambda n: n),
                   ("dpm_solver_2M_uniform", {"order": 2}, "uniform", lambda n: n),
                   ("dpm_solver_3M_uniform", {"order": 3}, "uniform", lambda n: n),
                   ("dpm_solver_2M_karras", {"order": 2}, "karras", lambda n: n),
                   ("dpm_solver_3M_karras", {"order": 3}, "karras", lambda n: n),
                   ("dpm_solver_3S", {"order": 3, "method": "singlestep"}, "logsnr", lambda n: n // 3),
                   ("dpm_solver_3M_to0", dict(_TO_ZERO, order=3), "uniform", lambda n: n - 1),
                   # noise prediction (DPM-Solver, Lu et al. 2022a; DEIS's log-rho multistep)
                   ("dpm_solver_3M_noise", {"order": 3, "prediction": "noise"}, "logsnr", lambda n: n),
                   ("dpm_solver_3M_noise_karras", {"order": 3, "prediction": "noise"}, "karras",
                    lambda n: n)],
    "unipc": [("unipc_1_quad", {"order": 1}, "quadratic", lambda n: n),
              ("unipc_1_uniform", {"order": 1}, "uniform", lambda n: n),
              ("unipc_2", {"order": 2}, "logsnr", lambda n: n),
              ("unipc_3", {"order": 3}, "logsnr", lambda n: n),
              ("unipc_2_quad", {"order": 2}, "quadratic", lambda n: n),
              ("unipc_3_quad", {"order": 3}, "quadratic", lambda n: n),
              ("unipc_2_uniform", {"order": 2}, "uniform", lambda n: n),
              ("unipc_3_uniform", {"order": 3}, "uniform", lambda n: n),
              ("unipc_2_karras", {"order": 2}, "karras", lambda n: n),
              ("unipc_3_karras", {"order": 3}, "karras", lambda n: n),
              # n - 1 steps and the final Tweedie denoising step (Song et al. 2021) in the budget
              ("unipc_2_quad_denoised", {"order": 2, "denoise": True}, "quadratic", lambda n: n - 1),
              ("unipc_3_uniform_denoised", {"order": 3, "denoise": True}, "uniform", lambda n: n - 1),
              ("unipc_3_to0", dict(_TO_ZERO, order=3), "uniform", lambda n: n - 1),
              ("unipc_2_noise", {"order": 2, "prediction": "noise"}, "logsnr", lambda n: n),
              ("unipc_3_noise", {"order": 3, "prediction": "noise"}, "logsnr", lambda n: n),
              ("unipc_2_noise_karras", {"order": 2, "prediction": "noise"}, "karras", lambda n: n)],
    "heun": [("heun", {}, "karras", lambda n: (n + 1) // 2),
             ("heun_churn", {"S_churn": 10.0}, "karras", lambda n: (n + 1) // 2)],
    "dpm_solver_adaptive": [("dpm_solver_12", {"order": 2}, "uniform", None),
                            ("dpm_solver_23", {"order": 3}, "uniform", None),
                            ("dpm_solver_2M_adaptive", {"order": 2, "method": "multistep"}, "uniform", None),
                            ("dpm_solver_3M_adaptive", {"order": 3, "method": "multistep"}, "uniform", None)],
}


def _variants(names=None):
    """``(label, sampler, options, grid, steps_fn, adaptive, stochastic)`` for every registered sampler."""
    out = []
    for name, info in available_samplers().items():
        if names and name not in names:
            continue
        if name in KNOWN_VARIANTS:
            for label, options, grid, steps_fn in KNOWN_VARIANTS[name]:
                sampler = name
                stochastic = info.stochastic or bool(options.get("eta") or options.get("S_churn"))
                out.append((label, sampler, options, grid, steps_fn, steps_fn is None, stochastic))
        elif info.nfe_per_step is None:
            out.append((name, name, {}, "uniform", None, True, info.stochastic))
        else:
            k = info.nfe_per_step
            # stochastic samplers spend one NFE on the final Tweedie step
            fn = (lambda n, k=k: int((n - 1) // k)) if info.stochastic else (lambda n, k=k: int(n // k))
            out.append((name, name, {}, "uniform", fn, False, info.stochastic))
    return out


def run_problem(name: str, gm: sd.GaussianMixture, n: int, nfes, tolerances, names=None, log=print,
                max_seconds: float = 40.0, jobs: int = 1) -> dict:
    """All sampler variants on one problem: a list of runs and the noise floors."""
    sde = sd.VPSDE()
    score_fn = gm.score_fn(sde)
    fresh, logp_ref, floor = reference(gm, n)
    runs = []
    for label, sampler, options, grid, steps_fn, adaptive, stochastic in _variants(names):
        settings = ([dict(steps=1, rtol=r, atol=r / 5) for r in tolerances] if adaptive
                    else [dict(steps=steps_fn(b), budget=b) for b in nfes])
        slow = False
        for setting in settings:
            budget = setting.pop("budget", None)
            if setting["steps"] < 1:
                continue
            if slow:  # the previous (cheaper) run exceeded max_seconds: skip the costlier ones
                runs.append(dict(sampler=label, budget=budget, error=f"skipped: a cheaper run took > {max_seconds}s"))
                continue
            kw = dict(options, **setting)
            denoise = kw.pop("denoise", stochastic)  # a variant may ask for the final Tweedie step
            eps = kw.pop("eps", None)
            eps = EPS if eps is None else float(eps(budget, sde.T))
            t0 = time.perf_counter()
            try:
                x, nfe = sd.sample(score_fn, sde, (n, gm.dim), sampler=sampler, grid=grid, eps=eps,
                                   generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                   denoise=denoise, return_nfe=True, **kw)
            except Exception as err:  # a sampler that fails is reported, not fatal
                runs.append(dict(sampler=label, budget=budget, error=f"{type(err).__name__}: {err}"[:300]))
                log(f"  {name} {label} {setting}: {type(err).__name__}: {err}"[:200])
                continue
            seconds = time.perf_counter() - t0
            slow = seconds > max_seconds
            row = dict(sampler=label, budget=budget, nfe=int(nfe), seconds=seconds,
                       options=dict(kw, **({} if eps == EPS else {"eps": eps})),
                       **metrics(x, gm, fresh, logp_ref))
            runs.append(row)
            log(f"  {name} {label:16s} nfe={nfe:5d} " +
                " ".join(f"{m}={row[m]:.3g}" for m in METRICS) + f" ({seconds:.1f}s)")
    return {"n": n, "dim": gm.dim, "noise_floor": floor, "runs": runs}


# --------------------------------------------------------------------------- reporting
def _best(runs, metric, budget):
    ok = [r for r in runs if "error" not in r and r["nfe"] <= budget and math.isfinite(r[metric])]
    return min(ok, key=lambda r: r[metric]) if ok else None


def headline(results: dict) -> dict:
    """Best sampler at 5/10/20 NFE per problem and metric; adaptive NFE to reach the noise floor."""
    out = {}
    for pname, prob in results["problems"].items():
        floor, runs = prob["noise_floor"], prob["runs"]
        best = {}
        for budget in (5, 10, 20):
            best[budget] = {}
            for m in METRICS:
                r = _best(runs, m, budget)
                best[budget][m] = None if r is None else dict(sampler=r["sampler"], nfe=r["nfe"], value=r[m],
                                                              floor=floor[m], at_floor=r[m] <= 1.5 * floor[m])
        # Two readings of "reaches the noise floor" for the adaptive (deterministic) samplers:
        # (a) every metric within 1.5x its noise floor -- but an exact sampler's statistic is
        #     itself one draw, so even the exact ODE flow of this prior draw can miss it;
        # (b) the discretization is invisible under the noise: every metric within half its
        #     noise floor of the converged ODE solution from the same prior draw (the
        #     1000-step DPM-Solver++ 3M run; common random numbers make this comparison exact).
        ref = max((r for r in runs if r["sampler"] == "dpm_solver_3M" and "error" not in r),
                  key=lambda r: r["nfe"], default=None)
        reach, reach_ref = {}, {}
        adaptive_labels = {r["sampler"] for r in runs if r.get("budget") is None}
        for label in sorted(adaptive_labels):
            ok = [r for r in runs if r["sampler"] == label and "error" not in r]
            reach[label] = min((r["nfe"] for r in ok if all(r[m] <= 1.5 * floor[m] for m in METRICS)),
                               default=None)
            if ref is not None:
                reach_ref[label] = min((r["nfe"] for r in ok
                                        if all(abs(r[m] - ref[m]) <= 0.5 * floor[m] for m in METRICS)),
                                       default=None)
        out[pname] = {"best": best, "adaptive_nfe_to_floor": reach,
                      "adaptive_nfe_to_floor_vs_converged": reach_ref}
    return out


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Step-count benchmark", "",
             f"VP SDE, eps={EPS}, exact oracle score. Config: `{json.dumps(results['config'])}`.",
             "Each cell: the metric (lower is better); `floor` is the same statistic for exact samples.", ""]
    for pname, prob in results["problems"].items():
        floor, runs = prob["noise_floor"], [r for r in prob["runs"] if "error" not in r]
        lines += [f"## {pname} (d={prob['dim']}, n={prob['n']})", ""]
        for m in METRICS:
            labels = list(dict.fromkeys(r["sampler"] for r in runs))
            lines += [f"### {m} (noise floor {floor[m]:.4g})", "", "| sampler | NFE: value ... |", "|---|---|"]
            for label in labels:
                cells = ", ".join(f"{r['nfe']}: {r[m]:.3g}" for r in runs if r["sampler"] == label)
                lines.append(f"| {label} | {cells} |")
            lines.append("")
        errors = [r for r in prob["runs"] if "error" in r]
        if errors:
            lines += ["Failed runs:", ""] + [f"- {r['sampler']} (budget {r['budget']}): {r['error']}" for r in errors] + [""]
    lines += ["## Headline", ""]
    for pname, h in results["headline"].items():
        lines += [f"### {pname}", "",
                  "Values within 1.5x the noise floor are statistically tied with every other such value; "
                  "the best sampler is then only the luckiest draw.", "",
                  "| NFE | metric | best sampler | NFE used | value | noise floor | within 1.5x floor |",
                  "|---|---|---|---|---|---|---|"]
        for budget, per in h["best"].items():
            for m, r in per.items():
                if r:
                    lines.append(f"| {budget} | {m} | {r['sampler']} | {r['nfe']} | {r['value']:.4g} | "
                                 f"{r['floor']:.4g} | {'yes' if r['at_floor'] else 'no'} |")
        lines += ["", "Adaptive samplers, fewest NFE with (a) every metric within 1.5x its noise floor: " +
                  ", ".join(f"{k}: {v}" for k, v in h["adaptive_nfe_to_floor"].items()),
                  "", "(b) every metric within 0.5x its noise floor of the converged ODE solution from the "
                  "same prior draw (discretization error hidden by the sampling noise): " +
                  ", ".join(f"{k}: {v}" for k, v in h.get("adaptive_nfe_to_floor_vs_converged", {}).items()), ""]
    if results.get("overhead"):
        lines += ["## Per-step overhead (zero-cost score)", "",
                  "`sampler`: the registered function, unchecked score wrapper; `sample()`: the full call "
                  "(validation, shape check per evaluation, finiteness check of the samples, replayed with "
                  "every score output checked only if that fails); `unchecked`: `sample(check_finite=False)` "
                  "(no replay); `bare`: a plain loop of the same arithmetic. Microsecond timings: the "
                  "minimum of interleaved repeats, still noisy to ~10-20%.", "",
                  "| sampler | shape | sampler us/step | sample() us/step | unchecked us/step | bare us/step | "
                  "sampler/bare | sample()/bare | unchecked/bare |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["overhead"]:
            unchecked = r.get("us_per_step_unchecked", float("nan"))
            lines.append(f"| {r['sampler']} | {tuple(r['shape'])} | {r['us_per_step_sampler']:.1f} | "
                         f"{r['us_per_step_sample']:.1f} | {unchecked:.1f} | {r['us_per_step_bare']:.1f} | "
                         f"{r['ratio']:.2f} | {r['ratio_sample']:.2f} | {r.get('ratio_unchecked', float('nan')):.2f} |")
    write_text(path, lines)


def plot(results: dict, path: Path) -> None:
    """Every metric against NFE, per problem, with its noise floor dashed."""
    plt = pyplot()
    probs = list(results["problems"].items())
    fig, axes = plt.subplots(len(probs), len(METRICS), figsize=(4 * len(METRICS), 3.6 * len(probs)), squeeze=False,
                             layout="constrained")
    for row, (pname, prob) in enumerate(probs):
        runs = [r for r in prob["runs"] if "error" not in r]
        labels = list(dict.fromkeys(r["sampler"] for r in runs))
        for col, m in enumerate(METRICS):
            ax = axes[row][col]
            for label in labels:
                pts = sorted((r["nfe"], r[m]) for r in runs if r["sampler"] == label and r[m] > 0)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=label)
            ax.axhline(prob["noise_floor"][m], color="k", ls="--", lw=1, label="noise floor")
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_title(f"{pname}: {m}", fontsize=9)
            ax.set_xlabel("NFE")
    axes[0][0].legend(fontsize=6, ncol=2)
    save_figure(fig, path)


def run(quick: bool = False, out_dir: Path | str | None = None, samplers=None, threads: int = 1,
        measure_overhead: bool = True, log=print, sizes_override: dict | None = None,
        max_seconds: float = 40.0, jobs: int = 1) -> dict:
    """Run the benchmark and write ``steps.json``, ``steps.md`` and ``steps.png`` to ``out_dir``.

    Args:
        quick: NFE in {5, 10, 20, 50}, two tolerances, smaller sample sets (< 2 min).
        out_dir: where the results go (default ``./bench-results``).
        samplers: restrict to these registered names (default: all).
        threads: torch intra-op threads (1 is fastest for these small tensors).
        measure_overhead: also time the samplers with a zero-cost score.
        log: a print-like function for progress lines.
        sizes_override: sample-set sizes by problem, e.g. ``{"mix64": 4000}``.
        max_seconds: a variant whose run took longer skips its larger NFE budgets.
        jobs: run the two problems in this many processes (fork; progress goes to stdout).

    Returns:
        The results dict (also written as JSON).
    """
    out_dir = output_dir(out_dir, quick)
    torch.set_num_threads(threads)
    nfes = QUICK_NFES if quick else NFES
    tols = QUICK_TOLERANCES if quick else TOLERANCES
    sizes = {"ring2d": 1000, "mix64": 500} if quick else {"ring2d": 2000, "mix64": 1000}
    if sizes_override:
        sizes.update(sizes_override)
    t0 = time.perf_counter()
    results = {"config": {"quick": quick, "nfes": list(nfes), "tolerances": list(tols), "sizes": sizes,
                          "sde": "VPSDE()", "eps": EPS, "threads": threads,
                          "max_seconds": max_seconds},
               "problems": {}}
    problems = (("ring2d", ring2d()), ("mix64", mix64()))
    if jobs > 1:  # one process per problem (fork: the registry and the oracle are inherited)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        log(f"running {', '.join(p for p, _ in problems)} in {jobs} processes")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {p: pool.submit(run_problem, p, gm, sizes[p], nfes, tols, samplers, print, max_seconds)
                       for p, gm in problems}
            results["problems"] = {p: f.result() for p, f in futures.items()}
    else:
        for pname, gm in problems:
            log(f"{pname} (n={sizes[pname]}): every sampler at NFE {', '.join(map(str, nfes))}")
            results["problems"][pname] = run_problem(pname, gm, sizes[pname], nfes, tols, samplers, log, max_seconds)
    if measure_overhead:
        from .overhead import overhead
        log("per-step overhead with a zero-cost score")
        results["overhead"] = overhead(steps=50 if quick else 200, repeats=3 if quick else 9, log=log)
    results["seconds"] = time.perf_counter() - t0
    write_report(results, out_dir)
    announce(out_dir, ("steps.json", "steps.md", "steps.png"), log)
    return results


def write_report(results: dict, out_dir: Path | str) -> None:
    """(Re)compute the headline and write ``steps.json``, ``steps.md`` and ``steps.png``."""
    results["headline"] = headline(results)
    out_dir = Path(out_dir)
    write_json(out_dir / "steps.json", results)
    write_markdown(results, out_dir / "steps.md")
    plot(results, out_dir / "steps.png")


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench steps`` / ``python -m benchmarks.steps``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "small run (< 2 min)")
    parser.add_argument("--samplers", nargs="*", default=None, help="registered names to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead timing")
    parser.add_argument("--n-ring", type=int, default=None, help="sample-set size on ring2d")
    parser.add_argument("--n-mix", type=int, default=None, help="sample-set size on mix64")
    parser.add_argument("--max-seconds", type=float, default=40.0,
                        help="skip a sampler's larger budgets once one run takes longer")
    parser.add_argument("--jobs", type=int, default=1, help="processes (one per problem)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite steps.md/png (and the headline) from OUT/steps.json without running")
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    if args.report_only:
        return rewrite_report(out, "steps", write_report)
    guard_quick(out, "steps", args.quick, args.force)
    sizes = {k: v for k, v in (("ring2d", args.n_ring), ("mix64", args.n_mix)) if v}
    log = Progress()
    log(f"step-count benchmark{' (quick)' if args.quick else ''}; results will go to {out.resolve()}")
    run(quick=args.quick, out_dir=out, samplers=args.samplers, threads=args.threads,
        measure_overhead=not args.no_overhead, sizes_override=sizes, max_seconds=args.max_seconds,
        jobs=args.jobs, log=log)
