"""Artifact format 2: history, added modules, old artifacts, files the artifact did not write."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchslim
from torchslim.artifact import format as fmt
from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.resize import add_module
from torchslim.core.state import state_of
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig

FIXTURES = Path(__file__).parent / "fixtures"


def _tiny():
    return torchslim.load_model("tiny-llama")


@pytest.mark.parametrize("name,inputs", [("v1-tiny-llama-pruned-int8", "input_ids"), ("v1-digits-cnn-sparse", "x")])
def test_format_1_artifacts_still_load_and_give_the_same_outputs(name, inputs):
    model = torchslim.load(FIXTURES / name)
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    with torch.no_grad():
        out = model(expected[inputs])
    out = out.logits if hasattr(out, "logits") else out
    ref = expected["logits" if "logits" in expected else "output"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert state_of(model).history == [] and state_of(model).manifest["format_version"] == 1


def test_multi_stage_history_is_saved_once_and_layers_point_to_their_stage(tmp_path):
    loaded = _tiny()
    m = loaded.model
    torchslim.prune_(m, torchslim.UnstructuredConfig(sparsity=0.5))
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    torchslim.save(m, tmp_path / "a")
    manifest = fmt.read_manifest(tmp_path / "a")
    hist = manifest["history"]
    assert [h["name"] for h in hist] == ["UnstructuredConfig", "WeightOnlyConfig"]
    assert hist[0]["touched"]["by_type"] == {"SparseLinear": 14}
    assert hist[1]["touched"]["by_type"] == {"SparseQuantLinear": 14, "QuantLinear": 1,   # + the output head
                                             "PackedEmbedding": 1}               # whose codes the tied table reads
    layer = manifest["layers"]["model.layers.0.mlp.up_proj"]
    assert layer["stage"] == 1 and "config" not in layer          # the config lives in the history entry
    again = torchslim.load(tmp_path / "a")
    ids = torch.arange(12).reshape(1, 12)
    assert torch.equal(again(ids).logits, m(ids).logits)
    assert [h.name for h in state_of(again).history] == ["UnstructuredConfig", "WeightOnlyConfig"]


def test_added_modules_are_rebuilt_before_the_weights_are_read(tmp_path):
    m = _tiny().model
    head = add_module(m, "model.layers.0.exit_head", nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 260)))
    add_module(m, "proj", nn.Linear(64, 32, bias=False))
    torch.nn.init.normal_(head[1].weight)
    torchslim.save(m, tmp_path / "a")
    again = torchslim.load(tmp_path / "a")
    assert torch.equal(again.model.layers[0].exit_head[1].weight, head[1].weight)
    assert again.proj.weight.shape == (32, 64)
    with pytest.raises(TorchSlimError, match="already has"):
        add_module(m, "proj", nn.Linear(1, 1))


def test_resaving_keeps_files_the_artifact_did_not_write(tmp_path):
    m = nn.Sequential(nn.Linear(4, 2))
    out = tmp_path / "a"
    torchslim.save(m, out)
    (out / "NOTES.md").write_text("mine")
    torchslim.save(m, out)
    assert (out / "NOTES.md").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "manifest.json", "model.safetensors"]


def test_a_folder_whose_manifest_is_not_ours_is_never_overwritten(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "app"}')
    (web / "index.html").write_text("x")
    with pytest.raises(TorchSlimError, match="not a torchslim artifact manifest"):
        torchslim.save(nn.Linear(2, 2), web)
    assert (web / "index.html").read_text() == "x"


def test_files_named_outside_the_folder_are_refused(tmp_path):
    m = nn.Sequential(nn.Linear(4, 2))
    torchslim.save(m, tmp_path / "a")
    mpath = tmp_path / "a" / "manifest.json"
    good = json.loads(mpath.read_text())
    for bad in ("../x.safetensors", "/etc/passwd", "sub/model.safetensors"):
        mpath.write_text(json.dumps({**good, "weights": {**good["weights"], "file": bad}}))
        with pytest.raises(ArtifactError, match="outside the artifact folder|not a file inside"):
            torchslim.load(tmp_path / "a", model=nn.Sequential(nn.Linear(4, 2)))


def test_a_tensor_stored_with_another_kind_of_dtype_is_refused(tmp_path):
    from safetensors.torch import save_file

    m = nn.Sequential(nn.Linear(4, 2))
    torchslim.save(m, tmp_path / "a")
    w = tmp_path / "a" / "model.safetensors"
    tensors = load_file(str(w))
    tensors["0.weight"] = tensors["0.weight"].to(torch.int32)
    save_file(tensors, str(w))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["weights"].update(bytes=w.stat().st_size, sha256=fmt.io.sha256(w))
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'0.weight' is torch.int32, the model expects torch.float32"):
        torchslim.load(tmp_path / "a", model=nn.Sequential(nn.Linear(4, 2)))
