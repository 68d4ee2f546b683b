"""Bits/dim of uint8 images under a diffusers model."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff import cli
from sdediff.image_likelihood import digits_as_uint8, image_bits_per_dim, load_images, model_image_shape

pytest.importorskip("diffusers")
F64 = torch.float64
FAST = dict(rtol=1e-3, atol=1e-3)  # a random network's flow is rough in time: loose tolerances keep tests short


# ------------------------------------------------------------------------------ a model folder
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random 1x8x8 UNet2DModel with a DDPM scheduler, saved like save_pretrained does.

    Its time embedding is made constant (zero weights): a random network's output oscillates with
    the timestep (sinusoids of period ~6 steps), so its flow takes ~10x the steps of a trained one.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8,
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    with torch.no_grad():
        unet.time_embedding.linear_1.weight.zero_()
    unet.save_pretrained(path)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.save(path / "nhwc.npy", images)
    np.savez(path / "nchw.npz", images=images.transpose(0, 3, 1, 2).astype(np.int64))
    return path


def _main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_layouts_and_digits_load_as_the_same_levels(folder):
    shape = (1, 8, 8)
    a, b = load_images(str(folder / "nhwc.npy"), shape), load_images(str(folder / "nchw.npz"), shape)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    digits = digits_as_uint8((3, 16, 16), n=5)  # levels 0..16 -> round(255 l / 16), 2x2 blocks, 3 channels
    assert digits.shape == (5, 3, 16, 16) and digits.min() == 0 and digits.max() == 255
    assert torch.equal(digits[:, 0, ::2, ::2], digits[:, 2, 1::2, 1::2])
    levels = sd.load_digits_tensors("test")[:5, 0]
    assert torch.equal(digits[:, 0, ::2, ::2], torch.round(levels.double() * 255 / 16).long())


def test_cli_bits_per_dim_with_the_error_split(folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = _main(capsys, "likelihood", "--diffusers", folder, "--data", folder / "nhwc.npy",
                              "--trace", "gaussian", "--probes", "2", "--batch-size", "2", "--rtol", "1e-3",
                              "--atol", "1e-3", "--out", out, "--no-progress")
    assert code == 0, err
    assert "bits/dim of 3 images" in stdout and "solver check" in stdout
    r = json.loads(out.read_text())
    assert r["n"] == 3 and r["dim"] == 64 and r["clock"] == "log_snr" and r["world_size"] == 1
    for key in ("bpd", "bpd_se_data", "probe_std", "bpd_se_probes"):
        assert np.isfinite(r[key]) and (key == "bpd" or r[key] > 0), key
    assert r["tolerance_check"]["images"] == 3 and r["tolerance_check"]["mean_abs_change_bpd"] >= 0
    # the digits, mapped to uint8 (1x8x8: no upscaling); one probe: no spread to measure
    code, stdout, err = _main(capsys, "likelihood", "--diffusers", folder, "--data", "digits", "--n", "2",
                              "--trace", "rademacher", "--rtol", "1e-3", "--atol", "1e-3", "--json", out,
                              "--no-progress")
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["probe_std"] is None and r["trace"] == "rademacher" and r["n"] == 2


def test_cli_default_path_is_the_image_path(folder, tmp_path, capsys):
    """Without --trace, images get the variance-reduced Hutchinson path (the exact trace costs d
    backward passes per evaluation); --probes still sets its count."""
    from sdediff.image_likelihood import IMAGE_PATH
    out = tmp_path / "r.json"
    code, stdout, err = _main(capsys, "likelihood", "--diffusers", folder, "--data", folder / "nhwc.npy",
                              "--rtol", "1e-3", "--atol", "1e-3", "--out", out, "--no-progress")
    assert code == 0, err
    r = json.loads(out.read_text())
    assert (r["trace"], r["probes"], r["quadrature"]) == (IMAGE_PATH["trace"], IMAGE_PATH["probes"],
                                                           IMAGE_PATH["quadrature"])
    assert f"{IMAGE_PATH['probes']} probe(s)" in stdout and r["probe_std"] > 0
    code, _, err = _main(capsys, "likelihood", "--diffusers", folder, "--data", folder / "nhwc.npy", "--probes", "2",
                         "--rtol", "1e-3", "--atol", "1e-3", "--out", out, "--no-progress")
    assert code == 0 and json.loads(out.read_text())["probes"] == 2, err


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.save(p, np.full((2, 8, 8, 1), 0.5)), "integers in [0, 255]"),
    (lambda p: np.save(p, np.full((2, 8, 8, 1), 300)), "must lie in [0, 255]"),
    (lambda p: np.save(p, np.zeros((2, 3, 8, 8), dtype=np.uint8)), "do not fit the model"),
    (lambda p: np.savez(p, a=np.zeros(2), b=np.zeros(2)), "several arrays"),
])
def test_bad_data_is_one_line(folder, tmp_path, capsys, make, fragment):
    path = tmp_path / ("bad.npz" if "several" in fragment else "bad.npy")
    make(path)
    code, _, err = _main(capsys, "likelihood", "--diffusers", folder, "--data", path, "--no-progress")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sdediff: error: ") and fragment in lines[0], err


def test_not_a_diffusers_folder_and_missing_model_are_one_line(tmp_path, capsys):
    code, _, err = _main(capsys, "likelihood", "--diffusers", tmp_path, "--data", "digits")
    assert code == 1 and "holds no diffusers model" in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(capsys, "likelihood", "--data", "digits")
    assert code == 1 and "--ckpt RUN" in err and "--diffusers FOLDER" in err


# ------------------------------------------------------------------------------ two processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluation(folder) -> dict:
    model = sd.from_diffusers(str(folder))
    levels = load_images(str(folder / "nhwc.npy"), model_image_shape(model))
    return image_bits_per_dim(model, levels, trace="gaussian", probes=2, batch_size=1, check_images=1, **FAST)


def _dist_worker(rank: int, world: int, port: int, folder: str, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_evaluation(Path(folder)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_give_the_numbers_of_one(folder, tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "res")
    mp.spawn(_dist_worker, args=(2, _free_port(), str(folder), out), nprocs=2, join=True)
    one = _evaluation(folder)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        for key in ("bpd", "bpd_se_data", "probe_std", "bpd_se_probes", "nfe"):
            assert got[key] == pytest.approx(one[key], rel=1e-12, abs=1e-12), key
        assert got["tolerance_check"]["mean_abs_change_bpd"] == pytest.approx(
            one["tolerance_check"]["mean_abs_change_bpd"], rel=1e-9, abs=1e-12)
