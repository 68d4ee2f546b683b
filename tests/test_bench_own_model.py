"""``sdediff bench steps --ckpt RUN`` / ``--model MODULE:FUNCTION``: the step-count benchmark on the
user's own model, against held-out data and a converged reference run, written only to --out; bad
input ends in one line and a non-zero exit code."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import sdediff
from sdediff import cli

from test_bench_cli import REPO, _snapshot

SMALL = ["--quick", "--n", "60", "--nfes", "4,8", "--samplers", "dpm_solver,euler", "--splits", "2",
         "--no-progress"]
MODEL_FILE = '''
import sdediff as sd


def ring_model():
    """The exact score of the ring of 8 Gaussians: a model 'trained elsewhere'."""
    sde = sd.VPSDE()
    return sd.GaussianMixture(*sd.ring_params()).score_fn(sde), sde


def not_a_model():
    return 42


def wrong_sde():
    return (lambda x, t: x), "vp"
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own") / "run"
    torch.set_num_threads(1)
    assert cli.main(["train", "--data", "ring", "--steps", "30", "--out", str(folder), "--hidden", "32",
                     "--depth", "1", "--batch-size", "128", "--no-progress"]) == 0
    return folder


@pytest.fixture()
def model_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "mods" / "own_bench_helper.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(MODEL_FILE))
    monkeypatch.syspath_prepend(str(path.parent))
    return path


def test_ckpt_quick_writes_json_md_png_to_out_only(run, tmp_path, monkeypatch, capsys):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    watched = (Path(sdediff.__file__).parent, REPO / "benchmarks", REPO / "tests")
    before, run_before = _snapshot(*watched), _snapshot(run)
    assert cli.main(["bench", "steps", "--ckpt", str(run), "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"own_model.json", "own_model.md", "own_model.png"}
    assert (out / "own_model.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out.resolve()) in stdout and "reference run" in stdout
    assert not any(cwd.iterdir())
    assert _snapshot(*watched) == before and _snapshot(run) == run_before  # nothing else written
    res = json.loads((out / "own_model.json").read_text())
    cfg = res["config"]
    assert cfg["quick"] is True and cfg["data"] == "ring"  # the data the run was trained on
    assert set(cfg["samplers"]) == {"dpm_solver", "unipc", "heun", "ddim", "euler"}  # deterministic defaults
    assert cfg["metrics"] == ["sw2", "mmd"]
    for target in ("heldout", "reference"):
        for m in cfg["metrics"]:
            mean, std = res["floor"][target][m]
            assert std >= 0 and np.isfinite(mean)
    runs = [r for r in res["runs"] if "error" not in r]
    assert {r["sampler"] for r in runs} == set(cfg["samplers"])
    assert all(r["nfe"] <= r["budget"] for r in runs)  # the final denoising step counted in the budget
    # Deterministic samplers converge to the reference from the same prior draws.
    dpm = sorted((r["nfe"], r["paired_rmse"]) for r in runs if r["sampler"] == "dpm_solver")
    assert dpm[-1][1] < dpm[0][1]
    md = (out / "own_model.md").read_text()
    assert "noise floor" in md and "| dpm_solver |" in md


def test_model_function_by_dotted_module_and_by_file(model_file, tmp_path):
    data = sdediff.toy_data("ring", 300, generator=1).numpy()
    np.save(tmp_path / "ring.npy", data)
    for spec in ("own_bench_helper:ring_model", f"{model_file}:ring_model"):
        out = tmp_path / spec.split("/")[-1].replace(":", "_")
        assert cli.main(["bench", "steps", "--model", spec, "--data", str(tmp_path / "ring.npy"),
                         "--out", str(out), *SMALL]) == 0
        res = json.loads((out / "own_model.json").read_text())
        assert res["config"]["n"] == 60 and {r["sampler"] for r in res["runs"]} == {"dpm_solver", "euler"}
    # the exact score: the converged reference is as close to held-out data as the noise floor allows
    floor = res["floor"]["heldout"]["sw2"]
    assert res["reference"]["vs_heldout"]["sw2"][0] < floor[0] + 3 * floor[1] + 0.05


def _bad_cases(run: Path, model_file: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    np.save(tmp / "three.npy", np.zeros((50, 3)))
    np.save(tmp / "flat.npy", np.zeros(50))
    return {
        "missing checkpoint": (["--ckpt", str(tmp / "nope")], "does not exist"),
        "module does not import": (["--model", "no_such_module_xyz:fn", "--data", "ring"], "cannot import"),
        "no such function": (["--model", "own_bench_helper:nope", "--data", "ring"], "no function 'nope'"),
        "returns the wrong thing": (["--model", "own_bench_helper:not_a_model", "--data", "ring"],
                                    "must return (score_fn, sde)"),
        "not an SDE": (["--model", f"{model_file}:wrong_sde", "--data", "ring"], "sdediff SDE"),
        "no such model file": (["--model", f"{tmp}/none.py:fn", "--data", "ring"], "no file"),
        "not module:function": (["--model", "own_bench_helper", "--data", "ring"], "MODULE:FUNCTION"),
        "ckpt data of the wrong shape": (["--ckpt", str(run), "--data", str(tmp / "three.npy")], "does not fit"),
        "model data of the wrong shape": (["--model", "own_bench_helper:ring_model", "--data",
                                           str(tmp / "three.npy")], "examples of shape (3,)"),
        "not an array of examples": (["--ckpt", str(run), "--data", str(tmp / "flat.npy")], "(N, ...)"),
        "missing data file": (["--ckpt", str(run), "--data", str(tmp / "none.npy")], "no such file"),
        "unknown data set": (["--ckpt", str(run), "--data", "nope"], "data set name"),
        "model without data": (["--model", "own_bench_helper:ring_model"], "give --data"),
    }


def test_bad_input_is_one_line_and_a_nonzero_exit(run, model_file, tmp_path, capsys):
    for name, (args, match) in _bad_cases(run, model_file, tmp_path).items():
        code = cli.main(["bench", "steps", *args, "--out", str(tmp_path / "out"), *SMALL])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, name
        assert len(err) == 1 and err[0].startswith("sdediff: error: ") and match in err[0], (name, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, match", [
    (["--ckpt", "x", "--samplers", "nope"], "unknown sampler nope"),
    (["--ckpt", "x", "--nfes", "0,5"], "positive integers"),
    (["--quick"], "one of the arguments --ckpt --model is required"),
])
def test_usage_errors_are_one_line_and_exit_2(args, match, capsys):
    from sdediff.bench import own_model
    with pytest.raises(SystemExit) as exit_:
        own_model.main(args, prog="sdediff bench steps")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and match in err[0], err
