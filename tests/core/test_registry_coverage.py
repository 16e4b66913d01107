"""The 'changed N of M weight layers' line counts the layers a stage produced, replaced layers included."""
from __future__ import annotations

import logging

import torchslim
from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig


def test_quantizing_pruned_layers_counts_them(caplog) -> None:
    lm = torchslim.load_model("tiny-llama")
    torchslim.prune_(lm.model, torchslim.UnstructuredConfig(sparsity=0.5, importance="magnitude",
                                                            selector=torchslim.Selector(exclude=("lm_head",))))
    with caplog.at_level(logging.INFO, logger="torchslim"):
        torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    lines = [r.getMessage() for r in caplog.records if "weight layers" in r.getMessage()]
    # 14 pruned linears + the head, and the tied embedding that now reads the head's codes (a replaced layer too)
    assert len(lines) == 1 and lines[0].startswith("WeightOnlyConfig changed 16 of 16 weight layers")
    assert "14 SparseQuantLinear" in lines[0] and "1 PackedEmbedding" in lines[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "weight layers" in r.getMessage()]


def _coverage_levels(caplog, include) -> list[int]:
    lm = torchslim.load_model("tiny-llama")
    with caplog.at_level(logging.INFO, logger="torchslim"):
        torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                       selector=torchslim.Selector(include=include)))
    return [r.levelno for r in caplog.records if "weight layers" in r.getMessage()]


def test_a_few_layers_named_exactly_are_no_warning_but_a_pattern_missing_most_is(caplog) -> None:
    assert _coverage_levels(caplog, ("model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj")) == [logging.INFO]
    caplog.clear()
    assert _coverage_levels(caplog, ("re:.*up_proj",)) == [logging.WARNING]


def test_structured_pruning_of_one_part_of_each_block_is_no_warning(caplog) -> None:
    # neurons only (structured25-recover, structured25-lora) change each block's MLP: 6 of 15 layers on
    # tiny-llama, 90 of 211 on SmolLM2, as asked; the line said "warning: ... (not selected, or not supported)"
    for targets, changed in ((("neurons",), 6), (("heads",), 8)):
        lm = torchslim.load_model("tiny-llama")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="torchslim"):
            torchslim.prune_(lm.model, torchslim.StructuredConfig(targets=targets, ratio=0.25, importance="magnitude_l2"))
        lines = [r for r in caplog.records if "weight layers" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]
        assert f"changed {changed} of 15" in lines[0].getMessage() and "outside the config's targets" in lines[0].getMessage()
