"""``python -m sdediff ...``: the same as the ``sdediff`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
