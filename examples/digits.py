"""A small score model on the scikit-learn digits (8x8, 17 grey levels): samples and test bits/dim.

The 1,297 training images are uniformly dequantized to ``[-1, 1]`` (fresh noise for each copy),
flattened to 64-D and fitted by a residual MLP for a few seconds; the script saves a grid of
samples and reports bits per dimension on test images through the probability-flow ODE.
Bits/dim of 17-level data use the offset ``log2(17 / 2)`` of the dequantization
(:func:`sdediff.bits_per_dim`). A short run is far from converged: for the real number see
``python -m benchmarks.training --digits``.

Run: ``python examples/digits.py [--steps 400] [--n-test 100] [--out digits.png]`` (under a minute).
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import sdediff as sd
from sdediff.datasets import DIGITS_NUM_LEVELS, dequantize
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer


def run(steps: int = 400, n_test: int = 100, n_samples: int = 50, sampler_steps: int = 25, copies: int = 10,
        trace: str = "rademacher", seed: int = 0, out: str | None = "digits.png") -> dict:
    """Train on the digits, draw a sample grid, return test bits/dim."""
    torch.set_num_threads(1)
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(seed)
    levels = sd.load_digits_tensors("train").reshape(-1, 64)
    train = torch.cat([dequantize(levels, DIGITS_NUM_LEVELS, generator=g) for _ in range(copies)])
    test = dequantize(sd.load_digits_tensors("test").reshape(-1, 64)[:n_test], DIGITS_NUM_LEVELS, generator=g,
                      dtype=torch.float64)

    torch.manual_seed(seed)
    model = ScoreModel(sd.build_net("mlp", dim=64, hidden=256, depth=3), sde, parameterization="v")
    trainer = Trainer(model, data=train, steps=steps, batch_size=256, lr=1e-3, warmup=min(100, steps // 4),
                      lr_schedule="cosine", seed=seed, progress=False)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    ema = trainer.ema_model

    x = sd.sample(ema, sde, (n_samples, 64), sampler="dpm_solver", steps=sampler_steps,
                  generator=torch.Generator().manual_seed(seed))
    # bits/dim: exact divergence costs 64 VJPs per evaluation here; Hutchinson (1 probe) is unbiased and cheap
    res = sd.log_likelihood(copy.deepcopy(ema).double(), sde, test, trace=trace, rtol=1e-4, atol=1e-4,
                            generator=torch.Generator().manual_seed(seed))
    bpd = res.bpd(num_levels=DIGITS_NUM_LEVELS, low=-1.0, high=1.0)
    result = {"steps": steps, "train_seconds": train_seconds, "trace": trace, "n_test": n_test,
              "bpd": float(bpd.mean()), "bpd_se": float(bpd.std() / math.sqrt(n_test)), "nfe": res.nfe,
              "uniform_bpd": math.log2(DIGITS_NUM_LEVELS)}
    if out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        cols = 10
        rows = math.ceil(n_samples / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.5), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n_samples:
                ax.imshow(x[i].reshape(8, 8).clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
        fig.suptitle(f"digits: dpm_solver, {sampler_steps} steps, after {steps} training steps", fontsize=9)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        result["plot"] = out
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps (default: 400)")
    parser.add_argument("--n-test", type=int, default=100, help="test images for bits/dim (default: 100, max 300)")
    parser.add_argument("--n-samples", type=int, default=50, help="samples in the grid (default: 50)")
    parser.add_argument("--sampler-steps", type=int, default=25, help="dpm_solver steps (default: 25)")
    parser.add_argument("--copies", type=int, default=10, help="dequantized copies of the training set (default: 10)")
    parser.add_argument("--trace", default="rademacher", choices=sd.TRACE_ESTIMATORS,
                        help="divergence estimator for bits/dim (default: rademacher)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", default="digits.png", help="sample grid ('' for none; default: digits.png)")
    args = parser.parse_args(argv)
    r = run(args.steps, args.n_test, args.n_samples, args.sampler_steps, args.copies, args.trace, args.seed,
            args.out or None)
    print(f"{r['steps']} training steps in {r['train_seconds']:.1f} s")
    print(f"test bits/dim ({r['n_test']} images, trace={r['trace']}): {r['bpd']:.3f} +- {r['bpd_se']:.3f} "
          f"(a uniform model over the 17 levels: {r['uniform_bpd']:.3f}); ODE NFE {r['nfe']}")
    if "plot" in r:
        print(f"samples: {r['plot']}")
    return r


if __name__ == "__main__":
    main()
