"""A stage that makes quality collapse is named in a warning when the next evaluation measures it."""
from __future__ import annotations

import logging

from torch import nn

from torchslim.core.state import state_of
from torchslim.recipes.report import quick_eval


class Scripted:
    """A task whose perplexity follows a script (one value per evaluation)."""

    metric, higher_is_better = "perplexity", False

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"perplexity": self.values.pop(0)}


def _run(values: list[float], caplog) -> list[str]:
    model, task = nn.Linear(4, 4), Scripted(values)
    quick_eval(model, task, "baseline")
    state_of(model).add_entry("pruning", "UnstructuredConfig", None)
    state_of(model).add_entry("quantization", "WeightOnlyConfig", None)
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        quick_eval(model, task, "after")
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_tenfold_perplexity_names_the_stages_since_the_last_evaluation(caplog) -> None:
    warned = _run([20.0, 4000.0], caplog)
    assert len(warned) == 1 and "UnstructuredConfig + WeightOnlyConfig" in warned[0]


def test_an_ordinary_loss_is_not_called_a_collapse(caplog) -> None:
    assert _run([20.0, 23.0], caplog) == []
