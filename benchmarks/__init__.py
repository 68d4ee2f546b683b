"""The benchmarks run from the checkout: ``python -m benchmarks.NAME`` is ``sdediff bench NAME``.

A full run writes to this checkout's ``benchmarks/results/`` (the committed results) unless
``--out`` says otherwise; a ``--quick`` run writes to ``./bench-results`` and never over a full
run's results. Each module re-exports its benchmark's functions from :mod:`sdediff.bench`.
"""
from pathlib import Path
from typing import Callable

from sdediff.bench import run_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def checkout_main(name: str) -> Callable[..., None]:
    """The ``main(argv=None)`` of ``python -m benchmarks.<name>``."""
    def main(argv=None) -> None:
        run_benchmark(name, argv, prog=f"python -m benchmarks.{name}", results=RESULTS)

    main.__doc__ = f"``python -m benchmarks.{name}``: ``sdediff bench {name}``, full runs into {RESULTS.name}/."
    return main
