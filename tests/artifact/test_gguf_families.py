"""GGUF export of every decoder family llama.cpp runs: each tiny family (torchslim.zoo.families) is written, read
back by the gguf reader and, where transformers reads that architecture from GGUF, by transformers, and compared
with the torchslim model at a length past every sliding window it has (8 tokens here; inputs are 40)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from torchslim.artifact.export_gguf import write_gguf
from torchslim.artifact.gguf_families import FAMILIES
from torchslim.core.errors import TorchSlimError
from torchslim.zoo.families import build_family
from torchslim.zoo.tiny import EOS, byte_tokenizer

WINDOW, LENGTH = 8, 40
# config of the tiny model: a short window, and the query scale llama.cpp applies (1/sqrt(head_dim))
OVERRIDES = {"gemma2": {"sliding_window": WINDOW, "query_pre_attn_scalar": 16},
             "gemma3": {"sliding_window": WINDOW, "query_pre_attn_scalar": 16, "num_hidden_layers": 6},  # 5 local + 1
             "phi3": {"sliding_window": WINDOW}}
# settings transformers' GGUF reader does not take from the file (each is checked in the file by key first)
READER_GAPS = {"qwen3": {"head_dim": ("attention.key_length", 16)},
               "phi3": {"sliding_window": ("attention.sliding_window", WINDOW)},
               "gemma2": {"query_pre_attn_scalar": ("attention.key_length", 16)},
               "gemma3": {"query_pre_attn_scalar": ("attention.key_length", 16)},
               "gpt2": {"n_inner": ("feed_forward_length", 128), "n_positions": ("context_length", 128)},
               "falcon": {"ffn_hidden_size": ("feed_forward_length", 128)}}
TRANSFORMERS_READS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "falcon")
ARCH = {"gemma3": "gemma3", "gpt_neox": "gptneox"}


def _export(tmp_path, family, qtype="F32", **overrides):
    model = build_family(family, vocab_size=257, **{**OVERRIDES.get(family, {}), **overrides}).model
    info = write_gguf(model, tmp_path / "m.gguf", qtype=qtype, embed_type="F32" if qtype == "F32" else "Q8_0",
                      tokenizer=byte_tokenizer((EOS,)), name=f"tiny-{family}")
    return model, info, gguf.GGUFReader(tmp_path / "m.gguf")


def _field(reader, key):
    return reader.fields[key].contents()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 257, (2, LENGTH), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", TRANSFORMERS_READS)
def test_transformers_reads_each_family_back_with_the_same_outputs_past_the_window(tmp_path, family) -> None:
    model, _, reader = _export(tmp_path, family)
    arch = _field(reader, "general.architecture")
    extra = {}
    for attr, (key, value) in READER_GAPS.get(family, {}).items():
        assert _field(reader, f"{arch}.{key}") == value
        extra[attr] = value
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32, **extra).eval()
    torch.testing.assert_close(_logits(hf, IDS), _logits(model, IDS), rtol=0, atol=1e-5)


def test_sliding_windows_and_soft_capping_are_written_under_llama_cpp_keys(tmp_path) -> None:
    _, _, reader = _export(tmp_path, "gemma2")
    keys = gguf.Keys
    assert _field(reader, keys.Attention.SLIDING_WINDOW.format(arch="gemma2")) == WINDOW
    assert _field(reader, keys.LLM.ATTN_LOGIT_SOFTCAPPING.format(arch="gemma2")) == 50.0
    assert _field(reader, keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch="gemma2")) == 30.0
    _, _, reader = _export(tmp_path, "gpt_neox")
    assert _field(reader, keys.Rope.DIMENSION_COUNT.format(arch="gptneox")) == 4      # partial rotary: 0.25 of 16
    assert _field(reader, keys.LLM.USE_PARALLEL_RESIDUAL.format(arch="gptneox")) is True


def _stored(reader):
    return {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(
        [int(x) for x in reversed(t.shape)]) for t in reader.tensors}


def test_gemma_without_a_transformers_reader_holds_the_model_tensors_with_norms_offset(tmp_path) -> None:
    model, _, reader = _export(tmp_path, "gemma")
    got = _stored(reader)
    layer = model.model.layers[1]
    np.testing.assert_array_equal(got["blk.1.attn_q.weight"], layer.self_attn.q_proj.weight.detach().numpy())
    np.testing.assert_array_equal(got["blk.1.ffn_norm.weight"], 1 + layer.post_attention_layernorm.weight.detach().numpy())
    assert "output.weight" not in got and _field(reader, "general.architecture") == "gemma"   # tied head
    assert len(_field(reader, "tokenizer.ggml.merges")) == 1       # llama.cpp needs the key; the byte vocab has none


def test_gpt_neox_fused_qkv_is_regrouped_as_q_k_v_with_its_bias(tmp_path) -> None:
    model, _, reader = _export(tmp_path, "gpt_neox")
    got = _stored(reader)
    att = model.gpt_neox.layers[0].attention.query_key_value
    w = att.weight.detach().reshape(4, 3, 16, 64)                   # rows per head: q, k, v
    want = torch.cat([w[:, 0].reshape(-1, 64), w[:, 1].reshape(-1, 64), w[:, 2].reshape(-1, 64)])
    np.testing.assert_array_equal(got["blk.0.attn_qkv.weight"], want.numpy())
    b = att.bias.detach().reshape(4, 3, 16)
    np.testing.assert_array_equal(got["blk.0.attn_qkv.bias"], torch.cat([b[:, i].reshape(-1) for i in range(3)]).numpy())
    assert {"output.weight", "blk.1.ffn_down.bias", "output_norm.bias"} <= set(got)


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "falcon"])
def test_block_types_hold_biases_fused_and_transposed_weights(tmp_path, family) -> None:
    model, info, reader = _export(tmp_path, family, qtype="Q8_0")
    assert info["rounded_layers"] > 0 and info["exact_layers"] == 0
    arch = _field(reader, "general.architecture")
    extra = {attr: value for attr, (_, value) in READER_GAPS.get(family, {}).items()}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32, **extra).eval()
    assert arch == family
    if family == "gpt2":       # tied, yet written as output.weight too, as llama.cpp's converter does for GPT-2
        assert "output.weight" in {t.name for t in reader.tensors}
    torch.testing.assert_close(_logits(hf, IDS), _logits(model, IDS), rtol=0, atol=3e-2)


def test_what_llama_cpp_cannot_run_is_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(TorchSlimError, match="sliding window of 8 tokens.*no sliding-window key"):
        _export(tmp_path, "mistral", sliding_window=WINDOW)
    with pytest.raises(TorchSlimError, match="no OPT architecture"):
        _export(tmp_path, "opt")
    with pytest.raises(TorchSlimError, match="query_pre_attn_scalar=256"):
        _export(tmp_path, "gemma2", query_pre_attn_scalar=256)
    with pytest.raises(TorchSlimError, match="sliding window of 8 tokens"):
        _export(tmp_path, "qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0)
    with pytest.raises(TorchSlimError, match="untied output head"):
        _export(tmp_path, "gemma", tie_word_embeddings=False)
    assert not (tmp_path / "m.gguf").exists()


def test_a_mistral_whose_window_covers_its_context_is_written_as_llama(tmp_path) -> None:
    model, _, reader = _export(tmp_path, "mistral", sliding_window=128)
    assert _field(reader, "general.architecture") == "llama" and "mistral" in FAMILIES
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(hf, IDS), _logits(model, IDS), rtol=0, atol=1e-5)


def test_falcon_grouped_qkv_is_regrouped_as_llama_cpp_reads_it(tmp_path) -> None:
    """Falcon's new decoder (kv groups of [q.., k, v] rows, two norms): transformers' GGUF reader does not undo the
    regrouping llama.cpp's converter applies, so the tensors are checked against the model's weights."""
    model, _, reader = _export(tmp_path, "falcon", new_decoder_architecture=True, num_kv_heads=2)
    got = _stored(reader)
    w = model.transformer.h[1].self_attention.query_key_value.weight.detach().reshape(2, 4, 16, 64)  # 2 groups: q q k v
    want = torch.cat([w[:, :2].reshape(-1, 64), w[:, 2].reshape(-1, 64), w[:, 3].reshape(-1, 64)])
    np.testing.assert_array_equal(got["blk.1.attn_qkv.weight"], want.numpy())
    np.testing.assert_array_equal(got["blk.1.attn_norm_2.weight"], model.transformer.h[1].ln_mlp.weight.detach().numpy())
    assert _field(reader, "falcon.attention.head_count_kv") == 2


def test_llama3_rope_scaling_is_written_as_the_rope_freqs_llama_cpp_divides_by(tmp_path) -> None:
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    model, _, reader = _export(tmp_path, "llama", rope_parameters=rope)
    factors = torch.tensor(_stored(reader)["rope_freqs.weight"], dtype=torch.float64)
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    torch.testing.assert_close(plain / factors, model.model.rotary_emb.inv_freq.double(), rtol=1e-6, atol=0)
    assert float(factors[0]) == 1.0 and float(factors[-1]) == 8.0 and ((factors > 1) & (factors < 8)).any()
    with pytest.raises(TorchSlimError, match="rope scaling 'yarn'"):
        _export(tmp_path, "llama", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})


def test_linear_rope_scaling_is_written_under_llama_cpp_keys(tmp_path) -> None:
    rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    model, _, reader = _export(tmp_path, "qwen2", rope_parameters=rope)
    assert _field(reader, gguf.Keys.Rope.SCALING_TYPE.format(arch="qwen2")) == "linear"
    assert _field(reader, gguf.Keys.Rope.SCALING_FACTOR.format(arch="qwen2")) == 2.0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32,   # reader gap
                                              rope_parameters=rope).eval()
    torch.testing.assert_close(_logits(hf, IDS), _logits(model, IDS), rtol=0, atol=1e-5)


def test_q4_k_m_gives_a_fused_qkv_more_bits_like_llama_cpp(tmp_path) -> None:
    """llama.cpp stores Q4_K_M's attn_qkv in Q5_K (not written here): it takes Q6_K, on 64-wide rows its fallback
    Q8_0, while the other weights take Q4_K's fallback Q5_0."""
    _, info, reader = _export(tmp_path, "phi3", qtype="Q4_K_M")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q5_0"
    assert info["fallback_layers"] == 8


def test_a_phi3_named_file_without_the_tokens_llama_cpp_looks_up_is_renamed_with_a_warning(tmp_path, caplog) -> None:
    model = build_family("phi3", vocab_size=257).model
    path = tmp_path / "phi3.gguf"
    write_gguf(model, path, qtype="F32", embed_type="F32", tokenizer=byte_tokenizer((EOS,)), name="tiny-Phi-3")
    name = gguf.GGUFReader(path).fields["general.name"].contents()
    assert name == "tiny-Phi_3" and "phi3" not in name.lower() and "phi-3" not in name.lower()
    assert "lacks </s>, <unk>, <s>" in caplog.text


def test_a_vocabulary_with_those_tokens_keeps_its_name() -> None:
    from torchslim.artifact.export_gguf import llama_name

    assert llama_name("Phi-3-mini", {"</s>", "<unk>", "<s>", "<|endoftext|>", "a"}) == "Phi-3-mini"
    assert llama_name("smollm2", set()) == "smollm2"
