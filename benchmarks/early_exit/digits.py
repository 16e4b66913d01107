"""Early exit on digits-cnn (stem + two residual stages): exit heads after the stem and after stage 1, trained by
distillation from the final layer on the training images minus a held-out tenth (the validation split that picks
each policy's setting). Writes docs/results/early_exit_digits.md (+ .json). Run under
``flock /tmp/torchslim-bench.lock``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RES, choose, full_logits, say, timed, write  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.select import Selector  # noqa: E402
from torchslim.early_exit import EarlyExitConfig, exit_heads  # noqa: E402
from torchslim.tasks.classification import ClassificationTask  # noqa: E402

EXIT_TRAIN = torchslim.TrainConfig(steps=400, batch_size=128, lr=3e-3, warmup_steps=20, progress=False,
                                   eval_at_end=False)
BLOCKS = Selector(include=("stem", "stages.0"))
# share of the full model's multiply-adds computed up to each exit (stem 288, stage 1 18,432, stage 2 14,336 per
# input pixel; the heads are negligible): the proxy the validation sweep ranks settings by
COST = [0.01, 0.57, 1.0]


def call(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def split(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    loaded = torchslim.load_model("digits-cnn")
    model, task = loaded.model.eval(), loaded.task
    n_val = len(task.train_y) // 10
    tx, ty, vx, vy = task.train_x[:-n_val], task.train_y[:-n_val], task.train_x[-n_val:], task.train_y[-n_val:]
    say(f"training exit heads ({EXIT_TRAIN.steps} steps)")
    torchslim.early_exit_(model, EarlyExitConfig(blocks=BLOCKS, hidden=64),
                          task=ClassificationTask(tx, ty, vx, vy), train=EXIT_TRAIN)
    model.eval()
    n = len(exit_heads(model))
    val = split(vx, vy, 1)
    full_val = full_logits(model, val, call)
    picked = choose(model, val, full_val, COST)
    rows = timed(model, picked, {"1": split(task.eval_x, task.eval_y, 1), "64": split(task.eval_x, task.eval_y, 64)},
                 call, n, args.rounds)
    write(RES / "early_exit_digits.md", "Early exit: digits-cnn",
          f"digits-cnn (8x8 digits, {len(task.eval_y)} test images) with exit heads after the stem and after stage 1 "
          f"(2x2-grid pooled features, a 64-wide tanh layer), trained by distillation from the final layer "
          f"({EXIT_TRAIN.steps} steps, model frozen) on the training images minus a held-out tenth "
          f"({n_val} images: the validation split). Each policy's setting is the cheapest whose validation accuracy "
          f"is within 0.5 points of the full model's; times are for the whole test split, interleaved with the "
          f"plain model, medians of {args.rounds} rounds.",
          rows, ["speed-up = full model's median time / the variant's (same batches, same process)",
                 "exits: images leaving after the stem, after stage 1, then at the final layer",
                 "the backbone was trained on all training images, so the validation split is easier for it than "
                 "the test split; settings may be slightly bolder than unseen data warrants"],
          {"full_val": full_val, "picked": {k: {**v, "policy": str(v["policy"])} for k, v in picked.items()}})


if __name__ == "__main__":
    main()
