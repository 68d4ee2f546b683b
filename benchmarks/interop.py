"""``python -m benchmarks.interop``: :mod:`sdediff.bench.interop` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.interop import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("interop")

if __name__ == "__main__":
    main()
