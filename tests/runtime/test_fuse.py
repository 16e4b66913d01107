"""Shared-input fusion: one matmul for q/k/v and gate/up, same outputs, skipped groups said."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.select import Selector
from torchslim.quantization import W8A8Config
from torchslim.quantization.int8_linear import Int8DynamicLinear
from torchslim.runtime import fuse_shared_inputs
from torchslim.runtime.fuse import SharedInput, SharedInputSlice, concat_linears
from torchslim.zoo.tiny import tiny_bert, tiny_llama


def _bert_out(model, batch):
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def test_bert_qkv_fused_with_the_same_outputs() -> None:
    lm = tiny_bert()
    batch = lm.task.example_inputs(3, 20)
    ref = _bert_out(lm.model, batch)
    report = fuse_shared_inputs(lm.model)
    layers = lm.model.config.num_hidden_layers
    assert len(report.fused) == layers and not report.skipped
    att = lm.model.encoder.layer[0].attention.self
    assert isinstance(att.query, SharedInputSlice) and isinstance(att.value, SharedInputSlice)
    fused = lm.model.encoder.layer[0].torchslim_fused_qkv.fused
    assert fused.out_features == 3 * att.query.out_features
    torch.testing.assert_close(_bert_out(lm.model, batch), ref, atol=1e-5, rtol=1e-5)
    # fusing twice changes nothing more
    assert fuse_shared_inputs(lm.model).fused == []


def test_llama_qkv_and_gate_up_fused_with_the_same_logits() -> None:
    lm = tiny_llama()
    ids = torch.randint(1, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = lm.model(input_ids=ids).logits
    report = fuse_shared_inputs(lm.model)
    assert len(report.fused) == 2 * lm.model.config.num_hidden_layers      # qkv (GQA: unequal widths) + gate/up
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)


def test_w8a8_groups_fuse_and_match_the_unfused_int8_model() -> None:
    lm = tiny_bert()
    torchslim.quantize_(lm.model, W8A8Config())
    batch = lm.task.example_inputs(2, 24)
    ref = _bert_out(lm.model, batch)
    before = lm.model.encoder.layer[1].attention.self.key
    report = fuse_shared_inputs(lm.model)
    assert len(report.fused) == lm.model.config.num_hidden_layers
    fused = lm.model.encoder.layer[1].torchslim_fused_qkv.fused
    assert isinstance(fused, Int8DynamicLinear)
    n = before.out_features
    assert torch.equal(fused.weight_int8[n:2 * n], before.weight_int8)        # codes concatenated, not requantized
    assert torch.equal(fused.weight_scale[n:2 * n], before.weight_scale)
    torch.testing.assert_close(_bert_out(lm.model, batch), ref, atol=1e-5, rtol=1e-5)


def test_mixed_kinds_and_differing_smoothing_are_skipped_with_a_warning(caplog) -> None:
    lm = tiny_bert()
    torchslim.quantize_(lm.model, W8A8Config(selector=Selector(include=("re:.*attention\\.self\\.query$",))))
    batch = lm.task.example_inputs(2, 16)
    ref = _bert_out(lm.model, batch)
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        report = fuse_shared_inputs(lm.model)
    assert not report.fused and len(report.skipped) == lm.model.config.num_hidden_layers
    assert all("different kinds" in why for why in report.skipped.values())
    assert "not fused" in caplog.text
    torch.testing.assert_close(_bert_out(lm.model, batch), ref)

    a, b = (Int8DynamicLinear.from_linear(nn.Linear(8, 4), None, smooth=s) for s in (torch.ones(8), torch.full((8,), 2.0)))
    assert "SmoothQuant" in Int8DynamicLinear.concatenated([a, b])


def test_a_member_called_with_another_input_gets_its_own_result() -> None:
    torch.manual_seed(0)
    q, k = nn.Linear(6, 4), nn.Linear(6, 3, bias=False)
    owner = SharedInput(concat_linears([q, k]), [4, 3])
    sq, sk = SharedInputSlice(owner, 0, 6, 4), SharedInputSlice(owner, 1, 6, 3)
    x, z = torch.randn(2, 6), torch.randn(2, 6)
    torch.testing.assert_close(sq(x), q(x))
    torch.testing.assert_close(sk(z), k(z))        # another tensor: recomputed, not x's cached slice
    torch.testing.assert_close(sq(x), q(x))
    torch.testing.assert_close(sq(x), q(x))        # the same member twice: recomputed too
    torch.testing.assert_close(sk(x), k(x))
    assert owner._x is None                         # every member took its slice: nothing held


def test_unknown_architecture_raises() -> None:
    with pytest.raises(torchslim.TorchSlimError):
        fuse_shared_inputs(nn.Sequential(nn.Linear(4, 4)))


def test_fused_model_deepcopies_with_one_owner() -> None:
    lm = tiny_bert()
    fuse_shared_inputs(lm.model)
    clone = copy.deepcopy(lm.model)
    att = clone.encoder.layer[0].attention.self
    assert att.query.owner is clone.encoder.layer[0].torchslim_fused_qkv
    assert att.query.owner is not lm.model.encoder.layer[0].torchslim_fused_qkv


def test_packed_int4_groups_fuse_with_the_same_codes_and_logits() -> None:
    from torchslim import WeightOnlyConfig
    from torchslim.quantization import IntFormat, PerGroup
    from torchslim.quantization.qlinear import QuantLinear

    lm = tiny_llama()
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    ids = torch.randint(1, 257, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = lm.model(input_ids=ids).logits
    up = lm.model.model.layers[0].mlp.up_proj
    report = fuse_shared_inputs(lm.model)
    assert len(report.fused) == 2 * lm.model.config.num_hidden_layers and not report.skipped
    fused = lm.model.model.layers[0].torchslim_fused_mlp_in.fused
    assert isinstance(fused, QuantLinear) and torch.equal(fused.codes()[up.out_features:], up.codes())
    assert torch.equal(fused.offset[up.out_features:], up.offset)
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, ref, atol=1e-4, rtol=1e-4)


def test_packed_layers_with_different_formats_are_not_fused() -> None:
    from torchslim import WeightOnlyConfig
    from torchslim.quantization import IntFormat, PerGroup

    lm = tiny_llama()
    int8 = WeightOnlyConfig(format=IntFormat(8), granularity=PerGroup(32))
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(32),
                                                   selector=Selector(overrides={"re:.*up_proj": int8})))
    report = fuse_shared_inputs(lm.model)
    assert len(report.fused) == lm.model.config.num_hidden_layers                  # q/k/v only
    assert all("differ" in why for why in report.skipped.values()) and len(report.skipped) == 2


def test_saving_a_fused_model_is_refused_in_one_line(tmp_path) -> None:
    lm = tiny_llama()
    fuse_shared_inputs(lm.model)
    with pytest.raises(torchslim.ArtifactError, match="save the model before preparing it"):
        torchslim.save(lm.model, tmp_path / "a", source=lm.source)
    assert not (tmp_path / "a").exists()
