"""Training benchmark: throughput (examples/s) of the MLP and the U-Net on CPU, and the ring NLL.

Ring: a residual MLP on the 2-D ring (8 Gaussians, std 0.1; an exact mixture, so its entropy and
log-density are known) trained by eps-matching on the VP SDE for a wall-clock budget; the held-out
NLL comes from ``log_likelihood`` (probability-flow ODE, exact trace). The NLL is compared with
the mixture's entropy, and, paired on the same test points, with the true log-density (the mean
gap is an estimate of KL(p || model) with a small standard error).

Digits (``--digits``): see :mod:`sdediff.bench.digits`.

    sdediff bench training [--quick] [--digits] [--seconds 60] [--threads 2] [--out DIR]

Writes ``training.json``, ``training.md`` and ``training.png`` (``digits.*`` for digits) to ``DIR``.
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
from sdediff.datasets import load_digits_tensors, ring_params, toy_data
from sdediff.nets import build_net
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

from .report import (Progress, add_output_args, announce, guard_quick, output_dir, pyplot, save_figure,
                     write_json, write_text)

__all__ = ["throughput", "ring_experiment", "run", "main"]


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


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()
    ring = result["ring"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    axes[0].plot([r["step"] for r in ring["curve"]], [r["loss"] for r in ring["curve"]])
    axes[0].set(xlabel="step", ylabel="DSM loss (eps-matching)", title="ring: training loss", yscale="log")
    axes[1].plot([r["seconds"] for r in ring["nll_curve"]], [r["nll"] for r in ring["nll_curve"]], "o-",
                 label="model (held-out)")
    axes[1].axhline(ring["entropy"], color="k", ls="--", label="true entropy")
    axes[1].set(xlabel="training seconds", ylabel="NLL (nats)", title="ring: held-out NLL")
    axes[1].legend()
    save_figure(fig, path, dpi=120)


def run(quick: bool = False, seconds: float | None = None, out: str | Path | None = None, digits: bool = False,
        threads: int = 2, model_options: dict | None = None, log=print) -> dict:
    """Run the benchmark and write JSON, markdown and PNG under ``out`` (default ``./bench-results``)."""
    out = output_dir(out, quick)
    if digits:
        from .digits import run_digits
        return run_digits(seconds=seconds or (60.0 if quick else 480.0), out=out, quick=quick, threads=threads,
                          model_options=model_options, log=log)
    seconds = seconds or (10.0 if quick else 60.0)
    log("throughput: the MLP on 2-D points")
    mlp = throughput("mlp", batch_size=512, steps=5 if quick else 30)
    log(f"  {mlp:.0f} examples/s; the U-Net on 8x8 images")
    unet = throughput("unet", batch_size=128, steps=3 if quick else 10, threads=2)
    log(f"  {unet:.0f} examples/s; the ring MLP: {seconds:.0f} s of training, then the held-out NLL")
    result = {
        "quick": quick,
        "throughput_examples_per_s": {"mlp_2d_hidden128_depth3_batch512": mlp, "unet_1x8x8_base32_batch128": unet},
        "ring": ring_experiment(train_seconds=seconds, num_test=200 if quick else 1000,
                                nll_every=seconds / 4, num_curve=100 if quick else 300),
    }
    ring = result["ring"]
    log(f"  {ring['steps']} steps; held-out NLL {ring['nll']:.4f} +- {ring['nll_se']:.4f} nats, true entropy "
        f"{ring['entropy']:.4f}, paired KL gap {ring['kl_gap']:.4f} +- {ring['kl_gap_se']:.4f}")
    write_json(out / "training.json", result)
    md = ["| quantity | value |", "|---|---|"]
    md += [f"| throughput {k} | {v:.0f} examples/s |" for k, v in result["throughput_examples_per_s"].items()]
    md += [f"| ring: training | {ring['train_seconds']:.0f} s, {ring['steps']} steps |",
           f"| ring: held-out NLL (exact trace) | {ring['nll']:.4f} +- {ring['nll_se']:.4f} nats |",
           f"| ring: true entropy | {ring['entropy']:.4f} +- {ring['entropy_se']:.4f} nats |",
           f"| ring: NLL - entropy | {ring['nll'] - ring['entropy']:.4f} nats |",
           f"| ring: paired KL gap on the test points | {ring['kl_gap']:.4f} +- {ring['kl_gap_se']:.4f} nats |"]
    write_text(out / "training.md", md)
    _plot(result, out / "training.png")
    announce(out, ("training.json", "training.md", "training.png"), log)
    return result


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench training`` / ``python -m benchmarks.training``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "a short smoke run (seconds, not minutes)")
    parser.add_argument("--digits", action="store_true", help="the digits bits/dim benchmark instead")
    parser.add_argument("--seconds", type=float, default=None, help="training budget in seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the digits benchmark")
    parser.add_argument("--model-options", default=None,
                        help='digits: JSON of train_digits_model keywords, e.g. \'{"dropout": 0.0, "lr": 2e-3}\'')
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    guard_quick(out, "digits" if args.digits else "training", args.quick, args.force)
    log = Progress()
    log(f"{'digits' if args.digits else 'training'} benchmark{' (quick)' if args.quick else ''}; "
        f"results will go to {out.resolve()}")
    run(quick=args.quick, seconds=args.seconds, out=out, digits=args.digits, threads=args.threads,
        model_options=json.loads(args.model_options) if args.model_options else None, log=log)
