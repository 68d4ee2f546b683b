"""Class-conditional runs on the command line, and the labelled data they train on.

``sdediff train --conditional`` trains a class-conditional net on the data set's labels and records
``num_classes``; ``sdediff sample --class K --guidance W`` samples class ``K`` with classifier-free
guidance. Commands run in-process through :func:`sdediff.cli.main` (a subprocess per command
would spend most of the time importing torch); bad input is one ``sdediff: error:`` line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff import cli
from sdediff.datasets import DIGITS_NUM_CLASSES, TOY_DATASETS, TOY_NUM_CLASSES, load_digits_tensors
from sdediff.runs import load_data, load_model

TINY = ["--steps", "12", "--batch-size", "64", "--n-train", "1000", "--hidden", "16", "--depth", "1",
        "--warmup", "2", "--no-progress"]


def _main(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, expected_code: int = 1) -> str:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdediff: error:") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ labelled data
@pytest.mark.parametrize("name", sorted(TOY_NUM_CLASSES))
def test_toy_labels_come_with_the_same_points(name):
    x, y = sd.toy_data(name, 3000, generator=7, return_labels=True)
    assert torch.equal(x, sd.toy_data(name, 3000, generator=7))  # labels do not change the draw
    assert y.dtype == torch.int64 and y.shape == (3000,)
    assert set(y.tolist()) == set(range(TOY_NUM_CLASSES[name]))


def test_ring_labels_are_its_modes():
    x, y = sd.toy_data("ring", 4000, generator=0, dtype=torch.float64, return_labels=True)
    means, stds, weights = sd.ring_params()
    oracle = sd.GaussianMixture(means, stds, weights, labels=torch.arange(8))
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.equal(nearest, y)  # modes 15 stds apart: the nearest mean is the label
    # the labelled oracle's exact classifier agrees
    assert torch.equal(oracle.classifier_fn(sd.VPSDE())(x, torch.full((4000,), 1e-3, dtype=torch.float64)).argmax(1), y)


def test_moons_and_circles_labels_are_geometric():
    x, y = sd.toy_data("circles", 2000, generator=1, return_labels=True)
    r = x.norm(dim=1)
    assert float(r[y == 0].mean()) == pytest.approx(3.0, abs=0.05)
    assert float(r[y == 1].mean()) == pytest.approx(1.5, abs=0.05)
    x, y = sd.toy_data("moons", 2000, generator=1, return_labels=True)
    assert float(x[y == 0, 1].mean()) > 0 > float(x[y == 1, 1].mean())  # upper moon, lower moon


def test_unlabelled_toy_set_is_a_clear_error():
    unlabelled = [n for n in TOY_DATASETS if n not in TOY_NUM_CLASSES]
    assert unlabelled == ["swiss_roll"]
    with pytest.raises(ValueError, match="'swiss_roll' has no classes"):
        sd.toy_data("swiss_roll", 10, return_labels=True)


def test_digits_training_labels_follow_the_repeated_images():
    x, y = load_data("digits", "train", 3000, seed=0, return_labels=True)
    levels, labels = load_digits_tensors("train", return_labels=True)
    assert x.shape == (3000, 1, 8, 8) and y.shape == (3000,)
    reps = -(-3000 // len(labels))
    assert torch.equal(y, labels.repeat(reps)[:3000])
    assert torch.equal(x, load_data("digits", "train", 3000, seed=0))  # the same images as without labels
    assert set(y.tolist()) == set(range(DIGITS_NUM_CLASSES))


# ------------------------------------------------------------------------------ train and sample
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny class-conditional ring run and a tiny unconditional one."""
    root = tmp_path_factory.mktemp("cond")
    cond, plain = root / "cond", root / "plain"
    assert cli.main(["train", "--data", "ring", "--conditional", "--p-uncond", "0.2", "--out", str(cond), *TINY]) == 0
    assert cli.main(["train", "--data", "ring", "--out", str(plain), *TINY]) == 0
    return {"cond": cond, "plain": plain}


def test_conditional_run_records_num_classes(runs):
    info = json.loads((runs["cond"] / "run.json").read_text())
    assert info["conditional"] is True and info["num_classes"] == 8 and info["p_uncond"] == 0.2
    model = load_model(runs["cond"], "ema", torch.device("cpu"))
    assert model.num_classes == 8
    plain = json.loads((runs["plain"] / "run.json").read_text())
    assert plain["num_classes"] is None and plain["p_uncond"] is None and plain["conditional"] is False


def test_sample_class_with_guidance_png_and_npy(runs, tmp_path, capsys):
    png = tmp_path / "grid.png"
    code, out, err = _main(capsys, "sample", "--ckpt", runs["cond"], "--class", 3, "--guidance", 2.0,
                           "--n", 100, "--steps", 5, "--out", png)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG" and "wrote 100 samples" in out
    assert "it/s" in err or "%" in err  # the sampling progress bar
    npy = {}
    for w in (0.0, 3.0):
        path = tmp_path / f"w{w}.npy"
        assert cli.main(["sample", "--ckpt", str(runs["cond"]), "--class", "3", "--guidance", str(w), "--n", "50",
                         "--steps", "5", "--out", str(path), "--no-progress"]) == 0
        npy[w] = np.load(path)
        assert npy[w].shape == (50, 2) and np.isfinite(npy[w]).all()
    assert not np.allclose(npy[0.0], npy[3.0])  # the guidance weight reaches the sampler


def test_guided_sample_is_classifier_free_guidance(runs, tmp_path):
    """The file holds what sd.classifier_free_guidance on the loaded model samples, seed for seed."""
    path = tmp_path / "x.npy"
    assert cli.main(["sample", "--ckpt", str(runs["cond"]), "--class", "5", "--guidance", "1.5", "--n", "20",
                     "--steps", "4", "--sampler", "ddim", "--seed", "3", "--out", str(path), "--no-progress"]) == 0
    model = load_model(runs["cond"], "ema", torch.device("cpu"))
    guided = sd.classifier_free_guidance(model, 5, 1.5)
    unguided = torch.from_numpy(np.load(path))
    again = sd.sample(guided, model.sde, (20, 2), sampler="ddim", steps=4, seeds=list(range(3, 23)), grid="uniform")
    torch.testing.assert_close(unguided, again.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, needle", [
    (["--class", "8"], "--class 8 is outside [0, 8)"),
    (["--guidance", "2"], "--guidance 2 needs --class"),
])
def test_sample_bad_class_is_one_line(runs, tmp_path, capsys, args, needle):
    code, _, err = _main(capsys, "sample", "--ckpt", runs["cond"], "--out", tmp_path / "x.npy", *args)
    assert needle in _one_line_error(code, err)
    assert not (tmp_path / "x.npy").exists()


def test_class_on_an_unconditional_checkpoint_is_one_line(runs, tmp_path, capsys):
    code, _, err = _main(capsys, "sample", "--ckpt", runs["plain"], "--class", "0", "--out", tmp_path / "x.npy")
    line = _one_line_error(code, err)
    assert "unconditional" in line and "--conditional" in line


@pytest.mark.parametrize("args, needle", [
    (["sample", "--ckpt", "x", "--out", "x.npy", "--class", "-1"], "--class"),
    (["sample", "--ckpt", "x", "--out", "x.npy", "--class", "3", "--guidance", "nan"], "--guidance"),
    (["train", "--data", "ring", "--steps", "1", "--out", "x", "--conditional", "--p-uncond", "1"], "--p-uncond"),
])
def test_bad_values_are_usage_errors(capsys, args, needle):
    code, _, err = _main(capsys, *args)
    assert needle in _one_line_error(code, err, expected_code=2)


def test_conditional_on_an_unlabelled_set_is_one_line(tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--data", "swiss_roll", "--conditional", "--out", tmp_path / "r", *TINY)
    assert "'swiss_roll' has no classes" in _one_line_error(code, err)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_class_and_guidance_from_a_config_file(runs, tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('[sample]\nclass = 2\nguidance = 1.0\nn = 10\nsteps = 3\nprogress = false\n')
    path = tmp_path / "x.npy"
    assert cli.main(["sample", "--config", str(config), "--ckpt", str(runs["cond"]), "--out", str(path)]) == 0
    assert np.load(path).shape == (10, 2)


def test_digits_conditional_train_and_sample_grid(tmp_path, capsys):
    run = tmp_path / "digits"
    code, out, err = _main(capsys, "train", "--data", "digits", "--conditional", "--out", run, "--steps", "3",
                           "--batch-size", "32", "--n-train", "64", "--hidden", "16", "--depth", "1", "--warmup", "1")
    assert code == 0, err
    assert "%" in err  # the training progress bar
    assert json.loads((run / "run.json").read_text())["num_classes"] == 10
    png = tmp_path / "grid.png"
    code, _, err = _main(capsys, "sample", "--ckpt", run, "--class", 7, "--guidance", 3, "--n", 20, "--steps", 3,
                         "--out", png, "--no-progress")
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
