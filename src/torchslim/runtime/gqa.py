"""Grouped-query attention of one new token without copying the cache, inside a compiled decode step.

Transformers' SDPA attention runs a single query token on the key/value heads directly (the query heads that share
a key/value head become that head's query rows: ``pack_gqa``), but not while torch.compile traces the step: there it
repeats every key/value head to the query heads' count first. On a static cache that is a copy of the whole cache,
every layer, every token: on SmolLM2-135M (9 query heads over 3 key/value heads, a 512-position cache) 1.2 MB per
layer and 35 MB per token, about a third of the compiled step's non-matmul time (measured with torch.profiler).

:func:`use_packed_gqa` registers the same attention under the name ``torchslim_sdpa``, packing the query for one
token under compile too, and points the model at it. It is exact: the same softmax over the same keys for each
query head. Everything else (prompts, masks per head, biases, soft-capping) goes to transformers' own SDPA
attention unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

NAME = "torchslim_sdpa"


def packed_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Transformers' attention-interface signature; ``query`` ``[B, H, T, D]``, ``key``/``value`` ``[B, KVH, S, D]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, t, d = query.shape
    simple = (t == 1 and groups > 1 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
              and not kwargs.get("output_attentions", False) and kwargs.get("cache") is None
              and (attention_mask is None or attention_mask.shape[1] == 1))
    if not simple:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q = query.reshape(b, heads // groups, groups, d)     # the query heads of each key/value head as its rows
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                                           scale=scaling)
    return out.reshape(b, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_packed_gqa(model: nn.Module) -> bool:
    """Switch a model that uses transformers' SDPA attention with grouped key/value heads to :func:`packed_sdpa`;
    returns whether it switched (other attention implementations, and models without grouped heads, are left)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if not heads or not kv or kv == heads:
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True
