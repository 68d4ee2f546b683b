"""``python -m benchmarks.guidance``: :mod:`sdediff.bench.guidance` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.guidance import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("guidance")

if __name__ == "__main__":
    main()
