"""torchslim.evaluate: the task's quality by default, more on request."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.eval import EvalSpec
from torchslim.tasks.base import Task


class _Task(Task):
    name = "tiny"
    metric = "accuracy"
    higher_is_better = True
    default_shapes = ((2, None),)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"accuracy": float((model(torch.ones(4, 3)) > -1e9).float().mean())}

    def example_inputs(self, batch: int, seq_len: int | None = None) -> dict:
        return {"input": torch.ones(batch, 3)}

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[dict]:
        return [{"input": torch.ones(batch_size, 3)}]


def test_evaluate_measures_quality_only_by_default() -> None:
    report = torchslim.evaluate(nn.Linear(3, 2), _Task())
    assert report.quality.metrics["accuracy"] == 1.0
    assert (report.size, report.speed, report.compute, report.memory, report.energy) == (None,) * 5


def test_evaluate_all_is_the_full_sweep(tmp_path) -> None:
    report = torchslim.evaluate(nn.Linear(3, 2), _Task(), EvalSpec(warmup=0, iters=3), what="all")
    assert report.quality is not None and report.speed is not None and report.compute is not None
    assert report.size.artifact_bytes > 0            # the artifact format measures bytes on disk
    assert "latency median @ 2" in str(report)


def test_evaluate_rejects_an_unknown_measurement() -> None:
    with pytest.raises(ConfigError, match="unknown measurement 'latency'.*quality, size, speed"):
        torchslim.evaluate(nn.Linear(3, 2), _Task(), what=("quality", "latency"))
