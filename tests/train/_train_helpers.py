"""Shared helpers of the training tests: a toy task, a no-BN MLP, and the 1-vs-N-process workloads.

Run as a script (under torchrun) it executes the workloads and writes results to a folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.tasks.classification import ClassificationTask
from torchslim.train import TrainConfig, Trainer


def toy_task(n_train: int = 256, n_eval: int = 128, dim: int = 8, classes: int = 3, seed: int = 0) -> ClassificationTask:
    """Gaussian blobs: learnable, but not solved at initialization."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        return centers[y] + torch.randn(n, dim, generator=g), y

    (tx, ty), (ex, ey) = split(n_train), split(n_eval)
    return ClassificationTask(tx, ty, ex, ey)


class MLP(nn.Module):
    """A model without batch norm: ``forward(x)`` -> logits."""

    def __init__(self, dim: int = 8, hidden: int = 32, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def mlp(seed: int = 0, **kwargs: Any) -> MLP:
    torch.manual_seed(seed)
    return MLP(**kwargs)


def run_mlp() -> dict[str, Any]:
    """AdamW fine-tune of the MLP; returns final weights (as lists) and history."""
    model = mlp(0)
    cfg = TrainConfig(steps=12, batch_size=32, grad_accum=2, lr=1e-2, weight_decay=0.01, optimizer="adamw",
                      schedule="cosine", warmup_steps=2, eval_every=6, seed=3, progress=False)
    res = Trainer(model, toy_task(), cfg).fit()
    return {"weights": {k: v.tolist() for k, v in model.state_dict().items()}, "losses": res.losses,
            "evals": res.evals, "world_size": res.world_size}


def run_digits(cache: str) -> dict[str, Any]:
    """Fine-tune the cached digits-cnn for a few steps; returns its metrics before and after."""
    from torchslim.zoo.digits_cnn import load_digits_cnn

    loaded = load_digits_cnn(cache_dir=cache)
    before = loaded.task.evaluate(loaded.model)
    cfg = TrainConfig(steps=30, batch_size=64, lr=2e-3, optimizer="adamw", schedule="cosine", seed=1,
                      progress=False)
    res = Trainer(loaded.model, loaded.task, cfg).fit()
    return {"before": before, "after": res.final_metrics, "losses": res.losses, "world_size": res.world_size}


def run_digits_scratch() -> dict[str, Any]:
    """Train digits-cnn from random init briefly: sensitive to per-rank batch-norm statistics."""
    from torchslim.zoo.digits_cnn import build_digits_cnn, digits_task

    torch.manual_seed(0)
    model = build_digits_cnn(None)
    cfg = TrainConfig(steps=60, batch_size=64, lr=4e-3, optimizer="adamw", schedule="cosine", warmup_steps=5,
                      seed=2, progress=False)
    res = Trainer(model, digits_task(), cfg).fit()
    return {"after": res.final_metrics, "losses": res.losses, "world_size": res.world_size}


def run_all(cache: str) -> dict[str, Any]:
    return {"mlp": run_mlp(), "digits": run_digits(cache), "digits_scratch": run_digits_scratch()}


def main(out: str, cache: str) -> None:
    results = run_all(cache)
    rank = int(__import__("os").environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
