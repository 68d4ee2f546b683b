"""``python -m benchmarks.training``: :mod:`sdediff.bench.training` run from the checkout.

A full run writes to this checkout's ``benchmarks/results/`` (the committed results) unless
``--out`` says otherwise; a ``--quick`` run writes to ``./bench-results`` and never over
a full run's results.
"""
from pathlib import Path

from sdediff.bench import run_benchmark
from sdediff.bench.training import *  # noqa: F401,F403 - the benchmark's functions, as before the move

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    run_benchmark("training", argv, prog="python -m benchmarks.training", results=RESULTS)


if __name__ == "__main__":
    main()
