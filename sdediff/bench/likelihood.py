"""Likelihood benchmark: error against the exact answer vs wall time and NFE.

For every trace estimator (exact, Gaussian and Rademacher Hutchinson, the
Gaussian estimator with the control variate, fresh probes, and the trajectory +
log-SNR quadrature path ``quadrature=n``) and ``rtol = atol`` in ``{1e-3, 1e-5}``
(and a few in between), on the 2-D ring (1,000 points) and a 64-D Gaussian mixture
(200 points), :func:`sdediff.likelihood.log_likelihood` is run with the exact
oracle score under the VP SDE, and compared with the exact ``log p_eps(x)`` of
the oracle (``quadrature="steps"``: Gauss-Legendre nodes on the trajectory solver's own
steps). A reference-style solve (scipy RK45 on the flattened augmented
state, one Rademacher probe, ``rtol = atol = 1e-5``, written here after the
score-SDE recipe) gives the comparison time.

Columns: ``err`` = mean |logp - log p_eps| (nats, includes the prior mismatch);
``floor`` = mean |log N(z) - log p_T(z)|, the part due to closing the flow with
the prior instead of the true ``p_T`` (no solver can beat it); ``ode_err`` =
the error with the exact ``p_T`` at the computed latent (solver + estimator
error alone); ``std`` = per-example std of ``logp - log p_eps`` (the estimator
noise for Hutchinson). The goals section also gives the exact trace's cost floor: the
time of one exact-trace node (a forward pass and its ``d`` vectorized vector-Jacobian
products), how many such nodes the reference's time buys, and how many the cheapest exact
run that meets the accuracy bar evaluated.

Run ``sdediff bench likelihood [--quick] [--out DIR]``; writes ``likelihood.{json,md,png}`` to ``DIR``.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import sdediff as sd
from sdediff.likelihood import log_likelihood

from .problems import mix64
from .report import (Progress, add_output_args, announce, guard_quick, output_dir, pyplot, save_figure,
                     write_json, write_text)

__all__ = ["EPS", "REFERENCE", "problems", "reference_logp", "exact_node_seconds", "count_trace_nodes", "configs",
           "run", "goals", "node_budget", "main"]

EPS = 1e-5


def problems(quick: bool = False) -> dict:
    """The two test problems: ``name -> (oracle, number of points)``."""
    return {
        "ring2d": (sd.GaussianMixture(*sd.ring_params()), 200 if quick else 1000),
        "mix64d": (mix64(), 40 if quick else 200),
    }


def reference_logp(score_fn, sde, x: torch.Tensor, eps: float = EPS, rtol: float = 1e-5,
                   atol: float = 1e-5, generator: torch.Generator | None = None):
    """Reference-style likelihood: scipy RK45 on the flattened state, one Rademacher probe.

    Returns ``(logp, nfe)``.
    """
    from scipy import integrate

    shape, batch = x.shape, x.shape[0]
    v = torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1
    rev = sde.reverse(score_fn, probability_flow=True)
    nfe = 0

    def rhs(t, y):
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:-batch]).reshape(shape).to(x.dtype)
        tt = torch.full((batch,), min(t, sde.T), dtype=x.dtype)
        with torch.enable_grad():
            xt.requires_grad_(True)
            drift = rev.sde(xt, tt)[0]
            (grad,) = torch.autograd.grad((drift * v).sum(), xt)
        div = (grad * v).reshape(batch, -1).sum(1)
        return np.concatenate([drift.detach().reshape(-1).numpy(), div.numpy()])

    y0 = np.concatenate([x.reshape(-1).numpy(), np.zeros(batch)])
    sol = integrate.solve_ivp(rhs, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:-batch, -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[-batch:, -1])
    return sde.prior_logp(z) + delta, nfe


def exact_node_seconds(score_fn, x: torch.Tensor, t: float = 0.5, repeats: int = 5) -> float:
    """Wall time of one exact-trace node: one forward pass of the score on the batch and
    its ``d`` vector-Jacobian products ``e_i^T J`` as one vectorized backward pass
    (minimum over ``repeats``). Every exact-trace evaluation costs at least this."""
    batch, d = x.shape[0], x[0].numel()
    t_vec = torch.full((batch,), t, dtype=x.dtype, device=x.device)
    basis = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, batch, d).reshape(d, *x.shape)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = x.detach().requires_grad_(True)
        out = score_fn(y, t_vec)
        torch.autograd.grad(out, y, basis, is_grads_batched=True)
        best = min(best, time.perf_counter() - t0)
    return best


def count_trace_nodes(score_fn, sde, x: torch.Tensor, rtol: float, **kw) -> float:
    """Exact-trace nodes (batch-sized score evaluations under autograd) of one
    :func:`log_likelihood` run: an untimed pass with a counting score."""
    rows = 0

    def counted(y, t):
        nonlocal rows
        if y.requires_grad:
            rows += y.shape[0]
        return score_fn(y, t)

    log_likelihood(counted, sde, x, eps=EPS, rtol=rtol, atol=rtol, **kw)
    return rows / x.shape[0]


def _row(problem, estimator, rtol, logp, exact, seconds, nfe, floor=None, ode_err=None):
    diff = logp - exact
    return {"problem": problem, "estimator": estimator, "rtol": rtol,
            "err": float(diff.abs().mean()), "max_err": float(diff.abs().max()),
            "std": float(diff.std()), "bias": float(diff.mean()),
            "floor": floor, "ode_err": ode_err, "seconds": seconds, "nfe": nfe}


REFERENCE = "reference (scipy RK45, 1 Rademacher)"


def configs() -> list[tuple[str, float, dict]]:
    """``(label, rtol = atol, extra log_likelihood kwargs)`` of every timed run but the reference."""
    out = []
    for rtol in (1e-3, 1e-5):
        out.append(("exact", rtol, dict(trace="exact")))
    for rtol in (1e-4, 7e-5, 3e-5):
        out.append(("exact, per-example norm", rtol, dict(trace="exact", error_norm="per_example")))
    # The same solve through torchdiffeq's dopri5 (any solver option hands it over): the
    # lean loop takes the same steps, so the time ratio is the solver's bookkeeping alone.
    out.append(("exact, per-example norm, torchdiffeq", 1e-4,
                dict(trace="exact", error_norm="per_example", options={"max_num_steps": 2 ** 31 - 1})))
    out.append(("exact, quadrature 128, per-example norm", 3e-5,
                dict(trace="exact", quadrature=128, error_norm="per_example")))
    for rtol in (1e-4, 3e-5):
        out.append(("exact, steps quadrature, per-example norm", rtol,
                    dict(trace="exact", quadrature="steps", error_norm="per_example")))
    out.append(("exact, steps quadrature 4 nodes, per-example norm", 1e-4,
                dict(trace="exact", quadrature="steps", nodes_per_step=4, error_norm="per_example")))
    for label, kw, rtols in [
            ("gaussian", dict(trace="gaussian"), (1e-3, 1e-5)),
            ("rademacher", dict(trace="rademacher"), (1e-3, 1e-4, 1e-5)),
            ("gaussian+cv", dict(trace="gaussian", control_variate=True), (1e-3, 1e-5)),
            ("rademacher, fresh probes", dict(trace="rademacher", fresh_probes=True), (1e-3, 1e-5)),
            ("rademacher x4, fresh probes", dict(trace="rademacher", probes=4, fresh_probes=True), (1e-3, 1e-5)),
            ("rademacher x4, quadrature 48", dict(trace="rademacher", probes=4, quadrature=48), (1e-3, 1e-4)),
            ("rademacher x3, quadrature 64", dict(trace="rademacher", probes=3, quadrature=64), (1e-4,)),
            ("rademacher x4, quadrature 40, per-example norm",
             dict(trace="rademacher", probes=4, quadrature=40, error_norm="per_example"), (1e-3, 3e-4)),
            ("rademacher x2, steps quadrature, per-example norm",
             dict(trace="rademacher", probes=2, quadrature="steps", error_norm="per_example"), (1e-3, 1e-4)),
            ("rademacher x4, steps quadrature, per-example norm",
             dict(trace="rademacher", probes=4, quadrature="steps", error_norm="per_example"), (1e-3, 1e-4))]:
        for rtol in rtols:
            out.append((label, rtol, kw))
    return out


def run(quick: bool = False, out_dir: Path | str | None = None, repeats: int | None = None,
        threads: int = 1, plot: bool = True, log=print) -> list[dict]:
    """Run the benchmark and write JSON, markdown and PNG under ``out_dir``.

    Every configuration and the reference are timed in the same process, with the
    same thread count, interleaved: each repeat runs all of them once, and the
    minimum wall time over the repeats is kept, so machine load hits all alike.

    Args:
        quick: fewer points (200 / 40) and one timing repeat.
        out_dir: where ``likelihood.{json,md,png}`` go (default ``./bench-results``).
        repeats: timing repeats (the minimum wall time is kept); default 1 quick, 3 full.
        threads: torch CPU threads (1 = the "one core" of the goal).
        plot: write the PNG.
        log: a print-like function for progress lines.

    Returns:
        The table rows.
    """
    out_dir = output_dir(out_dir, quick)
    torch.set_num_threads(threads)
    repeats = repeats or (1 if quick else 3)
    sde = sd.VPSDE()
    rows: list[dict] = []
    for name, (oracle, n) in problems(quick).items():
        x = oracle.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        exact = oracle.marginal_log_prob(x, EPS, sde)
        score_fn = oracle.score_fn(sde)
        jobs = configs() + [(REFERENCE, 1e-5, None)]
        best = [math.inf] * len(jobs)
        results: list = [None] * len(jobs)
        for rep in range(repeats):
            log(f"{name} (n={n}): {len(jobs)} configurations, timing repeat {rep + 1} of {repeats}")
            for j, (label, rtol, kw) in enumerate(jobs):
                gen = torch.Generator().manual_seed(2)
                t0 = time.perf_counter()
                if kw is None:
                    results[j] = reference_logp(score_fn, sde, x, generator=gen)
                else:
                    results[j] = log_likelihood(score_fn, sde, x, eps=EPS, rtol=rtol, atol=rtol,
                                                generator=gen, **kw)
                best[j] = min(best[j], time.perf_counter() - t0)
                if rep == 0:
                    log(f"  {name} {label}, rtol {rtol:.0e}: {best[j]:.2f} s")
        log(f"{name}: exact-trace node timing and node counts")
        node_s = exact_node_seconds(score_fn, x, repeats=3 * repeats)
        for j, (label, rtol, kw) in enumerate(jobs):
            if kw is None:
                logp, nfe = results[j]
                rows.append(_row(name, label, rtol, logp, exact, best[j], nfe))
            else:
                res = results[j]
                p_T = oracle.marginal_log_prob(res.z, sde.T, sde)
                floor = float((res.prior_logp - p_T).abs().mean())
                ode_err = float((res.delta_logp + p_T - exact).abs().mean())
                rows.append(_row(name, label, rtol, res.logp, exact, best[j], res.nfe, floor, ode_err))
                if kw.get("trace") == "exact":
                    rows[-1]["trace_nodes"] = count_trace_nodes(score_fn, sde, x, rtol, **kw)
            rows[-1]["node_seconds"] = node_s
            log(_fmt(rows[-1]))
    _write(rows, Path(out_dir), quick, threads, plot)
    announce(out_dir, ("likelihood.json", "likelihood.md") + (("likelihood.png",) if plot else ()), log)
    return rows


def goals(rows: list[dict]) -> list[str]:
    """Markdown lines checking the likelihood targets against this run's rows."""
    lines = []
    ref = {r["problem"]: r for r in rows if r["estimator"] == REFERENCE}
    for prob, bar in (("ring2d", "err <= 1e-4 nats"), ("mix64d", "err <= 1.1 x prior floor")):
        if prob not in ref:
            continue
        for r in rows:
            if r["problem"] != prob or not r["estimator"].startswith("exact"):
                continue
            ok = r["err"] <= 1e-4 if prob == "ring2d" else r["err"] <= 1.1 * r["floor"]
            t = r["seconds"] / ref[prob]["seconds"]
            lines.append(f"- {prob}, {r['estimator']}, rtol {r['rtol']:.0e}: {bar}: "
                         f"{'yes' if ok else 'no'} (err {r['err']:.2e}); time {t:.2f}x reference: "
                         f"{'yes' if t <= 1 else 'no'}")
        lines.extend(node_budget(prob, rows, ref[prob], bar))
        plain = {r["rtol"]: r for r in rows if r["problem"] == prob and r["estimator"] == "rademacher"}
        # One fixed probe's std hardly depends on rtol, so its cheapest run is the strictest
        # "equal cost" comparison.
        fastest = min(plain.values(), key=lambda r: r["seconds"], default=None)
        for r in rows:
            if r["problem"] != prob or not ("fresh" in r["estimator"] or "quadrature" in r["estimator"]):
                continue
            if r["estimator"].startswith("exact"):
                continue
            parts = []
            if r["rtol"] in plain:
                p = plain[r["rtol"]]
                parts.append(f"{p['std'] / r['std']:.2f}x lower than one fixed Rademacher probe at the "
                             f"same rtol, at {r['seconds'] / p['seconds']:.2f}x its wall time")
            if fastest is not None:
                ratio_t = r["seconds"] / fastest["seconds"]
                # Equal cost: k independent one-probe solves in k times the time average to
                # std / sqrt(k), so compare std * sqrt(time) (the work-normalized std).
                parts.append(f"{fastest['std'] / r['std']:.2f}x lower than its fastest run (rtol "
                             f"{fastest['rtol']:.0e}), at {ratio_t:.2f}x its time, so "
                             f"{fastest['std'] / (r['std'] * math.sqrt(ratio_t)):.2f}x at equal cost")
            parts.append(f"{ref[prob]['std'] / r['std']:.2f}x lower than the reference, at "
                         f"{r['seconds'] / ref[prob]['seconds']:.2f}x its wall time")
            lines.append(f"- {prob}, {r['estimator']}, rtol {r['rtol']:.0e}: per-example std "
                         + "; ".join(parts))
    return lines


def node_budget(prob: str, rows: list[dict], ref: dict, bar: str) -> list[str]:
    """The exact trace's cost floor: what one node costs, how many the reference's time buys,
    and how many the cheapest exact run meeting the accuracy bar evaluated."""
    node_s = ref.get("node_seconds")
    if not node_s:
        return []
    met = [r for r in rows if r["problem"] == prob and r.get("trace_nodes")
           and (r["err"] <= 1e-4 if prob == "ring2d" else r["err"] <= 1.1 * r["floor"])]
    line = (f"- {prob}, exact-trace cost floor: one node (a forward pass and its d vector-Jacobian "
            f"products, vectorized) takes {node_s * 1e3:.1f} ms, so the reference's "
            f"{ref['seconds']:.3f} s buys {ref['seconds'] / node_s:.1f} nodes")
    if met:
        r = min(met, key=lambda r: r["trace_nodes"])
        line += (f"; the exact run meeting '{bar}' with the fewest nodes ({r['estimator']}, rtol "
                 f"{r['rtol']:.0e}) evaluated {r['trace_nodes']:.0f}, whose node cost alone is "
                 f"{r['trace_nodes'] * node_s / ref['seconds']:.2f}x the reference's time")
    return [line]


def _fmt(r: dict) -> str:
    extra = "" if r["floor"] is None else f" floor={r['floor']:.2e} ode_err={r['ode_err']:.2e}"
    return (f"{r['problem']:7s} {r['estimator']:38s} rtol={r['rtol']:.0e} err={r['err']:.3e} "
            f"std={r['std']:.3e}{extra} nfe={r['nfe']} time={r['seconds']:.3f}s")


def _write(rows: list[dict], out_dir: Path, quick: bool, threads: int, plot: bool) -> None:
    meta = {"quick": quick, "threads": threads, "eps": EPS, "sde": "VPSDE(0.1, 20)",
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    write_json(out_dir / "likelihood.json", {"meta": meta, "rows": rows})
    lines = ["# Likelihood benchmark (exact oracle score, VP SDE, eps = 1e-5)", "",
             f"quick={quick}, torch threads={threads}, 1-min load average at the end "
             f"{meta['loadavg_1min']}.", "",
             "| problem | estimator | rtol | mean abs err (nats) | max abs err | per-example std | "
             "prior floor | solver err (exact p_T) | NFE | wall (s) | time / reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r["problem"]: r["seconds"] for r in rows if r["estimator"].startswith("reference")}
    for r in rows:
        fl = "" if r["floor"] is None else f"{r['floor']:.2e}"
        oe = "" if r["ode_err"] is None else f"{r['ode_err']:.2e}"
        lines.append(f"| {r['problem']} | {r['estimator']} | {r['rtol']:.0e} | {r['err']:.3e} | "
                     f"{r['max_err']:.2e} | {r['std']:.3e} | {fl} | {oe} | {r['nfe']} | {r['seconds']:.3f} | "
                     f"{r['seconds'] / ref[r['problem']]:.2f} |")
    lines += ["", "## Targets, checked on this run", ""] + goals(rows)
    write_text(out_dir / "likelihood.md", lines)
    if plot:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for ax, prob in zip(axes, ref):
            for r in (r for r in rows if r["problem"] == prob):
                marker = "*" if r["estimator"].startswith("reference") else ("o" if r["rtol"] < 1e-4 else "s")
                ax.scatter(r["seconds"], r["err"], marker=marker, s=60,
                           label=f"{r['estimator']} rtol={r['rtol']:.0e}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("wall time (s)")
            ax.set_ylabel("mean |logp - log p_eps| (nats)")
            ax.set_title(prob)
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize=7, loc="best")
        save_figure(fig, out_dir / "likelihood.png")


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench likelihood`` / ``python -m benchmarks.likelihood``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "fewer points, one timing repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (min is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    guard_quick(out, "likelihood", args.quick, args.force)
    log = Progress()
    log(f"likelihood benchmark{' (quick)' if args.quick else ''}; results will go to {out.resolve()}")
    run(quick=args.quick, out_dir=out, repeats=args.repeats, threads=args.threads, plot=not args.no_plot, log=log)
