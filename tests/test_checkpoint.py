"""Checkpoint files: every damaged file is named in a ValueError / OSError, a full disk leaves the
previous checkpoint current, ``which`` is checked, and checkpoint.py stands below training.py."""
import ast
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import sdediff as sd
import sdediff.checkpoint as checkpoint
import sdediff.training as training
from sdediff.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint_meta
from sdediff.datasets import toy_data
from sdediff.nets import build_net
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

TENSOR_FILES = ["model", "ema", "best_ema", "optimizer", "state"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(out_dir, steps=10, **kw):
    torch.manual_seed(0)
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), sd.VPSDE(), "eps")
    opts = dict(steps=steps, batch_size=32, lr=3e-3, warmup=2, out_dir=out_dir, checkpoint_every=5, log_every=5,
                progress=False, val_data=toy_data("ring", 64, generator=9), val_every=5)
    opts.update(kw)
    return Trainer(model, data=toy_data("ring", 256, generator=0), **opts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 10-step run with validation (so best_ema.safetensors exists); copy before damaging."""
    out = tmp_path_factory.mktemp("run")
    _trainer(out).train()
    return out


@pytest.fixture
def run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    data = {"empty": b"", "truncated": raw[: len(raw) * 2 // 3], "random": os.urandom(max(64, len(raw) // 4)),
            "text": b'{"not": "what was expected"'}[how]
    path.write_bytes(data)


@pytest.mark.parametrize("how", ["empty", "truncated", "random"])
@pytest.mark.parametrize("name", TENSOR_FILES)
def test_a_damaged_tensor_file_is_a_value_error_naming_it(run, name, how):
    path = latest_checkpoint(run) / f"{name}.safetensors"
    _damage(path, how)
    with pytest.raises(ValueError, match=rf"{path.name} is (empty|truncated or not a safetensors file)") as info:
        if name in ("model", "ema", "best_ema"):
            load_checkpoint(run, {"best_ema": "best"}.get(name, name))
        else:
            _trainer(run).resume()
    assert str(path) in str(info.value)
    if name in ("model", "ema"):  # resume reads them too
        with pytest.raises(ValueError, match=path.name):
            _trainer(run).resume()


@pytest.mark.parametrize("how", ["empty", "truncated", "random", "text"])
@pytest.mark.parametrize("name", ["meta.json", "latest.json"])
def test_a_damaged_json_file_is_a_value_error_naming_it(run, name, how):
    path = run / "checkpoints" / "latest.json" if name == "latest.json" else latest_checkpoint(run) / name
    _damage(path, how)
    for call in (lambda: load_checkpoint(run), lambda: read_checkpoint_meta(run), lambda: _trainer(run).resume()):
        with pytest.raises(ValueError, match=r"is (empty|truncated or not JSON|holds)") as info:
            call()
        assert str(path) in str(info.value)


def test_latest_json_pointing_outside_is_refused(run):
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"dir": "../../elsewhere"}))
    with pytest.raises(ValueError, match=r"latest.json has dir='../../elsewhere'.*step_00000010"):
        load_checkpoint(run)


@pytest.mark.parametrize("key", ["architecture", "architecture.sde", "architecture.net.name",
                                 "architecture.model.kind", "step", "format"])
def test_meta_without_a_key_is_a_value_error_naming_it(run, key):
    path = latest_checkpoint(run) / "meta.json"
    meta = json.loads(path.read_text())
    *parents, last = key.split(".")
    node = meta
    for part in parents:
        node = node[part]
    del node[last]
    path.write_text(json.dumps(meta))
    expected = "has no 'format'" if key == "format" else f"lacks '{key}'"
    for call in (lambda: load_checkpoint(run), lambda: read_checkpoint_meta(run), lambda: _trainer(run).resume()):
        with pytest.raises(ValueError, match=expected) as info:
            call()
        assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["optimizer", "position", "trainer"])
def test_meta_without_a_resume_key_fails_resume_by_name(run, key):
    path = latest_checkpoint(run) / "meta.json"
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))
    load_checkpoint(run)  # the model itself is still loadable
    with pytest.raises(ValueError, match=rf"{path}.* lacks '{key}"):
        _trainer(run).resume()


def test_an_unknown_format_version_is_refused(run):
    path = latest_checkpoint(run) / "meta.json"
    meta = json.loads(path.read_text())
    meta["format"] = 99
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"has format 99; this version of sdediff reads format 1"):
        load_checkpoint(run)
    with pytest.raises(ValueError, match="format 99"):
        _trainer(run).resume()


def test_state_file_without_a_generator_is_refused(run):
    from safetensors.torch import load_file, save_file
    path = latest_checkpoint(run) / "state.safetensors"
    state = load_file(str(path))
    del state["noise_generator"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"state.safetensors lacks the tensors \['noise_generator'\]"):
        _trainer(run).resume()


def test_resume_with_other_data_size_is_refused(run):
    tr = _trainer(run)
    tr.data = tr.data[:200]
    with pytest.raises(ValueError, match="data order for 256 examples; this trainer has 200"):
        tr.resume()


def test_a_missing_weight_file_is_an_os_error_naming_it(run):
    path = latest_checkpoint(run) / "ema.safetensors"
    path.unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        load_checkpoint(run)
    with pytest.raises(OSError, match="ema.safetensors"):
        _trainer(run).resume()


def test_non_finite_weights_on_disk_are_refused(run):
    from safetensors.torch import load_file, save_file
    path = latest_checkpoint(run) / "ema.safetensors"
    state = load_file(str(path))
    next(iter(state.values())).view(-1)[0] = float("nan")
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"ema.safetensors hold NaN or inf"):
        load_checkpoint(run)


def _safetensors_full_disk(*args, **kwargs):
    from safetensors import SafetensorError
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _os_full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target, failing", [("safetensors.torch.save_file", _safetensors_full_disk),
                                             ("safetensors.torch.save_file", _os_full_disk),
                                             ("sdediff.checkpoint.os.fsync", _os_full_disk)])
def test_a_full_disk_during_save_is_an_os_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                 target, failing):
    tr = _trainer(tmp_path, steps=10, val_data=None)
    tr.train(until=5)
    before = load_checkpoint(tmp_path)
    monkeypatch.setattr(target, failing)
    with pytest.raises(OSError, match=r"(could not write checkpoint file .*step_00000010)|No space") as info:
        tr.train()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    assert not (tmp_path / "checkpoints" / "step_00000010").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    after = load_checkpoint(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert _trainer(tmp_path, steps=10, val_data=None).resume() == 5


def test_best_without_validation_is_an_error_not_the_ema(tmp_path):
    _trainer(tmp_path, val_data=None).train()
    with pytest.raises(ValueError, match=r"no best checkpoint .*the run had no val_data; load which='ema'"):
        load_checkpoint(tmp_path, which="best")


@pytest.mark.parametrize("which", ["best_ema", "EMA", None, ["ema"]])
def test_which_is_validated(trained, which):
    with pytest.raises(ValueError, match=r"which must be one of \('ema', 'model', 'best'\)"):
        load_checkpoint(trained, which=which)


def test_best_returns_the_best_ema_weights(trained):
    from safetensors.torch import load_file
    best = load_file(str(latest_checkpoint(trained) / "best_ema.safetensors"))
    model = load_checkpoint(trained, which="best")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_checkpoint_module_does_not_import_training():
    tree = ast.parse(Path(checkpoint.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any("training" in name for name in imported), imported


def test_training_re_exports_the_readers():
    for name in ("latest_checkpoint", "load_checkpoint", "read_checkpoint_meta"):
        assert getattr(training, name) is getattr(checkpoint, name)
