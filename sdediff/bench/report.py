"""What every benchmark shares: the output folder, progress lines, JSON / markdown / PNG writing."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["DEFAULT_OUT", "output_dir", "guard_quick", "Progress", "write_json", "write_text", "pyplot",
           "save_figure", "announce", "add_output_args"]

#: Where results go unless ``--out`` says otherwise: relative to the working directory.
DEFAULT_OUT = "bench-results"


def add_output_args(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """``--quick``, ``--out`` and ``--force``: the options every benchmark takes."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=None, help=f"output folder (default: ./{DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true",
                        help="let a --quick run overwrite the results of a full run in --out")


def output_dir(out: str | os.PathLike | None, quick: bool, results: str | os.PathLike | None = None) -> Path:
    """The folder a run writes to: ``out``; else ``results`` for a full run (the checkout's
    committed folder, when run from it); else ``./bench-results``."""
    if out is not None:
        return Path(out)
    if results is not None and not quick:
        return Path(results)
    return Path.cwd() / DEFAULT_OUT


def _is_quick(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    for section in (data, data.get("config"), data.get("meta")):
        if isinstance(section, dict) and "quick" in section:
            return bool(section["quick"])
    return False


def guard_quick(out_dir: Path, name: str, quick: bool, force: bool = False) -> None:
    """Refuse to let a ``--quick`` run overwrite ``out_dir/name.json`` of a full run.

    Raises:
        ValueError: naming the file and what to do instead.
    """
    path = Path(out_dir) / f"{name}.json"
    if not quick or force or not path.is_file():
        return
    try:
        full = not _is_quick(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        full = True
    if full:
        raise ValueError(f"{path} holds the results of a full run; a --quick run does not overwrite them: "
                         f"give another --out (or --force)")


class Progress:
    """Progress lines with the elapsed time, flushed at once: ``[  12.3 s] message``."""

    def __init__(self, stream=None):
        self.start = time.perf_counter()
        self.stream = stream

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=self.stream or sys.stdout, flush=True)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def write_text(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (or one line saying what to install)."""
    try:
        import matplotlib
    except ImportError:
        raise ModuleNotFoundError("matplotlib is needed to draw the benchmark plots: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save and close a figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def announce(out_dir: Path, names: Iterable[str], log=print) -> None:
    """Say where the results were written."""
    log(f"wrote {', '.join(names)} to {Path(out_dir).resolve()}")


def rewrite_report(out_dir: Path, name: str, write_report) -> None:
    """``--report-only``: ``write_report(results, out_dir)`` from ``out_dir/<name>.json``, no run."""
    write_report(json.loads((Path(out_dir) / f"{name}.json").read_text()), out_dir)
    announce(out_dir, (f"{name}.json", f"{name}.md", f"{name}.png"))
