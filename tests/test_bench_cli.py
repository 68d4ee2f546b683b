"""``sdediff bench``: results go to --out (default ./bench-results) and nowhere else; a quick run
never overwrites a full run's results; progress lines and the output path are printed."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import sdediff
from sdediff import cli
from sdediff.bench import BENCHMARKS
from sdediff.bench.report import guard_quick

REPO = Path(__file__).resolve().parents[1]
TINY = ["--samplers", "ddim", "--no-overhead", "--n-ring", "200", "--n-mix", "100"]


def _snapshot(*roots: Path) -> dict[str, float]:
    """Every file under ``roots`` with its modification time."""
    files = {}
    for root in roots:
        if root.is_dir():
            for dirpath, _, names in os.walk(root):
                if "__pycache__" in dirpath:
                    continue
                for name in names:
                    path = os.path.join(dirpath, name)
                    files[path] = os.stat(path).st_mtime_ns
    return files


def test_bench_steps_quick_writes_only_to_out(tmp_path, monkeypatch, capsys):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    watched = (Path(sdediff.__file__).parent, REPO / "benchmarks")
    before = _snapshot(*watched)
    assert cli.main(["bench", "steps", "--quick", "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"steps.json", "steps.md", "steps.png"}
    assert json.loads((out / "steps.json").read_text())["config"]["quick"] is True
    assert (out / "steps.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out.resolve()) in stdout  # where the results went
    assert "] ring2d" in stdout  # progress lines with the elapsed time, a line per stage
    assert not any(cwd.iterdir())
    assert _snapshot(*watched) == before  # nothing in the package or the repository changed


def test_bench_default_out_is_bench_results_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "steps", "--quick", *TINY]) == 0
    assert (tmp_path / "bench-results" / "steps.md").is_file()
    assert str(tmp_path / "bench-results") in capsys.readouterr().out


def test_quick_run_never_overwrites_full_results(tmp_path, capsys):
    full = {"config": {"quick": False}, "problems": {}}
    (tmp_path / "steps.json").write_text(json.dumps(full))
    assert cli.main(["bench", "steps", "--quick", "--out", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "full run" in err and "--out" in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "steps.json").read_text()) == full
    guard_quick(tmp_path, "steps", quick=True, force=True)  # --force lets it
    guard_quick(tmp_path, "steps", quick=False)  # a full run may replace a full run


@pytest.mark.parametrize("name", BENCHMARKS)
def test_committed_results_are_full_runs(name):
    """The guard protects the committed results: none of them is marked quick."""
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no committed {path.name}")
    with pytest.raises(ValueError, match="full run"):
        guard_quick(path.parent, name, quick=True)


def test_bench_help_names_every_benchmark(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert cli.main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_entry_point_reads_the_command_line(monkeypatch, capsys):
    """``python -m benchmarks.steps --help``: no argv given means sys.argv, never a default run."""
    from sdediff.bench import run_benchmark
    monkeypatch.setattr("sys.argv", ["python -m benchmarks.steps", "--help"])
    with pytest.raises(SystemExit) as exit_:
        run_benchmark("steps", None, prog="python -m benchmarks.steps")
    assert exit_.value.code == 0 and "--samplers" in capsys.readouterr().out
