"""What the ``sdediff`` command and the demo share: runs, data by name, SDEs by name, devices, PNGs.

A training run's folder holds ``run.json`` (the data set and the flags, written by
:func:`write_run_info`) and ``checkpoints/``; ``sdediff sample`` and ``sdediff likelihood``
take that folder, its ``checkpoints/`` folder or one checkpoint folder, and
:func:`read_run_info` finds the ``run.json`` from any of the three.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .checkpoint import WHICH, latest_checkpoint, load_checkpoint
from .datasets import DIGITS_NUM_LEVELS, TOY_DATASETS, dequantize, load_digits_tensors, toy_data

__all__ = ["RUN_FILE", "DATA_SETS", "SDES", "NETS", "TEST_SEED_OFFSET", "write_run_info",
           "read_run_info", "check_choice", "load_data", "make_sde", "parse_device", "load_model",
           "model_example_shape", "fit_data", "require_matplotlib", "pyplot", "scatter_png", "image_grid_png",
           "train", "sample_to_file", "likelihood"]

RUN_FILE = "run.json"
#: Data sets by name: the toy 2-D sets and the scikit-learn digits.
DATA_SETS: tuple[str, ...] = (*TOY_DATASETS, "digits")
#: Forward SDEs by name (see :func:`make_sde`).
SDES: tuple[str, ...] = ("vp", "subvp", "ve")
#: Networks by name.
NETS: tuple[str, ...] = ("mlp", "unet")
TEST_SEED_OFFSET = 10_000  # toy test points use seed + 10_000, never the training seed


# ------------------------------------------------------------------------------ run info
def write_run_info(out: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``out/run.json`` (the data set and flags of a run); returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    path.write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    return path


def read_run_info(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The ``run.json`` of the run a checkpoint path belongs to (``{}`` if there is none)."""
    path = Path(ckpt).resolve()
    for folder in (path, path.parent, path.parent.parent):
        if (folder / RUN_FILE).is_file():
            try:
                return json.loads((folder / RUN_FILE).read_text())
            except json.JSONDecodeError:
                return {}
    return {}


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError("unknown <name> 'value'; choose from ...")`` unless ``value`` is allowed."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")


# ------------------------------------------------------------------------------ data and SDEs
def load_data(name: str, split: str, n: int, seed: int, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None, return_labels: bool = False):
    """Examples of a named data set: toy sets ``(n, 2)``; digits ``(n, 1, 8, 8)`` in ``[-1, 1]``.

    Args:
        name: one of :data:`DATA_SETS`.
        split: ``"train"`` or ``"test"``. Toy test sets are drawn with ``seed + 10000``;
            digits use the fixed test split (at most 300 images), uniformly dequantized.
        n: number of examples (digits train: the training images re-dequantized up to ``n``).
        seed: seeds the draw / the dequantization noise.
        dtype: default ``float32``.
        device: where the examples go.
        return_labels: also return the examples' classes (``int64``, ``(n,)``).

    Raises:
        ValueError: an unknown data set or split; labels of a set without classes.
    """
    check_choice("data set", name, DATA_SETS)
    check_choice("split", split, ("train", "test"))
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed + (TEST_SEED_OFFSET if split == "test" else 0))
    if name != "digits":
        return toy_data(name, n, generator=gen, dtype=dtype, device=device, return_labels=return_labels)
    levels, labels = load_digits_tensors(split, return_labels=True)
    if split == "test":
        levels, labels = levels[:n], labels[:n]
    else:
        reps = max(1, math.ceil(n / levels.shape[0]))
        levels, labels = levels.repeat(reps, 1, 1, 1)[:max(n, 1)], labels.repeat(reps)[:max(n, 1)]
    x = dequantize(levels, DIGITS_NUM_LEVELS, generator=gen, dtype=dtype)
    x = x.to(device) if device is not None else x
    return (x, labels.to(x.device)) if return_labels else x


def make_sde(kind: str, data: str, sigma_max: float | None = None):
    """The forward SDE for ``--sde``: VP / sub-VP defaults; VE with ``sigma_max`` scaled to the data."""
    from .sde import VESDE, VPSDE, SubVPSDE

    check_choice("SDE", kind, SDES)
    if kind == "vp":
        return VPSDE()
    if kind == "subvp":
        return SubVPSDE()
    # VE: sigma_max about the largest distance between training points (Song & Ermon 2020, technique 1)
    return VESDE(sigma_min=0.01, sigma_max=sigma_max or (20.0 if data == "digits" else 10.0))


# ------------------------------------------------------------------------------ devices and models
def parse_device(name: str | None) -> torch.device:
    """A torch device from ``--device`` (default: cuda if available, else cpu), checked to exist.

    Raises:
        ValueError: an unknown device name, or a CUDA / MPS device this build or machine lacks,
            in one line saying what to use instead.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"bad --device {name!r}: {' '.join(str(err).split())}") from None
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"--device {name}: this torch build ({torch.__version__}) has no CUDA support; "
                             "use --device cpu or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: unsupported device type {device.type!r}; use cpu or cuda")
    return device


def load_model(ckpt: str | os.PathLike, which: str, device: torch.device, dtype: torch.dtype | None = None):
    """The score model of a run folder, its ``checkpoints/`` folder or one checkpoint folder."""
    check_choice("--which", which, WHICH)
    if not Path(ckpt).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (give a run folder written by 'sdediff train')")
    return load_checkpoint(ckpt, which, device=device, dtype=dtype)


def model_example_shape(model) -> tuple[int, ...]:
    """The shape of one example the model's network takes: ``(dim,)`` or ``(C, H, W)``."""
    cfg, name = model.net.config, model.net.net_name
    if name == "mlp":
        return (int(cfg["dim"]),)
    return (int(cfg["in_channels"]), int(cfg["image_size"]), int(cfg["image_size"]))


def fit_data(x: torch.Tensor, shape: tuple[int, ...], data: str, ckpt: str, trained_on: str | None) -> torch.Tensor:
    """Reshape ``x`` to the model's example shape (digits flatten for an MLP) or explain the mismatch."""
    if tuple(x.shape[1:]) == shape:
        return x
    if math.prod(x.shape[1:]) == math.prod(shape) and len(shape) in (1, 3):
        return x.reshape(x.shape[0], *shape)
    hint = f" (it was trained on {trained_on!r})" if trained_on else ""
    raise ValueError(f"checkpoint {ckpt} models examples of shape {shape}, but data set {data!r} has examples "
                     f"of shape {tuple(x.shape[1:])}: the checkpoint does not fit the data{hint}")


# ------------------------------------------------------------------------------ pictures
def require_matplotlib(what: str = "write PNG files") -> None:
    """Fail in one line, before any work, if matplotlib cannot be imported.

    Raises:
        ModuleNotFoundError: naming the package to install.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(f"matplotlib is needed to {what}: pip install matplotlib") from None


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def scatter_png(x: torch.Tensor, path: str | os.PathLike, title: str) -> None:
    """A scatter plot of 2-D points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="tab:blue", rasterized=True)
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid_png(images: torch.Tensor, path: str | os.PathLike, title: str, cols: int = 10) -> None:
    """Up to 100 grey images ``(N, H, W)`` in ``[-1, 1]`` on a grid."""
    plt = pyplot()
    n = min(images.shape[0], 100)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ the commands as functions
def train(data: str, steps: int | None, out: str | os.PathLike, *, sde: str = "vp", net: str = "mlp",
          parameterization: str = "v", lr: float = 2e-3, batch_size: int = 512, seed: int = 0,
          n_train: int = 100_000, hidden: int = 128, depth: int = 3, base_channels: int = 32,
          weighting: str = "score", importance_sampling: bool = False, warmup: int = 100,
          lr_schedule: str = "cosine", ema_decay: float = 0.999, sigma_max: float | None = None,
          max_seconds: float | None = None, checkpoint_every: int = 1000, resume: bool = False,
          conditional: bool = False, p_uncond: float = 0.1,
          device: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """``sdediff train``: train a score model on a named data set into the run folder ``out``.

    Writes ``out/run.json`` (these arguments) and ``out/checkpoints/``; the keywords are the
    command's long flags. Returns the latest checkpoint folder. ``conditional``: a class-conditional
    net on the data set's labels, each dropped with probability ``p_uncond``; ``run.json``
    records ``num_classes`` (see :mod:`sdediff.conditional_runs`).

    Raises:
        ValueError: inconsistent options, or ``out`` already holds a run and ``resume`` is false.
        FileNotFoundError: ``resume`` without a checkpoint in ``out``.
    """
    info = {k: v for k, v in locals().items() if k not in ("resume", "progress", "log")}  # the arguments
    from .conditional_runs import data_num_classes
    from .nets import build_net
    from .parameterization import ScoreModel
    from .training import Trainer

    info["num_classes"] = num_classes = data_num_classes(data) if conditional else None
    info["p_uncond"] = p_uncond if conditional else None  # no labels to drop in an unconditional run
    if net == "unet" and data != "digits":
        raise ValueError(f"--net unet needs image data (--data digits), got --data {data}; use --net mlp")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("--importance-sampling needs --weighting likelihood")
    forward = make_sde(sde, data, sigma_max)
    out = Path(out)
    has_ckpt = (out / "checkpoints" / "latest.json").is_file()
    if has_ckpt and not resume:
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and not has_ckpt:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    dev = parse_device(device)
    x, labels = load_data(data, "train", n_train, seed, return_labels=True) if conditional else \
        (load_data(data, "train", n_train, seed), None)
    torch.manual_seed(seed)
    if net == "mlp":
        x = x.reshape(x.shape[0], -1)
        network = build_net("mlp", dim=x.shape[1], hidden=hidden, depth=depth, seed=seed, num_classes=num_classes)
    else:
        network = build_net("unet", in_channels=1, base_channels=base_channels, image_size=8, seed=seed,
                            num_classes=num_classes)
    sigma_data = float(x.std()) if sde == "ve" else None  # unit-variance input for VE (EDM c_in)
    model = ScoreModel(network, forward, parameterization, sigma_data=sigma_data).to(dev)
    if steps is None:
        if max_seconds is None:
            raise ValueError("give --steps, --max-seconds or both")
        steps = 10_000_000  # the time budget ends the run; the cosine schedule follows the clock
    trainer = Trainer(model, data=x, lr=lr, batch_size=batch_size, steps=steps, warmup=min(warmup, steps),
                      lr_schedule=lr_schedule, ema_decay=ema_decay, weighting=weighting,
                      importance_sampling=importance_sampling, out_dir=out, checkpoint_every=checkpoint_every,
                      log_every=max(1, min(100, steps // 10)), seed=seed, max_seconds=max_seconds, progress=progress,
                      device=dev, **({"labels": labels, "p_uncond": p_uncond} if conditional else {}))
    if resume:
        log(f"resuming {out} at step {trainer.resume()}")
    run_file = write_run_info(out, {"format": 1, "command": "train", **info, "out": str(out)})
    start = time.perf_counter()
    history = trainer.train()
    loss = next((r["loss"] for r in reversed(history) if "loss" in r), float("nan"))
    ckpt = latest_checkpoint(out)
    log(f"trained {trainer.step} steps in {time.perf_counter() - start:.1f} s, final loss {loss:.4g}")
    log(f"wrote {ckpt} (checkpoint) and {run_file} (run info)")
    guided = " --class 0 --guidance 1" if conditional else ""
    log(f"next: sdediff sample --ckpt {out} --out {out / 'samples.png'}{guided}   |   "
        f"sdediff likelihood --ckpt {out} --data {data}")
    return ckpt


def sample_to_file(ckpt: str | os.PathLike, out: str | os.PathLike, *, sampler: str | None = None,
                   steps: int | None = None, n: int = 1000, seed: int = 0, grid: str | None = None,
                   eps: float = 1e-3, denoise: bool | None = None,
                   which: str = "ema", label: int | None = None, guidance: float = 0.0,
                   device: str | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> torch.Tensor | None:
    """``sdediff sample``: draw ``n`` samples from a checkpoint into ``out`` (``.npy`` or ``.png``).

    A ``.png`` is a scatter plot (2-D) or an image grid (8x8 digits); matplotlib is checked for
    before the model is loaded. For a toy set, the sliced W2 to fresh points is logged too.
    Example ``i`` uses seed ``seed + i``; under ``torchrun`` the ranks sample disjoint shards of
    the seeds and rank 0 writes them in seed order (:mod:`sdediff.distributed`), the same file as
    one process. Returns the samples (``None`` on the other ranks). ``label`` (``--class``) samples
    that class of a class-conditional checkpoint with classifier-free guidance weight ``guidance``.
    ``sampler``, ``steps``, ``grid`` and ``denoise`` default to :func:`sdediff.sample`'s (the
    default sampler at its own measured settings).
    """
    from .conditional_runs import guidance_title, guided_score
    from .distributed import init_from_env, sample_seeds
    from .samplers import available_samplers, default_sampler

    suffix = Path(out).suffix.lower()
    if suffix not in (".npy", ".png"):
        raise ValueError(f"--out must end in .npy or .png, got {str(out)!r}")
    if suffix == ".png":
        require_matplotlib("write a .png (or give --out FILE.npy)")
    dev = parse_device(device)
    model = load_model(ckpt, which, dev)
    data = read_run_info(ckpt).get("data")
    shape = model_example_shape(model)
    score = guided_score(model, label, guidance, str(ckpt))
    if suffix == ".png" and not (shape == (2,) or math.prod(shape) == 64):
        raise ValueError(f"cannot draw examples of shape {shape} as a PNG; use --out FILE.npy")
    sampler = sampler or default_sampler(model.sde)
    steps = steps or available_samplers()[sampler].steps
    start = time.perf_counter()
    # Example i from seed + i (its own noise stream): under torchrun each rank samples a shard of
    # the seeds and rank 0 writes them in seed order, the same samples as one process.
    init_from_env(dev)
    per_example = {"norm": "example"} if sampler in ("pc", "langevin") else {}
    x, nfe = sample_seeds(score, model.sde, shape, n, seed, sampler=sampler, steps=steps, eps=eps,
                          denoise=denoise, progress=progress, grid=grid, dtype=next(model.parameters()).dtype,
                          device=dev, return_nfe=True, **per_example)
    seconds = time.perf_counter() - start
    if x is None:  # not rank 0: its shard went to rank 0
        return None
    x = x.detach().cpu()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        import numpy as np
        np.save(out, x.numpy())
    elif shape == (2,):
        scatter_png(x, out, f"{sampler}, {steps} steps, NFE {nfe}" + (f" ({data})" if data else "")
                    + guidance_title(label, guidance))
    else:
        image_grid_png(x.reshape(-1, 8, 8), out, f"{sampler}, NFE {nfe}" + guidance_title(label, guidance))
    log(f"wrote {n} samples to {out} ({sampler}, {steps} steps, NFE {nfe}, {seconds:.1f} s)")
    if data in TOY_DATASETS and shape == (2,) and label is None:
        from .metrics import sliced_wasserstein
        ref = load_data(data, "test", 5000, int(read_run_info(ckpt).get("seed", 0)), dtype=torch.float64)
        log(f"sliced W2 to {ref.shape[0]} fresh {data!r} points: "
            f"{float(sliced_wasserstein(x.double(), ref, generator=0)):.4f}")
    return x


def likelihood(ckpt: str | os.PathLike | None, data: str, *, other_data: bool = False, trace: str | None = None,
               n: int = 1000, probes: int | None = None, quadrature: int | str | None = None, rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-5, batch_size: int = 200, seed: int = 0, which: str = "ema",
               json_path: str | os.PathLike | None = None, device: str | None = None, progress: bool = True,
               diffusers: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``sdediff likelihood``: the held-out NLL of a checkpoint on a named data set.

    The data set must be the one the run was trained on (its ``run.json``) unless
    ``other_data``. Toy sets: fresh test draws; the ring adds the true NLL of the same points and
    the paired gap. Digits: bits/dim. Returns the numbers (also written to ``json_path``).
    ``diffusers`` (instead of ``ckpt``): bits/dim of uint8 images under a diffusers model
    (:func:`sdediff.image_likelihood.likelihood_command`). Without ``trace``: the exact trace
    for a checkpoint, the variance-reduced Hutchinson path for images (their ``d`` is too large
    for ``d`` backward passes per evaluation); ``probes`` defaults to 1 (to the path's own count).
    """
    from .analytic import GaussianMixture
    from .datasets import ring_params
    from .likelihood import evaluate

    if (ckpt is None) == (diffusers is None):
        raise ValueError("give --ckpt RUN (a model trained by sdediff) or --diffusers FOLDER, one of the two")
    if diffusers is not None:
        from .image_likelihood import likelihood_command
        out = likelihood_command(diffusers, data, n=n, trace=trace, probes=probes, quadrature=quadrature, rtol=rtol,
                                 atol=atol, eps=eps, batch_size=batch_size, seed=seed,
                                 device=str(parse_device(device)), progress=progress, log=log)
        return _write_json(out, json_path, log)  # None on ranks > 0
    trace, probes = trace or "exact", probes or 1
    dev = parse_device(device)
    model = load_model(ckpt, which, dev, dtype=torch.float64)
    trained_on = read_run_info(ckpt).get("data")
    x = load_data(data, "test", n, seed, dtype=torch.float64, device=dev)
    x = fit_data(x, model_example_shape(model), data, str(ckpt), trained_on)
    if trained_on and trained_on != data:
        if not other_data:
            raise ValueError(f"checkpoint {ckpt} was trained on {trained_on!r}, not {data!r}: pass "
                             f"--data {trained_on}, or add --other-data to evaluate it on {data!r} anyway")
        log(f"warning: the checkpoint was trained on {trained_on!r}; evaluating it on {data!r}")
    digits = data == "digits"
    start = time.perf_counter()
    res = evaluate(model, model.sde, x, batch_size=batch_size, bpd=digits,
                   num_levels=DIGITS_NUM_LEVELS if digits else None, progress=progress,
                   generator=torch.Generator(device=dev).manual_seed(seed), trace=trace, probes=probes,
                   rtol=rtol, atol=atol, eps=eps, quadrature=quadrature)
    out: dict[str, Any] = {"data": data, "trained_on": trained_on, "n": x.shape[0], "trace": trace,
                           "nll": res.mean_nll, "nll_se": res.stderr, "nfe": res.nfe,
                           "seconds": time.perf_counter() - start}
    log(f"held-out NLL on {x.shape[0]} {data!r} test points: {res.mean_nll:.4f} +- {res.stderr:.4f} nats "
        f"(trace={trace}, NFE {res.nfe}, {out['seconds']:.1f} s)")
    if digits:
        out.update(bpd=res.mean_bpd, bpd_se=res.bpd_stderr)
        log(f"bits/dim (17 levels, dequantized): {res.mean_bpd:.4f} +- {res.bpd_stderr:.4f}")
    if data == "ring":
        gm = GaussianMixture(*ring_params())
        true_nll = -gm.log_prob(x.cpu())
        gap = -res.logp.cpu() - true_nll  # log p_true - log p_model, per point: its mean estimates KL
        entropy, entropy_se = gm.entropy(generator=torch.Generator().manual_seed(seed))
        out.update(true_nll=float(true_nll.mean()), entropy=entropy, entropy_se=entropy_se,
                   gap=float(gap.mean()), gap_se=float(gap.std() / math.sqrt(len(gap))))
        log(f"true NLL of the same points: {out['true_nll']:.4f}; true entropy {entropy:.4f} +- {entropy_se:.4f}; "
            f"paired gap (an estimate of KL) {out['gap']:.4f} +- {out['gap_se']:.4f} nats")
    return _write_json(out, json_path, log)


def _write_json(out: dict | None, json_path, log) -> dict | None:
    """``out`` written to ``json_path`` (if both are given), and returned."""
    if out is not None and json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=1))
        log(f"wrote {json_path}")
    return out
