"""The ``sdediff`` command: demo, train, sample, likelihood, bench, samplers.

Every subcommand has ``--help``. Options can also come from a TOML file (``--config FILE.toml``)
whose keys are the long flags without the dashes (``batch-size = 512`` or ``batch_size = 512``),
at the top level or in a table named after the subcommand (``[train]``); flags given on the
command line override the file. A key or table no command knows is an error that names it and
lists the allowed ones. Bad input ends with one line on stderr, ``sdediff: error: ...``, and exit
code 2 (usage, caught before any work) or 1 (everything else); ``--debug`` shows the traceback.

A training run's folder holds ``run.json`` (the data set and the flags) and ``checkpoints/``;
``sample`` and ``likelihood`` take that folder, its ``checkpoints/`` folder or one checkpoint
folder as ``--ckpt`` (see :mod:`sdediff.runs`).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ._checks import arg_type
from .bench import BENCHMARKS
from .checkpoint import WHICH
from .conditional_runs import add_options as add_conditional_options
from .likelihood import TRACE_ESTIMATORS
from .parameterization import PARAMETERIZATIONS
from .runs import DATA_SETS, NETS, SDES, parse_device, require_matplotlib
from .samplers import available_samplers

__all__ = ["main", "build_parser"]

NOT_IN_CONFIG = ("config", "debug")  # options a config file cannot set


# ----------------------------------------------------------------------------- argument types
class _UsageError(Exception):
    """A command-line usage error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``sdediff: error: ...``."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _choice(name: str, allowed: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    """An argparse ``type=`` accepting one of ``allowed()`` (looked up when parsing)."""
    def parse(text: str) -> str:
        if text not in allowed():
            raise argparse.ArgumentTypeError(f"unknown {name} {text!r}; choose from {', '.join(allowed())}")
        return text
    return parse


def _quadrature(text: str) -> int | str:
    """``--quadrature``: ``steps`` or a node count >= 2."""
    if text == "steps":
        return text
    return arg_type(int, lambda v: v >= 2, "'steps' or a node count >= 2")(text)


def _device(text: str) -> str:
    try:
        parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _sample_file(text: str) -> str:
    if Path(text).suffix.lower() not in (".npy", ".png"):
        raise argparse.ArgumentTypeError(f"--out must end in .npy or .png, got {text!r}")
    return text


_positive_int = arg_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = arg_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = arg_type(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
_unit_float = arg_type(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_ema_decay = arg_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


# ----------------------------------------------------------------------------- the option table
class _Options:
    """A subcommand's options as added, by destination: how a config file may set each one.

    ``kind`` is ``switch`` (``store_true``), ``bool`` (``--x/--no-x``) or ``value`` (parsed by
    ``type``). Required options are checked after parsing, so a config file can supply them.
    """

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.dest: dict[str, str] = {}  # config key (the long flag, underscored) -> destination
        self.kind: dict[str, str] = {}
        self.type: dict[str, Callable] = {}
        self.required: dict[str, str] = {}

    def add(self, flag: str, *aliases: str, required: bool = False, **kw) -> None:
        key = flag.lstrip("-").replace("-", "_")
        dest = self.dest[key] = kw.get("dest", key)
        action = kw.get("action")
        self.kind[dest] = ("switch" if action == "store_true" else
                           "bool" if action is argparse.BooleanOptionalAction else "value")
        self.type[dest] = kw.get("type", str)
        if required:
            self.required[dest] = flag
            kw["help"] = kw.get("help", "") + " (required)"
        self.parser.add_argument(flag, *aliases, **kw)


def _command(sub, options: dict[str, _Options], name: str, help: str, description: str) -> _Options:
    p = sub.add_parser(name, help=help, description=description)
    opts = options[name] = _Options(p)
    opts.add("--config", metavar="FILE.toml",
             help="read options from a TOML file (keys = long flags; the command line wins)")
    opts.add("--debug", action="store_true", help="show the full traceback on errors")
    opts.add("--threads", type=_positive_int, default=1,
             help="torch CPU threads (default: 1; these small models run fastest on one thread)")
    return opts


def _build() -> tuple[_Parser, dict[str, _Options]]:
    parser = _Parser(prog="sdediff", description="Score-based SDE/ODE diffusion: train, sample, evaluate.",
                     epilog="Start with 'sdediff demo'. Every command has --help.")
    parser.add_argument("--version", action="version", version=f"sdediff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    options: dict[str, _Options] = {}
    progress = dict(action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    device = dict(type=_device, default=None, help="torch device (default: cuda if available, else cpu)")
    which = dict(type=_choice("--which", lambda: WHICH), default="ema", metavar="|".join(WHICH),
                 help="which weights (default: ema)")
    data = dict(type=_choice("data set", lambda: DATA_SETS), metavar="NAME",
                help=f"data set: one of {', '.join(DATA_SETS)}")
    ckpt = dict(help="a run folder, its checkpoints/ folder or a checkpoint folder")

    o = _command(sub, options, "demo", "train on the 2-D ring, sample, evaluate, plot (< 3 min)",
                 "Train a small score model on the 2-D ring of 8 Gaussians (an exact mixture, so the truth is "
                 "known), sample it with several samplers at several NFE, measure the held-out NLL through the "
                 "probability-flow ODE next to the true entropy, and write samples.png, nfe_curve.png, "
                 "report.md and the checkpoint.")
    o.add("--out", default="runs/demo", help="output folder (default: runs/demo)")
    o.add("--seconds", type=_positive_float, default=90.0, help="training budget in wall-clock seconds (default: 90)")
    o.add("--quick", action="store_true", help="a few training steps and tiny sample sets (smoke test)")
    o.add("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    o.add("--progress", **progress)

    o = _command(sub, options, "train", "train a score model on a toy set or the digits",
                 "Train a score model by denoising score matching and write checkpoints to OUT/checkpoints "
                 "(EMA weights included) and OUT/run.json.")
    o.add("--data", required=True, **data)
    o.add("--sde", type=_choice("SDE", lambda: SDES), default="vp", metavar="|".join(SDES),
          help="forward SDE (default: vp)")
    o.add("--steps", type=_positive_int, help="optimizer steps (required unless --max-seconds is given)")
    o.add("--out", required=True, help="run folder (checkpoints, run.json, metrics.jsonl)")
    o.add("--net", type=_choice("--net", lambda: NETS), default="mlp", metavar="|".join(NETS),
          help="network: residual MLP (any data; digits are flattened) or U-Net (digits only)")
    o.add("--parameterization", type=_choice("--parameterization", lambda: PARAMETERIZATIONS), default="v",
          metavar="eps|x0|score|v", help="what the network predicts (default: v, robust at both ends of [0, T])")
    o.add("--lr", type=_positive_float, default=2e-3, help="peak learning rate (default: 2e-3)")
    o.add("--batch-size", type=_positive_int, default=512, help="batch size (default: 512)")
    o.add("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    o.add("--n-train", type=_positive_int, default=100_000,
          help="training examples (toy: fresh draws; digits: the 1,297 training images re-dequantized up to "
               "this many) (default: 100000)")
    o.add("--hidden", type=_positive_int, default=128, help="MLP width (default: 128)")
    o.add("--depth", type=_positive_int, default=3, help="MLP residual blocks (default: 3)")
    o.add("--base-channels", type=_positive_int, default=32, help="U-Net base channels (default: 32)")
    o.add("--weighting", type=_choice("--weighting", lambda: ("score", "likelihood", "none")), default="score",
          metavar="score|likelihood|none", help="DSM weighting (default: score = eps-matching)")
    o.add("--importance-sampling", action="store_true", help="draw t proportional to g^2/s^2 (with --weighting likelihood)")
    o.add("--warmup", type=_nonneg_int, default=100, help="learning-rate warm-up steps (default: 100)")
    o.add("--lr-schedule", type=_choice("--lr-schedule", lambda: ("constant", "cosine")), default="cosine",
          metavar="constant|cosine", help="after warm-up (default: cosine)")
    o.add("--ema-decay", type=_ema_decay, default=0.999, help="EMA decay (default: 0.999)")
    o.add("--sigma-max", type=_positive_float, default=None,
          help="VE only: the largest noise level (default: 10 for toy sets, 20 for digits)")
    o.add("--max-seconds", type=_positive_float, default=None, help="stop after this many seconds")
    o.add("--checkpoint-every", type=_positive_int, default=1000, help="steps between checkpoints")
    o.add("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    add_conditional_options(o, "train")  # --conditional, --p-uncond
    o.add("--device", **device)
    o.add("--progress", **progress)

    o = _command(sub, options, "sample", "draw samples from a checkpoint (.npy or .png)",
                 "Draw samples from a trained model with any registered sampler (see 'sdediff samplers') and "
                 "save them as .npy or a picture (.png).")
    o.add("--ckpt", required=True, **ckpt)
    o.add("--sampler", type=_choice("sampler", lambda: tuple(available_samplers())), default=None,
          metavar="NAME", help="a registered sampler, see 'sdediff samplers' (default: unipc; ode for a non-linear SDE)")
    o.add("--steps", type=_positive_int, default=None, help="sampler steps (default: the sampler's own, unipc: 20)")
    o.add("--n", "--count", type=_positive_int, default=1000, help="number of samples (default: 1000; --count under torchrun)")
    o.add("--out", type=_sample_file, required=True,
          help="output file, .npy (raw array) or .png (scatter / image grid)")
    o.add("--seed", type=_nonneg_int, default=0,
          help="sample i uses seed + i, so the output is the same under 'torchrun --nproc_per_node K' "
               "(ranks take shards of the seeds; rank 0 writes) (default: 0)")
    grids = ("uniform", "quadratic", "karras", "logsnr")
    o.add("--grid", type=_choice("--grid", lambda: grids), default=None, metavar="|".join(grids),
          help="time grid (default: the sampler's own, unipc: quadratic)")
    o.add("--eps", type=_unit_float, default=1e-3, help="final time (default: 1e-3)")
    o.add("--denoise", action=argparse.BooleanOptionalAction, default=None,
          help="finish with Tweedie's denoising step (+1 NFE; default: the sampler's own)")
    o.add("--which", **which)
    add_conditional_options(o, "sample")  # --class, --guidance
    o.add("--device", **device)
    o.add("--progress", **progress)

    o = _command(sub, options, "likelihood", "held-out NLL (nats) / bits per dim of a checkpoint",
                 "Held-out negative log-likelihood through the probability-flow ODE. Toy sets: fresh test draws "
                 "(seed + 10000), the ring with its true NLL; digits: the test split, dequantized, in bits per "
                 "dimension. --diffusers FOLDER: bits/dim of uint8 images (--data FILE.npy|FILE.npz|digits).")
    o.add("--ckpt", help=ckpt["help"] + " (or --diffusers)")
    o.add("--diffusers", metavar="FOLDER", help="a diffusers save_pretrained folder (model or pipeline layout)")
    o.add("--data", required=True, metavar="NAME|FILE", help=data["help"] + "; --diffusers: digits or a .npy/.npz")
    o.add("--other-data", action="store_true",
          help="evaluate on a data set other than the one the checkpoint was trained on")
    o.add("--trace", type=_choice("--trace", lambda: TRACE_ESTIMATORS), default=None, metavar="exact|gaussian|rademacher",
          help="divergence: exact or Hutchinson (default: exact; --diffusers: gaussian, 4 probes/node, steps)")
    o.add("--n", "--count", type=_positive_int, default=1000, help="test examples (default: 1000; digits: <= 300)")
    o.add("--probes", type=_positive_int, default=None,
          help="Hutchinson probes per example (per node with --quadrature; default: 1, or the --diffusers path's)")
    o.add("--quadrature", type=_quadrature, default=None, metavar="N|steps",
          help="solve the trajectory alone and integrate the divergence with N >= 2 Gauss-Legendre nodes in "
               "log-SNR, or 'steps': 3 nodes on every solver step (default: integrate with the ODE)")
    o.add("--rtol", type=_unit_float, default=1e-5, help="ODE relative tolerance (default: 1e-5)")
    o.add("--atol", type=_unit_float, default=1e-5, help="ODE absolute tolerance (default: 1e-5)")
    o.add("--eps", type=_unit_float, default=1e-5, help="start time of the flow (default: 1e-5)")
    o.add("--batch-size", type=_positive_int, default=200,
          help="examples per ODE solve; the progress bar advances once per batch (default: 200)")
    o.add("--seed", type=_nonneg_int, default=0, help="seed of the test draw and probes (default: 0)")
    o.add("--which", **which)
    o.add("--json", dest="json_path", default=None, metavar="FILE", help="also write the numbers to this JSON file")
    o.parser.add_argument("--out", dest="json_path", metavar="FILE.json", help="the same as --json")
    o.add("--device", **device)
    o.add("--progress", **progress)

    o = _command(sub, options, "bench", "run a benchmark (steps, likelihood, training, peers)",
                 "Run one of the benchmarks of sdediff.bench. Results (JSON, markdown, PNG) go to --out "
                 "(default: ./bench-results); the path is printed. Further arguments go to the benchmark "
                 "('sdediff bench steps --help'). 'sdediff bench steps --ckpt RUN' (or --model MODULE:FUNCTION "
                 "--data NAME_OR_FILE) runs the step-count benchmark on your own model instead of the oracle.")
    o.parser.add_argument("name", type=_choice("benchmark", lambda: BENCHMARKS), metavar="|".join(BENCHMARKS),
                          help="which benchmark")
    o.add("--quick", action="store_true", help="the benchmark's quick mode")
    o.add("--out", default=None, help="output folder (default: ./bench-results)")
    o.parser.add_argument("args", nargs=argparse.REMAINDER, help="more arguments for the benchmark")

    _command(sub, options, "samplers", "list the registered samplers with NFE/step and order",
             "List the sampler registry: NFE per step, order, stochastic or not.")
    return parser, options


def build_parser() -> argparse.ArgumentParser:
    """The ``sdediff`` argument parser with all subcommands."""
    return _build()[0]


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


def _config_values(path: str, command: str, options: dict[str, _Options]) -> dict[str, Any]:
    """The option values the TOML file sets for ``command``: checked, converted, by destination.

    Top-level keys apply to every command that has the option (a key no command has is an
    error); a table named after a command applies to it alone, and each of its keys must be one
    of that command's options. Any other table is an error.
    """
    data = _load_toml(path)
    keys = {name: sorted(k for k in opts.dest if k not in NOT_IN_CONFIG) for name, opts in options.items()}

    def dest_of(key: str) -> str:
        return str(key).replace("-", "_")

    def unknown(key: str, scope: str, allowed: list[str]) -> ValueError:
        return ValueError(f"unknown key {key!r} in {path}{scope}; allowed: "
                          f"{', '.join(k.replace('_', '-') for k in allowed)}")

    for key, value in data.items():
        if isinstance(value, dict):
            if key not in options:
                raise ValueError(f"unknown table [{key}] in {path}; allowed tables: {', '.join(options)}")
            bad = next((k for k in value if dest_of(k) not in keys[key]), None)
            if bad is not None:
                raise unknown(bad, f" table [{key}] (options of 'sdediff {key}')", keys[key])
        elif not any(dest_of(key) in k for k in keys.values()):
            raise unknown(key, f" for 'sdediff {command}'", keys[command])
    opts, values = options[command], {}
    entries = {opts.dest[dest_of(k)]: (k, v) for k, v in data.items()
               if not isinstance(v, dict) and dest_of(k) in keys[command]}
    entries.update({opts.dest[dest_of(k)]: (k, v) for k, v in data.get(command, {}).items()})
    for dest, (key, value) in entries.items():
        if opts.kind[dest] != "value":
            if not isinstance(value, bool):
                raise ValueError(f"key {key!r} in {path} is a switch: give true or false, not {value!r}")
            values[dest] = value
            continue
        if isinstance(value, (bool, dict, list)):
            raise ValueError(f"key {key!r} in {path} takes a single value, not {value!r}")
        try:
            values[dest] = opts.type[dest](str(value))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"key {key!r} in {path}: {err}") from None
    return values


def _find_option(argv: Sequence[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, options = _build()
    command = next((t for t in argv if not t.startswith("-")), None)
    config = _find_option(argv, "--config")
    if command is not None and command not in options:
        parser.error(f"unknown command {command!r}; choose from {', '.join(options)}")
    if config is not None and command is not None:
        options[command].parser.set_defaults(**_config_values(config, command, options))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(0)
    opts = options[args.command]
    missing = [flag for dest, flag in opts.required.items() if getattr(args, dest) is None]
    if missing:
        opts.parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


# ------------------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    require_matplotlib("draw the demo's pictures")
    run_demo(out=args.out, seconds=args.seconds, quick=args.quick, seed=args.seed, progress=args.progress)
    return 0


def _kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options as keywords of its function in :mod:`sdediff.runs`."""
    return {k: v for k, v in vars(args).items() if k not in ("config", "debug", "command", "threads")}


def _run_function(name: str) -> Callable[[argparse.Namespace], int]:
    """A command that calls ``sdediff.runs.<name>`` with the command's options as keywords."""
    def command(args: argparse.Namespace) -> int:
        from . import runs
        getattr(runs, name)(**_kwargs(args))
        return 0
    return command


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark
    forwarded = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []) + list(args.args)
    run_benchmark(args.name, forwarded, prog=f"sdediff bench {args.name}")
    return 0


def cmd_samplers(args: argparse.Namespace) -> int:
    rows = [("name", "NFE/step", "order", "kind", "SDEs", "description")]
    for name, info in available_samplers().items():
        nfe = "adaptive" if info.nfe_per_step is None else f"{info.nfe_per_step:g}"
        rows.append((name, nfe, f"{info.order:g}", "stochastic" if info.stochastic else "deterministic",
                     "linear" if info.linear_only else "any", info.description.replace("``", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    return 0


RUNNERS = {"demo": cmd_demo, "train": _run_function("train"), "sample": _run_function("sample_to_file"),
           "likelihood": _run_function("likelihood"), "bench": cmd_bench, "samplers": cmd_samplers}


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
        return RUNNERS[args.command](args)
    except _UsageError as err:
        if debug:
            raise
        print(f"sdediff: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdediff: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except (ValueError, TypeError, ImportError, FloatingPointError, OSError) as err:
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
