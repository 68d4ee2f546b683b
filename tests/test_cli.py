"""The ``sdediff`` command, run as a user runs it: ``python -m sdediff ...`` in a subprocess.

Every command runs once with tiny settings; every bad-input case must end with exit code != 0,
exactly one line on stderr starting ``sdediff: error:`` that names the problem, and no traceback.
Starting Python + torch costs seconds per process, so the bad-input commands run a few at a
time and are judged one by one.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff import cli

from sdediff.checkpoint import read_checkpoint_meta

TIMEOUT = 300  # seconds per command; a hang fails instead of blocking the suite


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdediff", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, env=_env())


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


# ------------------------------------------------------------------------------ a trained run
@pytest.fixture(scope="module")
def ring_run(tmp_path_factory) -> Path:
    """A tiny training run, configured through a TOML file whose ``steps`` the command line overrides."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "train.toml"
    config.write_text('data = "ring"\nsteps = 40\n\n[train]\nbatch-size = 64\nhidden = 16\ndepth = 1\n'
                      'n_train = 1000\nwarmup = 2\nprogress = false\n')
    out = root / "ring"
    _ok(run_cli("train", "--config", config, "--steps", "12", "--out", out))
    return out


def test_train_writes_checkpoint_and_config_is_overridden(ring_run):
    info = json.loads((ring_run / "run.json").read_text())
    assert info["steps"] == 12  # the command line beats the file's 40
    assert info["batch_size"] == 64 and info["hidden"] == 16  # the [train] table applied
    assert info["data"] == "ring"
    meta = read_checkpoint_meta(ring_run)
    assert meta["step"] == 12
    assert meta["architecture"]["net"]["config"]["hidden"] == 16


def test_samplers_lists_the_registry():
    out = _ok(run_cli("samplers")).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    registry = sd.available_samplers()
    assert set(rows) == set(registry)
    for name, info in registry.items():
        nfe = "adaptive" if info.nfe_per_step is None else f"{info.nfe_per_step:g}"
        assert rows[name][1:3] == [nfe, f"{info.order:g}"], name


def test_sample_npy_and_png(ring_run, tmp_path):
    npy = tmp_path / "x.npy"
    out = _ok(run_cli("sample", "--ckpt", ring_run, "--sampler", "ddim", "--steps", "4", "--n", "64",
                      "--out", npy, "--seed", "3", "--no-progress")).stdout
    x = np.load(npy)
    assert x.shape == (64, 2) and np.isfinite(x).all()
    assert "NFE" in out and "sliced W2" in out
    png = tmp_path / "x.png"
    _ok(run_cli("sample", "--ckpt", ring_run / "checkpoints", "--sampler", "pc", "--steps", "3", "--n", "100",
                "--out", png, "--no-progress"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_likelihood(ring_run, tmp_path):
    report = tmp_path / "nll.json"
    out = _ok(run_cli("likelihood", "--ckpt", ring_run, "--data", "ring", "--n", "8", "--json", report,
                      "--rtol", "1e-4", "--atol", "1e-4", "--no-progress")).stdout
    res = json.loads(report.read_text())
    assert res["n"] == 8 and math.isfinite(res["nll"]) and res["nfe"] > 0
    # the paired gap is NLL_model - NLL_true on the same points: pure bookkeeping, to round-off
    assert abs(res["gap"] - (res["nll"] - res["true_nll"])) < 1e-9
    assert "nats" in out and "entropy" in out


def test_demo_quick(tmp_path):
    out_dir = tmp_path / "demo"
    out = _ok(run_cli("demo", "--quick", "--out", out_dir, "--no-progress")).stdout
    for name in ("samples.png", "nfe_curve.png", "report.md", "report.json", "run.json"):
        assert (out_dir / name).is_file(), name
        if name.endswith((".png", ".md")):
            assert str(out_dir / name) in out  # it prints where everything is
    assert (out_dir / "checkpoints" / "latest.json").is_file()
    report = json.loads((out_dir / "report.json").read_text())
    assert len({r["sampler"] for r in report["samplers"]}) >= 3
    assert len({r["nfe"] for r in report["samplers"]}) >= 2
    assert math.isfinite(report["likelihood"]["nll"]) and math.isfinite(report["likelihood"]["entropy"])
    md = (out_dir / "report.md").read_text()
    assert "| sampler |" in md
    # the noise floor comes with its spread over independent exact draws
    assert report["noise_floor_draws"] >= 5 and report["noise_floor_sw2_std"] > 0
    assert f"{report['noise_floor_sw2']:.4f} +- {report['noise_floor_sw2_std']:.4f}" in md
    assert "better than" not in md and "better than" not in out
    # the demo's checkpoint is a regular run: the sample command takes it
    _ok(run_cli("sample", "--ckpt", out_dir, "--steps", "2", "--n", "10", "--out", tmp_path / "d.npy",
                "--no-progress"))


def test_bench_dispatches_to_the_benchmark():
    out = _ok(run_cli("bench", "steps", "--help")).stdout
    assert "--quick" in out and "--samplers" in out  # the help of sdediff.bench.steps itself
    assert "sdediff bench steps" in out


@pytest.mark.slow
def test_bench_steps_quick_tiny(tmp_path):
    _ok(run_cli("bench", "steps", "--quick", "--out", tmp_path, "--samplers", "ddim", "dpm_solver",
                "--no-overhead", "--n-ring", "200", "--n-mix", "100"))
    assert (tmp_path / "steps.md").is_file() and (tmp_path / "steps.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["likelihood", "training"])
def test_bench_quick(name, tmp_path):
    _ok(run_cli("bench", name, "--quick", "--out", tmp_path))
    assert (tmp_path / f"{name}.md").is_file()


@pytest.mark.slow
def test_demo_full_run(tmp_path):
    """The real demo: under 3 minutes on 2 cores, and a model close to the truth."""
    start = time.perf_counter()
    _ok(run_cli("demo", "--out", tmp_path / "demo", "--no-progress"))
    wall = time.perf_counter() - start
    assert wall < 180, f"the demo took {wall:.0f} s"
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    lk = report["likelihood"]
    # benchmarks/training.py measured a paired gap of 0.08 +- 0.01 nats after 60 s of the same training;
    # 0.25 nats leaves room for load on the machine but not for a broken model (untrained: several nats)
    assert lk["gap"] < 0.25, lk
    best = min(r["sw2_model"] for r in report["samplers"])
    # a trained model's best sampler must come within 3x the noise floor of exact samples
    assert best < 3 * report["noise_floor_sw2"], (best, report["noise_floor_sw2"])


# ------------------------------------------------------------------------------ bad input
def _bad_cases(run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a fragment the one-line error must contain)."""
    bad_key, bad_toml = tmp / "bad_key.toml", tmp / "bad.toml"  # written by the fixture
    return {
        "missing checkpoint": (["sample", "--ckpt", tmp / "nope", "--out", tmp / "x.npy"], "does not exist"),
        "unknown data set": (["train", "--data", "nope", "--steps", "3", "--out", tmp / "t"],
                             "unknown data set 'nope'"),
        "unknown sampler": (["sample", "--ckpt", run, "--sampler", "nope", "--out", tmp / "x.npy"],
                            "unknown sampler 'nope'"),
        "checkpoint does not fit the data": (["likelihood", "--ckpt", run, "--data", "digits", "--n", "4"],
                                             "does not fit"),
        "bad number: steps 0": (["train", "--data", "ring", "--steps", "0", "--out", tmp / "t"], "--steps"),
        "bad number: lr nan": (["train", "--data", "ring", "--steps", "3", "--lr", "nan", "--out", tmp / "t"],
                               "--lr"),
        "bad output suffix": (["sample", "--ckpt", run, "--out", tmp / "x.txt"], ".npy or .png"),
        "unknown benchmark": (["bench", "nope"], "unknown benchmark 'nope'"),
        "unknown config key": (["train", "--config", bad_key, "--out", tmp / "t"], "unknown key 'stepz'"),
        "invalid TOML": (["train", "--config", bad_toml, "--out", tmp / "t"], "not valid TOML"),
        "run exists, no --resume": (["train", "--data", "ring", "--steps", "3", "--out", run], "--resume"),
        "misspelled TOML table": (["train", "--config", tmp / "bad_table.toml", "--out", tmp / "t"],
                                  "unknown table [trian]"),
        "bad value in TOML": (["train", "--config", tmp / "bad_value.toml", "--out", tmp / "t"], "'steps'"),
        "likelihood on another data set": (["likelihood", "--ckpt", run, "--data", "moons", "--n", "4"],
                                           "trained on 'ring'"),
        "quadrature 1": (["likelihood", "--ckpt", run, "--data", "ring", "--quadrature", "1"], "--quadrature"),
        "bad grid": (["sample", "--ckpt", run, "--grid", "nope", "--out", tmp / "x.npy"], "unknown --grid 'nope'"),
        "cuda on a CPU-only build": (["sample", "--ckpt", run, "--device", "cuda", "--out", tmp / "x.npy"],
                                     "--device cuda"),
    }


@pytest.fixture(scope="module")
def bad_results(ring_run, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "bad_key.toml").write_text('data = "ring"\nstepz = 3\n')
    (tmp / "bad.toml").write_text('data = "ring\n')  # an unterminated string
    (tmp / "bad_table.toml").write_text('data = "ring"\nsteps = 3\n[trian]\nlr = 1e-3\n')
    (tmp / "bad_value.toml").write_text('data = "ring"\nsteps = 0\n')
    cases = _bad_cases(ring_run, tmp)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=4) as pool:  # a few at a time: each process loads torch
        futures = {name: pool.submit(run_cli, *args) for name, (args, _) in cases.items()}
        results = {name: (f.result(), cases[name][1]) for name, f in futures.items()}
    return results


BAD_CASE_NAMES = list(_bad_cases(Path("run"), Path("tmp")))


@pytest.mark.parametrize("case", BAD_CASE_NAMES)
def test_bad_input_is_one_line_error(bad_results, case):
    proc, fragment = bad_results[case]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sdediff: error: "), lines[0]
    assert fragment in lines[0], lines[0]


def test_usage_errors_exit_2_before_any_work(bad_results):
    """Bad values of an option are the parser's: exit code 2 (nothing was loaded or run)."""
    for case in ("quadrature 1", "bad grid", "bad number: steps 0", "unknown data set", "unknown sampler"):
        assert bad_results[case][0].returncode == 2, case
    if not torch.cuda.is_available():
        assert bad_results["cuda on a CPU-only build"][0].returncode == 2


def test_likelihood_on_another_data_set_with_other_data(ring_run, tmp_path):
    """--other-data evaluates anyway, with a warning naming both data sets; the JSON records both."""
    report = tmp_path / "nll.json"
    proc = _ok(run_cli("likelihood", "--ckpt", ring_run, "--data", "moons", "--other-data", "--n", "4",
                       "--rtol", "1e-3", "--atol", "1e-3", "--json", report, "--no-progress"))
    assert "trained on 'ring'" in proc.stdout + proc.stderr
    assert f"wrote {report}" in proc.stdout  # the output location is printed
    res = json.loads(report.read_text())
    assert res["data"] == "moons" and res["trained_on"] == "ring"


def test_likelihood_progress_moves_per_small_batch():
    """The default batch makes the progress bar advance several times for the default --n."""
    args = cli._parse(["likelihood", "--ckpt", "run", "--data", "ring"])
    assert args.n / args.batch_size >= 5


# ------------------------------------------------------------------------------ in-process checks
def _main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["demo", "sample"])
def test_missing_matplotlib_is_one_line_before_any_work(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    out = tmp_path / "out"
    argv = (["demo", "--quick", "--out", out] if command == "demo"
            else ["sample", "--ckpt", tmp_path / "no-such-run", "--out", out / "x.png"])
    code, _, err = _main(capsys, *argv)
    assert code == 1
    assert err.strip() == err.strip().splitlines()[0]  # one line
    assert "pip install matplotlib" in err and "does not exist" not in err  # before the checkpoint is read
    assert not out.exists()


def test_config_table_and_key_errors_list_the_allowed(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[trian]\nsteps = 3\n')
    code, _, err = _main(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    assert code == 1 and "[trian]" in err and "allowed tables: demo, train, sample" in err
    cfg.write_text('[train]\nstepz = 3\n')
    code, _, err = _main(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    assert code == 1 and "'stepz'" in err and "allowed:" in err and "batch-size" in err


def test_config_sets_required_options_and_switches(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "moons"\nsteps = 7\nprogress = false\nimportance-sampling = true\n'
                   '[sample]\nn = 5\n')
    args = cli._parse(["train", "--config", str(cfg), "--out", "r", "--steps", "9"])
    assert (args.data, args.steps, args.progress, args.importance_sampling) == ("moons", 9, False, True)
    args = cli._parse(["likelihood", "--config", str(cfg), "--ckpt", "r", "--progress"])
    assert args.data == "moons" and args.progress is True  # top-level keys of other commands are skipped


def test_demo_samples_png_keeps_its_tick_labels(tmp_path):
    """Every tick label of samples.png lies inside the figure (none clipped at the bottom)."""
    from sdediff import demo
    plt = demo._plt()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64) * 2
    show = {name: {"nfe": 10, "x": x} for name in ("a", "b", "c", "d")}
    rows = [{"sampler": name, "nfe": 10, "sw2_model": 0.1} for name in show]
    means = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    outside = []
    original = plt.Figure.savefig

    def check(fig, *args, **kwargs):  # after drawing, before the figure is closed
        result = original(fig, *args, **kwargs)
        fig.canvas.draw()  # lay the figure out at its own dpi, then measure
        renderer, box = fig.canvas.get_renderer(), fig.bbox
        for i, ax in enumerate(fig.axes):
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                ext = axis.get_tightbbox(renderer)  # the drawn tick labels; 3 px: less than a glyph's descent
                if ext is not None and (ext.y0 < box.y0 - 3 or ext.x0 < box.x0 - 3 or ext.x1 > box.x1 + 3):
                    outside.append(f"panel {i}, {name} axis")
        return result

    plt.Figure.savefig = check
    try:
        demo._plot_samples(x, show, rows, means, tmp_path / "samples.png")
    finally:
        plt.Figure.savefig = original
    assert not outside, outside


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("sample", "--ckpt", tmp_path / "nope", "--out", tmp_path / "x.npy", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_likelihood_by_quadrature(ring_run, tmp_path):
    report = tmp_path / "nll.json"
    _ok(run_cli("likelihood", "--ckpt", ring_run, "--data", "ring", "--n", "8", "--json", report,
                "--trace", "rademacher", "--probes", "2", "--quadrature", "16", "--rtol", "1e-3",
                "--atol", "1e-3", "--no-progress"))
    res = json.loads(report.read_text())
    assert res["n"] == 8 and math.isfinite(res["nll"]) and res["nfe"] > 16
    bad = run_cli("likelihood", "--ckpt", ring_run, "--data", "ring", "--n", "8", "--quadrature", "1")
    # a node count below 2 is a usage error caught by the parser, before any work
    assert bad.returncode == 2 and "--quadrature" in bad.stderr and "Traceback" not in bad.stderr
    _ok(run_cli("likelihood", "--ckpt", ring_run, "--data", "ring", "--n", "8", "--json", report,
                "--quadrature", "steps", "--rtol", "1e-3", "--atol", "1e-3", "--no-progress"))
    assert math.isfinite(json.loads(report.read_text())["nll"])
    bad = run_cli("likelihood", "--ckpt", ring_run, "--data", "ring", "--n", "8", "--quadrature", "step")
    assert bad.returncode == 2 and "quadrature" in bad.stderr
