"""The interop benchmark's quick run: a diffusers UNet2DModel, likelihood paths and sampler overhead."""
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")


def test_quick_run_writes_its_tables(tmp_path):
    from sdediff.bench import run_benchmark

    run_benchmark("interop", ["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "interop.json").read_text())
    assert result["config"]["quick"] is True
    paths = {r["path"]: r for r in result["likelihood"]}
    assert paths["ode, 1 probe"]["gain_at_equal_time"] == pytest.approx(1.0)
    for row in paths.values():
        assert row["seconds"] > 0 and row["per_image_std"] > 0 and row["gain_at_equal_time"] > 0
    assert result["exact_trace"]["run"] is False and result["exact_trace"]["d"] == 768
    rows = result["samplers"]
    assert {r["steps"] for r in rows} == {10, 20} and len(rows) == 12
    for r in rows:
        assert r["nfe"] == r["steps"], r  # one network call per step on both sides
        assert 0 < r["network_ms_per_call_in_run"] < r["ms_per_step"] * 1.01
    text = (tmp_path / "interop.md").read_text()
    assert "gain at equal time" in text and "overhead ms / step" in text
    assert (tmp_path / "interop.png").stat().st_size > 0
