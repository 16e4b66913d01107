"""GGUF export of Llama-family artifacts: calibrated codes kept, transformers reloads the file with the
same outputs, and what cannot be written is refused in one line."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.exports import export_gguf
from torchslim.artifact.gguf_blocks import TYPES, dequantize
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.quantization import IntFormat, PerGroup
from torchslim.zoo.tiny import tiny_llama


def _artifact(tmp_path, fmt=None, **overrides):
    lm = tiny_llama(**overrides)
    if fmt is not None:
        torchslim.quantize_(lm.model, WeightOnlyConfig(format=fmt, granularity=PerGroup(32)))
    return lm.model, torchslim.save(lm.model, tmp_path / "art", source=lm.source)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("qtype,fmt", [("Q4_1", IntFormat(4, symmetric=False)), ("Q4_0", IntFormat(4)),
                                       ("Q8_0", IntFormat(8))])
def test_codes_on_the_grid_are_written_exactly_and_transformers_reads_the_same_model(tmp_path, qtype, fmt) -> None:
    model, art = _artifact(tmp_path, fmt)
    info = export_gguf(art, tmp_path / "m.gguf", qtype=qtype, embed_type="F32")
    assert info["exact_layers"] == 14 and info["rounded_layers"] == 0
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    stored = {t.name: t for t in reader.tensors}
    down = model.model.layers[1].mlp.down_proj
    t = stored["blk.1.ffn_down.weight"]
    assert t.tensor_type == getattr(gguf.GGMLQuantizationType, qtype)
    back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    want = dequantize(TYPES[qtype], down.codes(), down.scale, down.offset)   # the codes, scales as fp16
    np.testing.assert_array_equal(back.reshape(want.shape), want.numpy())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(hf, ids), _logits(model, ids), rtol=0, atol=2e-2)   # fp16 scales only


def test_without_calibration_float_layers_are_rounded_to_the_grid_and_counted(tmp_path, caplog) -> None:
    model, art = _artifact(tmp_path)
    info = export_gguf(art, tmp_path / "m.gguf", qtype="Q8_0", calibrate=False)
    assert info["rounded_layers"] == 15 and info["exact_layers"] == 0        # 14 linears + the embedding
    assert "15 float weight layer(s) were rounded (15 to the Q8_0 grid;" in caplog.text
    names = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert names["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0 and "output.weight" not in names  # tied
    assert names["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(hf, ids), _logits(model, ids), rtol=0, atol=3e-2)


def test_the_rounding_line_names_each_grid_a_layer_went_to(tmp_path, caplog) -> None:
    """A Q4_0 file keeps its token embedding as Q8_0: the warning counts the layers per grid, not all as Q4_0."""
    _, art = _artifact(tmp_path)
    export_gguf(art, tmp_path / "m.gguf", qtype="Q4_0", calibrate=False)
    names = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    emb = names["token_embd.weight"].name
    line = next(r.getMessage() for r in caplog.records if "were rounded" in r.getMessage())
    assert "14 to the Q4_0 grid" in line and (f"1 to the {emb} grid" in line or emb == "Q4_0"), line


def test_f16_export_of_an_untied_model_writes_the_output_head(tmp_path) -> None:
    model, art = _artifact(tmp_path, tie_word_embeddings=False)
    export_gguf(art, tmp_path / "m.gguf", qtype="F16", embed_type="F16")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert {"output.weight", "token_embd.weight", "output_norm.weight"} <= names
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(hf, ids), _logits(model, ids), rtol=0, atol=1e-2)


def test_what_gguf_cannot_hold_is_refused_in_one_line(tmp_path) -> None:
    _, art = _artifact(tmp_path)
    with pytest.raises(ConfigError, match="Q5_K"):
        export_gguf(art, tmp_path / "m.gguf", qtype="Q5_K")
    bert = torchslim.save(torchslim.load_model("tiny-bert").model, tmp_path / "bert")
    with pytest.raises(TorchSlimError, match="decoder families llama.cpp runs"):
        export_gguf(bert, tmp_path / "b.gguf")
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_tied_packed_table_is_written_once_as_token_embd(tmp_path) -> None:
    lm = tiny_llama()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerGroup(32)))
    assert type(lm.model.model.embed_tokens).__name__ == "PackedEmbedding"
    art = torchslim.save(lm.model, tmp_path / "art", source=lm.source)
    info = export_gguf(art, tmp_path / "m.gguf", qtype="Q8_0", embed_type="Q8_0")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert "token_embd.weight" in names and "output.weight" not in names and info["exact_layers"] == 15
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_logits(hf, ids), _logits(lm.model, ids), rtol=0, atol=2e-2)


def test_with_calibration_every_float_layer_is_gptq_quantized_on_its_own_grid(tmp_path) -> None:
    """The export a user reaches is the calibrated one: GPTQ on each tensor's stored type (Q4_K_M on 64-wide rows is
    llama.cpp's fallback mix of Q5_0 and, for the promoted attn_v/ffn_down, Q8_0), codes written as they are."""
    model, art = _artifact(tmp_path)
    info = export_gguf(art, tmp_path / "m.gguf", qtype="Q4_K_M", embed_type="F32")
    assert info["calibrated_layers"] == 14 and info["exact_layers"] == 14 and info["rounded_layers"] == 0
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert {v for k, v in stored.items() if k.startswith("blk.") and not k.endswith("norm.weight")} == {"Q5_0", "Q8_0"}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 257, (1, 16), generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(_logits(hf, ids)).all()


def test_codes_off_the_target_grid_are_refused_with_the_command_that_works(tmp_path) -> None:
    _, art = _artifact(tmp_path, IntFormat(4))                       # int4 g32 symmetric: the Q4_0 grid, not Q4_1's
    with pytest.raises(TorchSlimError, match=r"first blk\.0\..*not on the grid .*\(Q4_1\).*`torchslim export gguf "
                                             r"tiny-llama .* -t Q4_1` \(GPTQ with calibration.*Q4_1: int4 asymmetric per group of 32"):
        export_gguf(art, tmp_path / "m.gguf", qtype="Q4_1")
    info = export_gguf(art, tmp_path / "m.gguf", qtype="Q5_0", embed_type="Q8_0")    # a sub-grid: codes kept
    assert info["exact_layers"] == 15 and info["rounded_layers"] == 0
    (tmp_path / "m.gguf").unlink()
    lm = tiny_llama()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(128)))
    art = torchslim.save(lm.model, tmp_path / "g128", source=lm.source)
    with pytest.raises(TorchSlimError, match="int4 symmetric g128"):
        export_gguf(art, tmp_path / "m.gguf", qtype="Q4_0")
    assert not (tmp_path / "m.gguf").exists()
    export_gguf(art, tmp_path / "m.gguf", qtype="F16", embed_type="F16")       # the codes kept, dequantized
