"""``python -m benchmarks.steps``: :mod:`sdediff.bench.steps` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.steps import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("steps")

if __name__ == "__main__":
    main()
