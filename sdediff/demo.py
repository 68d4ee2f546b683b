"""The ``sdediff demo``: the whole toolkit on the 2-D ring of Gaussians, where the truth is known.

1. Train a residual MLP (v-prediction, VP SDE, EMA weights) on draws of the ring
   (8 isotropic Gaussians of std 0.1 on a circle of radius 2: an exact
   :class:`~sdediff.analytic.GaussianMixture`) for a wall-clock budget.
2. Sample it with several samplers at several NFE, and, for comparison, sample the same
   samplers with the *exact* score of the mixture (pure sampler error, no network error).
   Quality is the sliced 2-Wasserstein distance to a fixed set of exact samples of the same size;
   its noise floor is the same distance for other exact samples, as a mean and a standard
   deviation over independent draws: a sampler within that spread is indistinguishable from
   exact sampling at this sample size (never "better" than it).
3. The held-out NLL through the probability-flow ODE (exact trace) next to the true entropy
   of the mixture, and, paired on the same points, the gap ``log p_true - log p_model``
   (an estimate of ``KL(p || model)``).

Writes ``samples.png``, ``nfe_curve.png``, ``report.md``, ``report.json``, ``run.json`` and
``checkpoints/`` to the output folder (so ``sdediff sample --ckpt runs/demo`` works).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["run_demo", "DEMO_SAMPLERS"]

#: Samplers of the demo, with the options they run with (deterministic ones skip the final
#: Tweedie step, as in benchmarks/steps.py; stochastic ones end with it, its NFE counted).
DEMO_SAMPLERS: tuple[str, ...] = ("dpm_solver", "heun", "ddim", "pc")
NFES = (10, 20, 50, 100)
QUICK_NFES = (4, 10)
SHOW_NFE = 50  # samples.png shows every sampler at (about) this NFE
EPS = 1e-3  # final sampling time
FLOOR_DRAWS = 8  # independent exact sample sets behind each noise floor (its mean and spread)


def _steps_for(nfe: int, nfe_per_step: float, stochastic: bool) -> int:
    budget = nfe - 1 if stochastic else nfe  # the Tweedie step costs one evaluation
    return max(1, int(round(budget / nfe_per_step)))


def _train(data: torch.Tensor, sde, seconds: float, quick: bool, seed: int, out: Path, progress: bool,
           log: Callable[[str], None]):
    from .nets import build_net
    from .parameterization import ScoreModel
    from .training import Trainer

    def make(steps: int) -> Trainer:
        torch.manual_seed(seed)
        net = build_net("mlp", dim=2, hidden=128, depth=3, seed=seed)
        # v-prediction (Salimans & Ho 2022): with eps-prediction, x0_hat = (x - s eps_hat) / a amplifies
        # the network's error by 1 / a(T) ~ 150 near T, and ODE samplers then throw a few points far
        # off the ring; v keeps x0_hat = a x - s v_hat bounded at both ends.
        return Trainer(ScoreModel(net, sde, "v"), data=data, steps=steps, batch_size=512, lr=2e-3,
                       warmup=min(100, steps // 4), lr_schedule="cosine", ema_decay=0.999, seed=seed,
                       out_dir=out, checkpoint_every=10 ** 9, log_every=50, progress=progress)

    if quick:
        steps = 30
    else:  # time a few steps, then size the cosine schedule to the budget
        probe = make(1000)
        probe.out_dir = None
        probe.progress = False
        probe.train(until=5)
        start = time.perf_counter()
        probe.train(until=25)
        per_step = (time.perf_counter() - start) / 20
        steps = max(100, int(seconds / per_step))
        log(f"training ~{steps} steps ({per_step * 1e3:.0f} ms/step) for {seconds:.0f} s")
    trainer = make(steps)
    trainer.max_time = seconds  # a guard if the machine slows down after the timing probe
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


def _sample_all(score_fn, sde, n: int, nfes, seed: int, dtype, progress: bool) -> dict[str, list[dict]]:
    """Every demo sampler at every NFE from the same prior draw (common random numbers)."""
    from tqdm.auto import tqdm

    from .samplers import available_samplers, sample

    registry = available_samplers()
    names = [s for s in DEMO_SAMPLERS if s in registry]
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    runs: dict[str, list[dict]] = {}
    jobs = [(name, nfe) for name in names for nfe in nfes]
    for name, nfe in tqdm(jobs, desc="sampling", disable=not progress, leave=False):
        info = registry[name]
        steps = _steps_for(nfe, info.nfe_per_step, info.stochastic)
        gen = torch.Generator().manual_seed(seed + 2)
        start = time.perf_counter()
        x, used = sample(score_fn, sde, (n, 2), sampler=name, steps=steps, generator=gen, eps=EPS,
                         denoise=info.stochastic, x_T=x_T, return_nfe=True)
        runs.setdefault(name, []).append({"steps": steps, "nfe": used, "seconds": time.perf_counter() - start,
                                          "x": x.detach().double()})
    return runs


def _sliced_w2(x: torch.Tensor, ref: torch.Tensor) -> float:
    from .metrics import sliced_wasserstein
    # fixed projection directions (seed 0) so every number is measured the same way
    return float(sliced_wasserstein(x, ref, num_projections=256, generator=0))


def run_demo(out: str | Path = "runs/demo", seconds: float = 90.0, quick: bool = False, seed: int = 0,
             progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, sample, evaluate and plot on the 2-D ring; see the module docstring.

    Args:
        out: the output folder.
        seconds: the training budget in wall-clock seconds.
        quick: 30 training steps, tiny sample sets, two NFE values (a smoke test).
        seed: seeds the data, the network, the training noise and the samplers.
        progress: show tqdm bars.
        log: where progress lines go.

    Returns:
        The numbers of ``report.json`` plus the output paths.

    Raises:
        ValueError: a non-positive ``seconds``.
    """
    from .analytic import GaussianMixture
    from .checkpoint import latest_checkpoint
    from .datasets import ring_params, toy_data
    from .likelihood import log_likelihood
    from .metrics import mode_statistics
    from .runs import require_matplotlib, write_run_info
    from .sde import VPSDE

    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    require_matplotlib("draw the demo's pictures")  # before any work
    wall = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "checkpoints").exists():  # a fresh run each time: old checkpoints would be resumed by no one
        import shutil
        shutil.rmtree(out / "checkpoints")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    n = 100 if quick else 1000
    n_test = 10 if quick else 500
    nfes = QUICK_NFES if quick else NFES
    sde = VPSDE()
    gm = GaussianMixture(*ring_params())

    # 1. train ------------------------------------------------------------------------------
    data = toy_data("ring", 100_000, generator=torch.Generator().manual_seed(seed))
    write_run_info(out, {"format": 1, "command": "demo", "data": "ring", "sde": "vp", "net": "mlp",
                         "parameterization": "v", "seed": seed, "seconds": seconds, "quick": quick})
    log(f"sdediff demo: training a residual MLP on the 2-D ring (VP SDE) -> {out}")
    trainer, train_seconds = _train(data, sde, seconds, quick, seed, out, progress, log)
    model = trainer.ema_model.eval()
    loss = next((r["loss"] for r in reversed(trainer.history) if "loss" in r), float("nan"))

    # 2. sample with the model and with the exact score ---------------------------------------
    log(f"sampling: {', '.join(DEMO_SAMPLERS)} at NFE {', '.join(map(str, nfes))} (model and exact score)")
    start = time.perf_counter()
    model_runs = _sample_all(model, sde, n, nfes, seed, torch.float32, progress)
    exact_runs = _sample_all(gm.score_fn(sde), sde, n, nfes, seed, torch.float64, progress)
    sample_seconds = time.perf_counter() - start
    start_metrics = time.perf_counter()
    means, stds, weights = ring_params()
    ref = gm.sample(n, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    exact_draws = [gm.sample(n, generator=torch.Generator().manual_seed(seed + 10 + k), dtype=torch.float64)
                   for k in range(FLOOR_DRAWS)]
    floor, floor_std = _mean_std([_sliced_w2(x, ref) for x in exact_draws])
    frechet_floor, frechet_floor_std = _mean_std([mode_statistics(x, means, stds, weights)["frechet"]
                                                  for x in exact_draws])
    rows = []
    for name in model_runs:
        for m_run, e_run in zip(model_runs[name], exact_runs[name]):
            stats = mode_statistics(m_run["x"], means, stds, weights)
            rows.append({"sampler": name, "steps": m_run["steps"], "nfe": m_run["nfe"],
                         "sw2_model": _sliced_w2(m_run["x"], ref), "sw2_exact": _sliced_w2(e_run["x"], ref),
                         "frechet_model": stats["frechet"],
                         "frechet_exact": mode_statistics(e_run["x"], means, stds, weights)["frechet"],
                         "weights_tv": stats["weights_tv"], "spread_ratio": stats["spread_ratio"],
                         "num_empty": stats["num_empty"], "seconds": m_run["seconds"]})
    metrics_seconds = time.perf_counter() - start_metrics

    # 3. held-out likelihood ------------------------------------------------------------------
    log(f"held-out NLL of {n_test} test points (probability-flow ODE, exact trace)")
    test = toy_data("ring", n_test, generator=torch.Generator().manual_seed(10_000 + seed), dtype=torch.float64)
    start = time.perf_counter()
    res = log_likelihood(copy.deepcopy(model).double(), sde, test, trace="exact")
    lik_seconds = time.perf_counter() - start
    log(f"  trained {train_seconds:.0f} s, sampled {sample_seconds:.0f} s, metrics {metrics_seconds:.0f} s, "
        f"likelihood {lik_seconds:.0f} s")
    nll = -res.logp
    true_nll = -gm.log_prob(test)
    gap = nll - true_nll
    entropy, entropy_se = gm.entropy(num_samples=20_000 if quick else 200_000,
                                     generator=torch.Generator().manual_seed(seed))
    se = 1 / math.sqrt(n_test)
    likelihood = {"n_test": n_test, "nll": float(nll.mean()), "nll_se": float(nll.std() * se),
                  "true_nll": float(true_nll.mean()), "entropy": entropy, "entropy_se": entropy_se,
                  "gap": float(gap.mean()), "gap_se": float(gap.std() * se), "nfe": res.nfe,
                  "seconds": lik_seconds}

    # 4. pictures and report ------------------------------------------------------------------
    ckpt = latest_checkpoint(out)
    show = {name: min(runs, key=lambda r: abs(r["nfe"] - SHOW_NFE)) for name, runs in model_runs.items()}
    truth = gm.sample(n, generator=torch.Generator().manual_seed(seed + 4), dtype=torch.float64)
    _plot_samples(truth, show, rows, means, out / "samples.png")
    _plot_nfe(rows, {"sw2": (floor, floor_std), "frechet": (frechet_floor, frechet_floor_std)}, n, nfes,
              out / "nfe_curve.png")
    result = {"out": str(out), "checkpoint": str(ckpt), "quick": quick, "seed": seed,
              "training": {"steps": trainer.step, "seconds": train_seconds, "final_loss": loss,
                           "params": sum(p.numel() for p in model.parameters())},
              "likelihood": likelihood, "samplers": rows, "noise_floor_sw2": floor,
              "noise_floor_sw2_std": floor_std, "noise_floor_frechet": frechet_floor,
              "noise_floor_frechet_std": frechet_floor_std, "noise_floor_draws": FLOOR_DRAWS, "n_samples": n,
              "sampling_seconds": sample_seconds, "wall_seconds": time.perf_counter() - wall}
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(_report_md(result))
    result["wall_seconds"] = time.perf_counter() - wall
    lk = likelihood
    log(f"held-out NLL {lk['nll']:.3f} +- {lk['nll_se']:.3f} nats vs true entropy {lk['entropy']:.3f} "
        f"(paired gap {lk['gap']:.3f} +- {lk['gap_se']:.3f})")
    best = min((r for r in rows if r["nfe"] <= 60), key=lambda r: r["sw2_model"], default=None)
    if best is not None:
        log(f"best sampler at NFE <= 60: {best['sampler']} (NFE {best['nfe']}), sliced W2 {best['sw2_model']:.3f}: "
            + versus_floor(best["sw2_model"], floor, floor_std))
    log(f"done in {result['wall_seconds']:.0f} s. Wrote:")
    for name in ("samples.png", "nfe_curve.png", "report.md", "report.json"):
        log(f"  {out / name}")
    log(f"  {ckpt}  (checkpoint; try: sdediff sample --ckpt {out} --sampler heun --steps 25 --out ring.png)")
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if len(values) > 1 else 0.0


def versus_floor(value: float, floor: float, floor_std: float) -> str:
    """How a sample-quality value compares with the noise floor of exact samples (mean and std).

    A value within two standard deviations of the floor's mean -- above it or below it -- is
    indistinguishable from exact sampling at this sample size; below the floor is luck of the
    draw, never a sampler "better than exact samples".
    """
    floor_text = f"noise floor {floor:.3f} +- {floor_std:.3f} (mean +- std of {FLOOR_DRAWS} exact draws)"
    if value <= floor + 2 * floor_std:
        return f"within the spread of exact samples, {floor_text}"
    sigmas = (value - floor) / floor_std if floor_std > 0 else math.inf
    return f"{value / floor:.1f}x the {floor_text}, {sigmas:.1f} std above it"


# ------------------------------------------------------------------------------ plots
def _plt():
    from .runs import pyplot
    return pyplot()


def _plot_samples(truth, show: dict, rows: list[dict], means, path: Path) -> None:
    plt = _plt()
    panels = [("exact samples (ground truth)", truth, None)]
    for name, run in show.items():
        sw = next(r["sw2_model"] for r in rows if r["sampler"] == name and r["nfe"] == run["nfe"])
        panels.append((f"{name}, NFE {run['nfe']}", run["x"], sw))
    cols = min(5, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.3 * cols, 3.7 * rows_n), squeeze=False,
                             layout="constrained")  # room for every title and tick label
    for ax, (title, x, sw) in zip(axes.flat, panels):
        x = x.cpu()
        inside = (x.abs() <= 3.2).all(dim=1)
        ax.scatter(x[inside, 0], x[inside, 1], s=2, alpha=0.4, color="tab:blue" if sw is not None else "k",
                   rasterized=True, linewidths=0)
        ax.scatter(means[:, 0], means[:, 1], marker="+", s=40, color="tab:red", linewidths=1)
        extra = f"\nsliced W2 {sw:.3f}" if sw is not None else "\n"
        outside = int((~inside).sum())
        if outside:
            extra += f", {outside} pts off-plot"
        ax.set_title(title + extra, fontsize=9)
        ax.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("sdediff demo: the 2-D ring of 8 Gaussians; exact samples vs the trained model's samples "
                 "(red +: the mode means)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_nfe(rows: list[dict], floors: dict[str, float], n: int, nfes, path: Path) -> None:
    plt = _plt()
    from matplotlib.ticker import FormatStrFormatter
    metrics = (("sw2", "sliced W2 to exact samples"), ("frechet", "per-mode Frechet distance"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey="row", layout="constrained")
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (metric, label) in enumerate(metrics):
        for j, (which, title) in enumerate((("model", "trained model"), ("exact", "exact score (sampler error only)"))):
            ax = axes[i][j]
            for k, name in enumerate(names):
                pts = [(r["nfe"], r[f"{metric}_{which}"]) for r in rows if r["sampler"] == name]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[k % len(colors)], label=name,
                        ms=4)
            mean, std = floors[metric]
            ax.axhline(mean, color="k", ls="--", lw=1, label=f"noise floor (exact samples, n={n}): mean")
            ax.axhspan(max(mean - 2 * std, mean / 10), mean + 2 * std, color="k", alpha=0.1, lw=0,
                       label=f"noise floor: mean +- 2 std ({FLOOR_DRAWS} draws)")
            ax.set(xscale="log", yscale="log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xticks(list(nfes))  # tick the NFE budgets asked for
            ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            # sliced W2 spans less than a decade: label the minor ticks too
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g" if metric == "sw2" else ""))
            if i == 0:
                ax.set_title(title)
            if i == 1:
                ax.set_xlabel("NFE (score evaluations)")
        axes[i][0].set_ylabel(label)
    axes[0][1].legend(fontsize=8, loc="upper right")
    fig.suptitle("sample quality vs NFE on the 2-D ring (lower is better; log-log)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report_md(r: dict) -> str:
    tr, lk = r["training"], r["likelihood"]
    lines = [
        "# sdediff demo report", "",
        "Data: the 2-D ring (8 isotropic Gaussians, std 0.1, radius 2), an exact Gaussian mixture, so "
        "the true density, entropy and score are known. Model: residual MLP (v-prediction, "
        "VP SDE, EMA weights)." + (" **Quick mode: the numbers are a smoke test only.**" if r["quick"] else ""), "",
        "## Training", "",
        "| steps | seconds | final loss | parameters |", "|---|---|---|---|",
        f"| {tr['steps']} | {tr['seconds']:.1f} | {tr['final_loss']:.4f} | {tr['params']} |", "",
        "## Held-out likelihood (probability-flow ODE, exact trace, dopri5 rtol = atol = 1e-5)", "",
        "| quantity | nats |", "|---|---|",
        f"| model NLL of {lk['n_test']} test points | {lk['nll']:.4f} +- {lk['nll_se']:.4f} |",
        f"| true NLL of the same points | {lk['true_nll']:.4f} |",
        f"| true entropy (Monte Carlo) | {lk['entropy']:.4f} +- {lk['entropy_se']:.4f} |",
        f"| paired gap NLL_model - NLL_true (estimates KL(p, model)) | {lk['gap']:.4f} +- {lk['gap_se']:.4f} |",
        "", f"The solve used {lk['nfe']} score evaluations in {lk['seconds']:.1f} s.", "",
        f"## Samplers ({r['n_samples']} samples each, same prior draw; sliced W2 to exact samples)", "",
        f"Noise floors (the same statistic for exact samples of the same size, mean +- std over "
        f"{r['noise_floor_draws']} independent draws): sliced W2 **{r['noise_floor_sw2']:.4f} +- "
        f"{r['noise_floor_sw2_std']:.4f}**, per-mode Frechet **{r['noise_floor_frechet']:.2e} +- "
        f"{r['noise_floor_frechet_std']:.2e}**. A value within about two std of its floor -- below it "
        "too -- is indistinguishable from exact sampling at this sample size. "
        "`exact` columns use the mixture's exact score: the sampler's own error. Mode statistics are of the "
        "model's samples (`weights_tv`: total variation of the mode frequencies; `spread`: per-mode std over "
        "the true 0.1; `Frechet`: the squared Frechet distance of each mode's Gaussian fit to the true mode, "
        "averaged).", "",
        "| sampler | steps | NFE | sliced W2 (model) | sliced W2 (exact score) | Frechet (model) | "
        "Frechet (exact score) | weights_tv | spread | empty modes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["samplers"]:
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['nfe']} | {row['sw2_model']:.4f} | "
                     f"{row['sw2_exact']:.4f} | {row['frechet_model']:.2e} | {row['frechet_exact']:.2e} | "
                     f"{row['weights_tv']:.3f} | {row['spread_ratio']:.2f} | "
                     f"{row['num_empty']} |")
    for which in ("model", "exact"):
        best = min(r["samplers"], key=lambda row: row[f"sw2_{which}"], default=None)
        if best is not None:
            lines += ["", f"Lowest sliced W2 with the {'trained model' if which == 'model' else 'exact score'}: "
                      f"{best['sampler']} at NFE {best['nfe']}, {best[f'sw2_{which}']:.4f}: "
                      + versus_floor(best[f"sw2_{which}"], r["noise_floor_sw2"], r["noise_floor_sw2_std"]) + "."]
    lines += ["", "## Files", "", "- `samples.png`: exact samples vs each sampler at about NFE 50",
              "- `nfe_curve.png`: sliced W2 and per-mode Frechet vs NFE, trained model and exact score, with the noise floors",
              f"- `{Path(r['checkpoint']).relative_to(Path(r['out']))}`: the checkpoint "
              f"(`sdediff sample --ckpt {r['out']} --out samples.npy`)", "",
              f"Total wall time: {r['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)
