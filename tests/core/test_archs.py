import pytest
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from torchslim.core.archs import ARCHS, arch_of, find_blocks
from torchslim.core.errors import TorchSlimError


def tiny_llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def test_llama_blocks_and_projections_resolve():
    m = tiny_llama()
    spec = arch_of(m)
    assert spec is ARCHS["llama"]
    blocks = find_blocks(m)
    assert [n for n, _ in blocks] == ["model.layers.0", "model.layers.1"]
    for _, blk in blocks:
        for role, path in spec.projections().items():
            assert isinstance(blk.get_submodule(path), nn.Linear), role
    assert isinstance(m.get_submodule(spec.head), nn.Linear)


def test_bert_blocks_with_and_without_prefix():
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    m = BertModel(cfg)
    assert arch_of(m).name == "bert"
    names = [n for n, _ in find_blocks(m)]
    assert names == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    wrapper = nn.Module()
    wrapper.bert = m
    assert [n for n, _ in find_blocks(wrapper)][0] == "bert.encoder.layer.0"


def test_unknown_architecture():
    with pytest.raises(TorchSlimError, match="cannot find the transformer blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
