"""Shared helpers for the eval tests: a tiny classification task and an artifact-save stand-in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim.artifact
from torchslim.tasks.base import DecodeStats, Task


class TinyClassification(Task):
    """A linear classifier's job on fixed random data (labels from a hidden linear teacher)."""

    name = "tiny-classification"
    metric = "accuracy"
    higher_is_better = True
    default_shapes = ((1, None), (8, None))

    def __init__(self, features: int = 64, classes: int = 4, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, features, generator=g)
        self.y = (self.x @ torch.randn(features, classes, generator=g)).argmax(-1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        logits = model(x=self.x)
        loss = nn.functional.cross_entropy(logits, self.y)
        return {"accuracy": (logits.argmax(-1) == self.y).float().mean().item(), "loss": loss.item()}

    def example_inputs(self, batch: int, seq_len: int | None = None) -> dict:
        return {"x": self.x[:batch].clone()}

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[dict]:
        return [{"x": self.x[i:i + batch_size]} for i in range(0, n_samples, batch_size)]


class TinyDecodeTask(TinyClassification):
    """Adds a fake (but really timed) decode loop and token shapes."""

    name = "tiny-decode"
    default_shapes = ((2, 16),)

    @property
    def supports_decode(self) -> bool:
        return True

    def example_inputs(self, batch: int, seq_len: int | None = None) -> dict:
        return {"x": self.x[: batch * (seq_len or 1)].clone()}

    def decode(self, model: nn.Module, new_tokens: int = 32) -> DecodeStats:
        import time
        t0 = time.perf_counter()
        model(x=self.x[:4])
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            model(x=self.x[:1])
        t2 = time.perf_counter()
        return DecodeStats(prompt_tokens=4, new_tokens=new_tokens, prefill_s=t1 - t0, decode_s=t2 - t1,
                           tokens_per_s=(new_tokens - 1) / (t2 - t1))


class TinyClassifier(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _fake_save(model: nn.Module, path, *, source: dict | None = None) -> Path:
    """Stand-in for torchslim.artifact.save until it exists: safetensors + manifest, same layout."""
    from safetensors.torch import save_model

    path = Path(path)
    path.mkdir(parents=True)
    save_model(model, str(path / "model.safetensors"))
    (path / "manifest.json").write_text(json.dumps({"source": source}))
    return path


@pytest.fixture
def artifact_save(monkeypatch: pytest.MonkeyPatch):
    """The real torchslim.artifact.save when it exists, else the stand-in."""
    if not hasattr(torchslim.artifact, "save"):
        monkeypatch.setattr(torchslim.artifact, "save", _fake_save, raising=False)
    return torchslim.artifact.save


@pytest.fixture
def task() -> TinyClassification:
    return TinyClassification()


@pytest.fixture
def model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()
