"""The peer benchmark's comparison and report: best per metric and budget, all-round best,
adaptive NFE to the noise floor, verdicts, markdown and plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .peer_samplers import CHECK_ANCESTRAL_STEPS, CHECK_FIRST_ORDER_STEPS, CHECK_RK45_TOL, CHECK_SEEDS, CHECK_STEPS
from .problems import EPS, METRICS
from .report import pyplot, save_figure, write_text

__all__ = ["compare", "all_round", "adaptive_to_floor", "verdict", "write_markdown", "plot"]


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


def adaptive_to_floor(problem: dict) -> dict:
    """Fewest NFE at which each adaptive sampler (both sides) reaches the noise floor.

    Two readings, as in :func:`sdediff.bench.steps.headline`: (a) every metric within 1.5x its
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
             f"VP SDE, eps={EPS}, exact oracle score on both sides. Config: `{json.dumps(cfg)}`.",
             "Peers: diffusers schedulers on the matching discrete VP chain, the score-SDE reference VP "
             "predictor and RK45 ODE sampler; see `sdediff/bench/peers.py`. Each cell is the best value "
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
    write_text(path, lines)


def plot(results: dict, path: Path) -> None:
    """Per problem and metric: best peer and best sdediff value against NFE, floor dashed."""
    plt = pyplot()
    probs = list(results["problems"].items())
    fig, axes = plt.subplots(len(probs), len(METRICS), figsize=(3.6 * len(METRICS), 3.3 * len(probs)),
                             squeeze=False, layout="constrained")
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
    save_figure(fig, path)
