import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import torchslim
from torchslim.artifact import format as fmt
from torchslim.core.errors import ArtifactError, TorchSlimError


def tiny_llama(tie=True):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_hf_model_round_trip_bit_exact_with_tied_weights(tmp_path):
    m = tiny_llama(tie=True)
    torchslim.save(m, tmp_path / "a", source={"kind": "test"})
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["architecture"] == {"kind": "transformers", "class": "LlamaForCausalLM",
                                        "children": ["model", "lm_head"]}
    assert manifest["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert manifest["source"] == {"kind": "test"} and manifest["format_version"] == fmt.FORMAT_VERSION
    m2 = torchslim.load(tmp_path / "a")
    assert_same_state(m, m2)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    ids = torch.randint(0, 64, (2, 7))
    assert torch.equal(m(ids).logits, m2(ids).logits)


def test_compressed_layers_round_trip(tmp_path):
    m = tiny_llama(tie=False)
    sel = torchslim.Selector(include=("re:.*_proj",), overrides={"re:.*down_proj": torchslim.CastConfig(dtype=torch.float16)})
    torchslim.quantize_(m, torchslim.CastConfig(dtype=torch.bfloat16, selector=sel))
    assert m.model.layers[0].mlp.down_proj.weight.dtype == torch.float16
    assert m.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert m.lm_head.weight.dtype == torch.float32
    torchslim.save(m, tmp_path / "q")
    layers = fmt.read_manifest(tmp_path / "q")["layers"]
    assert len(layers) == 2 * 7
    assert layers["model.layers.1.mlp.down_proj"]["storage"] == "float16"
    assert layers["model.layers.1.self_attn.k_proj"]["storage"] == "bfloat16"
    m2 = torchslim.load(tmp_path / "q")
    assert type(m2.model.layers[1].mlp.down_proj).__name__ == "CastLinear"
    assert_same_state(m, m2)
    ids = torch.randint(0, 64, (1, 5))
    assert torch.equal(m(ids).logits, m2(ids).logits)
    # half storage really shrinks the file
    torchslim.save(tiny_llama(tie=False), tmp_path / "fp32")
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < 0.75 * (tmp_path / "fp32" / "model.safetensors").stat().st_size


def test_plain_module_needs_skeleton(tmp_path):
    m = mlp()
    torchslim.save(m, tmp_path / "p")
    with pytest.raises(ArtifactError, match="pass its architecture"):
        torchslim.load(tmp_path / "p")
    m2 = torchslim.load(tmp_path / "p", model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    assert_same_state(m, m2)
    with pytest.raises(ArtifactError, match="do not match the architecture"):
        torchslim.load(tmp_path / "p", model=nn.Sequential(nn.Linear(8, 16)))


def test_truncated_and_corrupted_artifacts_are_refused(tmp_path):
    torchslim.save(mlp(), tmp_path / "t")
    w = tmp_path / "t" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"model.safetensors: truncated"):
        torchslim.load(tmp_path / "t", model=mlp())
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    w.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        torchslim.load(tmp_path / "t", model=mlp())
    w.unlink()
    with pytest.raises(ArtifactError, match="weights file is missing"):
        torchslim.load(tmp_path / "t", model=mlp())


def test_bad_manifests(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        torchslim.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a torchslim artifact"):
        torchslim.load(tmp_path / "empty")
    torchslim.save(mlp(), tmp_path / "m")
    mpath = tmp_path / "m" / "manifest.json"
    good = json.loads(mpath.read_text())
    mpath.write_text('{"format": "torchslim-artifact", ')
    with pytest.raises(ArtifactError, match="corrupted manifest"):
        torchslim.load(tmp_path / "m", model=mlp())
    mpath.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        torchslim.load(tmp_path / "m", model=mlp())
    mpath.write_text(json.dumps({**good, "layers": {"0": {"module": "Mystery"}}}))
    with pytest.raises(ArtifactError, match="module format 'Mystery'"):
        torchslim.load(tmp_path / "m", model=mlp())


def test_interrupted_save_keeps_previous_artifact(tmp_path, monkeypatch):
    target = tmp_path / "keep"
    torchslim.save(mlp(), target)
    before = (target / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        torchslim.save(nn.Sequential(nn.Linear(8, 2)), target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(TorchSlimError, match="refusing to overwrite"):
        torchslim.save(mlp(), tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_model_level_settings_are_saved_and_reapplied(tmp_path):
    from dataclasses import dataclass

    from torchslim.core.config import BaseConfig
    from torchslim.core.modules import model_settings, record_setting
    from torchslim.core.registry import register_handler

    @dataclass
    class GreetingCfg(BaseConfig):
        family = "quantization"
        word: str = "hi"

    @register_handler(GreetingCfg, modifies="settings")
    def _greet(model, config, ctx):
        model.greeting = config.word
        record_setting(model, config)
        return model

    m = mlp()
    torchslim.quantize_(m, GreetingCfg(word="hello"))
    torchslim.save(m, tmp_path / "s")
    assert fmt.read_manifest(tmp_path / "s")["settings"][0]["_data"] == {"word": "hello"}
    m2 = torchslim.load(tmp_path / "s", model=mlp())
    assert m2.greeting == "hello" and model_settings(m2) == [GreetingCfg(word="hello")]
