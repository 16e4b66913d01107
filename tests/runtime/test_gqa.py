"""One token's grouped-query attention on the key/value heads: the same result as repeating them, compiled too."""
from __future__ import annotations

import copy

import torch

from torchslim.runtime import FastDecoder
from torchslim.runtime.gqa import NAME, packed_sdpa, use_packed_gqa
from torchslim.zoo.tiny import tiny_bert, tiny_llama


class _Attn(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _repeated(q, k, v, mask):
    k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def test_one_token_on_the_key_value_heads_equals_repeating_them() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 1, 16, generator=g), torch.randn(2, 2, 10, 16, generator=g),
               torch.randn(2, 2, 10, 16, generator=g))
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 7:] = False                           # a shorter first sequence: its last keys masked
    got, _ = packed_sdpa(_Attn(), q, k, v, mask)
    assert got.shape == (2, 1, 6, 16)
    torch.testing.assert_close(got, _repeated(q, k, v, mask), rtol=1e-5, atol=1e-6)
    compiled = torch.compile(lambda *a: packed_sdpa(_Attn(), *a)[0], dynamic=False)
    torch.testing.assert_close(compiled(q, k, v, mask), _repeated(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_prompts_and_per_head_masks_go_to_transformers_own_attention() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 6, 4, 16, generator=g), torch.randn(1, 2, 4, 16, generator=g), torch.randn(1, 2, 4, 16, generator=g)
    got, _ = packed_sdpa(_Attn(), q, k, v, None)       # four query tokens: a prompt, causal
    want = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                                            is_causal=True).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_only_grouped_sdpa_models_switch_and_their_outputs_stay() -> None:
    lm = tiny_llama()                                  # 4 query heads over 2 key/value heads
    model = copy.deepcopy(lm.model).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.inference_mode():
        before = model(ids).logits
        assert use_packed_gqa(model) and model.config._attn_implementation == NAME
        torch.testing.assert_close(model(ids).logits, before)
    assert not use_packed_gqa(tiny_bert().model)       # no grouped heads: left as it is


def test_a_compiled_decoder_gives_the_eager_tokens_with_the_packed_attention() -> None:
    model = tiny_llama().model.eval()
    ids = torch.tensor([[3, 4, 5]])
    with torch.inference_mode():
        eager = FastDecoder(copy.deepcopy(model), max_len=24, static=True).generate(ids, 10)[0]
        dec = FastDecoder(model, max_len=24, compile=True)
        assert model.config._attn_implementation == NAME
        assert torch.equal(dec.generate(ids, 10)[0], eager)
