"""`export hf --format compressed-tensors`: packed int layers that plain transformers loads without torchslim.

Tolerances: transformers decompresses the codes to float32 weights, so logits equal torchslim's model when its
layers dequantize in float32 (int4 groups: the `dequant` kernel) and within bf16 rounding where torchslim runs
its int8 kernel (`_int8_mm` takes bf16 activations and scales): max |diff| <= 2e-2 of the largest logit.
The weights themselves must match torchslim's dequantized weights exactly (<= 1e-6 relative)."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

import torchslim
from torchslim.artifact.export_ct import export_ct
from torchslim.artifact.export_hf import export_hf
from torchslim.core.errors import TorchSlimError
from torchslim.quantization import NF4, IntFormat, PerChannel, PerGroup, WeightOnlyConfig
from torchslim.quantization.qlinear import QuantLinear

IDS = torch.arange(3, 23).reshape(1, 20)
BF16_REL = 2e-2


def _quantized(tmp_path, fmt, gran, **kw):
    loaded = torchslim.load_model("tiny-llama")
    torchslim.quantize_(loaded.model, WeightOnlyConfig(format=fmt, granularity=gran, **kw))
    torchslim.save(loaded.model, tmp_path / "art")
    return loaded.model.eval(), tmp_path / "art"


def _folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("bits,gran,rel", [(8, PerChannel(), BF16_REL), (4, PerGroup(32), 1e-6)],
                         ids=["int8-channel", "int4-g32"])
def test_plain_transformers_loads_the_packed_folder_and_matches_torchslim(tmp_path, bits, gran, rel):
    model, art = _quantized(tmp_path, IntFormat(bits), gran)
    with torch.no_grad():
        ref = model(IDS).logits
    done = export_ct(art, tmp_path / "ct")
    qlayers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert done["packed_layers"] == len(qlayers) == 15
    assert list(done["dense_layers"]) == ["model.embed_tokens"]     # it read the tied head's codes

    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    (scheme,) = qc["config_groups"].values()
    assert scheme["weights"]["num_bits"] == bits and scheme["weights"]["symmetric"] is True
    assert scheme["weights"]["strategy"] == ("channel" if bits == 8 else "group")
    assert len(scheme["targets"]) == 15

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", local_files_only=True).eval()
    assert not hasattr(hf, "torchslim_layer_info")
    with torch.no_grad():
        got = hf(IDS).logits
        for name, m in qlayers.items():
            w = hf.get_submodule(name).weight.float()
            assert (w - m.dequantize()).abs().max() <= 1e-6 * m.dequantize().abs().max(), name
    assert (got - ref).abs().max() <= rel * ref.abs().max()

    export_hf(art, tmp_path / "dense", dense=True)
    assert _folder_bytes(tmp_path / "ct") < _folder_bytes(tmp_path / "dense")


def test_a_partly_quantized_pruned_model_lists_its_float_layers_in_ignore(tmp_path, pruned_int8_artifact):
    done = export_ct(pruned_int8_artifact, tmp_path / "ct")
    assert done["packed_layers"] == 6 and done["dense_layers"] == {}
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert "lm_head" in qc["ignore"] and "model.layers.0.self_attn.q_proj" in qc["ignore"]
    original = torchslim.load(pruned_int8_artifact).eval()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", local_files_only=True).eval()
    with torch.no_grad():
        ref, got = original(IDS).logits, hf(IDS).logits
    assert (got - ref).abs().max() <= BF16_REL * ref.abs().max()


def test_asymmetric_layers_are_refused_naming_why(tmp_path):
    _, art = _quantized(tmp_path, IntFormat(4, symmetric=False), PerGroup(32))
    with pytest.raises(TorchSlimError, match="int4-asym: compressed-tensors' integer zero points"):
        export_ct(art, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_layers_it_cannot_express_stay_dense_with_a_warning_naming_them(tmp_path, caplog):
    model, art = _quantized(tmp_path, IntFormat(8), PerChannel(), selector=torchslim.Selector(include=("re:.*mlp\\..*",)))
    nf4 = torchslim.load(art)
    torchslim.quantize_(nf4, WeightOnlyConfig(format=NF4(), granularity=PerGroup(32),
                                              selector=torchslim.Selector(include=("re:.*self_attn\\.q_proj",))))
    torchslim.save(nf4, tmp_path / "mixed")
    with caplog.at_level(logging.WARNING, logger="torchslim.artifact"):
        done = export_ct(tmp_path / "mixed", tmp_path / "ct")
    assert set(done["dense_layers"]) == {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}
    assert "model.layers.0.self_attn.q_proj stays dense" in caplog.text and "nf4" in caplog.text
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", local_files_only=True).eval()
    with torch.no_grad():
        ref, got = nf4.eval()(IDS).logits, hf(IDS).logits
    assert (got - ref).abs().max() <= BF16_REL * ref.abs().max()


def test_sparse_24_layers_are_refused_in_one_line(tmp_path):
    loaded = torchslim.load_model("tiny-llama")
    torchslim.prune_(loaded.model, torchslim.UnstructuredConfig(sparsity=0.5, pattern="2:4"))
    torchslim.save(loaded.model, tmp_path / "art")
    with pytest.raises(TorchSlimError, match="no sparse \\(2:4\\) compressor") as e:
        export_ct(tmp_path / "art", tmp_path / "ct")
    assert "\n" not in str(e.value)


def test_cli_format_option_writes_the_folder_and_refuses_in_one_error_line(tmp_path, capsys):
    from torchslim.cli.main import main

    _, art = _quantized(tmp_path, IntFormat(4), PerGroup(32))
    with pytest.raises(SystemExit) as e:
        main(["export", "hf", str(art), "-o", str(tmp_path / "ct"), "--format", "compressed-tensors"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "15 packed layers" in out and (tmp_path / "ct" / "model.safetensors").is_file()
    assert "exported file" in out and "read by transformers" in out       # transformers loaded the packed folder
    for extra, fragment in ((["--format", "compressed-tensors", "--dense"], "error: --dense writes float"),
                            (["--format", "gguf"], "error: --format 'gguf'")):
        with pytest.raises(SystemExit) as e:
            main(["export", "hf", str(art), "-o", str(tmp_path / "x"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(fragment) and err.count("\n") == 1 and "Traceback" not in err
