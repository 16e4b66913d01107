"""Shared pieces of the sparse-training benchmarks: the training recipe, a per-step budget check, the sparsity of
the selected layers after convert, and the artifact round trip."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim.pruning.schedules import MASK

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, write_table  # noqa: E402

RESULTS = ROOT / "docs/results"
from torchslim.train import TrainConfig, TrainHook


def train_config(steps: int, seed: int, batch: int, lr: float, weight_decay: float) -> TrainConfig:
    """The one recipe every variant of a table gets: AdamW, cosine, warm-up 1/30 of the steps."""
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, weight_decay=weight_decay, optimizer="adamw",
                       schedule="cosine", warmup_steps=max(1, steps // 30), eval_every=0, eval_at_end=False,
                       log_every=max(steps, 1), seed=seed, progress=False)


class BudgetCheck(TrainHook):
    """After every optimizer step: each masked layer keeps the count of kept weights it started with, and every
    weight outside its mask is exactly zero. ``violations`` counts the (step, layer) pairs that broke it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.violations = 0

    def on_start(self, trainer: Any) -> None:
        self.counts = {n: int(getattr(m, MASK).sum()) for n, m in _masked(trainer.model)}

    def on_step_end(self, trainer: Any, step: int) -> None:
        self.steps += 1
        for name, m in _masked(trainer.model):
            mask = getattr(m, MASK)
            if int(mask.sum()) != self.counts[name] or bool((m.weight.detach()[~mask] != 0).any()):
                self.violations += 1


def _masked(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if getattr(m, MASK, None) is not None]


def effective_weight(m: nn.Module) -> torch.Tensor:
    """The weight a layer computes with (a ``SparseLinear``'s weight times its mask)."""
    mask = getattr(m, "mask", None)
    w = m.weight.detach()
    return w * mask if isinstance(mask, torch.Tensor) and mask.shape == w.shape else w


def zero_fraction(model: nn.Module, names: list[str]) -> tuple[float, int]:
    """Fraction of zero weights over the named layers, and how many are nonzero."""
    ws = [effective_weight(model.get_submodule(n)) for n in names]
    total, nonzero = sum(w.numel() for w in ws), sum(int((w != 0).sum()) for w in ws)
    return 1.0 - nonzero / total, nonzero


def roundtrip(model: nn.Module, source: dict, x: Any, forward: Any) -> str:
    """Save, load back (from the zoo skeleton), compare outputs bit for bit; the artifact's size."""
    with tempfile.TemporaryDirectory() as d:
        path = torchslim.save(model, Path(d) / "a", source=source)
        size = sum(p.stat().st_size for p in path.iterdir())
        back = torchslim.load(path)
        with torch.no_grad():
            same = torch.equal(forward(back.eval(), x), forward(model.eval(), x))
    return f"{'identical' if same else 'DIFFERENT'} outputs after torchslim.save / torchslim.load ({size / 1e3:.1f} KB)"


def publish(name: str, title: str, intro: str, columns: list[str], rows: list[Row], notes: list[str]) -> None:
    """Write docs/results/sparse_training_<name>.md (+ .json) with its regeneration command, and print it."""
    out = RESULTS / f"sparse_training_{name}.md"
    write_table(out, title, f"{intro} Regenerate: `python benchmarks/sparse_training/{name}.py`.", columns, rows, notes)
    print(out.read_text())
