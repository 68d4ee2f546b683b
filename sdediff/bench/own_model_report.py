"""The report of :mod:`sdediff.bench.own_model`: JSON, markdown, and a PNG of error vs NFE with the floor band."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .report import pyplot, save_figure, write_json, write_text

__all__ = ["write_report", "write_markdown", "plot"]

TARGETS = {"heldout": "held-out data", "reference": "the reference run (converged ODE)"}


def _cell(v: list[float]) -> str:
    return f"{v[0]:.4g} ± {v[1]:.2g}"


def write_markdown(results: dict, path: Path) -> None:
    cfg, ref = results["config"], results["reference"]
    metrics = cfg["metrics"]
    lines = ["# Step-count benchmark on your own model", "",
             f"Model: {cfg.get('model')}; data: `{cfg.get('data')}`; SDE: {cfg.get('sde')}; "
             f"{cfg['n']} examples per set (example i uses seed {cfg['seed']} + i).",
             f"Reference: {cfg['reference']}, NFE {ref['nfe']} ({ref['seconds']:.1f} s).", "",
             f"Each value is the mean ± std over {cfg['splits']} random splits of the target set; the noise floor "
             "is the same statistic between two independent sets of the same size (the target split in two). "
             "A value within the floor (mean + 2 std, marked `*`) is indistinguishable from the target at this "
             "sample size. `mmd` is the unbiased MMD^2 (it can be negative).", "",
             f"Config: `{json.dumps(cfg)}`", ""]
    for target, title in TARGETS.items():
        floor = results["floor"][target]
        paired = target == "reference"
        lines += [f"## Against {title}", "",
                  "| sampler | NFE | " + " | ".join(metrics) + (" | paired RMS |" if paired else " |"),
                  "|---|---|" + "---|" * len(metrics) + ("---|" if paired else ""),
                  "| *noise floor* | | " + " | ".join(_cell(floor[m]) for m in metrics) + (" | 0 |" if paired else " |")]
        if target == "heldout":
            lines.append(f"| *reference run* | {ref['nfe']} | " +
                         " | ".join(_cell(ref["vs_heldout"][m]) for m in metrics) + " |")
        for r in results["runs"]:
            if "error" in r:
                continue
            cells = [_cell(r[f"vs_{target}"][m]) + ("*" if r[f"vs_{target}"][m][0] <= floor[m][0] + 2 * floor[m][1]
                                                    else "") for m in metrics]
            extra = f" | {r['paired_rmse']:.3g}" if paired and "paired_rmse" in r else (" | -" if paired else "")
            lines.append(f"| {r['sampler']} | {r['nfe']} | " + " | ".join(cells) + extra + " |")
        lines.append("")
    lines += ["## Fewest NFE with every statistic within its noise floor", "",
              "| sampler | vs held-out | vs reference |", "|---|---|---|"]
    for name, s in results["summary"].items():
        lines.append(f"| {name} | {s['heldout'] or '-'} | {s['reference'] or '-'} |")
    errors = [r for r in results["runs"] if "error" in r]
    if errors:
        lines += ["", "Failed runs:", ""] + [f"- {r['sampler']} (budget {r.get('budget')}): {r['error']}" for r in errors]
    write_text(path, lines)


def plot(results: dict, path: Path) -> None:
    """Each statistic against NFE, per target, with the noise floor as a band (mean ± std)."""
    plt = pyplot()
    metrics = results["config"]["metrics"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 7.0), squeeze=False, layout="constrained")
    runs = [r for r in results["runs"] if "error" not in r]
    labels = list(dict.fromkeys(r["sampler"] for r in runs))
    for row, (target, title) in enumerate(TARGETS.items()):
        for col, m in enumerate(metrics):
            ax = axes[row][col]
            values = []
            for label in labels:
                pts = sorted((r["nfe"], *r[f"vs_{target}"][m]) for r in runs if r["sampler"] == label)
                if pts:
                    nfe, mean, std = zip(*pts)
                    ax.errorbar(nfe, mean, yerr=std, marker="o", ms=3, capsize=2, label=label)
                    values += list(mean)
            mean, std = results["floor"][target][m]
            ax.axhspan(mean - std, mean + std, color="0.6", alpha=0.35, lw=0, label="noise floor (± std)")
            ax.axhline(mean, color="k", ls="--", lw=1)
            values.append(mean - std)
            if target == "heldout":
                ax.axhline(results["reference"]["vs_heldout"][m][0], color="tab:gray", ls=":", lw=1.2,
                           label="reference run")
            ax.set_xscale("log")
            if all(v > 0 and math.isfinite(v) for v in values):
                ax.set_yscale("log")
            else:  # the unbiased MMD^2 can be negative
                ax.set_yscale("symlog", linthresh=max(abs(mean), std, 1e-8))
            ax.set_title(f"{m} vs {title}", fontsize=9)
            ax.set_xlabel("NFE")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def write_report(results: dict, out_dir, name: str) -> tuple[str, str, str]:
    """Write ``name.json``, ``name.md`` and ``name.png`` to ``out_dir``; returns the file names."""
    out_dir = Path(out_dir)
    files = (f"{name}.json", f"{name}.md", f"{name}.png")
    write_json(out_dir / files[0], results)
    write_markdown(results, out_dir / files[1])
    plot(results, out_dir / files[2])
    return files
