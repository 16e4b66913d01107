"""Tampered artifacts: every read fails with one ArtifactError naming the file or field, quickly, before
allocating anything large."""
import json
import struct
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim
from torchslim.artifact import checks
from torchslim.artifact.format import io
from torchslim.core.errors import ArtifactError


@pytest.fixture
def artifact(pruned_int8_artifact):
    return pruned_int8_artifact


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _tamper(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _expect(path: Path, match: str, seconds: float = 20.0) -> None:
    t = time.perf_counter()
    with pytest.raises(ArtifactError, match=match):
        torchslim.load(path)
    assert time.perf_counter() - t < seconds


@pytest.mark.parametrize("name,change,match", [
    ("nofile", lambda m: m["weights"].pop("file"), "'weights' needs file, bytes and sha256"),
    ("layerslist", lambda m: m.update(layers=[1]), "'layers' must map layer names"),
    ("nomodule", lambda m: next(iter(m["layers"].values())).pop("module"), "has no 'module'"),
    ("kernel", lambda m: next(iter(m["layers"].values())).update(kernel="warp9", config=None, stage=None),
     "bad QuantLinear record|unknown|not one of"),
    ("aliases", lambda m: m.update(aliases={"lm_head.weight": "nope"}), "alias 'lm_head.weight' points to 'nope'"),
    ("aliases2", lambda m: m.update(aliases=[1]), "'aliases' must map tensor names"),
    ("resizedkeys", lambda m: next(iter(m["resized"]["modules"].values())).pop("in_features"), "bad spec for a Linear"),
    ("resizedhuge", lambda m: next(iter(m["resized"]["modules"].values())).update(in_features=200000,
                                                                                  out_features=200000),
     "would need .* GiB"),
    ("addedhuge", lambda m: m.update(added={"model.x": {"kind": "Linear", "in_features": 10**6, "out_features": 10**6,
                                                         "bias": False}}), "would need .* GiB"),
    ("version", lambda m: m.update(format_version=True), "format version True is not supported"),
    ("stage", lambda m: next(iter(m["layers"].values())).update(stage="0"), "'stage' must be an integer"),
    ("history", lambda m: m.update(history={"a": 1}), "'history' must be a list of mappings"),
])
def test_tampered_manifests(artifact, tmp_path, name, change, match):
    path = _copy(artifact, tmp_path / name)
    _tamper(path, change)
    _expect(path, match)


def test_a_manifest_nested_a_million_deep(artifact, tmp_path):
    path = _copy(artifact, tmp_path / "deep")
    (path / "manifest.json").write_text('{"format": "torchslim-artifact", "x": ' + "[" * 10**6 + "]" * 10**6 + "}")
    _expect(path, "nested too deeply|not valid JSON")


def test_config_deleted_corrupt_or_describing_a_huge_model(artifact, tmp_path):
    # a compressed artifact keeps its real config beside a config.json that stops from_pretrained
    name = json.loads((artifact / "manifest.json").read_text())["architecture"]["config_file"]
    assert name == "hf-config.json" and "torchslim.load" in (artifact / "config.json").read_text()
    gone = _copy(artifact, tmp_path / "gone")
    (gone / name).unlink()
    _expect(gone, f"{name} is missing")
    bad = _copy(artifact, tmp_path / "bad")
    (bad / name).write_text("{not json")
    _expect(bad, f"unreadable {name}")
    huge = _copy(artifact, tmp_path / "huge")
    cfg = json.loads((huge / name).read_text())
    cfg.update(hidden_size=10**6, intermediate_size=10**6)
    (huge / name).write_text(json.dumps(cfg))
    _expect(huge, "would need .* GiB", seconds=20)


def _rewrite_header(path: Path, edit) -> None:
    w = path / "model.safetensors"
    raw = w.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    _tamper(path, lambda m: m["weights"].update(bytes=w.stat().st_size, sha256=io.sha256(w)))


def test_safetensors_headers_that_lie_about_shapes_dtypes_or_offsets(artifact, tmp_path):
    name = "model.layers.0.self_attn.q_proj.weight"
    cases = {
        "shape": (lambda h: h[name].update(shape=[32, 128]), "has shape \\[32, 128\\], the model expects"),
        "dtype": (lambda h: h[name].update(dtype="I32"), "is torch.int32, the model expects torch.float32"),
        "offsets": (lambda h: h[name].update(data_offsets=[0, 10**12]), "outside the file"),
        "huge": (lambda h: h[name].update(shape=[2**41]), "bad header entry: shape"),
        "kind": (lambda h: h[name].update(dtype="F8_E4M3"), "bad header entry"),
    }
    for case, (edit, match) in cases.items():
        path = _copy(artifact, tmp_path / case)
        _rewrite_header(path, edit)
        _expect(path, match)


def test_truncated_weights_and_a_header_length_beyond_the_file(artifact, tmp_path):
    cut = _copy(artifact, tmp_path / "cut")
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    _expect(cut, "truncated or altered")
    _tamper(cut, lambda m: m["weights"].update(bytes=1000, sha256=io.sha256(w)))
    _expect(cut, "not a safetensors file|bad header|outside the file|unreadable")


def test_info_reads_a_tampered_manifest_as_one_line(artifact, tmp_path):
    import os
    import subprocess
    import sys

    path = _copy(artifact, tmp_path / "info")
    _tamper(path, lambda m: m.update(layers=[]))
    exe = str(Path(sys.executable).with_name("torchslim"))
    res = subprocess.run([exe, "info", str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TORCHSLIM_PROGRESS": "0"})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error:")


def test_module_bytes_counts_meta_tensors_without_allocating():
    with torch.device("meta"):
        big = nn.Linear(100_000, 100_000)
    assert checks.module_bytes(big) == (10**10 + 10**5) * 4


def test_a_layer_record_naming_a_huge_shape_is_refused_before_allocating(artifact, tmp_path):
    path = _copy(artifact, tmp_path / "layerhuge")
    _tamper(path, lambda m: next(iter(m["layers"].values())).update(shape=[200000, 200000]))
    _expect(path, "would need .* GiB", seconds=10)
