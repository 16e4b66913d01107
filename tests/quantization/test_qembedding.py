"""A tied input embedding reads the packed head's codes: one table, stored once, reloaded tied."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim import AWQConfig, QATConfig, TrainConfig, WeightOnlyConfig
from torchslim.quantization import IntFormat, PackedEmbedding, PerChannel, PerGroup
from torchslim.zoo.tiny import tiny_llama


def _head_only(fmt=IntFormat(8), gran=PerChannel()):
    return WeightOnlyConfig(format=fmt, granularity=gran, selector=torchslim.Selector(include=("lm_head",)))


@pytest.mark.parametrize("fmt,gran", [(IntFormat(8), PerChannel()), (IntFormat(4, symmetric=False), PerGroup(32)),
                                      (IntFormat(4), PerGroup(16))])
def test_the_embedding_reads_the_heads_codes_and_is_stored_once(tmp_path, fmt, gran) -> None:
    lm = tiny_llama()
    m = lm.model
    untied = torchslim.save(copy.deepcopy(m), tmp_path / "fp32")
    torchslim.quantize_(m, _head_only(fmt, gran))
    emb = m.model.embed_tokens
    assert isinstance(emb, PackedEmbedding) and emb.packed is m.lm_head.packed and emb.scale is m.lm_head.scale
    ids = torch.randint(0, 257, (3, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(emb(ids), m.lm_head.dequantize()[ids], rtol=0, atol=0)
    art = torchslim.save(m, tmp_path / "q", source=lm.source)
    manifest = torchslim.artifact.read_manifest(art)
    assert manifest["aliases"]["lm_head.packed"] == "model.embed_tokens.packed"
    assert (art / "model.safetensors").stat().st_size < (untied / "model.safetensors").stat().st_size
    back = torchslim.load(art)
    assert back.model.embed_tokens.packed is back.lm_head.packed
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, m(input_ids=ids).logits)


def test_untied_models_and_scaled_heads_keep_their_own_table(caplog) -> None:
    untied = tiny_llama(tie_word_embeddings=False).model
    torchslim.quantize_(untied, _head_only())
    assert isinstance(untied.model.embed_tokens, torch.nn.Embedding)
    lm = tiny_llama()
    w = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),
                         selector=torchslim.Selector(include=("lm_head",)))
    torchslim.quantize_(lm.model, AWQConfig(weight=w), calibration=lm.task)
    if lm.model.lm_head.input_scale is not None:
        assert isinstance(lm.model.model.embed_tokens, torch.nn.Embedding) and "AWQ" in caplog.text


def test_qat_leaves_a_shared_head_as_it_is() -> None:
    lm = tiny_llama()
    m = lm.model
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    head_codes = m.lm_head.codes().clone()
    torchslim.quantize_(m, QATConfig(train=TrainConfig(steps=2, batch_size=2, lr=1e-2, progress=False)), task=lm.task)
    assert torch.equal(m.lm_head.codes(), head_codes) and m.model.embed_tokens.packed is m.lm_head.packed


def _embeddings_only(fmt, gran):
    return WeightOnlyConfig(format=fmt, granularity=gran, selector=torchslim.Selector(include=(torch.nn.Embedding,)))


@pytest.mark.parametrize("fmt,gran,tol", [(IntFormat(8), PerChannel(), 0.01), (IntFormat(4, symmetric=False),
                                                                                 PerGroup(16), 0.08)])
def test_an_untied_table_is_quantized_on_its_own_and_reloads(tmp_path, fmt, gran, tol) -> None:
    from torchslim.zoo.tiny import tiny_bert

    lm = tiny_bert()
    m = lm.model.eval()
    ref = copy.deepcopy(m)
    before = torchslim.save(copy.deepcopy(m), tmp_path / "fp32", source=lm.source)
    torchslim.quantize_(m, _embeddings_only(fmt, gran))
    emb = m.embeddings.word_embeddings
    assert isinstance(emb, PackedEmbedding) and not emb.shared
    assert all(isinstance(t, torch.nn.Linear) for t in (m.encoder.layer[0].attention.self.query,))
    w = ref.embeddings.word_embeddings.weight
    err = (emb.dense_weight() - w).abs().max() / w.abs().max()
    assert 0 < err < tol                                   # rounded, within its grid's step
    ids = torch.randint(0, w.shape[0], (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(emb(ids), emb.dense_weight()[ids], rtol=0, atol=0)
    art = torchslim.save(m, tmp_path / "q", source=lm.source)
    assert (art / "model.safetensors").stat().st_size < (before / "model.safetensors").stat().st_size
    info = torchslim.artifact.read_manifest(art)
    assert "aliases" not in info or not info["aliases"]
    back = torchslim.load(art).eval()
    assert isinstance(back.embeddings.word_embeddings, PackedEmbedding) and not back.embeddings.word_embeddings.shared
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).last_hidden_state, m(input_ids=ids).last_hidden_state)


def test_embedding_rules_are_refused_or_left_to_the_head_in_one_line(caplog) -> None:
    from torchslim.core.errors import ConfigError
    from torchslim.quantization import PerTensor
    from torchslim.zoo.tiny import tiny_bert

    with pytest.raises(ConfigError, match="per row"):
        torchslim.quantize_(tiny_bert().model, _embeddings_only(IntFormat(8), PerTensor()))
    lm = tiny_llama()                                     # tied: the embedding follows the head, not its own rule
    with pytest.raises(ConfigError, match="matched no"):
        torchslim.quantize_(lm.model, _embeddings_only(IntFormat(8), PerChannel()))
    assert "tied to the output head" in caplog.text
    both = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                            selector=torchslim.Selector(include=(torch.nn.Embedding, "lm_head")))
    torchslim.quantize_(lm.model, both)
    assert lm.model.model.embed_tokens.shared and lm.model.model.embed_tokens.packed is lm.model.lm_head.packed
    from torchslim import GPTQConfig

    enc = tiny_bert()
    with pytest.raises(ConfigError, match="embedding table"):
        torchslim.quantize_(enc.model, GPTQConfig(weight=_embeddings_only(IntFormat(8), PerChannel())),
                            calibration=enc.task)
    rounded = torchslim.Selector(include=(torch.nn.Linear, torch.nn.Embedding),
                                 overrides={"type:Embedding": WeightOnlyConfig(format=IntFormat(8),
                                                                               granularity=PerChannel())})
    torchslim.quantize_(enc.model, GPTQConfig(weight=WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                                      selector=rounded)), calibration=enc.task)
    assert isinstance(enc.model.embeddings.word_embeddings, PackedEmbedding)
    assert type(enc.model.encoder.layer[0].output.dense).__name__ == "QuantLinear"
