"""The Task contract: what evaluation, calibration and training need to know about a model's job.

A task owns its data (evaluation split, and a disjoint calibration/training split) and its
metric. Everything that runs a model (``torchslim.eval``, calibration, the training engine)
goes through these methods, so a user can plug in any ``nn.Module`` with their own task.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

Batch = dict[str, Any]


@dataclass(frozen=True)
class DecodeStats:
    """Autoregressive generation speed, measured by a task that supports decoding."""

    prompt_tokens: int
    new_tokens: int
    prefill_s: float        # time to process the prompt and emit the first token
    decode_s: float         # time for the remaining ``new_tokens - 1`` tokens
    tokens_per_s: float     # (new_tokens - 1) / decode_s


class Task(ABC):
    """Base class of every task.

    Attributes:
        name: short identifier (``"causal-lm"``, ``"sentence-embedding"``, ``"image-classification"``).
        metric: key of the primary quality metric in :meth:`evaluate`'s result.
        higher_is_better: direction of the primary metric.
        outputs_logits: whether the model's output holds logits (a distribution over classes or tokens).
        default_shapes: ``(batch, seq_len)`` pairs for latency; ``seq_len`` is ``None`` for non-sequence inputs.
        data_note: where the evaluation and calibration data come from, for reports.
    """

    name: str = "task"
    metric: str = "score"
    higher_is_better: bool = True
    outputs_logits: bool = False       # the model's output is unnormalized log-probabilities (classes, tokens)
    default_shapes: tuple[tuple[int, int | None], ...] = ((1, None),)
    data_note: str = ""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Quality metrics on the evaluation split; includes ``self.metric``."""

    @abstractmethod
    def example_inputs(self, batch: int, seq_len: int | None = None) -> Batch:
        """Keyword inputs for ``model(**inputs)`` of the given shape, from real data where possible."""

    @abstractmethod
    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[Batch]:
        """Batches from the calibration split (disjoint from the evaluation split)."""

    def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """An endless, deterministic stream of training batches (shard ``rank`` of ``world_size``)."""
        raise NotImplementedError(f"{type(self).__name__} does not provide training data")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The task loss of ``model`` on a training batch (a scalar tensor):
        :meth:`loss_from_output` of :meth:`train_forward`."""
        return self.loss_from_output(self.train_forward(model, batch), batch)

    def train_forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output on a training batch, as :meth:`loss_from_output` reads it."""
        return self.forward(model, batch)

    def loss_from_output(self, output: Any, batch: Batch) -> torch.Tensor:
        """The task loss given an existing output for ``batch`` (a model output, or a logits-like tensor from
        another head): label shifting, masks and targets stay the task's business, so hooks can reuse them."""
        raise NotImplementedError(f"{type(self).__name__} does not define a training loss")

    @property
    def supports_decode(self) -> bool:
        return False

    def decode(self, model: nn.Module, new_tokens: int = 32) -> DecodeStats:
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def forward(self, model: nn.Module, inputs: Batch) -> Any:
        """Run the model on inputs from :meth:`example_inputs` (override if the call is not ``model(**inputs)``)."""
        return model(**inputs)

