"""Step-count benchmark on your own model: ``sdediff bench steps --ckpt RUN`` (or ``--model mod:fn``).

Without an oracle, each sampler's samples at each NFE are compared with

* held-out data (``--data``: a toy set name, ``digits``, or a ``.npy`` / ``.npz`` array), and
* a high-NFE adaptive reference run of the same model (``sampler="ode"``, dopri5 at
  ``rtol = atol = --ref-rtol``), which shows the sampler's discretization error apart from the
  model's own error,

by the sliced W2 distance, the MMD and, for images (examples of shape ``(C, H, W)`` or the
digits), the Gaussian Frechet distance. Each statistic sits next to its *noise floor*: the same
statistic between two independent sets of the same size (the held-out set split in two; two
halves of the reference run), as a mean and a standard deviation over ``--splits`` random splits;
the values are means and standard deviations over the same splits. A sampler within the floor is
indistinguishable from its target at this sample size. For deterministic samplers the report
also gives the paired RMS distance to the reference run from the same prior draws (example
``i`` uses seed ``seed + i`` in both), which has no sampling noise at all.

Under ``torchrun`` every sampling run is sharded over the ranks by seed
(:mod:`sdediff.distributed`) and rank 0 computes the statistics and writes the report.

Writes ``own_model.{json,md,png}`` to ``--out`` (default ``./bench-results``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..distributed import init_from_env, rank_and_world, sample_seeds
from ..metrics import gaussian_frechet, mmd, sliced_wasserstein
from ..samplers import available_samplers
from ..sde import SDE, LinearSDE
from .own_model_inputs import load_array, load_model_function, probe
from .report import Progress, announce, guard_quick, output_dir

__all__ = ["NAME", "DEFAULT_SAMPLERS", "NFES", "QUICK_NFES", "load_model_function", "load_array", "run", "summary",
           "within_floor", "build_parser", "main"]

NAME = "own_model"  # the output files: own_model.json, own_model.md, own_model.png
#: The main deterministic samplers, each at its defaults (``sd.sample(..., sampler=name, steps=...)``).
DEFAULT_SAMPLERS: tuple[str, ...] = ("dpm_solver", "unipc", "heun", "ddim", "euler")
NFES = (5, 10, 20, 50)
QUICK_NFES = (5, 10, 20)
TOLERANCES = (1e-2, 1e-3, 1e-4)  # adaptive samplers asked for by --samplers run at these rtol
PER_EXAMPLE_OPTIONS = {"pc": {"norm": "example"}, "langevin": {"norm": "example"}}  # needed under seeds=


# ------------------------------------------------------------------------------ statistics
def _median_distance(x: torch.Tensor) -> float:
    d = torch.cdist(x[:500], x[:500])
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def _stats(x: torch.Tensor, y: torch.Tensor, metrics: Sequence[str], bandwidths) -> dict[str, float]:
    out = {}
    for m in metrics:
        if m == "sw2":
            out[m] = float(sliced_wasserstein(x, y, num_projections=256, generator=17))
        elif m == "mmd":
            out[m] = float(mmd(x, y, bandwidths=bandwidths))
        else:
            out[m] = float(gaussian_frechet(x, y))
    return out


def _mean_std(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per metric ``[mean, std]`` over the splits."""
    out = {}
    for m in rows[0]:
        v = torch.tensor([r[m] for r in rows], dtype=torch.float64)
        out[m] = [float(v.mean()), float(v.std()) if len(v) > 1 else 0.0]
    return out


class _Target:
    """A pool of ``2n`` examples with its random splits into halves and its noise floor."""

    def __init__(self, pool: torch.Tensor, n: int, splits: int, seed: int, metrics, bandwidths):
        g = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(pool.shape[0], generator=g) for _ in range(splits)]
        self.halves = [(pool[p[:n]], pool[p[n:2 * n]]) for p in perms]
        self.metrics, self.bandwidths = metrics, bandwidths
        self.floor = _mean_std([_stats(a, b, metrics, bandwidths) for a, b in self.halves])

    def compare(self, x: torch.Tensor) -> dict[str, list[float]]:
        """``x`` (``n`` examples) against the first half of every split."""
        return _mean_std([_stats(x, a, self.metrics, self.bandwidths) for a, _ in self.halves])


# ------------------------------------------------------------------------------ the benchmark
def _plan(samplers: Sequence[str], nfes: Sequence[int], sde: SDE) -> list[tuple[str, dict, int | None]]:
    """``(sampler, options, budget)`` runs: fixed-step samplers at each NFE budget (the final
    denoising step counted), adaptive ones at :data:`TOLERANCES` (budget ``None``)."""
    registry, plan = available_samplers(), []
    denoise = isinstance(sde, LinearSDE)
    for name in samplers:
        info = registry[name]
        options = dict(PER_EXAMPLE_OPTIONS.get(name, {}), denoise=denoise)
        if info.nfe_per_step is None:
            plan += [(name, dict(options, steps=1, rtol=r, atol=r), None) for r in TOLERANCES]
            continue
        for budget in nfes:
            steps = int((budget - denoise) // info.nfe_per_step)
            if steps >= 1:
                plan.append((name, dict(options, steps=steps), budget))
    return plan


def run(score_fn, sde: SDE, heldout: torch.Tensor, *, samplers: Sequence[str] = DEFAULT_SAMPLERS,
        nfes: Sequence[int] = NFES, n: int = 1000, splits: int = 5, seed: int = 0, ref_rtol: float = 1e-5,
        image: bool = False, dtype: torch.dtype = torch.float32, progress: bool = True,
        log: Callable[[str], None] = print, meta: dict | None = None) -> dict | None:
    """Every sampler at every NFE against held-out data and a converged reference run of the model.

    Args:
        score_fn, sde: the model.
        heldout: held-out examples ``(m, *example_shape)``; ``n`` is capped at ``m // 2``.
        samplers: registered sampler names (each at its defaults).
        nfes: NFE budgets of the fixed-step samplers.
        n: examples per sample set.
        splits: random splits behind each mean and standard deviation.
        seed: example ``i`` of every sampler uses seed ``seed + i``; the reference run uses
            ``seed .. seed + 3n - 1`` (the first ``n`` pair with the samplers' prior draws).
        ref_rtol: the reference run's dopri5 ``rtol = atol``.
        image: also the Gaussian Frechet distance.
        dtype: the sampling dtype.
        progress: a tqdm bar over the runs.
        log: a print-like function for progress lines.
        meta: extra entries of the results' ``config``.

    Returns:
        The results (on rank 0; ``None`` on the other ranks of a process group).
    """
    from tqdm.auto import tqdm

    rank, _ = rank_and_world()
    shape = tuple(heldout.shape[1:])
    n = min(n, heldout.shape[0] // 2)
    if n < 2:
        raise ValueError(f"--data holds {heldout.shape[0]} examples; the benchmark needs at least 4")
    metrics = ("sw2", "mmd") + (("frechet",) if image else ())
    flat = heldout[:2 * n].reshape(2 * n, -1).double()
    h = _median_distance(flat)
    bandwidths = (0.5 * h, h, 2.0 * h)  # fixed by the data, so every MMD is measured the same way
    config = dict(meta or {}, n=n, nfes=list(nfes), samplers=list(samplers), splits=splits, seed=seed,
                  example_shape=list(shape), metrics=list(metrics), mmd_bandwidths=list(bandwidths),
                  reference=f"ode (dopri5), rtol = atol = {ref_rtol}", dtype=str(dtype))
    denoise = isinstance(sde, LinearSDE)

    log(f"reference run: sampler='ode', rtol = atol = {ref_rtol}, {3 * n} examples")
    start = time.perf_counter()
    ref, ref_nfe = sample_seeds(score_fn, sde, shape, 3 * n, seed, sampler="ode", steps=1, rtol=ref_rtol,
                                atol=ref_rtol, denoise=denoise, dtype=dtype, progress=progress, return_nfe=True)
    ref_seconds = time.perf_counter() - start
    if rank == 0:
        ref = ref.reshape(3 * n, -1).double()
        held = _Target(flat, n, splits, seed + 1, metrics, bandwidths)
        target = _Target(ref[n:], n, splits, seed + 2, metrics, bandwidths)
        paired_ref = ref[:n]
        results = {"config": config, "floor": {"heldout": held.floor, "reference": target.floor},
                   "reference": {"nfe": int(ref_nfe), "seconds": ref_seconds,
                                 "vs_heldout": held.compare(ref[n:2 * n])},
                   "runs": []}
        log(f"reference: NFE {ref_nfe} in {ref_seconds:.1f} s; vs held-out " + _fmt(results["reference"]["vs_heldout"])
            + "; floor " + _fmt(held.floor))

    plan = _plan(samplers, nfes, sde)
    registry = available_samplers()
    for name, options, budget in tqdm(plan, desc="sampling", disable=not progress or rank != 0, unit="run"):
        kw = dict(options)
        start = time.perf_counter()
        try:
            x, nfe = sample_seeds(score_fn, sde, shape, n, seed, sampler=name, dtype=dtype, return_nfe=True, **kw)
        except Exception as err:  # noqa: BLE001 - a failing sampler is reported, not fatal
            if rank == 0:
                results["runs"].append(dict(sampler=name, budget=budget, error=f"{type(err).__name__}: {err}"[:300]))
                log(f"  {name} (budget {budget}): {type(err).__name__}: {err}"[:200])
            continue
        if rank != 0:
            continue
        seconds = time.perf_counter() - start
        x = x.reshape(n, -1).double()
        row = dict(sampler=name, budget=budget, nfe=int(nfe), seconds=seconds,
                   options={k: v for k, v in kw.items()})
        if not bool(torch.isfinite(x).all()):
            row["error"] = "non-finite samples"
        else:
            row["vs_heldout"], row["vs_reference"] = held.compare(x), target.compare(x)
            if not registry[name].stochastic:  # the same prior draws as the reference's first n
                row["paired_rmse"] = float(((x - paired_ref) ** 2).mean().sqrt())
        results["runs"].append(row)
        if "error" not in row:
            log(f"  {name:12s} NFE {nfe:4d}: vs held-out {_fmt(row['vs_heldout'])}; "
                f"vs reference {_fmt(row['vs_reference'])} ({seconds:.1f} s)")
    if rank != 0:
        return None
    results["summary"] = summary(results)
    return results


def _fmt(stats: dict[str, list[float]]) -> str:
    return ", ".join(f"{m}={v[0]:.3g}" for m, v in stats.items())


def within_floor(value: list[float], floor: list[float]) -> bool:
    """A mean within the floor's mean plus two of its standard deviations."""
    return value[0] <= floor[0] + 2.0 * floor[1]


def summary(results: dict) -> dict[str, dict[str, int | None]]:
    """Per sampler: the fewest NFE with every statistic within the noise floor, vs held-out and vs reference."""
    out = {}
    for name in dict.fromkeys(r["sampler"] for r in results["runs"]):
        ok = [r for r in results["runs"] if r["sampler"] == name and "error" not in r]
        out[name] = {}
        for target in ("heldout", "reference"):
            floor = results["floor"][target]
            out[name][target] = min((r["nfe"] for r in ok
                                     if all(within_floor(r[f"vs_{target}"][m], floor[m]) for m in floor)),
                                    default=None)
    return out


# ------------------------------------------------------------------------------ the command line
class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, ``sdediff: error: ...``, exit code 2 (as the ``sdediff`` command)."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        print(f"sdediff: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in available_samplers()]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown sampler {', '.join(unknown) or repr(text)}; "
                                         f"available: {', '.join(available_samplers())}")
    return names


def _positive(cast):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (cast is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``sdediff bench steps --ckpt RUN | --model MODULE:FUNCTION``."""
    p = _Parser(prog=prog, description="Step-count benchmark on your own model: every sampler at several NFE "
                "against held-out data and a converged reference run of the model, each statistic next to "
                "its noise floor.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", help="a run folder written by 'sdediff train' (or a checkpoint folder)")
    which.add_argument("--model", metavar="MODULE:FUNCTION",
                       help="a function returning (score_fn, sde); MODULE is a dotted import path or a .py file")
    p.add_argument("--data", default=None, metavar="NAME|FILE",
                   help="held-out data: a toy set name, digits, or a .npy/.npz array (default with --ckpt: the "
                        "data set the run was trained on)")
    p.add_argument("--samplers", type=_name_list, default=None, metavar="A,B",
                   help=f"registered samplers at their defaults (default: {','.join(DEFAULT_SAMPLERS)})")
    p.add_argument("--nfes", type=_int_list, default=None, metavar="5,10,20,50",
                   help=f"NFE budgets (default: {','.join(map(str, NFES))}; --quick: {','.join(map(str, QUICK_NFES))})")
    p.add_argument("--n", type=_positive(int), default=None, help="examples per sample set (default: 1000; --quick: 200)")
    p.add_argument("--splits", type=_positive(int), default=None,
                   help="random splits behind each mean +- std (default: 5; --quick: 3)")
    p.add_argument("--ref-rtol", type=_positive(float), default=None,
                   help="the reference run's dopri5 rtol = atol (default: 1e-5; --quick: 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="example i of every run uses seed + i (default: 0)")
    p.add_argument("--which", default="ema", choices=("ema", "model"), help="checkpoint weights (default: ema)")
    p.add_argument("--float64", action="store_true", help="sample in float64 (default: float32)")
    p.add_argument("--threads", type=_positive(int), default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    p.add_argument("--quick", action="store_true", help="fewer NFE, 200 examples, a looser reference (a smoke run)")
    p.add_argument("--out", default=None, help="output folder (default: ./bench-results)")
    p.add_argument("--force", action="store_true", help="let a --quick run overwrite the results of a full run")
    return p


def _heldout(args, shape: tuple[int, ...] | None, count: int, trained_on: str | None, run_seed: int,
             dtype) -> tuple[torch.Tensor, str]:
    """The held-out examples (shaped like the model's, if known) and the data's name."""
    from ..runs import DATA_SETS, fit_data, load_data

    data = args.data or trained_on
    if data is None:
        raise ValueError("give --data (a toy set name, digits, or a .npy/.npz file)"
                         + (f": checkpoint {args.ckpt} has no run.json naming its data" if args.ckpt else ""))
    if data in DATA_SETS:
        x = load_data(data, "test", count, run_seed, dtype=torch.float64)  # fresh draws / the test split
    elif Path(data).suffix.lower() in (".npy", ".npz"):
        x = load_array(data)
    else:
        raise ValueError(f"--data {data!r}: give a data set name ({', '.join(DATA_SETS)}) or a .npy/.npz file")
    if shape is not None:
        x = fit_data(x, shape, data, str(args.ckpt), trained_on)
    return x.to(dtype), data


def main(argv: Sequence[str] | None = None, prog: str | None = None, results=None) -> None:
    """The command line: ``sdediff bench steps --ckpt RUN [...]`` (see the module docstring).

    ``results`` (the checkout's committed folder) is ignored: a run on one's own model writes to
    ``--out`` or ``./bench-results``, never into the package or the repository.
    """
    from ..runs import load_model, model_example_shape, parse_device, read_run_info, require_matplotlib
    from .own_model_report import write_report

    args = build_parser(prog).parse_args(argv)
    require_matplotlib("draw the benchmark plot")
    torch.set_num_threads(args.threads)
    quick = args.quick
    n = args.n or (200 if quick else 1000)
    dtype = torch.float64 if args.float64 else torch.float32
    out = output_dir(args.out, quick)
    guard_quick(out, NAME, quick, args.force)
    if args.ckpt:
        model = load_model(args.ckpt, args.which, parse_device("cpu"), dtype=dtype)
        info = read_run_info(args.ckpt)
        score_fn, sde, shape = model, model.sde, model_example_shape(model)
        heldout, data = _heldout(args, shape, 2 * n, info.get("data"), int(info.get("seed", 0)), dtype)
        what = f"checkpoint {args.ckpt}"
    else:
        score_fn, sde = load_model_function(args.model)
        heldout, data = _heldout(args, None, 2 * n, None, 0, dtype)
        what = f"--model {args.model}"
    probe(score_fn, sde, heldout[:2], f"the score of {what}")
    shape = tuple(heldout.shape[1:])
    samplers = args.samplers or [s for s in DEFAULT_SAMPLERS if s in available_samplers()
                                 and (isinstance(sde, LinearSDE) or not available_samplers()[s].linear_only)]
    bad = [s for s in samplers if available_samplers()[s].linear_only and not isinstance(sde, LinearSDE)]
    if bad:
        raise ValueError(f"sampler(s) {', '.join(bad)} need a LinearSDE, but the model's SDE is "
                         f"{type(sde).__name__}; choose others with --samplers")
    rank, _ = init_from_env()
    log = Progress() if rank == 0 else (lambda message: None)
    log(f"step-count benchmark on {what}, data {data!r}{' (quick)' if quick else ''}; "
        f"results will go to {out.resolve()}")
    results_ = run(score_fn, sde, heldout, samplers=samplers, nfes=args.nfes or (QUICK_NFES if quick else NFES),
                   n=n, splits=args.splits or (3 if quick else 5), seed=args.seed,
                   ref_rtol=args.ref_rtol or (1e-4 if quick else 1e-5),
                   image=len(shape) >= 3 or data == "digits", dtype=dtype, progress=args.progress, log=log,
                   meta={"quick": quick, "model": what, "data": data, "sde": type(sde).__name__})
    if results_ is None:  # not rank 0
        return
    names = write_report(results_, out, NAME)
    announce(out, names, log)
