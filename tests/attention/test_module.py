"""The representation: reading Hugging Face masks, the module-kind row, the attach/detach protocol."""
import pytest
import torch
from torch import nn

from torchslim.attention import EfficientAttention
from torchslim.attention.module import IMPLEMENTATION, efficient_attention_forward, key_keep_from_mask
from torchslim.core.errors import ConfigError


def test_key_padding_from_bool_and_additive_masks():
    keep = torch.tensor([[True, True, True], [False, True, True]])
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    bool4 = causal[None, None] & keep[:, None, None, :]
    additive = torch.zeros(2, 1, 3, 3).masked_fill(~bool4, torch.finfo(torch.float32).min)
    assert torch.equal(key_keep_from_mask(bool4, 3), keep)
    assert torch.equal(key_keep_from_mask(additive, 3), keep)
    assert torch.equal(key_keep_from_mask(keep, 3), keep)
    assert key_keep_from_mask(torch.ones(2, 3, dtype=torch.bool), 3) is None
    assert key_keep_from_mask(None, 3) is None


def test_module_kind_rebuilds_an_empty_twin():
    from torchslim.core import kinds

    m = EfficientAttention("performer", head_dim=8, features=16, seed=3)
    twin = kinds.build(kinds.describe(m))
    assert isinstance(twin, EfficientAttention) and twin.random_features.shape == (16, 8)
    assert twin.describe() == m.describe()
    with pytest.raises(ConfigError):
        EfficientAttention("nope", head_dim=8)


class _Attn(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.is_causal = config, False


def test_attach_gives_a_private_config_and_detach_restores_the_shared_one():
    from transformers import BertConfig

    shared = BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8)
    shared._attn_implementation = "sdpa"
    parent, eff = _Attn(shared), EfficientAttention("sliding_window", head_dim=8, window=2)
    parent.add_module("efficient_attention", eff)
    eff.torchslim_attach(parent)
    assert parent.config is not shared and parent.config._attn_implementation == IMPLEMENTATION
    assert shared._attn_implementation == "sdpa"
    eff.torchslim_detach(parent)
    assert parent.config is shared


def test_registered_function_falls_back_to_sdpa_without_a_child():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    out, _ = efficient_attention_forward(_Attn(None), q, k, v, None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-6)
