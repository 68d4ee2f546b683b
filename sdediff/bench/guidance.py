"""Guidance benchmark: classifier guidance, classifier-free guidance and inpainting on the exact oracle.

The problem is the labelled ring: :func:`sdediff.bench.problems.ring2d`'s 8 modes (std 0.5 on the
circle of radius 4) in 4 classes of two neighbouring modes (``labels = k // 2``); the target class
is ``y = 0`` (the modes at 0 and 45 degrees). VP SDE, ``eps = 1e-3``, exact scores, every
deterministic sampler with a fixed NFE per step, all from the same prior draw.

(a) **Classifier guidance with the exact classifier** (``scale = 1``): ``s(x) + grad log p_t(y | x)``
    is the exact class-conditional score, so the samples' distance from ``p0(x | y)`` (sliced W2
    to exact conditional samples, per-mode statistics) is the sampler's error alone, next to the
    noise floor (exact samples of the same size). At ``scale = 1 + w`` it equals classifier-free
    guidance of weight ``w`` with exact scores (Bayes), which the benchmark checks sample by sample.
(b) **Classifier-free guidance** ``(1 + w) s(x, t, y) - w s(x, t)`` with exact scores, ``w`` in
    {0, 1, 3, 8, 16}: its samples are often taken to follow the tilted law
    ``p0(x | y) p0(y | x)^w``, which is not the law of the guided diffusion (noising and tilting
    do not commute). The tilted law is normalized numerically on a fine grid and sampled by
    resampling the grid cells (uniform within a cell); the benchmark reports the guided samples'
    sliced W2 to it and the total variation between their histogram and its cell masses on a
    coarse grid, each next to the same statistic for exact tilted samples. A converged run
    (DPM-Solver++ with many steps) separates the guided law's own distance from the
    discretization error. A run diverges if a sample is not finite or lies farther than
    ``radius + 10 std`` from the origin.
(c) **Inpainting** with the exact unconditional score: the first coordinate observed at
    ``x_1 = 1.5`` (a posterior over ``x_2`` with four modes of unequal weight), every method of
    :data:`sdediff.guidance.INPAINT_METHODS` with its default sampler and with ``ddim``, at several NFE
    budgets (the steps that fit in the budget, and the NFE actually spent as counted by
    :func:`sdediff.inpaint`), against the exact posterior
    :meth:`sdediff.GaussianMixture.condition`: W2 to exact posterior samples, the posterior mode
    weights' total variation, and the noise floor. (Plug-and-play is a point estimate, not a
    posterior sampler, so it is not in this table.)

Run ``sdediff bench guidance [--quick] [--out DIR]``; writes ``guidance.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.guidance import INPAINT_METHODS
from sdediff.samplers import available_samplers

from .problems import EPS
from .report import Progress, add_output_args, announce, guard_quick, output_dir, pyplot, save_figure, write_json, \
    write_text

__all__ = ["WEIGHTS", "NFES", "INPAINT_NFES", "labelled_ring", "tilted_grid", "run", "write_report", "main"]

WEIGHTS = (0.0, 1.0, 3.0, 8.0, 16.0)
NFES = (5, 10, 20, 50)
INPAINT_NFES = (10, 20, 50, 100, 200)
GRID_HALF_WIDTH, GRID_CELLS, HIST_BINS = 8.0, 800, 40
QUICK = dict(weights=(0.0, 3.0, 16.0), nfes=(5, 20), inpaint_nfes=(20, 100), samplers=("ddim", "dpm_solver"),
             inpaint_samplers=("default",), n=400, reference_steps=100, cells=400)
FULL = dict(weights=WEIGHTS, nfes=NFES, inpaint_nfes=INPAINT_NFES, samplers=None,
            inpaint_samplers=("default", "ddim"), n=2000, reference_steps=1000, cells=GRID_CELLS)
RADIUS, STD, CLASS = 4.0, 0.5, 0
OBSERVED_X1 = 1.5
FAR = RADIUS + 10 * STD  # a sample farther from the origin than this has diverged


def labelled_ring() -> sd.GaussianMixture:
    """The 8-mode ring (std 0.5, radius 4) with classes ``k // 2``: 4 classes of two neighbouring modes."""
    means, stds, weights = sd.ring_params(8, radius=RADIUS, std=STD)
    return sd.GaussianMixture(means, stds, weights, labels=torch.arange(8) // 2)


def deterministic_samplers(names=None) -> list[tuple[str, int]]:
    """``(name, NFE per step)`` of every registered deterministic sampler with a fixed NFE per step."""
    return [(name, int(info.nfe_per_step)) for name, info in available_samplers().items()
            if not info.stochastic and info.nfe_per_step is not None and (names is None or name in names)]


# ------------------------------------------------------------------------------------ the tilted law
def tilted_grid(gm: sd.GaussianMixture, y: int, w: float,
                cells: int = GRID_CELLS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The tilted law ``p0(x | y) p0(y | x)^w`` normalized on a fine grid: cell centres, cell masses, cell width.

    ``log p0(x | y) + w log p0(y | x) = (1 + w) log p0(x | y) - w log p0(x) + const``; the
    grid (``[-8, 8]^2``, ``cells^2`` cells, 0.02 wide by default against the modes' std 0.5)
    holds all but a negligible mass of it.
    """
    h = 2 * GRID_HALF_WIDTH / cells
    c = -GRID_HALF_WIDTH + h * (torch.arange(cells, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(c, c, indexing="xy")
    centres = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    logp = (1 + w) * gm.class_conditional(y).log_prob(centres) - w * gm.log_prob(centres)
    return centres, torch.softmax(logp, 0), h


def sample_tilted(centres: torch.Tensor, mass: torch.Tensor, h: float, n: int,
                  generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of the grid law: a cell by its mass, then uniform within the cell."""
    cells = torch.multinomial(mass, n, replacement=True, generator=generator)
    return centres[cells] + h * (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5)


def histogram_tv(x: torch.Tensor, centres: torch.Tensor, mass: torch.Tensor) -> float:
    """Total variation between the samples' histogram and the grid law on ``HIST_BINS^2`` coarse bins.

    Samples outside the grid count as mass in no bin (they add to the distance)."""
    edge = 2 * GRID_HALF_WIDTH / HIST_BINS

    def bins(p: torch.Tensor) -> torch.Tensor:
        ij = torch.floor((p + GRID_HALF_WIDTH) / edge).long()
        inside = ((ij >= 0) & (ij < HIST_BINS)).all(1)
        return ij[:, 1] * HIST_BINS + ij[:, 0], inside

    idx, _ = bins(centres)
    law = torch.zeros(HIST_BINS ** 2, dtype=torch.float64).index_add_(0, idx, mass)
    idx, inside = bins(x)
    emp = torch.zeros(HIST_BINS ** 2, dtype=torch.float64).index_add_(
        0, idx[inside], torch.full((int(inside.sum()),), 1.0 / x.shape[0], dtype=torch.float64))
    return 0.5 * float((emp - law).abs().sum() + (1 - inside.double().mean()))


# ------------------------------------------------------------------------------------ metrics
def diverged(x: torch.Tensor) -> bool:
    """Not finite, or a sample farther than ``FAR`` from the origin."""
    return not bool(torch.isfinite(x).all()) or float(x.norm(dim=1).max()) > FAR


def conditional_metrics(x: torch.Tensor, cond: sd.GaussianMixture, fresh: torch.Tensor) -> dict:
    """Distance of the samples from the exact class-conditional law ``p0(x | y)``."""
    if not bool(torch.isfinite(x).all()):
        return {"sw2": math.nan, "weights_tv": math.nan, "mean_error": math.nan, "spread_ratio": math.nan}
    ms = sd.mode_statistics(x, cond.means, cond.stds, cond.weights)
    return {"sw2": float(sd.sliced_wasserstein(x, fresh, num_projections=256, generator=17)),
            "weights_tv": ms["weights_tv"], "mean_error": ms["mean_error"], "spread_ratio": ms["spread_ratio"]}


def tilted_metrics(x: torch.Tensor, tilted: dict) -> dict:
    """Distance of the samples from the tilted law: sliced W2 to its samples and the histogram TV."""
    if not bool(torch.isfinite(x).all()):
        return {"sw2_tilted": math.nan, "tv_tilted": math.nan}
    return {"sw2_tilted": float(sd.sliced_wasserstein(x, tilted["fresh"], num_projections=256, generator=17)),
            "tv_tilted": histogram_tv(x, tilted["centres"], tilted["mass"])}


def _mean_floor(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


# ------------------------------------------------------------------------------------ the three parts
def classifier_guidance_part(gm, sde, x_T, samplers, nfes, n, log) -> dict:
    """(a): classifier guidance with the exact classifier at ``scale = 1``, against ``p0(x | y)``."""
    cond = gm.class_conditional(CLASS)
    g = torch.Generator().manual_seed(2024)
    fresh = cond.sample(n, generator=g, dtype=torch.float64)
    floor = _mean_floor([conditional_metrics(cond.sample(n, generator=g, dtype=torch.float64), cond, fresh)
                         for _ in range(3)])
    score = sd.classifier_guidance(gm.score_fn(sde), gm.classifier_fn(sde), CLASS, 1.0)
    rows = []
    for name, per_step in samplers:
        for nfe in nfes:
            steps = nfe // per_step
            x = sd.sample(score, sde, x_T.shape, sampler=name, steps=steps, eps=EPS, x_T=x_T, denoise=False,
                          dtype=torch.float64, check_finite=False)
            rows.append(dict(sampler=name, budget=nfe, nfe=steps * per_step, diverged=diverged(x),
                             **conditional_metrics(x, cond, fresh)))
        log(f"(a) classifier guidance, {name}: sliced W2 to p0(x|y) at NFE {nfes[-1]}: {rows[-1]['sw2']:.4f} "
            f"(floor {floor['sw2']:.4f})")
    return {"floor": floor, "runs": rows}


def tilted_reference(gm, weights, n, cells: int = GRID_CELLS) -> dict:
    """Per ``w``: the tilted law on the grid, fresh draws of it, its noise floors and its own mode statistics."""
    cond = gm.class_conditional(CLASS)
    out = {}
    for w in weights:
        centres, mass, h = tilted_grid(gm, CLASS, w, cells)
        g = torch.Generator().manual_seed(31)
        tilted = {"centres": centres, "mass": mass, "fresh": sample_tilted(centres, mass, h, n, g)}
        floor = _mean_floor([tilted_metrics(sample_tilted(centres, mass, h, n, g), tilted) for _ in range(3)])
        big = sample_tilted(centres, mass, h, 5000, g)  # the tilted law's own shape, with little noise
        ms = conditional_metrics(big, cond, cond.sample(5000, generator=g, dtype=torch.float64))
        out[w] = dict(tilted, floor=floor, law={"sw2_to_conditional": ms["sw2"], "spread_ratio": ms["spread_ratio"],
                                                "mean_error": ms["mean_error"]})
    return out


def free_guidance_part(gm, sde, x_T, samplers, nfes, weights, reference_steps, tilted, log) -> dict:
    """(b): classifier-free guidance with exact scores against the tilted law (and ``scale = 1 + w`` CG)."""
    cond = gm.class_conditional(CLASS)
    fresh = cond.sample(x_T.shape[0], generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    cscore = gm.conditional_score_fn(sde)
    rows, converged, cg_gap = [], {}, 0.0
    for w in weights:
        cfg = sd.classifier_free_guidance(cscore, CLASS, w)
        x = sd.sample(cfg, sde, x_T.shape, sampler="dpm_solver", steps=reference_steps, eps=EPS, x_T=x_T,
                      denoise=False, dtype=torch.float64, check_finite=False)
        converged[w] = dict(diverged=diverged(x), **tilted_metrics(x, tilted[w]), **conditional_metrics(x, cond, fresh))
        tilted[w]["guided"] = x  # for the plot
        log(f"(b) w = {w:g}: converged guided samples vs the tilted law: sliced W2 {converged[w]['sw2_tilted']:.4f} "
            f"(floor {tilted[w]['floor']['sw2_tilted']:.4f}), TV {converged[w]['tv_tilted']:.3f} "
            f"(floor {tilted[w]['floor']['tv_tilted']:.3f})")
        cg = sd.classifier_guidance(gm.score_fn(sde), gm.classifier_fn(sde), CLASS, 1.0 + w)
        for name, per_step in samplers:
            for nfe in nfes:
                steps = nfe // per_step
                kw = dict(sampler=name, steps=steps, eps=EPS, x_T=x_T, denoise=False, dtype=torch.float64,
                          check_finite=False)
                x = sd.sample(cfg, sde, x_T.shape, **kw)
                x_cg = sd.sample(cg, sde, x_T.shape, **kw)
                # relative to the samples' size (a diverged run's samples are large)
                gap = float((x - x_cg).abs().max() / x.abs().max().clamp_min(1.0)) \
                    if bool(torch.isfinite(x).all()) else math.nan
                cg_gap = max(cg_gap, gap) if math.isfinite(gap) else cg_gap
                rows.append(dict(sampler=name, budget=nfe, nfe=steps * per_step, w=w, diverged=diverged(x),
                                 cg_diverged=diverged(x_cg), **tilted_metrics(x, tilted[w]),
                                 **conditional_metrics(x, cond, fresh)))
    log(f"(b) classifier guidance at scale 1 + w vs classifier-free guidance at w: largest relative difference "
        f"{cg_gap:.1e}")
    return {"runs": rows, "converged": {str(w): v for w, v in converged.items()}, "cg_vs_cfg_max_rel": cg_gap}


def _inpaint_steps(cost, budget: int) -> int:
    """The most steps whose cost ``cost(steps)`` (NFE, affine in the steps) stays within ``budget``."""
    lo, hi = cost(4), cost(8)
    per_step = (hi - lo) / 4
    return max(2, int((budget - (lo - 4 * per_step)) // per_step))


def inpainting_part(gm, sde, nfes, samplers, n, log) -> dict:
    """(c): inpainting of ``x_2`` given ``x_1 = 1.5`` against the exact posterior."""
    mask = torch.tensor([True, False])
    observed = torch.tensor([OBSERVED_X1, math.nan], dtype=torch.float64)
    post = gm.condition(mask, observed)
    g = torch.Generator().manual_seed(2024)
    fresh = post.sample(n, generator=g, dtype=torch.float64)

    def metrics(free: torch.Tensor) -> dict:
        if not bool(torch.isfinite(free).all()):
            return {"w2": math.nan, "weights_tv": math.nan, "frechet": math.nan}
        ms = sd.mode_statistics(free, post.means, post.stds, post.weights)
        return {"w2": float(sd.sliced_wasserstein(free, fresh, num_projections=1, generator=0)),
                "weights_tv": ms["weights_tv"], "frechet": ms["frechet"]}

    floor = _mean_floor([metrics(post.sample(n, generator=g, dtype=torch.float64)) for _ in range(3)])
    score = gm.score_fn(sde)
    rows = []
    for method in INPAINT_METHODS:
        for sampler in samplers:
            def run(steps: int, size: int, seed: int = 0):
                return sd.inpaint(score, sde, observed, mask, shape=(size, 2), method=method,
                                  sampler=None if sampler == "default" else sampler, steps=steps, eps=EPS,
                                  return_nfe=True, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            for budget in nfes:
                steps = _inpaint_steps(lambda k: run(k, 1)[1], budget)
                x, nfe = run(steps, n, budget)
                rows.append(dict(method=method, sampler=sampler, budget=budget, steps=steps, nfe=nfe,
                                 **metrics(x[:, 1:])))
            log(f"(c) {method} + {sampler} at NFE {rows[-1]['nfe']}: mode weights TV {rows[-1]['weights_tv']:.3f} "
                f"(floor {floor['weights_tv']:.3f}), per-mode Frechet {rows[-1]['frechet']:.4f} "
                f"(floor {floor['frechet']:.4f}), W2 {rows[-1]['w2']:.3f} (floor {floor['w2']:.3f})")
    return {"observed_x1": OBSERVED_X1, "posterior_weights": [round(float(v), 6) for v in post.weights],
            "posterior_means": [float(v) for v in post.means[:, 0]], "floor": floor, "runs": rows}


# ------------------------------------------------------------------------------------ run and report
def run(quick: bool = False, out_dir: Path | str = ".", samplers=None, threads: int = 1, log=print) -> dict:
    """Run the three parts and write ``guidance.{json,md,png}`` to ``out_dir``; returns the results."""
    torch.set_num_threads(threads)
    cfg = dict(QUICK if quick else FULL)
    if samplers:
        cfg["samplers"] = tuple(samplers)
    names = deterministic_samplers(cfg["samplers"])
    if not names:
        raise ValueError(f"no deterministic fixed-NFE sampler among {samplers}; choose from "
                         f"{', '.join(n for n, _ in deterministic_samplers())}")
    gm, sde, n = labelled_ring(), sd.VPSDE(), cfg["n"]
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = time.perf_counter()
    a = classifier_guidance_part(gm, sde, x_T, names, cfg["nfes"], n, log)
    tilted = tilted_reference(gm, cfg["weights"], n, cfg["cells"])
    b = free_guidance_part(gm, sde, x_T, names, cfg["nfes"], cfg["weights"], cfg["reference_steps"], tilted, log)
    b["tilted"] = {str(w): {"floor": v["floor"], "law": v["law"]} for w, v in tilted.items()}
    c = inpainting_part(gm, sde, cfg["inpaint_nfes"], cfg["inpaint_samplers"], n, log)
    results = {"config": {"quick": quick, "n": n, "class": CLASS, "radius": RADIUS, "std": STD, "far": FAR,
                          "eps": EPS, "sde": "VPSDE()", "weights": list(cfg["weights"]), "nfes": list(cfg["nfes"]),
                          "samplers": [s for s, _ in names], "reference": f"dpm_solver, {cfg['reference_steps']} steps",
                          "inpaint_nfes": list(cfg["inpaint_nfes"]), "inpaint_samplers": list(cfg["inpaint_samplers"]),
                          "seconds": time.perf_counter() - start},
               "classifier_guidance": a, "classifier_free_guidance": b, "inpainting": c}
    write_report(results, out_dir, tilted)
    return results


def headline(results: dict) -> list[str]:
    """A few sentences with the numbers that matter."""
    a, b, c = results["classifier_guidance"], results["classifier_free_guidance"], results["inpainting"]
    lines = []
    for nfe in results["config"]["nfes"]:
        best = min((r for r in a["runs"] if r["budget"] == nfe and math.isfinite(r["sw2"])), key=lambda r: r["sw2"],
                   default=None)
        if best is not None:
            lines.append(f"(a) classifier guidance (exact classifier, scale 1) at NFE {nfe}: best {best['sampler']}, "
                         f"sliced W2 to p0(x|y) {best['sw2']:.4f} (noise floor {a['floor']['sw2']:.4f}).")
    for w, conv in b["converged"].items():
        t = b["tilted"][w]
        lines.append(f"(b) w = {float(w):g}: the converged guided law is at sliced W2 {conv['sw2_tilted']:.3f} from "
                     f"the tilted law p0(x|y) p0(y|x)^w (floor {t['floor']['sw2_tilted']:.3f}; histogram TV "
                     f"{conv['tv_tilted']:.3f}, floor {t['floor']['tv_tilted']:.3f}); its modes' centres moved "
                     f"{conv['mean_error']:.2f} stds (the tilted law's {t['law']['mean_error']:.2f}) and their "
                     f"spread is {conv['spread_ratio']:.2f} of the conditional's (the tilted law's "
                     f"{t['law']['spread_ratio']:.2f}).")
    div = [r for r in b["runs"] if r["diverged"]]
    lines.append("(b) diverged runs (not finite or beyond radius + 10 std): "
                 + (", ".join(f"{r['sampler']} (w = {r['w']:g}, NFE {r['nfe']})" for r in div) if div else "none")
                 + f"; classifier guidance at scale 1 + w matches classifier-free guidance at w to a relative "
                 f"{b['cg_vs_cfg_max_rel']:.1e}.")
    for budget in results["config"]["inpaint_nfes"]:
        rows = [r for r in c["runs"] if r["budget"] == budget and math.isfinite(r["w2"])]
        if rows:
            best = min(rows, key=lambda r: r["weights_tv"] + r["frechet"])
            lines.append(f"(c) inpainting at ~{budget} NFE: best {best['method']} + {best['sampler']} (NFE "
                         f"{best['nfe']}), posterior mode weights TV {best['weights_tv']:.3f} (floor "
                         f"{c['floor']['weights_tv']:.3f}), per-mode Frechet {best['frechet']:.4f} (floor "
                         f"{c['floor']['frechet']:.4f}), W2 {best['w2']:.3f} (floor {c['floor']['w2']:.3f}).")
    return lines


def write_markdown(results: dict, path: Path) -> Path:
    a, b, c = results["classifier_guidance"], results["classifier_free_guidance"], results["inpainting"]
    cfg = results["config"]
    nfes = cfg["nfes"]
    lines = ["# Guidance benchmark", "",
             f"Labelled ring (8 modes, std {cfg['std']}, radius {cfg['radius']}; classes = pairs of neighbouring "
             f"modes), class {cfg['class']}, VP SDE, exact scores, {cfg['n']} samples per run, same prior draw. "
             f"{'Quick run. ' if cfg['quick'] else ''}See `sdediff/bench/guidance.py` for the method.", "",
             "## Headline", "", *[f"- {s}" for s in results["headline"]], "",
             "## (a) Classifier guidance, exact classifier, scale 1: sliced W2 to p0(x | y)", "",
             f"Noise floor (exact conditional samples): {a['floor']['sw2']:.4f}; a diverged run is marked `div`.", "",
             "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for s in cfg["samplers"]:
        cells = []
        for k in nfes:
            r = next((r for r in a["runs"] if r["sampler"] == s and r["budget"] == k), None)
            cells.append("-" if r is None else ("div" if r["diverged"] else f"{r['sw2']:.4f}"))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "## (b) Classifier-free guidance vs the tilted law p0(x | y) p0(y | x)^w", "",
              f"Converged guided samples ({cfg['reference']}) against the tilted law, and the tilted law itself. "
              "Spread: the RMS std of each mode over the conditional's (1 = unchanged); mode offset: the distance "
              "of each mode's centre from the conditional's, in its stds (about 1/sqrt(n per mode) for exact "
              "samples).", "",
              "| w | SW2 to tilted | floor | hist. TV | floor | spread (guided) | spread (tilted) "
              "| mode offset (guided) | mode offset (tilted) | tilted SW2 to p0(x\\|y) | diverged |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for w, conv in b["converged"].items():
        t = b["tilted"][w]
        lines.append(f"| {float(w):g} | {conv['sw2_tilted']:.4f} | {t['floor']['sw2_tilted']:.4f} | "
                     f"{conv['tv_tilted']:.3f} | {t['floor']['tv_tilted']:.3f} | {conv['spread_ratio']:.3f} | "
                     f"{t['law']['spread_ratio']:.3f} | {conv['mean_error']:.2f} | {t['law']['mean_error']:.2f} | "
                     f"{t['law']['sw2_to_conditional']:.4f} | {conv['diverged']} |")
    lines += ["", "Per sampler: sliced W2 to the tilted law (`div`: diverged).", "",
              "| sampler | w | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    for s in cfg["samplers"]:
        for w in cfg["weights"]:
            cells = []
            for k in nfes:
                r = next((r for r in b["runs"] if r["sampler"] == s and r["w"] == w and r["budget"] == k), None)
                cells.append("-" if r is None else ("div" if r["diverged"] else f"{r['sw2_tilted']:.4f}"))
            lines.append(f"| {s} | {w:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Classifier guidance at scale 1 + w against classifier-free guidance at w, same sampler and "
              f"prior draw: largest difference {b['cg_vs_cfg_max_rel']:.1e} (relative to the samples' size).", "",
              f"## (c) Inpainting: x_2 given x_1 = {c['observed_x1']}", "",
              f"Exact posterior mode weights {', '.join(f'{v:.3f}' for v in c['posterior_weights'] if v > 1e-3)} "
              f"(modes with weight > 0.001). Noise floor: mode weights TV {c['floor']['weights_tv']:.4f}, per-mode "
              f"Frechet {c['floor']['frechet']:.4f}, W2 {c['floor']['w2']:.4f} (W2 between two exact sample sets is "
              "dominated by the mass moving between the two mirror-image groups of modes, hence its high floor).", "",
              "| method | sampler | NFE budget | NFE spent | mode weights TV | per-mode Frechet | W2 |",
              "|---|---|---|---|---|---|---|"]
    for r in c["runs"]:
        lines.append(f"| {r['method']} | {r['sampler']} | {r['budget']} | {r['nfe']} | {r['weights_tv']:.4f} | "
                     f"{r['frechet']:.4f} | {r['w2']:.4f} |")
    return write_text(path, lines)


def plot(results: dict, tilted: dict | None, path: Path) -> Path:
    plt = pyplot()
    a, b, c = results["classifier_guidance"], results["classifier_free_guidance"], results["inpainting"]
    cfg = results["config"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9), layout="constrained")
    ax = axes[0, 0]
    for s in cfg["samplers"]:
        rows = [r for r in a["runs"] if r["sampler"] == s]
        ax.loglog([r["nfe"] for r in rows], [r["sw2"] for r in rows], "o-", label=s)
    ax.axhline(a["floor"]["sw2"], color="k", ls="--", label="noise floor")
    ax.set(title="(a) classifier guidance, scale 1: SW2 to p0(x|y)", xlabel="NFE", ylabel="sliced W2")
    ax.set_xticks(cfg["nfes"], [str(k) for k in cfg["nfes"]], minor=False)
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    nfe = max(cfg["nfes"])
    for s in cfg["samplers"]:
        rows = [r for r in b["runs"] if r["sampler"] == s and r["budget"] == nfe]
        ax.plot([r["w"] for r in rows], [r["sw2_tilted"] for r in rows], "o-", label=f"{s}, NFE {nfe}")
    ws = [float(w) for w in b["converged"]]
    ax.plot(ws, [v["sw2_tilted"] for v in b["converged"].values()], "k^-", label="converged")
    ax.plot(ws, [b["tilted"][w]["floor"]["sw2_tilted"] for w in b["converged"]], "k--", label="noise floor")
    ax.set(title="(b) classifier-free guidance: SW2 to the tilted law", xlabel="w", ylabel="sliced W2",
           xscale="symlog", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    if tilted:
        w = max(tilted)
        t = tilted[w]
        side = int(round(t["mass"].numel() ** 0.5))
        dens = t["mass"].reshape(side, side)
        ext = [-GRID_HALF_WIDTH, GRID_HALF_WIDTH, -GRID_HALF_WIDTH, GRID_HALF_WIDTH]
        ax.imshow(dens.numpy(), origin="lower", extent=ext, cmap="Greys")
        ax.scatter(t["fresh"][:400, 0], t["fresh"][:400, 1], s=3, color="tab:green", label="tilted law")
        if "guided" in t:
            g = t["guided"][:400]
            ax.scatter(g[:, 0], g[:, 1], s=3, color="tab:red", label="guided (converged)")
        ax.set(title=f"(b) w = {w:g}: the tilted law (grey, green) and guided samples (red)",
               xlim=(-2, GRID_HALF_WIDTH), ylim=(-4, GRID_HALF_WIDTH - 2), aspect="equal")
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    for method in INPAINT_METHODS:
        for s in cfg["inpaint_samplers"]:
            rows = [r for r in c["runs"] if r["method"] == method and r["sampler"] == s]
            ax.loglog([r["nfe"] for r in rows], [r["weights_tv"] for r in rows], "o-", label=f"{method} + {s}")
    ax.axhline(c["floor"]["weights_tv"], color="k", ls="--", label="noise floor")
    ax.set(title=f"(c) inpainting x2 | x1 = {c['observed_x1']}: posterior mode weights", xlabel="NFE",
           ylabel="TV of the mode weights")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_report(results: dict, out_dir: Path | str, tilted: dict | None = None) -> None:
    """Write ``guidance.json``, ``guidance.md`` and ``guidance.png`` (with the headline)."""
    results["headline"] = headline(results)
    out_dir = Path(out_dir)
    write_json(out_dir / "guidance.json", results)
    write_markdown(results, out_dir / "guidance.md")
    plot(results, tilted, out_dir / "guidance.png")


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench guidance``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "small run (< 30 s)")
    parser.add_argument("--samplers", nargs="*", default=None,
                        help="deterministic samplers to run (default: all with a fixed NFE per step)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    guard_quick(out, "guidance", args.quick, args.force)
    log = Progress()
    log(f"guidance benchmark{' (quick)' if args.quick else ''}; results will go to {out.resolve()}")
    run(quick=args.quick, out_dir=out, samplers=args.samplers, threads=args.threads, log=log)
    announce(out, ("guidance.json", "guidance.md", "guidance.png"), log=log)
