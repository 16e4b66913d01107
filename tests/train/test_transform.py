"""prepare -> fit -> convert: the shared protocol of training-time techniques."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.state import state_of
from torchslim.train import FinetuneConfig, ParamGroup, Prepared, TrainConfig, TrainingConfig, TrainHook

from _train_helpers import mlp, toy_task


def _train(steps: int = 4) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, lr=1e-2, progress=False)


def test_finetune_verb_trains_and_records_a_history_entry() -> None:
    model, task = mlp(0), toy_task()
    before = task.evaluate(model)["top1"]
    torchslim.finetune_(model, FinetuneConfig(train=_train(30)), task=task)
    (entry,) = state_of(model).history
    assert entry.kind == "training" and entry.name == "FinetuneConfig"
    assert entry.metrics["top1"] > before and entry.details["steps"] == 30
    assert set(entry.details["final_loss_terms"]) == {"task"} and not model.training


def test_the_config_train_field_wins_over_the_context() -> None:
    model = mlp(0)
    torchslim.finetune_(model, FinetuneConfig(train=_train(3)), task=toy_task(), train=_train(7))
    assert state_of(model).history[-1].details["steps"] == 3
    torchslim.finetune_(model, FinetuneConfig(), task=toy_task(), train=_train(5))
    assert state_of(model).history[-1].details["steps"] == 5


class _Count(TrainHook):
    def __init__(self) -> None:
        self.starts = 0

    def on_start(self, trainer) -> None:
        self.starts += 1


@dataclass
class AddHeadConfig(TrainingConfig):
    """A toy technique: freezes the model, adds a trainable scale, trains it in rounds, folds it in."""

    rounds: int = 2

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        for p in model.parameters():
            p.requires_grad_(False)
        model.fc2.scale = nn.Parameter(torch.ones(()))
        model.fc2.register_forward_hook(lambda m, a, out: out * m.scale)
        count = _Count()
        return Prepared(hooks=[count], rounds=self.rounds, param_groups=(ParamGroup(params=".*scale", lr=0.05),),
                        before_round=lambda k: [], after_round=lambda k, r: {"round": k, "steps": r.final_step},
                        state={"count": count})

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        with torch.no_grad():
            model.fc2.weight.mul_(model.fc2.scale)
            model.fc2.bias.mul_(model.fc2.scale)
        model.fc2._forward_hooks.clear()
        del model.fc2.scale
        assert prepared.state["count"].starts == self.rounds
        return model


def test_a_technique_with_rounds_param_groups_and_convert_runs_on_the_generic_handler() -> None:
    model = mlp(0)
    torchslim.apply_(model, AddHeadConfig(rounds=2, train=_train(3)), task=toy_task())
    (entry,) = state_of(model).history
    assert entry.details["rounds"] == 2 and entry.details["records"] == [{"round": 0, "steps": 3},
                                                                        {"round": 1, "steps": 3}]
    assert not hasattr(model.fc2, "scale") and entry.details["steps"] == 6


def test_training_needs_a_task_with_a_loss() -> None:
    with pytest.raises(ConfigError, match="FinetuneConfig trains the model: pass task="):
        torchslim.finetune_(mlp(0), FinetuneConfig(train=_train(1)), calibration=[{"x": torch.zeros(2, 8)}])
