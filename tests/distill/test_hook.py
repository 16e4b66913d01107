"""Distillation of encoder-decoder models (T5, BART): each output is compared over its own positions (the decoder's
logits and blocks over the decoder's, the encoder blocks over the encoder's mask), hidden states pair blocks within
a stack, and QAT trains on a distillation loss the same way."""
from __future__ import annotations

import math

import pytest
import torch

import torchslim
from torchslim import DistillConfig, QATConfig, TrainConfig
from torchslim.core.errors import ConfigError
from torchslim.core.state import state_of
from torchslim.distill.hook import fitting, position_masks, stack_pairs
from torchslim.zoo.families import build_family, family_task


def _train(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, lr=3e-3, progress=False, seed=1)


def _kd(student, teacher, task) -> float:
    from torchslim.distill.losses import kd_kl

    batch = task.calibration_batches(4, 2)[0]
    with torch.no_grad():
        return kd_kl(task.forward(student, batch).logits, task.forward(teacher, batch).logits).item()


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_distillation_compares_each_output_over_its_own_positions(family) -> None:
    teacher, student = build_family(family, seed=0).model, build_family(family, seed=1).model
    task = family_task(build_family(family))
    before = _kd(student, teacher, task)
    cfg = DistillConfig(output_weight=1.0, hidden_weight=1.0, relation_weight=1.0, relation_heads=2,
                        train=_train(12))
    torchslim.distill_(student, cfg, task=task, teacher=teacher)
    terms = state_of(student).history[-1].details["final_loss_terms"]
    assert set(terms) == {"kd_output", "kd_hidden", "kd_relation"} and all(math.isfinite(v) for v in terms.values())
    assert _kd(student, teacher, task) < before


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_qat_with_a_distillation_loss_trains_an_encoder_decoder(family) -> None:
    teacher, student = build_family(family, seed=0).model, build_family(family, seed=0).model
    task = family_task(build_family(family))
    cfg = QATConfig(distill=DistillConfig(output_weight=1.0, hidden_weight=1.0), train=_train(3))
    torchslim.quantize_(student, cfg, task=task, teacher=teacher)
    entry = state_of(student).history[-1]
    assert entry.touched["layers"] > 0
    assert all(math.isfinite(v) for v in entry.details["final_loss_terms"].values())


def test_positions_come_from_the_decoder_mask_or_the_labels_for_decoder_outputs() -> None:
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    masks = position_masks({"attention_mask": torch.ones(2, 5), "labels": labels}, torch.device("cpu"))
    assert masks["encoder"].shape == (2, 5) and masks["decoder"].tolist() == [[1, 1, 0], [1, 0, 0]]
    dec = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(position_masks({"decoder_attention_mask": dec, "labels": labels}, torch.device("cpu"))
                       ["decoder"], dec)
    assert fitting(masks["decoder"], torch.zeros(2, 3, 8)) is masks["decoder"]
    assert fitting(masks["encoder"], torch.zeros(2, 10)) is None           # [batch, classes]: no positions
    with pytest.raises(ConfigError, match="does not match"):
        fitting(masks["encoder"], torch.zeros(2, 3, 8))


def test_hidden_states_pair_blocks_within_each_stack() -> None:
    t5 = build_family("t5").model
    pairs = stack_pairs(t5, t5, "uniform")
    assert pairs == [(0, 0, "encoder"), (1, 1, "encoder"), (2, 2, "decoder"), (3, 3, "decoder")]
    assert stack_pairs(t5, t5, "last") == [(1, 1, "encoder"), (3, 3, "decoder")]
    with pytest.raises(ConfigError, match="stack"):
        stack_pairs(t5, build_family("llama").model, "uniform")
