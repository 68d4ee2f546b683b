"""The benchmarks, run against the exact oracle: ``sdediff bench NAME`` or :func:`run_benchmark`.

* ``steps``: every registered sampler at NFE 5 to 1000 on a 2-D ring and a 64-D mixture;
  with ``--ckpt RUN`` or ``--model MODULE:FUNCTION``, on your own model instead, against
  held-out data and a converged reference run (:mod:`sdediff.bench.own_model`).
* ``likelihood``: the likelihood's error against the exact answer vs wall time and NFE.
* ``training``: training throughput and the ring model's held-out NLL (``--digits``: bits/dim
  of the digits against a tuned scikit-learn mixture).
* ``peers``: sdediff's samplers against diffusers' (the ``peers`` extra).
* ``guidance``: classifier and classifier-free guidance against the exact conditional and the
  tilted law, and inpainting against the exact posterior, on the labelled ring.
* ``interop``: a diffusers ``UNet2DModel``: the likelihood's variance-reduced paths, and the
  per-step overhead of sdediff's samplers against diffusers' schedulers (the ``diffusers`` extra).

Each writes ``NAME.json``, ``NAME.md`` and ``NAME.png`` to ``--out`` (default
``./bench-results``), prints a line per stage while it runs and the output paths at the end.
A ``--quick`` run refuses to overwrite the results of a full run.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

__all__ = ["BENCHMARKS", "run_benchmark"]

BENCHMARKS: tuple[str, ...] = ("steps", "likelihood", "training", "peers", "guidance", "interop")


def run_benchmark(name: str, argv: Sequence[str] | None = None, prog: str | None = None,
                  results: str | os.PathLike | None = None) -> None:
    """Run benchmark ``name`` with its command-line arguments ``argv``.

    Args:
        name: one of :data:`BENCHMARKS`.
        argv: the benchmark's own arguments (``--quick``, ``--out DIR``, ...).
        prog: the program name its ``--help`` shows.
        results: where a full run writes when no ``--out`` is given (default ``./bench-results``).

    Raises:
        ValueError: an unknown benchmark.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if name == "steps" and _own_model(sys.argv[1:] if argv is None else argv):
        name = "own_model"  # the same benchmark on the user's model: no oracle
    module = importlib.import_module(f"{__name__}.{name}")
    module.main(None if argv is None else list(argv), prog=prog, results=results)


def _own_model(argv: Sequence[str]) -> bool:
    """Whether the arguments name the user's own model (``--ckpt`` / ``--model``)."""
    return any(a in ("--ckpt", "--model") or a.startswith(("--ckpt=", "--model=")) for a in argv)
