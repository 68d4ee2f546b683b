"""``python -m benchmarks.likelihood``: :mod:`sdediff.bench.likelihood` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.likelihood import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("likelihood")

if __name__ == "__main__":
    main()
