"""Training benchmark: throughput (examples/s) of the MLP and the U-Net on CPU, and the ring NLL.

Ring: a residual MLP on the 2-D ring (8 Gaussians, std 0.1; an exact mixture, so its entropy and
log-density are known) trained by eps-matching on the VP SDE for a wall-clock budget; the held-out
NLL comes from ``log_likelihood`` (probability-flow ODE, exact trace). The NLL is compared with
the mixture's entropy, and, paired on the same test points, with the true log-density (the mean
gap is an estimate of KL(p || model) with a small standard error).

Digits (``--digits``): a model on the flattened 8x8 digits (17 levels, uniformly dequantized,
fresh dequantization copies as augmentation), early-stopped on the validation split, judged by
test bits/dim against a scikit-learn ``GaussianMixture`` (``n_components`` tuned on the validation
split) on the same test images and dequantization draws.

    python -m benchmarks.training [--quick] [--digits] [--seconds 60] [--out benchmarks/results]

Writes ``training.json``, ``training.md`` and ``training.png`` (``training_digits.*`` for digits).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.datasets import (DIGITS_NUM_LEVELS, dequantization_bpd_offset, dequantize, load_digits_tensors,
                              ring_params, toy_data)
from sdediff.nets import build_net
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

RESULTS = Path(__file__).parent / "results"


def _nll(model, sde, x) -> torch.Tensor:
    from sdediff.likelihood import log_likelihood
    ema = copy.deepcopy(model).double().eval()
    return -log_likelihood(ema, sde, x.double(), trace="exact").logp


def throughput(net_name: str, *, batch_size: int, steps: int = 20, threads: int = 1) -> float:
    """Training examples per second of ``net_name`` ("mlp" on 2-D, "unet" on 1x8x8) on the CPU."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if net_name == "mlp":
        net, data = build_net("mlp", dim=2, hidden=128, depth=3), toy_data("ring", 4096, generator=0)
    else:
        net = build_net("unet", in_channels=1, base_channels=32, image_size=8)
        data = load_digits_tensors("train", output="range")
    tr = Trainer(ScoreModel(net, sd.VPSDE()), data=data, steps=steps + 3, batch_size=batch_size,
                 progress=False, log_every=10 ** 9)
    tr.train(until=3)  # warm-up
    start = time.perf_counter()
    tr.train()
    return steps * batch_size / (time.perf_counter() - start)


def ring_experiment(train_seconds: float = 60.0, num_test: int = 1000, seed: int = 0, *,
                    nll_every: float | None = None, num_curve: int = 300, threads: int = 1) -> dict:
    """Train the ring MLP for ``train_seconds`` and measure its held-out NLL (nats).

    Returns a dict with ``nll``, ``entropy``, ``kl_gap`` (mean of log p_true - log p_model on the test
    points) and its ``kl_gap_se``, ``steps``, the loss ``curve`` and the ``nll_curve``.
    """
    torch.set_num_threads(threads)
    sde = sd.VPSDE()
    gm = sd.GaussianMixture(*ring_params())
    data = toy_data("ring", 200_000, generator=seed)
    test = toy_data("ring", num_test, generator=10_000 + seed, dtype=torch.float64)

    def make(steps):
        torch.manual_seed(seed)
        net = build_net("mlp", dim=2, hidden=128, depth=3)
        return Trainer(ScoreModel(net, sde, "eps"), data=data, steps=steps, batch_size=512, lr=2e-3, warmup=100,
                       lr_schedule="cosine", ema_decay=0.999, seed=seed, progress=False, log_every=50)

    probe = make(1000)
    probe.train(until=10)
    start = time.perf_counter()
    probe.train(until=40)
    per_step = (time.perf_counter() - start) / 30
    steps = max(50, int(train_seconds / per_step))
    tr = make(steps)
    tr.max_time = train_seconds
    nll_curve = []
    elapsed = 0.0
    chunk = steps if nll_every is None else max(1, int(nll_every / per_step))
    while tr.step < steps and elapsed < train_seconds:
        start = time.perf_counter()
        tr.max_time = train_seconds - elapsed
        tr.train(until=tr.step + chunk)
        elapsed += time.perf_counter() - start
        if nll_every is not None and tr.step < steps and elapsed < train_seconds:
            nll_curve.append({"step": tr.step, "seconds": elapsed,
                              "nll": float(_nll(tr.ema_model, sde, test[:num_curve]).mean())})
    nll = _nll(tr.ema_model, sde, test)
    gap = gm.log_prob(test) + nll
    entropy, entropy_se = gm.entropy(generator=torch.Generator().manual_seed(seed))
    nll_curve.append({"step": tr.step, "seconds": elapsed, "nll": float(nll[:num_curve].mean())})
    return {"train_seconds": elapsed, "steps": tr.step, "planned_steps": steps, "nll": float(nll.mean()),
            "nll_se": float(nll.std() / math.sqrt(num_test)), "entropy": entropy, "entropy_se": entropy_se,
            "test_true_nll": float(-gm.log_prob(test).mean()), "kl_gap": float(gap.mean()),
            "kl_gap_se": float(gap.std() / math.sqrt(num_test)),
            "curve": [{"step": r["step"], "loss": r["loss"]} for r in tr.history if "loss" in r],
            "nll_curve": nll_curve}


def digits_experiment(train_seconds: float = 600.0, seed: int = 0, copies: int = 20, num_test: int = 300,
                      threads: int = 2) -> dict:
    """Digits: score model vs a tuned scikit-learn GaussianMixture, test bits/dim paired per image."""
    from sklearn.mixture import GaussianMixture as SkGMM
    torch.set_num_threads(threads)
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(seed)
    train_levels = load_digits_tensors("train").reshape(-1, 64)
    val_levels = load_digits_tensors("val").reshape(-1, 64)
    test_levels = load_digits_tensors("test").reshape(-1, 64)[:num_test]
    train = torch.cat([dequantize(train_levels, generator=g) for _ in range(copies)])
    val = dequantize(val_levels, generator=g)
    test = dequantize(test_levels, generator=g, dtype=torch.float64)
    offset = dequantization_bpd_offset(DIGITS_NUM_LEVELS)

    # Baseline: sklearn GMM on the same dequantized training images (one copy), K tuned on val.
    base_train = train[: train_levels.shape[0]].double().numpy()
    best = None
    for k in (1, 2, 5, 10, 20, 40):
        gmm = SkGMM(n_components=k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(base_train)
        score = gmm.score(val.double().numpy())
        if best is None or score > best[0]:
            best = (score, k, gmm)
    gmm_bpd = torch.from_numpy(-best[2].score_samples(test.numpy())) / (64 * math.log(2)) + offset

    torch.manual_seed(seed)
    net = build_net("mlp", dim=64, hidden=512, depth=4, dropout=0.1)
    tr = Trainer(ScoreModel(net, sde, "eps"), data=train, steps=10 ** 6, batch_size=256, lr=1e-3, warmup=200,
                 weight_decay=1e-4, ema_decay=0.999, val_data=val, val_every=250, val_weighting="likelihood",
                 early_stopping=8, max_time=train_seconds, seed=seed, progress=False, log_every=250)
    tr.train()
    model_bpd = _nll(tr.best_model, sde, test) / (64 * math.log(2)) + offset
    diff = model_bpd - gmm_bpd

    def stats(v):
        return {"mean": float(v.mean()), "se": float(v.std() / math.sqrt(len(v))),
                "median": float(v.median()), "max": float(v.max())}

    return {"train_seconds": train_seconds, "steps": tr.step, "best_step": tr.best_step,
            "stopped_early": tr.stopped_early, "gmm_components": best[1], "model_bpd": stats(model_bpd),
            "gmm_bpd": stats(gmm_bpd), "paired_diff": stats(diff),
            "curve": [r for r in tr.history]}


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ring = result["ring"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot([r["step"] for r in ring["curve"]], [r["loss"] for r in ring["curve"]])
    axes[0].set(xlabel="step", ylabel="DSM loss (eps-matching)", title="ring: training loss", yscale="log")
    axes[1].plot([r["seconds"] for r in ring["nll_curve"]], [r["nll"] for r in ring["nll_curve"]], "o-",
                 label="model (held-out)")
    axes[1].axhline(ring["entropy"], color="k", ls="--", label="true entropy")
    axes[1].set(xlabel="training seconds", ylabel="NLL (nats)", title="ring: held-out NLL")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(quick: bool = False, seconds: float | None = None, out: str | Path = RESULTS, digits: bool = False) -> dict:
    """Run the benchmark and write JSON, markdown and PNG under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if digits:
        res = digits_experiment(train_seconds=seconds or (60.0 if quick else 600.0))
        (out / "training_digits.json").write_text(json.dumps(res, indent=1))
        m, b, d = res["model_bpd"], res["gmm_bpd"], res["paired_diff"]
        md = ["| model | mean bpd +- SE | median | max |", "|---|---|---|---|",
              f"| score MLP ({res['steps']} steps, best at {res['best_step']}) | {m['mean']:.3f} +- {m['se']:.3f} "
              f"| {m['median']:.3f} | {m['max']:.3f} |",
              f"| sklearn GMM (K={res['gmm_components']}) | {b['mean']:.3f} +- {b['se']:.3f} | {b['median']:.3f} "
              f"| {b['max']:.3f} |",
              f"| paired difference | {d['mean']:.3f} +- {d['se']:.3f} | {d['median']:.3f} | {d['max']:.3f} |"]
        (out / "training_digits.md").write_text("\n".join(md) + "\n")
        return res
    seconds = seconds or (10.0 if quick else 60.0)
    result = {
        "throughput_examples_per_s": {
            "mlp_2d_hidden128_depth3_batch512": throughput("mlp", batch_size=512, steps=5 if quick else 30),
            "unet_1x8x8_base32_batch128": throughput("unet", batch_size=128, steps=3 if quick else 10, threads=2),
        },
        "ring": ring_experiment(train_seconds=seconds, num_test=200 if quick else 1000,
                                nll_every=seconds / 4, num_curve=100 if quick else 300),
    }
    (out / "training.json").write_text(json.dumps(result, indent=1))
    ring = result["ring"]
    md = ["| quantity | value |", "|---|---|"]
    md += [f"| throughput {k} | {v:.0f} examples/s |" for k, v in result["throughput_examples_per_s"].items()]
    md += [f"| ring: training | {ring['train_seconds']:.0f} s, {ring['steps']} steps |",
           f"| ring: held-out NLL (exact trace) | {ring['nll']:.4f} +- {ring['nll_se']:.4f} nats |",
           f"| ring: true entropy | {ring['entropy']:.4f} +- {ring['entropy_se']:.4f} nats |",
           f"| ring: NLL - entropy | {ring['nll'] - ring['entropy']:.4f} nats |",
           f"| ring: paired KL gap on the test points | {ring['kl_gap']:.4f} +- {ring['kl_gap_se']:.4f} nats |"]
    (out / "training.md").write_text("\n".join(md) + "\n")
    _plot(result, out / "training.png")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds, not minutes)")
    parser.add_argument("--digits", action="store_true", help="the digits bits/dim benchmark instead")
    parser.add_argument("--seconds", type=float, default=None, help="training budget in seconds")
    parser.add_argument("--out", default=str(RESULTS), help="output folder")
    args = parser.parse_args(argv)
    res = run(quick=args.quick, seconds=args.seconds, out=args.out, digits=args.digits)
    print(json.dumps({k: v for k, v in res.items() if k not in ("curve",)}, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
