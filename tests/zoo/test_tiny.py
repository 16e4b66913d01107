"""Tiny random text models: deterministic, real tokenizers, registered as test-only."""
from __future__ import annotations

import torch

from torchslim.core.archs import arch_of, find_blocks
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo.registry import get_entry, load_model
from torchslim.zoo.tiny import tiny_bert, tiny_llama


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_llama(seed=0)
    assert torch.equal(torch.rand(3), before)
    assert _same(a.model, tiny_llama(seed=0).model)
    assert not _same(a.model, tiny_llama(seed=1).model)
    assert _same(tiny_bert(seed=4).model, tiny_bert(seed=4).model)


def test_tiny_llama_shape_gqa_and_task():
    lm = load_model("tiny-llama")
    m = lm.model
    assert type(m).__name__ == "LlamaForCausalLM" and not m.training
    assert m.config.num_attention_heads == 4 and m.config.num_key_value_heads == 2
    assert m.model.layers[0].self_attn.k_proj.weight.shape == (32, 64)       # 2 kv heads x head_dim 16
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert arch_of(m).name == "llama" and len(find_blocks(m)) == 2
    assert isinstance(lm.task, CausalLMTask) and lm.task.seq_len == 128
    assert lm.source == {"kind": "zoo", "name": "tiny-llama", "kwargs": {"seed": 0}}
    assert get_entry("tiny-llama").test_only and get_entry("tiny-bert").test_only
    ids = lm.tokenizer("Hé!", add_special_tokens=False)["input_ids"]
    assert ids == [b + 1 for b in "Hé!".encode()] and lm.tokenizer.decode(ids) == "Hé!"
    assert len(lm.tokenizer) == m.config.vocab_size == 257


def test_overrides_are_applied_and_recorded():
    lm = tiny_llama(seed=2, num_hidden_layers=3, hidden_size=32)
    assert len(lm.model.model.layers) == 3 and lm.model.config.hidden_size == 32
    assert lm.source["kwargs"] == {"seed": 2, "num_hidden_layers": 3, "hidden_size": 32}
    assert lm.model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 257)


def test_tiny_bert_tokenizer_and_task():
    b = load_model("tiny-bert")
    assert type(b.model).__name__ == "BertModel" and arch_of(b.model).name == "bert"
    assert len(find_blocks(b.model)) == 2
    enc = b.tokenizer(["Hi", "Hello"], padding=True)
    assert enc["input_ids"] == [[2, 77, 110, 3, 0, 0, 0], [2, 77, 106, 113, 113, 116, 3]]
    assert isinstance(b.task, SentenceEmbeddingTask)
    assert b.task.evaluate(b.model)["cosine_fidelity"] > 0.999999
