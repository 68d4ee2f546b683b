"""The ``sdediff`` command: demo, train, sample, likelihood, bench, samplers.

Every subcommand has ``--help``. Options can also come from a TOML file (``--config FILE.toml``)
whose keys are the long flags without the dashes (``batch-size = 512`` or ``batch_size = 512``),
at the top level or in a table named after the subcommand (``[train]``); flags given on the
command line override the file. Bad input ends with one line on stderr, ``sdediff: error: ...``,
and exit code 2 (usage) or 1 (everything else); ``--debug`` shows the traceback instead.

A training run's folder holds ``run.json`` (the data set and the flags) and ``checkpoints/``
(see :mod:`sdediff.training`); ``sample`` and ``likelihood`` take that folder, its
``checkpoints/`` folder or one checkpoint folder as ``--ckpt``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "DATA_SETS", "RUN_FILE", "load_data", "write_run_info", "read_run_info"]

RUN_FILE = "run.json"
BENCHMARKS = ("steps", "likelihood", "training")
SDES = ("vp", "subvp", "ve")
NETS = ("mlp", "unet")
TEST_SEED_OFFSET = 10_000  # toy test points use seed + 10_000, never the training seed


def _toy_names() -> tuple[str, ...]:
    from .datasets import TOY_DATASETS
    return TOY_DATASETS


DATA_SETS: tuple[str, ...] = (*_toy_names(), "digits")


# ----------------------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``sdediff: error: ...``."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _UsageError(Exception):
    """A command-line usage error (exit code 2)."""


def _checked(cast, accept, expected: str):
    """An argparse ``type=`` that casts the text and checks it, naming what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
_unit_float = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_ema_decay = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _quadrature(text: str) -> int | str:
    """``--quadrature``: ``steps`` or a node count (its range is checked by log_likelihood)."""
    return text if text == "steps" else _positive_int(text)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE.toml",
                        help="read options from a TOML file (keys = long flags; the command line wins)")
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common.add_argument("--threads", type=_positive_int, default=1,
                        help="torch CPU threads (default: 1; these small models run fastest on one thread)")
    return common


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show tqdm progress bars")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    """The ``sdediff`` argument parser with all subcommands."""
    common = _common()
    parser = _Parser(prog="sdediff", description="Score-based SDE/ODE diffusion: train, sample, evaluate.",
                     epilog="Start with 'sdediff demo'. Every command has --help.")
    parser.add_argument("--version", action="version", version=f"sdediff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # demo ---------------------------------------------------------------------------------
    p = sub.add_parser("demo", parents=[common], help="train on the 2-D ring, sample, evaluate, plot (< 3 min)",
                       description="Train a small score model on the 2-D ring of 8 Gaussians (an exact mixture, "
                                   "so the truth is known), sample it with several samplers at several NFE, "
                                   "measure the held-out NLL through the probability-flow ODE next to the true "
                                   "entropy, and write samples.png, nfe_curve.png, report.md and the checkpoint.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seconds", type=_positive_float, default=90.0,
                   help="training budget in wall-clock seconds (default: 90)")
    p.add_argument("--quick", action="store_true", help="a few training steps and tiny sample sets (smoke test)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    _add_progress(p)

    # train --------------------------------------------------------------------------------
    p = sub.add_parser("train", parents=[common], help="train a score model on a toy set or the digits",
                       description="Train a score model by denoising score matching and write checkpoints "
                                   "to OUT/checkpoints (EMA weights included) and OUT/run.json.")
    p.add_argument("--data", required=True, metavar="NAME",
                   help=f"data set: one of {', '.join(DATA_SETS)}")
    p.add_argument("--sde", default="vp", metavar="|".join(SDES), help="forward SDE (default: vp)")
    p.add_argument("--steps", type=_positive_int, required=True, help="optimizer steps")
    p.add_argument("--out", required=True, help="run folder (checkpoints, run.json, metrics.jsonl)")
    p.add_argument("--net", default="mlp", metavar="|".join(NETS),
                   help="network: residual MLP (any data; digits are flattened) or U-Net (digits only)")
    p.add_argument("--parameterization", default="v", metavar="eps|x0|score|v",
                   help="what the network predicts (default: v, robust at both ends of [0, T])")
    p.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument("--batch-size", type=_positive_int, default=512, help="batch size (default: 512)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    p.add_argument("--n-train", type=_positive_int, default=100_000,
                   help="training examples (toy: fresh draws; digits: the 1,297 training images "
                        "re-dequantized up to this many) (default: 100000)")
    p.add_argument("--hidden", type=_positive_int, default=128, help="MLP width (default: 128)")
    p.add_argument("--depth", type=_positive_int, default=3, help="MLP residual blocks (default: 3)")
    p.add_argument("--base-channels", type=_positive_int, default=32, help="U-Net base channels (default: 32)")
    p.add_argument("--weighting", default="score", metavar="score|likelihood|none",
                   help="DSM weighting (default: score = eps-matching)")
    p.add_argument("--importance-sampling", action="store_true",
                   help="draw t proportional to g^2/s^2 (with --weighting likelihood)")
    p.add_argument("--warmup", type=_nonneg_int, default=100, help="learning-rate warm-up steps (default: 100)")
    p.add_argument("--lr-schedule", default="cosine", metavar="constant|cosine",
                   help="after warm-up (default: cosine)")
    p.add_argument("--ema-decay", type=_ema_decay, default=0.999, help="EMA decay (default: 0.999)")
    p.add_argument("--sigma-max", type=_positive_float, default=None,
                   help="VE only: the largest noise level (default: 10 for toy sets, 20 for digits)")
    p.add_argument("--max-seconds", type=_positive_float, default=None, help="stop after this many seconds")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1000, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    _add_device(p)
    _add_progress(p)

    # sample -------------------------------------------------------------------------------
    p = sub.add_parser("sample", parents=[common], help="draw samples from a checkpoint (.npy or .png)",
                       description="Draw samples from a trained model with any registered sampler "
                                   "(see 'sdediff samplers') and save them as .npy or a picture (.png).")
    p.add_argument("--ckpt", required=True, help="a run folder, its checkpoints/ folder or a checkpoint folder")
    p.add_argument("--sampler", default="dpm_solver", help="a registered sampler (default: dpm_solver)")
    p.add_argument("--steps", type=_positive_int, default=50, help="sampler steps (default: 50)")
    p.add_argument("--n", type=_positive_int, default=1000, help="number of samples (default: 1000)")
    p.add_argument("--out", required=True, help="output file, .npy (raw array) or .png (scatter / image grid)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    p.add_argument("--grid", default="uniform", metavar="uniform|quadratic|karras|logsnr",
                   help="time grid (default: uniform)")
    p.add_argument("--eps", type=_unit_float, default=1e-3, help="final time (default: 1e-3)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True,
                   help="finish with Tweedie's denoising step (+1 NFE)")
    p.add_argument("--which", default="ema", metavar="ema|model|best", help="which weights (default: ema)")
    _add_device(p)
    _add_progress(p)

    # likelihood ---------------------------------------------------------------------------
    p = sub.add_parser("likelihood", parents=[common], help="held-out NLL (nats) / bits per dim of a checkpoint",
                       description="Held-out negative log-likelihood through the probability-flow ODE "
                                   "(torchdiffeq dopri5). Toy sets: fresh test draws (seed + 10000); for the "
                                   "ring also the true NLL of the same points. Digits: the test split, "
                                   "uniformly dequantized, in bits per dimension.")
    p.add_argument("--ckpt", required=True, help="a run folder, its checkpoints/ folder or a checkpoint folder")
    p.add_argument("--data", required=True, metavar="NAME", help=f"data set: one of {', '.join(DATA_SETS)}")
    p.add_argument("--trace", default="exact", metavar="exact|gaussian|rademacher",
                   help="divergence: exact, or a Hutchinson estimator (default: exact)")
    p.add_argument("--n", type=_positive_int, default=1000, help="test examples (default: 1000; digits: <= 300)")
    p.add_argument("--probes", type=_positive_int, default=1,
                   help="Hutchinson probes per example (per node with --quadrature; default: 1)")
    p.add_argument("--quadrature", type=_quadrature, default=None, metavar="N|steps",
                   help="solve the trajectory alone and integrate the divergence with N Gauss-Legendre "
                        "nodes in log-SNR (N >= 2), or 'steps': 3 nodes on every solver step; each node "
                        "with its own probes (default: integrate with the ODE)")
    p.add_argument("--rtol", type=_unit_float, default=1e-5, help="ODE relative tolerance (default: 1e-5)")
    p.add_argument("--atol", type=_unit_float, default=1e-5, help="ODE absolute tolerance (default: 1e-5)")
    p.add_argument("--eps", type=_unit_float, default=1e-5, help="start time of the flow (default: 1e-5)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="examples per ODE solve (default: 500)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the test draw and probes (default: 0)")
    p.add_argument("--which", default="ema", metavar="ema|model|best", help="which weights (default: ema)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to this JSON file")
    _add_device(p)
    _add_progress(p)

    # bench --------------------------------------------------------------------------------
    p = sub.add_parser("bench", parents=[common], help="run a benchmark (steps, likelihood, training)",
                       description="Run one of the benchmarks of the source checkout (benchmarks/*.py); "
                                   "results go to benchmarks/results/ unless --out is given. Further "
                                   "arguments are passed to the benchmark ('sdediff bench steps --help').")
    p.add_argument("name", metavar="|".join(BENCHMARKS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="the benchmark's quick mode")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="more arguments for the benchmark")

    # samplers -----------------------------------------------------------------------------
    sub.add_parser("samplers", parents=[common], help="list the registered samplers with NFE/step and order",
                   description="List the sampler registry: NFE per step, order, stochastic or not.")
    return parser


def _version() -> str:
    from . import __version__
    return __version__


# ------------------------------------------------------------------------------ config
def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError("--config needs Python 3.11+ (tomllib) or 'pip install tomli' on 3.10") from None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from None


def _config_tokens(path: str, command: str, subparser: argparse.ArgumentParser) -> list[str]:
    """Turn the TOML file's keys into command-line tokens for ``command`` (placed before the real flags)."""
    data = _load_toml(path)
    entries = {k: v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(command)
    if isinstance(section, dict):
        entries.update(section)
    actions = subparser._option_string_actions  # the long flags this subcommand accepts
    tokens: list[str] = []
    for key, value in entries.items():
        flag = "--" + str(key).replace("_", "-")
        if flag in ("--config", "--debug") or flag not in actions:
            allowed = sorted(f[2:] for f in actions if f.startswith("--") and f not in ("--help", "--config",
                                                                                        "--debug"))
            raise ValueError(f"unknown key {key!r} in {path} for 'sdediff {command}'; allowed: {', '.join(allowed)}")
        action = actions[flag]
        if isinstance(value, bool):
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens.append(flag if value else "--no-" + flag[2:])
            elif isinstance(action, argparse._StoreTrueAction):
                if value:
                    tokens.append(flag)
            else:
                raise ValueError(f"key {key!r} in {path} takes a value, not true/false")
        elif isinstance(value, list):
            tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def _find_option(argv: Sequence[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    config = _find_option(argv, "--config")
    command = next((t for t in argv if not t.startswith("-")), None)
    if config is not None and command is not None:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if command not in subparsers.choices:
            parser.error(f"unknown command {command!r}; choose from {', '.join(subparsers.choices)}")
        pos = argv.index(command) + 1
        argv = argv[:pos] + _config_tokens(config, command, subparsers.choices[command]) + argv[pos:]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(0)
    return args


# ------------------------------------------------------------------------------ runs
def write_run_info(out: Path, info: dict[str, Any]) -> None:
    """Write ``out/run.json`` (the data set and flags of a training run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))


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


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")


def load_data(name: str, split: str, n: int, seed: int, dtype=None, device=None):
    """Examples of a named data set: toy sets ``(n, 2)``; digits ``(n, 1, 8, 8)`` in ``[-1, 1]``.

    Args:
        name: one of :data:`DATA_SETS`.
        split: ``"train"`` or ``"test"``. Toy test sets are drawn with ``seed + 10000``;
            digits use the fixed test split (at most 300 images), uniformly dequantized.
        n: number of examples (digits train: the training images re-dequantized up to ``n``).
        seed: seeds the draw / the dequantization noise.

    Raises:
        ValueError: an unknown data set or split.
    """
    import torch

    from .datasets import DIGITS_NUM_LEVELS, dequantize, load_digits_tensors, toy_data

    _check_choice("data set", name, DATA_SETS)
    _check_choice("split", split, ("train", "test"))
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed + (TEST_SEED_OFFSET if split == "test" else 0))
    if name != "digits":
        return toy_data(name, n, generator=gen, dtype=dtype, device=device)
    levels = load_digits_tensors(split)
    if split == "test":
        levels = levels[:n]
    else:
        reps = max(1, math.ceil(n / levels.shape[0]))
        levels = levels.repeat(reps, 1, 1, 1)[:max(n, 1)]
    x = dequantize(levels, DIGITS_NUM_LEVELS, generator=gen, dtype=dtype)
    return x.to(device) if device is not None else x


def model_example_shape(model) -> tuple[int, ...]:
    """The shape of one example the model's network takes: ``(dim,)`` or ``(C, H, W)``."""
    cfg, name = model.net.config, model.net.net_name
    if name == "mlp":
        return (int(cfg["dim"]),)
    return (int(cfg["in_channels"]), int(cfg["image_size"]), int(cfg["image_size"]))


def fit_data(x, shape: tuple[int, ...], data: str, ckpt: str, trained_on: str | None):
    """Reshape ``x`` to the model's example shape (digits flatten for an MLP) or explain the mismatch."""
    if tuple(x.shape[1:]) == shape:
        return x
    if math.prod(x.shape[1:]) == math.prod(shape) and len(shape) in (1, 3):
        return x.reshape(x.shape[0], *shape)
    hint = f" (it was trained on {trained_on!r})" if trained_on else ""
    raise ValueError(f"checkpoint {ckpt} models examples of shape {shape}, but data set {data!r} has examples "
                     f"of shape {tuple(x.shape[1:])}: the checkpoint does not fit the data{hint}")


def _device(name: str | None):
    import torch
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"bad --device {name!r}: {err}") from None


def _load_model(ckpt: str, which: str, device, dtype=None):
    from .training import load_checkpoint
    _check_choice("--which", which, ("ema", "model", "best"))
    if not Path(ckpt).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (give a run folder written by 'sdediff train')")
    return load_checkpoint(ckpt, which, device=device, dtype=dtype)


def make_sde(kind: str, data: str, sigma_max: float | None = None):
    """The forward SDE for ``--sde``: VP / sub-VP defaults; VE with ``sigma_max`` scaled to the data."""
    from .sde import SubVPSDE, VESDE, VPSDE
    _check_choice("--sde", kind, SDES)
    if kind == "vp":
        return VPSDE()
    if kind == "subvp":
        return SubVPSDE()
    # VE: sigma_max about the largest distance between training points (Song & Ermon 2020, technique 1)
    return VESDE(sigma_min=0.01, sigma_max=sigma_max or (20.0 if data == "digits" else 10.0))


# ------------------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(out=args.out, seconds=args.seconds, quick=args.quick, seed=args.seed, progress=args.progress)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .nets import build_net
    from .parameterization import PARAMETERIZATIONS, ScoreModel
    from .training import Trainer, latest_checkpoint

    _check_choice("data set", args.data, DATA_SETS)
    _check_choice("--net", args.net, NETS)
    _check_choice("--parameterization", args.parameterization, PARAMETERIZATIONS)
    _check_choice("--weighting", args.weighting, ("score", "likelihood", "none"))
    _check_choice("--lr-schedule", args.lr_schedule, ("constant", "cosine"))
    if args.net == "unet" and args.data != "digits":
        raise ValueError(f"--net unet needs image data (--data digits), got --data {args.data}; use --net mlp")
    if args.importance_sampling and args.weighting != "likelihood":
        raise ValueError("--importance-sampling needs --weighting likelihood")
    sde = make_sde(args.sde, args.data, args.sigma_max)
    out = Path(args.out)
    has_ckpt = (out / "checkpoints" / "latest.json").is_file()
    if has_ckpt and not args.resume:
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if args.resume and not has_ckpt:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    device = _device(args.device)
    data = load_data(args.data, "train", args.n_train, args.seed)
    if args.net == "mlp":
        data = data.reshape(data.shape[0], -1)
        torch.manual_seed(args.seed)
        net = build_net("mlp", dim=data.shape[1], hidden=args.hidden, depth=args.depth, seed=args.seed)
    else:
        torch.manual_seed(args.seed)
        net = build_net("unet", in_channels=1, base_channels=args.base_channels, image_size=8, seed=args.seed)
    sigma_data = float(data.std()) if args.sde == "ve" else None  # unit-variance input for VE (EDM c_in)
    model = ScoreModel(net, sde, args.parameterization, sigma_data=sigma_data).to(device)
    trainer = Trainer(model, data=data, lr=args.lr, batch_size=args.batch_size, steps=args.steps,
                      warmup=min(args.warmup, args.steps), lr_schedule=args.lr_schedule, ema_decay=args.ema_decay,
                      weighting=args.weighting, importance_sampling=args.importance_sampling, out_dir=out,
                      checkpoint_every=args.checkpoint_every, log_every=max(1, min(100, args.steps // 10)),
                      seed=args.seed, max_time=args.max_seconds, progress=args.progress, device=device)
    if args.resume:
        print(f"resuming {out} at step {trainer.resume()}")
    info = {k: v for k, v in vars(args).items() if k not in ("config", "debug", "command", "progress", "resume")}
    write_run_info(out, {"format": 1, "command": "train", **info})
    start = time.perf_counter()
    history = trainer.train()
    loss = next((r["loss"] for r in reversed(history) if "loss" in r), float("nan"))
    ckpt = latest_checkpoint(out)
    print(f"trained {trainer.step} steps in {time.perf_counter() - start:.1f} s, final loss {loss:.4g}")
    print(f"checkpoint: {ckpt}")
    print(f"next: sdediff sample --ckpt {out} --out {out / 'samples.png'}   |   "
          f"sdediff likelihood --ckpt {out} --data {args.data}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .samplers import available_samplers, sample

    suffix = Path(args.out).suffix.lower()
    if suffix not in (".npy", ".png"):
        raise ValueError(f"--out must end in .npy or .png, got {args.out!r}")
    if args.sampler not in available_samplers():
        raise ValueError(f"unknown sampler {args.sampler!r}; available: {', '.join(available_samplers())} "
                         "(see 'sdediff samplers')")
    device = _device(args.device)
    model = _load_model(args.ckpt, args.which, device)
    run = read_run_info(args.ckpt)
    shape = model_example_shape(model)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    dtype = next(model.parameters()).dtype
    start = time.perf_counter()
    x, nfe = sample(model, model.sde, (args.n, *shape), sampler=args.sampler, steps=args.steps, generator=gen,
                    eps=args.eps, denoise=args.denoise, progress=args.progress, grid=args.grid, dtype=dtype,
                    device=device, return_nfe=True)
    seconds = time.perf_counter() - start
    x = x.detach().cpu()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    data = run.get("data")
    if suffix == ".npy":
        np.save(args.out, x.numpy())
    elif len(shape) == 1 and shape[0] == 2:
        _scatter_png(x, args.out, f"{args.sampler}, {args.steps} steps, NFE {nfe}" + (f" ({data})" if data else ""))
    elif math.prod(shape) == 64:
        _image_grid_png(x.reshape(-1, 8, 8), args.out, f"{args.sampler}, NFE {nfe}")
    else:
        raise ValueError(f"cannot draw examples of shape {shape} as a PNG; use --out FILE.npy")
    print(f"wrote {args.n} samples to {args.out} ({args.sampler}, {args.steps} steps, NFE {nfe}, {seconds:.1f} s)")
    if data in _toy_names() and shape == (2,):
        from .metrics import sliced_wasserstein
        ref = load_data(data, "test", 5000, int(run.get("seed", 0)), dtype=torch.float64)
        sw = float(sliced_wasserstein(x.double(), ref, generator=0))
        print(f"sliced W2 to {ref.shape[0]} fresh {data!r} points: {sw:.4f}")
    return 0


def cmd_likelihood(args: argparse.Namespace) -> int:
    import torch

    from .datasets import DIGITS_NUM_LEVELS
    from .likelihood import TRACE_ESTIMATORS, evaluate

    _check_choice("data set", args.data, DATA_SETS)
    _check_choice("--trace", args.trace, TRACE_ESTIMATORS)
    device = _device(args.device)
    model = _load_model(args.ckpt, args.which, device, dtype=torch.float64)
    run = read_run_info(args.ckpt)
    x = load_data(args.data, "test", args.n, args.seed, dtype=torch.float64, device=device)
    x = fit_data(x, model_example_shape(model), args.data, args.ckpt, run.get("data"))
    if run.get("data") and run["data"] != args.data:
        print(f"note: the checkpoint was trained on {run['data']!r}, evaluating on {args.data!r}", file=sys.stderr)
    digits = args.data == "digits"
    gen = torch.Generator(device=device).manual_seed(args.seed)
    start = time.perf_counter()
    res = evaluate(model, model.sde, x, batch_size=args.batch_size, bpd=digits,
                   num_levels=DIGITS_NUM_LEVELS if digits else None, generator=gen, progress=args.progress,
                   trace=args.trace, probes=args.probes, rtol=args.rtol, atol=args.atol, eps=args.eps,
                   quadrature=args.quadrature)
    out: dict[str, Any] = {"data": args.data, "n": x.shape[0], "trace": args.trace, "nll": res.mean_nll,
                           "nll_se": res.stderr, "nfe": res.nfe, "seconds": time.perf_counter() - start}
    print(f"held-out NLL on {x.shape[0]} {args.data!r} test points: {res.mean_nll:.4f} +- {res.stderr:.4f} nats "
          f"(trace={args.trace}, NFE {res.nfe}, {out['seconds']:.1f} s)")
    if digits:
        out.update(bpd=res.mean_bpd, bpd_se=res.bpd_stderr)
        print(f"bits/dim (17 levels, dequantized): {res.mean_bpd:.4f} +- {res.bpd_stderr:.4f}")
    if args.data == "ring":
        from .analytic import GaussianMixture
        from .datasets import ring_params
        gm = GaussianMixture(*ring_params())
        true_nll = -gm.log_prob(x.cpu())
        gap = -res.logp.cpu() - true_nll  # log p_true - log p_model, per point: its mean estimates KL
        entropy, entropy_se = gm.entropy(generator=torch.Generator().manual_seed(args.seed))
        out.update(true_nll=float(true_nll.mean()), entropy=entropy, entropy_se=entropy_se,
                   gap=float(gap.mean()), gap_se=float(gap.std() / math.sqrt(len(gap))))
        print(f"true NLL of the same points: {out['true_nll']:.4f}; true entropy {entropy:.4f} +- {entropy_se:.4f}; "
              f"paired gap (an estimate of KL) {out['gap']:.4f} +- {out['gap_se']:.4f} nats")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _benchmark_module(name: str):
    _check_choice("benchmark", name, BENCHMARKS)
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / f"{name}.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    elif importlib.util.find_spec("benchmarks") is None:
        raise FileNotFoundError("the benchmarks live in the source checkout (benchmarks/ next to sdediff/); "
                                "run 'sdediff bench' from a clone of the repository")
    return importlib.import_module(f"benchmarks.{name}")


def cmd_bench(args: argparse.Namespace) -> int:
    module = _benchmark_module(args.name)
    forwarded = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []) + list(args.args)
    sys.argv[0] = f"sdediff bench {args.name}"  # the benchmark's --help and usage name it so
    module.main(forwarded)
    return 0


def cmd_samplers(args: argparse.Namespace) -> int:
    from .samplers import available_samplers
    rows = [("name", "NFE/step", "order", "kind", "SDEs", "description")]
    for name, info in available_samplers().items():
        nfe = "adaptive" if info.nfe_per_step is None else f"{info.nfe_per_step:g}"
        rows.append((name, nfe, f"{info.order:g}", "stochastic" if info.stochastic else "deterministic",
                     "linear" if info.linear_only else "any", info.description.replace("``", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "likelihood": cmd_likelihood,
            "bench": cmd_bench, "samplers": cmd_samplers}


# ------------------------------------------------------------------------------ plots
def _scatter_png(x, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="tab:blue", rasterized=True)
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _image_grid_png(images, path: str, title: str, cols: int = 10) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = min(images.shape[0], 100)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdediff`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a usage error, 1 on any other error (one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _parse(argv)
        if args.command != "bench":  # the benchmarks set their own thread counts
            import torch
            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except _UsageError as err:
        if debug:
            raise
        print(f"sdediff: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdediff: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, OSError) as err:
        if debug:
            raise
        print(f"sdediff: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - never a traceback for the user; --debug shows it
        if debug:
            raise
        print(f"sdediff: error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 600 else text[:597] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
