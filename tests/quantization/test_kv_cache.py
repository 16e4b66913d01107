import copy

import pytest
import torch
from transformers import DynamicCache

import torchslim
from torchslim.core.config import config_from_dict
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.quantization.kv_cache import (KVCacheConfig, QuantizedKVCache, apply_kv_cache, cache_nbytes,
                                             dequantize_vectors, kv_cache_config, quantize_vectors,
                                             remove_kv_cache)
from torchslim.zoo.tiny import tiny_llama

PROMPT_LEN, NEW_TOKENS = 12, 16


@pytest.fixture(scope="module")
def base():
    # initializer_range 0.1: a random model whose greedy continuations are diverse (not one repeated token)
    return tiny_llama(initializer_range=0.1).model


def prompts(n: int = 8, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.randint(1, 257, (n, length), generator=torch.Generator().manual_seed(0))


def greedy(model, ids: torch.Tensor, **kwargs):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                          min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **kwargs)


def kv(model, **cfg):
    return torchslim.quantize_(copy.deepcopy(model), KVCacheConfig(**cfg))


@pytest.mark.parametrize("bits,symmetric,scale_dtype", [(8, True, torch.float16), (8, False, torch.float16),
                                                        (4, True, torch.bfloat16), (4, False, torch.float32)])
def test_quantize_dequantize_error_within_half_a_step(bits, symmetric, scale_dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 16) * torch.logspace(-6, 3, 40).view(1, 1, 40, 1)   # tiny to large vectors
    x[0, 0, 5] = 0.0                                                               # an all-zero vector
    x[1, 2, 7, 3] = 500.0                                                          # an outlier
    q = quantize_vectors(x, bits, symmetric, scale_dtype)
    assert q.data.dtype == (torch.int8 if bits == 8 and symmetric else torch.uint8)
    assert q.data.shape[-1] == (16 if bits == 8 else 8) and q.scale.shape == (2, 3, 40, 1)
    assert q.scale.dtype == scale_dtype and (q.zero is None) == symmetric
    err = (dequantize_vectors(q, bits) - x).abs()
    assert torch.all(err <= q.scale.float() / 2 * (1 + 1e-6))
    assert torch.equal(dequantize_vectors(q, bits)[0, 0, 5], torch.zeros(16))


def test_int4_needs_even_head_dim():
    with pytest.raises(TorchSlimError, match="even head_dim"):
        quantize_vectors(torch.randn(1, 1, 2, 5), bits=4)


def test_greedy_generation_matches_fp32_and_uses_the_int8_cache(base):
    ids = prompts()
    ref = greedy(base, ids)[:, PROMPT_LEN:]
    qm = kv(base)
    out = greedy(qm, ids, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, QuantizedKVCache)
    assert out.past_key_values.layers[0].qkeys.data.dtype == torch.int8
    agreement = (out.sequences[:, PROMPT_LEN:] == ref).float().mean().item()
    assert ref.unique().numel() > 10          # the reference is not a degenerate repetition
    assert agreement >= 0.95                  # measured: 1.0 (8 prompts x 16 tokens)
    int4 = (greedy(kv(base, bits=4), ids)[:, PROMPT_LEN:] == ref).float().mean().item()
    assert int4 < agreement                   # measured ~0.6: int4 per-token KV is visibly lossy


def test_stored_cache_is_int8_gqa_shaped_and_under_0_3x_fp32(base):
    ids = prompts(2, 64)
    qm = kv(base)
    with torch.inference_mode():
        fp_cache, q_cache = DynamicCache(config=base.config), None
        base(ids, past_key_values=fp_cache, use_cache=True)
        q_cache = qm(ids).past_key_values                        # installed by the forward hook
        for t in range(4):
            step = torch.full((2, 1), 7 + t)
            base(step, past_key_values=fp_cache, use_cache=True)
            qm(step, past_key_values=q_cache, use_cache=True)
    assert isinstance(q_cache, QuantizedKVCache) and q_cache.get_seq_length() == 68
    layer = q_cache.layers[0]
    assert layer.qkeys.data.dtype == layer.qvalues.data.dtype == torch.int8
    assert layer.qkeys.data.shape == (2, base.config.num_key_value_heads, 68, 16)      # 2 kv heads, not 4
    assert layer.keys.numel() == 0                                                    # residual_length 0
    ratio = cache_nbytes(q_cache) / cache_nbytes(fp_cache)
    assert ratio <= 0.3                       # (16 int8 + 2-byte scale) / (16 * 4) = 0.281


def test_forward_without_cache_is_unchanged(base):
    ids = prompts(3, 40)
    qm = kv(base)
    with torch.inference_mode():
        ref = base(ids, use_cache=False).logits
        assert torch.equal(qm(ids, use_cache=False).logits, ref)
        assert torch.equal(qm(ids).logits, ref)          # with the int8 cache built: this call reads no past


def teacher_forced_logits(model, ids: torch.Tensor, cache, prefix: int = 8) -> torch.Tensor:
    with torch.inference_mode():
        out = [model(ids[:, :prefix], past_key_values=cache, use_cache=True).logits[:, -1]]
        out += [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
                for t in range(prefix, ids.shape[1])]
    return torch.stack(out, 1)


def test_teacher_forced_decoding_error_is_small_and_ordered(base):
    ids = prompts(2, 40)
    ref = teacher_forced_logits(base, ids, DynamicCache(config=base.config))
    errs = {}
    for bits in (8, 4):
        got = teacher_forced_logits(base, ids, QuantizedKVCache(KVCacheConfig(bits=bits), base.config))
        errs[bits] = ((got - ref).norm() / ref.norm()).item()
    assert errs[8] < 0.02 and errs[4] > 5 * errs[8]       # measured: 0.007 and 0.14 (a chaotic random model)
    # a residual window longer than the sequence keeps everything in float: identical to DynamicCache
    full = teacher_forced_logits(base, ids, QuantizedKVCache(KVCacheConfig(residual_length=64), base.config))
    torch.testing.assert_close(full, ref)


def test_residual_window_and_crop(base):
    cache = QuantizedKVCache(KVCacheConfig(residual_length=4), base.config)
    ids = prompts(1, 13)
    with torch.inference_mode():
        base(ids[:, :10], past_key_values=cache, use_cache=True)
        for t in range(10, 13):
            base(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
    layer = cache.layers[1]
    assert layer.keys.shape[-2] == 4 and layer.qkeys.data.shape[-2] == 9 and cache.get_seq_length() == 13
    cache.crop(-6)
    assert cache.get_seq_length() == 7 and layer.keys.shape[-2] == 0 and layer.qvalues.scale.shape[-2] == 7
    with pytest.raises(ValueError):
        cache.crop(2)


def test_beam_search_runs(base):
    ids = prompts(2)
    ref = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3, do_sample=False,
                        pad_token_id=0)
    out = kv(base).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3,
                            do_sample=False, pad_token_id=0)
    assert out.shape == ref.shape and (out == ref).float().mean() >= 0.9


def test_callers_choice_of_cache_is_respected(base):
    qm = kv(base)
    ids = prompts(1)
    fp = greedy(qm, ids, past_key_values=DynamicCache(config=base.config), return_dict_in_generate=True)
    assert type(fp.past_key_values) is DynamicCache
    assert greedy(qm, ids, use_cache=False).shape == (1, PROMPT_LEN + NEW_TOKENS)
    with torch.inference_mode():
        assert qm(ids, use_cache=False).past_key_values is None


def test_apply_is_idempotent_survives_deepcopy_and_can_be_removed(base):
    qm = kv(base)
    apply_kv_cache(qm, KVCacheConfig(bits=4))
    assert len(qm._forward_pre_hooks) == 1                   # one hook, the config replaced
    assert kv_cache_config(qm).bits == 4
    clone = copy.deepcopy(qm)
    assert clone.generate.__self__ is clone and kv_cache_config(clone) == KVCacheConfig(bits=4)
    remove_kv_cache(qm)
    assert kv_cache_config(qm) is None and "generate" not in qm.__dict__ and not qm._forward_pre_hooks
    with torch.inference_mode():
        assert type(qm(prompts(1)).past_key_values) is DynamicCache
        assert type(clone(prompts(1)).past_key_values) is QuantizedKVCache


def test_config_validation_round_trip_and_reapply(base):
    for bad, match in [({"bits": 3}, "8 or 4"), ({"residual_length": -1}, "between 0 and"),
                       ({"scale_dtype": torch.int8}, "float16, bfloat16")]:
        with pytest.raises(ConfigError, match=match):
            KVCacheConfig(**bad)
    cfg = KVCacheConfig(bits=4, symmetric=False, residual_length=32, scale_dtype=torch.float32)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and cfg.to_dict()["_data"]["scale_dtype"] == "float32"
    m = apply_kv_cache(copy.deepcopy(base), again)        # what an artifact loader would do
    assert kv_cache_config(m) == cfg
    with pytest.raises(ConfigError, match="cannot be applied by the pruning verb"):
        torchslim.prune_(copy.deepcopy(base), KVCacheConfig())


def test_unsupported_models_fail_in_one_line():
    with pytest.raises(TorchSlimError, match="Hugging Face causal LMs"):
        torchslim.quantize_(torch.nn.Linear(2, 2), KVCacheConfig())
    from transformers import MistralConfig, MistralForCausalLM

    sliding = MistralForCausalLM(MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, sliding_window=8))
    with pytest.raises(TorchSlimError, match="full-attention layers only; this model has sliding_attention"):
        torchslim.quantize_(sliding, KVCacheConfig())


def test_artifact_keeps_the_kv_cache_setting(base, tmp_path):
    qm = kv(base, residual_length=8)
    path = torchslim.save(qm, tmp_path / "a")
    assert torchslim.artifact.read_manifest(path)["settings"] == [KVCacheConfig(residual_length=8).to_dict()]
    loaded = torchslim.load(path)
    assert kv_cache_config(loaded) == KVCacheConfig(residual_length=8)
    ids = prompts(1)
    out = greedy(loaded, ids, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, QuantizedKVCache)
    assert torch.equal(out.sequences, greedy(qm, ids))
