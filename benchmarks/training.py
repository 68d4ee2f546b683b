"""``python -m benchmarks.training``: :mod:`sdediff.bench.training` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.training import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("training")

if __name__ == "__main__":
    main()
