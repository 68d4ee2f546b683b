"""A class-conditional score model on the scikit-learn digits, sampled with classifier-free guidance.

One residual MLP learns both ``s(x, t, y)`` and ``s(x, t)``: the Trainer replaces each label by the
null class with probability ``p_uncond = 0.1``. Guidance of weight ``w`` samples with
``(1 + w) s(x, t, y) - w s(x, t)`` (:func:`sdediff.classifier_free_guidance`; ``w = 0`` is the
plain conditional model). The script writes a grid with one row per class and a block of columns
per ``w``, and reports how often a logistic regression fitted on the real digits assigns the
samples to the class asked for -- a rate that rises with ``w`` as the samples get more typical
of their class (and less diverse).

Run: ``python examples/conditional_digits.py [--out conditional_digits.png]`` (under a minute: 500
training steps); ``--long`` trains 4,000 steps (a few minutes), which the slow test measures.
"""
from __future__ import annotations

import argparse
import time

import torch

import sdediff as sd
from sdediff.datasets import DIGITS_NUM_CLASSES, DIGITS_NUM_LEVELS, dequantize, range_to_levels
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

LONG_STEPS = 4000


def train(steps: int = 500, seed: int = 0, copies: int = 10, p_uncond: float = 0.1,
          progress: bool = False) -> ScoreModel:
    """A class-conditional MLP (eps prediction, VP SDE) on dequantized copies of the training pool.

    Returns the EMA model."""
    g = torch.Generator().manual_seed(seed)
    levels, labels = sd.load_digits_tensors("trainval", return_labels=True)
    data = torch.cat([dequantize(levels.reshape(-1, 64), DIGITS_NUM_LEVELS, generator=g) for _ in range(copies)])
    torch.manual_seed(seed)
    net = sd.build_net("mlp", dim=64, hidden=256, depth=3, num_classes=DIGITS_NUM_CLASSES, seed=seed)
    trainer = Trainer(ScoreModel(net, sd.VPSDE(), parameterization="eps"), data=data, labels=labels.repeat(copies),
                      p_uncond=p_uncond, steps=steps, batch_size=256, lr=1e-3, warmup=min(200, steps // 4),
                      lr_schedule="cosine", seed=seed, progress=progress)
    trainer.train()
    return trainer.ema_model


def guided_samples(model: ScoreModel, w: float, per_class: int, sampler_steps: int = 25, seed: int = 0) -> torch.Tensor:
    """``per_class`` samples of every class at guidance weight ``w``: ``(classes, per_class, 64)`` in [-1, 1]."""
    out = []
    for c in range(DIGITS_NUM_CLASSES):
        score = sd.classifier_free_guidance(model, c, w)
        x = sd.sample(score, model.sde, (per_class, 64), sampler="dpm_solver", steps=sampler_steps,
                      generator=torch.Generator().manual_seed(1000 * seed + c))
        out.append(x.clamp(-1, 1))
    return torch.stack(out)


def real_digits_classifier(seed: int = 0):
    """A logistic regression on the real 8x8 images (levels / 16), fitted on the training pool.

    Returns the classifier and its accuracy on the test split."""
    from sklearn.linear_model import LogisticRegression

    levels, labels = sd.load_digits_tensors("trainval", return_labels=True)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(levels.reshape(-1, 64).numpy() / 16.0,
                                                                   labels.numpy())
    test, test_labels = sd.load_digits_tensors("test", return_labels=True)
    return clf, float(clf.score(test.reshape(-1, 64).numpy() / 16.0, test_labels.numpy()))


def class_rate(clf, samples: torch.Tensor) -> tuple[float, list[float]]:
    """The fraction of samples ``(classes, per_class, 64)`` read as their row's class, overall and per class."""
    per_class = []
    for c, x in enumerate(samples):
        levels = range_to_levels(x, DIGITS_NUM_LEVELS, -1.0, 1.0)  # back to the grey levels 0..16
        per_class.append(float((clf.predict(levels.numpy() / 16.0) == c).mean()))
    return sum(per_class) / len(per_class), per_class


def plot(samples: dict[float, torch.Tensor], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = list(samples)
    per_class = samples[weights[0]].shape[1]
    cols = len(weights) * per_class + len(weights) - 1  # an empty column between the blocks
    fig, axes = plt.subplots(DIGITS_NUM_CLASSES, cols, figsize=(cols * 0.45, DIGITS_NUM_CLASSES * 0.45 + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for b, w in enumerate(weights):
        for c in range(DIGITS_NUM_CLASSES):
            for j in range(per_class):
                col = b * (per_class + 1) + j
                axes[c, col].imshow(samples[w][c, j].reshape(8, 8).numpy(), cmap="gray_r", vmin=-1, vmax=1)
        axes[0, b * (per_class + 1) + per_class // 2].set_title(f"w = {w:g}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(steps: int = 500, weights=(0.0, 1.0, 3.0), per_class: int = 6, sampler_steps: int = 25, seed: int = 0,
        out: str | None = "conditional_digits.png", progress: bool = False) -> dict:
    """Train, sample every class at every ``w``, classify the samples; write the grid to ``out``."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = train(steps, seed, progress=progress)
    train_seconds = time.perf_counter() - start
    clf, clf_accuracy = real_digits_classifier(seed)
    samples = {float(w): guided_samples(model, float(w), per_class, sampler_steps, seed) for w in weights}
    rates = {w: class_rate(clf, x) for w, x in samples.items()}
    result = {"steps": steps, "train_seconds": train_seconds, "classifier_test_accuracy": clf_accuracy,
              "per_class": per_class, "rate": {w: r[0] for w, r in rates.items()},
              "rate_per_class": {w: r[1] for w, r in rates.items()}}
    if out:
        plot(samples, out, f"class-conditional digits, classifier-free guidance (rows: classes 0-9; "
                           f"{steps} training steps, dpm_solver {sampler_steps} steps)")
        result["plot"] = out
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 500, or 4000 with --long)")
    parser.add_argument("--long", action="store_true", help=f"train {LONG_STEPS} steps (a few minutes)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 3.0],
                        help="guidance weights w (default: 0 1 3)")
    parser.add_argument("--per-class", type=int, default=6, help="samples per class and w (default: 6)")
    parser.add_argument("--sampler-steps", type=int, default=25, help="dpm_solver steps (default: 25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    parser.add_argument("--out", default="conditional_digits.png", help="the grid ('' for none)")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (LONG_STEPS if args.long else 500)
    r = run(steps, tuple(args.weights), args.per_class, args.sampler_steps, args.seed, args.out or None,
            args.progress)
    print(f"{r['steps']} training steps in {r['train_seconds']:.1f} s")
    print(f"a logistic regression on the real digits (test accuracy {r['classifier_test_accuracy']:.3f}) assigns "
          f"the guided samples ({r['per_class']} per class) to the class asked for:")
    for w, rate in r["rate"].items():
        print(f"  w = {w:g}: {rate:.3f}")
    if "plot" in r:
        print(f"samples: {r['plot']}")
    return r


if __name__ == "__main__":
    main()
