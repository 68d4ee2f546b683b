"""The guidance benchmark: a quick run writes its three files, and the facts it rests on hold."""
from __future__ import annotations

import json
import math

import pytest
import torch

import sdediff as sd
from sdediff import cli
from sdediff.bench import BENCHMARKS
from sdediff.bench import guidance as bench


def test_registered():
    assert "guidance" in BENCHMARKS


def test_quick_run_writes_json_md_png(tmp_path, capsys):
    assert cli.main(["bench", "guidance", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"guidance.json", "guidance.md", "guidance.png"}
    assert str(tmp_path.resolve()) in out and "] (a) classifier guidance" in out  # progress lines
    assert (tmp_path / "guidance.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((tmp_path / "guidance.json").read_text())
    assert res["config"]["quick"] is True
    a, b, c = res["classifier_guidance"], res["classifier_free_guidance"], res["inpainting"]
    # (a) the exact classifier at scale 1 is the exact conditional: at 20 NFE within 2x the noise floor
    best = min(r["sw2"] for r in a["runs"] if r["budget"] == 20)
    assert best < 2 * a["floor"]["sw2"]
    # (b) classifier guidance at scale 1 + w is classifier-free guidance at w (exact scores)
    assert b["cg_vs_cfg_max_rel"] < 1e-8
    # w = 0 samples the conditional, which is the tilted law; with w > 0 the guided law moves away from it
    conv = b["converged"]
    floor = b["tilted"]["0.0"]["floor"]["sw2_tilted"]
    assert conv["0.0"]["sw2_tilted"] < 1.5 * floor
    assert conv["16.0"]["sw2_tilted"] > 5 * b["tilted"]["16.0"]["floor"]["sw2_tilted"]
    assert b["tilted"]["16.0"]["law"]["spread_ratio"] > 0.9  # while the tilted law itself stays close to p0(x|y)
    # (c) every inpainting method ran at each budget, within it
    assert {r["method"] for r in c["runs"]} == set(sd.guidance.INPAINT_METHODS)
    assert all(r["nfe"] <= r["budget"] for r in c["runs"])
    assert abs(sum(c["posterior_weights"]) - 1) < 1e-6
    md = (tmp_path / "guidance.md").read_text()
    assert "## Headline" in md and "tilted law" in md


def test_quick_run_never_overwrites_a_full_run(tmp_path, capsys):
    (tmp_path / "guidance.json").write_text(json.dumps({"config": {"quick": False}}))
    assert cli.main(["bench", "guidance", "--quick", "--out", str(tmp_path)]) == 1
    assert "full run" in capsys.readouterr().err


def test_tilted_grid_is_the_tilted_law():
    """On the grid, w = 0 is p0(x | y); the masses sum to 1; the tilt moves mass only where classes compete."""
    gm = bench.labelled_ring()
    centres, mass, h = bench.tilted_grid(gm, 0, 0.0, cells=200)
    assert float(mass.sum()) == pytest.approx(1.0)
    exact = gm.class_conditional(0).log_prob(centres).exp() * h * h
    assert float((mass - exact).abs().sum()) < 1e-3  # a midpoint rule on cells 0.08 wide, std 0.5
    _, tilted, _ = bench.tilted_grid(gm, 0, 3.0, cells=200)
    # p0(y | x) < 1 only between class 0's modes and its neighbours': the mean stays near p0(x|y)'s
    mean0, mean3 = (centres * mass[:, None]).sum(0), (centres * tilted[:, None]).sum(0)
    assert float((mean3 - mean0).norm()) < 0.1


def test_histogram_tv_of_the_law_itself_is_small():
    gm = bench.labelled_ring()
    centres, mass, h = bench.tilted_grid(gm, 0, 1.0, cells=200)
    g = torch.Generator().manual_seed(0)
    x = bench.sample_tilted(centres, mass, h, 20_000, g)
    assert bench.histogram_tv(x, centres, mass) < 0.1
    assert bench.histogram_tv(x + 5.0, centres, mass) > 0.9  # shifted away: nearly disjoint
    assert math.isfinite(bench.histogram_tv(x * 100, centres, mass))  # samples off the grid count as distance
