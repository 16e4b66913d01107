"""Text classification on user-supplied labelled examples (a model with a sequence-classification head).

Metrics: ``top1`` (accuracy in %, primary) and ``loss`` (cross-entropy) on the evaluation examples;
calibration and training batches come from the calibration examples (labelled, for training).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.surgery import model_device
from torchslim.tasks.base import Batch, Task


class TextClassificationTask(Task):
    name = "text-classification"
    metric = "top1"
    higher_is_better = True
    outputs_logits = True
    default_shapes = ((1, 128), (8, 128))

    def __init__(self, tokenizer: Any, eval_texts: list[str], eval_labels: list[int],
                 calib_texts: list[str] | None = None, calib_labels: list[int] | None = None, *,
                 max_length: int = 128, batch_size: int = 16, data_note: str = "") -> None:
        if not eval_texts or len(eval_texts) != len(eval_labels):
            raise ConfigError("text classification needs evaluation texts, each with a label")
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        self.eval = (list(eval_texts), torch.tensor(eval_labels))
        calib_texts = list(calib_texts) if calib_texts else list(eval_texts)
        labels = calib_labels if calib_labels is not None else (eval_labels if calib_texts == list(eval_texts) else None)
        self.calib = (calib_texts, torch.tensor(labels) if labels is not None else None)
        self.data_note = data_note or f"{len(eval_texts)} labelled evaluation texts"

    def _encode(self, texts: list[str], seq_len: int | None = None) -> Batch:
        enc = self.tokenizer(texts, padding="max_length" if seq_len else True, truncation=True,
                             max_length=seq_len or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, model: nn.Module, inputs: Batch) -> Any:
        device = model_device(model)
        return model(**{k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")})

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        texts, labels = self.eval
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                logits = self.forward(model, self._encode(texts[i:i + self.batch_size])).logits.float().cpu()
                y = labels[i:i + self.batch_size]
                correct += int((logits.argmax(-1) == y).sum())
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
        return {"top1": 100.0 * correct / len(texts), "loss": loss / len(texts)}

    def example_inputs(self, batch: int, seq_len: int | None = None) -> Batch:
        texts = self.eval[0]
        return self._encode([texts[i % len(texts)] for i in range(batch)], seq_len or self.max_length)

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 8) -> list[Batch]:
        texts = self.calib[0]
        chosen = [texts[i % len(texts)] for i in range(n_samples)]
        return [self._encode(chosen[i:i + batch_size]) for i in range(0, n_samples, batch_size)]

    def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        texts, labels = self.calib
        if labels is None:
            raise ConfigError("training needs labelled calibration examples (a JSONL file with \"label\" fields)")
        g = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(0, len(texts), (batch_size * world_size,), generator=g)[rank::world_size]
            yield {**self._encode([texts[i] for i in idx.tolist()]), "labels": labels[idx]}

    def loss_from_output(self, output: Any, batch: Batch) -> torch.Tensor:
        logits = output if isinstance(output, torch.Tensor) else output.logits
        return F.cross_entropy(logits.float(), batch["labels"].to(logits.device))
