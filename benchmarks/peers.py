"""``python -m benchmarks.peers``: :mod:`sdediff.bench.peers` run from the checkout (see :mod:`benchmarks`)."""
from sdediff.bench.peers import *  # noqa: F401,F403 - the benchmark's functions

from . import checkout_main

main = checkout_main("peers")

if __name__ == "__main__":
    main()
