"""StructuredConfig's default importance: Taylor with a task (as the shipped recipes use), else magnitude, warned."""
from __future__ import annotations

import logging

import torchslim
from torchslim.core.state import state_of
from torchslim.pruning import StructuredConfig


def test_with_a_task_the_default_is_taylor(caplog) -> None:
    lm = torchslim.load_model("tiny-llama")
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        torchslim.prune_(lm.model, StructuredConfig(targets=("neurons",), ratio=0.25, n_samples=2), task=lm.task)
    assert state_of(lm.model).history[-1].details["importance"] == "taylor"
    assert not [r for r in caplog.records if "magnitude_l2" in r.getMessage()]


def test_without_data_the_default_is_magnitude_and_it_says_so(caplog) -> None:
    lm = torchslim.load_model("tiny-llama")
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        torchslim.prune_(lm.model, StructuredConfig(targets=("neurons",), ratio=0.25))
    assert state_of(lm.model).history[-1].details["importance"] == "magnitude_l2"
    assert any("importance is magnitude_l2" in r.getMessage() and "task=" in r.getMessage() for r in caplog.records)


def test_an_explicit_importance_is_kept_as_a_string_too() -> None:
    assert StructuredConfig(importance="wanda").importance.value == "wanda"
