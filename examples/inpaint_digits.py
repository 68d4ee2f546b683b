"""Inpainting digits: the lower half of a test image is observed, the upper half is drawn by the model.

An unconditional score model (a residual MLP on the flattened 8x8 digits) is trained for a few
hundred steps; :func:`sdediff.inpaint` then samples the upper 32 pixels given the lower 32 with
each of its methods (:data:`sdediff.guidance.INPAINT_METHODS`), several draws per image. The
score is never conditioned: the methods act on the sampler's state (replacement, RePaint's
resampling) or add a guidance term (PiGDM). Two numbers per method: the RMS error of the
inpainted half against the true one (in grey levels, 0-16), and how often a logistic regression
fitted on the real digits reads the completed image as the original's label -- next to the same
numbers for the baseline that pastes the observed half onto unconditional samples.

Run: ``python examples/inpaint_digits.py [--out inpaint_digits.png]`` (under a minute).
"""
from __future__ import annotations

import argparse
import time

import torch

import sdediff as sd
from sdediff.datasets import DIGITS_NUM_LEVELS, dequantize, levels_to_range, range_to_levels
from sdediff.guidance import INPAINT_METHODS
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer


def train(steps: int = 500, seed: int = 0, copies: int = 10) -> ScoreModel:
    """An unconditional MLP (eps prediction, VP SDE) on dequantized copies of the training pool; its EMA model."""
    g = torch.Generator().manual_seed(seed)
    levels = sd.load_digits_tensors("trainval").reshape(-1, 64)
    data = torch.cat([dequantize(levels, DIGITS_NUM_LEVELS, generator=g) for _ in range(copies)])
    torch.manual_seed(seed)
    model = ScoreModel(sd.build_net("mlp", dim=64, hidden=256, depth=3, seed=seed), sd.VPSDE(), parameterization="eps")
    trainer = Trainer(model, data=data, steps=steps, batch_size=256, lr=1e-3, warmup=min(200, steps // 4),
                      lr_schedule="cosine", seed=seed, progress=False)
    trainer.train()
    return trainer.ema_model


def lower_half_mask() -> torch.Tensor:
    """``True`` on the lower four rows of the flattened 8x8 image (the observed pixels)."""
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:] = True
    return mask.reshape(64)


def _classifier():
    from sklearn.linear_model import LogisticRegression

    levels, labels = sd.load_digits_tensors("trainval", return_labels=True)
    return LogisticRegression(max_iter=2000, random_state=0).fit(levels.reshape(-1, 64).numpy() / 16.0, labels.numpy())


def run(steps: int = 500, n_images: int = 6, draws: int = 4, seed: int = 0,
        out: str | None = "inpaint_digits.png") -> dict:
    """Train, inpaint ``n_images`` test digits ``draws`` times with every method, score and plot them."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = train(steps, seed)
    train_seconds = time.perf_counter() - start
    levels, labels = sd.load_digits_tensors("test", return_labels=True)
    levels, labels = levels[:n_images].reshape(-1, 64), labels[:n_images]
    truth = levels_to_range(levels, DIGITS_NUM_LEVELS, -1.0, 1.0)  # the bin centres in [-1, 1]
    mask = lower_half_mask()
    observed = truth.repeat_interleave(draws, 0)  # image i's draws are rows i * draws ... (i + 1) * draws - 1
    clf = _classifier()

    def score(x: torch.Tensor) -> tuple[float, float]:
        """RMS error of the upper half in grey levels; the rate of the true label."""
        got = range_to_levels(x.clamp(-1, 1), DIGITS_NUM_LEVELS, -1.0, 1.0)
        want = levels.repeat_interleave(draws, 0)
        rmse = float((got - want)[:, ~mask].double().pow(2).mean().sqrt())
        predicted = torch.from_numpy(clf.predict(got.numpy() / 16.0))
        rate = float((predicted == labels.repeat_interleave(draws)).double().mean())
        return rmse, rate

    g = torch.Generator().manual_seed(seed)
    baseline = sd.sample(model, model.sde, observed.shape, sampler="dpm_solver", steps=25, generator=g)
    baseline = torch.where(mask, observed, baseline)  # the observed half pasted onto unconditional samples
    samples, result = {"unconditional + pasted": baseline}, {"steps": steps, "train_seconds": train_seconds,
                                                             "methods": {}}
    rmse, rate = score(baseline)
    result["methods"]["unconditional + pasted"] = {"rmse": rmse, "label_rate": rate, "nfe": 26}
    for method in INPAINT_METHODS:
        x, nfe = sd.inpaint(model, model.sde, observed, mask, method=method, generator=g, return_nfe=True)
        samples[method] = x
        rmse, rate = score(x)
        result["methods"][method] = {"rmse": rmse, "label_rate": rate, "nfe": nfe}
    if out:
        plot(truth, mask, samples, draws, out)
        result["plot"] = out
    return result


def plot(truth: torch.Tensor, mask: torch.Tensor, samples: dict[str, torch.Tensor], draws: int, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = truth.shape[0]
    shown = torch.where(mask, truth, torch.full_like(truth, float("nan")))  # the observed half only
    blocks = [("original", truth[:, None]), ("observed", shown[:, None])]
    blocks += [(name, x.reshape(n, draws, 64)) for name, x in samples.items()]
    cols = sum(b.shape[1] for _, b in blocks) + len(blocks) - 1
    fig, axes = plt.subplots(n, cols, figsize=(cols * 0.55, n * 0.55 + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    col = 0
    for name, block in blocks:
        axes[0, col].set_title(name, fontsize=7, loc="left")
        for j in range(block.shape[1]):
            for i in range(n):
                axes[i, col].imshow(block[i, j].reshape(8, 8).clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            col += 1
        col += 1
    fig.suptitle("inpainting digits: lower half observed, upper half sampled", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.85, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: 500)")
    parser.add_argument("--n-images", type=int, default=6, help="test images to inpaint (default: 6)")
    parser.add_argument("--draws", type=int, default=4, help="inpaintings per image and method (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", default="inpaint_digits.png", help="the picture ('' for none)")
    args = parser.parse_args(argv)
    r = run(args.steps, args.n_images, args.draws, args.seed, args.out or None)
    print(f"{r['steps']} training steps in {r['train_seconds']:.1f} s; upper half of "
          f"{args.n_images} test digits x {args.draws} draws:")
    for name, m in r["methods"].items():
        print(f"  {name:24s} NFE {m['nfe']:4d}  RMS error {m['rmse']:.2f} grey levels  "
              f"read as the true digit {m['label_rate']:.2f}")
    if "plot" in r:
        print(f"picture: {r['plot']}")
    return r


if __name__ == "__main__":
    main()
