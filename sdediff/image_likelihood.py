"""Bits/dim of a diffusers model on uint8 images, with the error split.

The likelihood is solved on the log-SNR clock (:mod:`sdediff.likelihood.clock`), smooth across
the knots of a discrete schedule.

Images. :func:`load_images` reads ``.npy`` / ``.npz`` uint8 images or the digits,
:func:`image_bits_per_dim` evaluates them sharded over ``torch.distributed`` ranks
(:func:`sdediff.evaluate`) and reports bits/dim with its error split.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["image_bits_per_dim", "load_images", "likelihood_command"]


# ------------------------------------------------------------------------------ images
#: Images per tolerance check: the first few images solved again at a 10x tighter tolerance.
CHECK_IMAGES = 4
#: uint8 images: 256 levels on [-1, 1] (score_sde's convention, offset 7 bits).
IMAGE_LEVELS = 256
#: The path taken when no ``trace`` is given: the exact trace costs ``d`` backward passes per
#: evaluation (3072 for 3x32x32 images), so images get the Hutchinson path with the lowest
#: per-image std at equal wall time in ``sdediff bench interop`` (``benchmarks/results/interop.md``).
IMAGE_PATH = dict(trace="gaussian", probes=4, quadrature="steps")


def model_image_shape(model) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images a diffusers model takes (its ``in_channels`` and ``sample_size``)."""
    config = getattr(getattr(model, "unet", model), "config", None)
    get = (lambda k: config.get(k)) if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    channels, size = get("in_channels"), get("sample_size")
    if channels is None or size is None:
        raise ValueError("the diffusers model's config has no in_channels / sample_size; "
                         "cannot tell which images it takes")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(channels), int(h), int(w)


def digits_as_uint8(shape: tuple[int, int, int], n: int | None = None) -> Tensor:
    """The digits test split as uint8 images of ``shape``: levels ``l = 0..16`` become
    ``round(255 l / 16)``, each pixel an ``f x f`` block (nearest neighbour, ``f = H / 8``),
    the grey channel repeated ``C`` times. Returns ``int64`` levels ``(n, C, H, W)`` in ``0..255``.

    Raises:
        ValueError: a model size that is not a multiple of 8 (the digits are 8x8).
    """
    from .digits import load_digits_tensors

    c, h, w = shape
    if h != w or h % 8:
        raise ValueError(f"the 8x8 digits upscale by an integer factor only; the model takes {h}x{w} images")
    levels = load_digits_tensors("test")  # (n, 1, 8, 8) in 0..16
    levels = levels[:n] if n is not None else levels
    images = torch.round(levels.to(torch.float64) * 255 / 16).to(torch.int64)
    images = images.repeat_interleave(h // 8, 2).repeat_interleave(w // 8, 3)
    return images.expand(-1, c, -1, -1).contiguous()


def read_image_file(path: str, shape: tuple[int, int, int], n: int | None = None) -> Tensor:
    """uint8 images from ``.npy`` / ``.npz`` as ``int64`` levels ``(n, C, H, W)``, checked.

    The array (in an ``.npz``: the only one, or the one named ``images``, ``x`` or ``arr_0``) has
    shape ``(N, C, H, W)`` or ``(N, H, W, C)`` (or ``(N, H, W)`` for one channel) and integer
    values in ``[0, 255]`` (any integer dtype, or floats holding integers).

    Raises:
        FileNotFoundError, ValueError: a missing file, another suffix, or data that is not
            integer in ``[0, 255]`` or does not fit ``shape``, in one line saying what was found.
    """
    import numpy as np
    from pathlib import Path

    file = Path(path)
    if file.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"--data must be 'digits' or a .npy / .npz file of uint8 images, got {path!r}")
    if not file.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        loaded = np.load(file, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a plain numeric array ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        name = names[0] if len(names) == 1 else next((k for k in ("images", "x", "arr_0") if k in names), None)
        if name is None:
            raise ValueError(f"{path} holds several arrays ({', '.join(names)}); name the images 'images'")
        array = loaded[name]
    else:
        array = loaded
    if array.dtype.kind not in "uif":
        raise ValueError(f"{path}: expected integer pixel values in [0, 255], got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{path} holds no images (shape {array.shape})")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError(f"{path}: pixel values must be integers in [0, 255] (uint8 images), got non-integer "
                         f"floats in [{array.min():.4g}, {array.max():.4g}]; images already in [-1, 1] or "
                         "[0, 1] must be converted back to 0..255 first")
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > 255:
        raise ValueError(f"{path}: pixel values must lie in [0, 255] (uint8 images), got values in [{lo}, {hi}]")
    c, h, w = shape
    if array.ndim == 3 and c == 1:
        array = array[:, None]
    if array.ndim == 4 and array.shape[1:] == (c, h, w):
        pass
    elif array.ndim == 4 and array.shape[1:] == (h, w, c):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: images of shape {array.shape[1:]} do not fit the model, which takes "
                         f"{c}x{h}x{w} images: give (N, {c}, {h}, {w}) or (N, {h}, {w}, {c})")
    images = torch.from_numpy(np.ascontiguousarray(array[:n] if n is not None else array))
    return images.to(torch.int64)


def load_images(data: str, shape: tuple[int, int, int], n: int | None = None) -> Tensor:
    """``--data``: ``"digits"`` (:func:`digits_as_uint8`) or a ``.npy`` / ``.npz`` file (:func:`read_image_file`)."""
    return digits_as_uint8(shape, n) if data == "digits" else read_image_file(data, shape, n)


# ------------------------------------------------------------------------------ bits/dim
def _per_image(model, sde, x: Tensor, eps: float, probes: int, stochastic: bool, batch_size: int,
               seed: int, progress: bool, quadrature=None, **kwargs) -> tuple[Tensor, int]:
    """``(bits (N, P), nfe)``: with a Hutchinson trace, ``P`` independent estimates per image, so the
    spread over probes is measured image by image. A quadrature path keeps each probe's node
    estimates apart along one trajectory (``probe_logp``); on the ODE path every image is solved
    as ``P`` rows with one probe each (adjacent, in one batch). :func:`sdediff.evaluate` shards
    the batches over the ranks."""
    from .likelihood import evaluate
    from .quantization import bits_per_dim

    rows_per_image = probes if stochastic and quadrature is None else 1
    rows = x.repeat_interleave(rows_per_image, 0) if rows_per_image > 1 else x
    res = evaluate(model, sde, rows, batch_size=batch_size * rows_per_image, progress=progress,
                   generator=torch.Generator().manual_seed(seed), eps=eps, quadrature=quadrature,
                   probes=1 if rows_per_image > 1 else probes, **kwargs)
    if res.probe_logp is not None:  # (P, N)
        return bits_per_dim(res.probe_logp.cpu().T, x[0].numel(), num_levels=IMAGE_LEVELS), res.nfe
    bits = bits_per_dim(res.logp.cpu(), x[0].numel(), num_levels=IMAGE_LEVELS)
    return bits.reshape(x.shape[0], rows_per_image), res.nfe


def image_path(trace: str | None, probes: int | None, quadrature) -> tuple[str, int, int | str | None]:
    """``(trace, probes, quadrature)``: :data:`IMAGE_PATH` when ``trace`` is ``None`` (``probes``, if
    given, overrides its count), else the given path with one probe unless ``probes`` says more."""
    if trace is None:
        return IMAGE_PATH["trace"], probes or IMAGE_PATH["probes"], IMAGE_PATH["quadrature"]
    return trace, probes or 1, quadrature


def image_bits_per_dim(model, levels: Tensor, *, trace: str | None = None, probes: int | None = None,
                       quadrature: int | str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       eps: float = 1e-5, batch_size: int = 200, seed: int = 0, clock: str = "log_snr",
                       check_images: int = CHECK_IMAGES, progress: bool = False, **solver_options) -> dict:
    """Bits/dim of uint8 images under a diffusers model, with the error split.

    The levels are dequantized uniformly to ``[-1, 1]`` (256 levels, seed ``seed``) and the
    likelihood solved on the log-SNR clock (:func:`log_snr_clock`; ``clock="t"``: on the
    SDE's own time) with :func:`sdediff.evaluate`, sharded over ``torch.distributed`` ranks.

    Returns a dict with ``bpd`` (the mean) and its error split:

    * ``bpd_se_data``: the standard error over images, ``std(bpd_i) / sqrt(N)``;
    * ``probe_std``: Hutchinson only, the per-image std of a one-probe estimate (RMS over the
      images; each image is solved with ``probes`` independent probes), and ``bpd_se_probes``,
      its part in the mean's error, ``sqrt(mean_i var_i / P) / sqrt(N)`` (already inside
      ``bpd_se_data``);
    * ``tolerance_check``: the first ``check_images`` images solved again, with the same
      probes, at ``rtol / 10`` and ``atol / 10``: the mean absolute change of their bits/dim.
      With a quadrature and Hutchinson probes the nodes, hence the probes, differ between the
      two solves: ``probe_noise_bpd`` is then the change expected from the probes alone.

    Args:
        model: a :func:`~sdediff.from_diffusers` score model (its ``.sde`` a VP SDE).
        levels: integer images ``(N, C, H, W)`` in ``0..255``.
        trace, probes, quadrature, rtol, atol, eps: as for :func:`sdediff.log_likelihood`; without
            ``trace``, the variance-reduced Hutchinson path :data:`IMAGE_PATH` (``probes`` may
            still be given), with ``trace`` and no ``probes``, one probe.
        batch_size: images per solve.
        seed: the dequantization noise and the probes.
        clock: ``"log_snr"`` (smooth across a discrete schedule's knots) or ``"t"``.
        check_images: images in the tolerance check (0: none).
        progress: a progress bar (rank 0).
        **solver_options: :class:`sdediff.SolverOptions` fields (e.g. ``control_variate=True``).
    """
    import time

    from .quantization import dequantize

    trace, probes, quadrature = image_path(trace, probes, quadrature)
    x = dequantize(levels, IMAGE_LEVELS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stochastic = trace != "exact"
    kw = dict(trace=trace, quadrature=quadrature, clock=clock, **solver_options)
    start = time.perf_counter()
    bits, nfe = _per_image(model, model.sde, x, eps, probes, stochastic, batch_size, seed, progress,
                           rtol=rtol, atol=atol, **kw)
    seconds = time.perf_counter() - start
    per_image = bits.mean(1)
    n = per_image.numel()
    out = {"n": n, "dim": x[0].numel(), "trace": trace, "probes": probes if stochastic else 0,
           "quadrature": quadrature, "clock": clock, "rtol": rtol, "atol": atol, "eps": eps,
           "bpd": float(per_image.mean()),
           "bpd_se_data": float(per_image.std() / math.sqrt(n)) if n > 1 else float("nan"),
           "probe_std": None, "bpd_se_probes": None, "nfe": nfe, "seconds": seconds}
    if stochastic and probes > 1:
        var = bits.var(1)  # per image, over its probes
        out["probe_std"] = float(var.mean().sqrt())
        out["bpd_se_probes"] = float((var.mean() / probes).sqrt() / math.sqrt(n))
    k = min(check_images, n)
    if k:
        first = x[:k]
        base, _ = _per_image(model, model.sde, first, eps, probes, stochastic, k, seed + 1, False,
                             rtol=rtol, atol=atol, **kw)
        tight, _ = _per_image(model, model.sde, first, eps, probes, stochastic, k, seed + 1, False,
                              rtol=rtol / 10, atol=atol / 10, **kw)
        same = not (stochastic and quadrature is not None)
        # With fresh probes at every node the two solves' probes differ: the change then holds their
        # spread, E|difference of two P-probe means| = sqrt(2/pi) sqrt(2/P) std per image.
        std = out["probe_std"]
        noise = 0.0 if same else (math.sqrt(2 / math.pi) * std * math.sqrt(2 / probes) if std is not None else None)
        out["tolerance_check"] = {"images": k, "rtol": rtol / 10, "atol": atol / 10,
                                  "mean_abs_change_bpd": float((tight.mean(1) - base.mean(1)).abs().mean()),
                                  "same_probes": same, "probe_noise_bpd": noise}
    return out


def likelihood_command(diffusers: str, data: str, *, n: int | None = 1000, trace: str | None = None,
                       probes: int | None = None, quadrature: int | str | None = None, rtol: float = 1e-5,
                       atol: float = 1e-5, eps: float = 1e-5, batch_size: int = 200, seed: int = 0,
                       device: str | None = None, progress: bool = True,
                       log=print) -> dict | None:
    """``sdediff likelihood --diffusers FOLDER --data FILE|digits``: bits/dim of uint8 images.

    Under ``torchrun`` every rank solves its own batches and rank 0 logs and returns the numbers;
    the other ranks return ``None``.
    """
    from .distributed import init_from_env
    from .interop import from_diffusers

    dev = torch.device(device or "cpu")
    model = from_diffusers(diffusers).to(dev)
    shape = model_image_shape(model)
    levels = load_images(data, shape, n).to(dev)
    rank, world = init_from_env(dev)
    out = {"model": str(diffusers), "data": str(data), "world_size": world,
           **image_bits_per_dim(model, levels, trace=trace, probes=probes, quadrature=quadrature, rtol=rtol,
                                atol=atol, eps=eps, batch_size=batch_size, seed=seed, progress=progress)}
    if rank != 0:
        return None
    se = f" +- {out['bpd_se_data']:.4f} (data s.e.)"
    probe = "" if out["probe_std"] is None else \
        f"; probe std per image {out['probe_std']:.4f}, its part of the s.e. {out['bpd_se_probes']:.4f}"
    path = out["trace"] if out["trace"] == "exact" else f"{out['trace']}, {out['probes']} probe(s)"
    path += "" if out["quadrature"] is None else f", quadrature={out['quadrature']}"
    log(f"bits/dim of {out['n']} images ({shape[0]}x{shape[1]}x{shape[2]}, 256 levels on [-1, 1], "
        f"uniformly dequantized): {out['bpd']:.4f}{se}{probe} (trace={path}, NFE {out['nfe']}, "
        f"{out['seconds']:.1f} s, {world} process{'es' if world > 1 else ''})")
    check = out.get("tolerance_check")
    if check:
        noise = check["probe_noise_bpd"]
        note = "" if check["same_probes"] else (
            " (fresh probes at every node: independent probes alone differ by about "
            f"{noise:.2e})" if noise is not None else " (fresh probes at every node: this includes their spread)")
        log(f"solver check: the first {check['images']} images at rtol={check['rtol']:g}, atol={check['atol']:g} "
            f"change by {check['mean_abs_change_bpd']:.2e} bits/dim on average{note}")
    return out
