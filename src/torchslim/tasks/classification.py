"""Classification on in-memory tensors: top-1 accuracy, cross-entropy, deterministic sharded batches.

Model call convention: ``model(x=images)`` -> logits ``[batch, classes]`` (a tuple's first item
or an object's ``.logits`` also work). :meth:`ClassificationTask.example_inputs` returns
``{"x": images}`` so ``model(**inputs)`` is the same call. A model whose ``forward`` has no
``x`` parameter (e.g. ``nn.Sequential``) is called positionally instead.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.tasks.base import Batch, Task

_CALIBRATION_SEED = 1234
_KW_CACHE: dict[type, bool] = {}


class ClassificationTask(Task):
    """Image (or any tensor) classification with a training split and a disjoint evaluation split.

    Metrics: ``top1`` (accuracy in %, primary, higher is better) and ``loss`` (mean cross-entropy).
    Calibration and training batches come from the training split only.
    """

    name = "image-classification"
    metric = "top1"
    higher_is_better = True
    outputs_logits = True
    default_shapes = ((1, None), (32, None))

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        eval_x: torch.Tensor,
        eval_y: torch.Tensor,
        *,
        eval_batch_size: int = 512,
        data_note: str = "",
    ) -> None:
        self.train_x, self.train_y = _check_split(train_x, train_y, "train")
        self.eval_x, self.eval_y = _check_split(eval_x, eval_y, "eval")
        if self.train_x.shape[1:] != self.eval_x.shape[1:]:
            raise ConfigError(f"train inputs {tuple(self.train_x.shape[1:])} and eval inputs "
                              f"{tuple(self.eval_x.shape[1:])} have different shapes")
        if eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.eval_batch_size = eval_batch_size
        self.num_classes = int(max(self.train_y.max(), self.eval_y.max())) + 1
        self.data_note = data_note or (
            f"{len(self.train_y)} training / {len(self.eval_y)} evaluation samples, {self.num_classes} classes"
        )

    # -- Task contract ---------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``top1`` accuracy (%) and mean cross-entropy ``loss`` on the evaluation split."""
        was_training = model.training
        model.eval()
        correct, loss_sum = 0, 0.0
        try:
            with torch.no_grad():
                for i in range(0, len(self.eval_y), self.eval_batch_size):
                    x, y = self.eval_x[i:i + self.eval_batch_size], self.eval_y[i:i + self.eval_batch_size]
                    logits = self.logits(model, x).float()
                    y = y.to(logits.device)
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(dim=-1) == y).sum())
        finally:
            model.train(was_training)
        n = len(self.eval_y)
        return {"top1": 100.0 * correct / n, "loss": loss_sum / n}

    def example_inputs(self, batch: int, seq_len: int | None = None) -> Batch:
        """``{"x": images}``: ``batch`` real training images (repeated if the split is smaller)."""
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        idx = torch.arange(batch) % len(self.train_y)
        return {"x": self.train_x[idx].clone()}

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[Batch]:
        """``{"x": images}`` batches of a fixed random subset of the training split."""
        if n_samples < 1 or batch_size < 1:
            raise ConfigError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
        g = torch.Generator().manual_seed(_CALIBRATION_SEED)
        idx = torch.randperm(len(self.train_y), generator=g)[:n_samples]
        return [{"x": self.train_x[idx[i:i + batch_size]]} for i in range(0, len(idx), batch_size)]

    def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Endless ``{"x", "y"}`` batches of ``batch_size`` samples: shard ``rank`` of ``world_size``.

        One index stream (epoch after epoch of ``randperm`` seeded by ``seed``) is cut into
        global batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th slice. So
        N processes with ``batch_size`` B see exactly the batches of 1 process with N*B, and two
        consecutive batches of B equal one batch of 2B (gradient accumulation).
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        return self._stream(batch_size, seed, rank, world_size)

    def train_forward(self, model: nn.Module, batch: Batch) -> Any:
        return self.logits(model, batch["x"])

    def loss_from_output(self, output: Any, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the output's logits against ``batch["y"]``."""
        logits = as_logits(output)
        return F.cross_entropy(logits.float(), batch["y"].to(logits.device))

    def forward(self, model: nn.Module, inputs: Batch) -> Any:
        return call_model(model, inputs["x"])

    # -- helpers ---------------------------------------------------------------------------
    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` on ``x`` (moved to the model's device and float dtype)."""
        return as_logits(call_model(model, _to_model(model, x)))

    def _stream(self, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Batch]:
        n, global_bs = len(self.train_y), batch_size * world_size
        g = torch.Generator().manual_seed(seed)
        buf = torch.empty(0, dtype=torch.long)
        while True:
            while len(buf) < global_bs:
                buf = torch.cat([buf, torch.randperm(n, generator=g)])
            idx = buf[rank * batch_size:(rank + 1) * batch_size]
            buf = buf[global_bs:]
            yield {"x": self.train_x[idx], "y": self.train_y[idx]}


def call_model(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x=x)``, or ``model(x)`` when the (unwrapped) forward has no ``x`` parameter."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    kind = type(inner)
    if kind not in _KW_CACHE:
        try:
            params = inspect.signature(inner.forward).parameters
            _KW_CACHE[kind] = "x" in params   # a **kwargs forward (HF models) takes its input positionally
        except (TypeError, ValueError):
            _KW_CACHE[kind] = False
    return model(x=x) if _KW_CACHE[kind] else model(x)


def as_logits(out: Any) -> torch.Tensor:
    """The logits tensor inside a model output (tensor, ``.logits``, or first item of a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TorchSlimError(f"classification model returned {type(out).__name__}, expected logits")


def _to_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is None:
        return x
    return x.to(device=ref.device, dtype=ref.dtype if x.is_floating_point() else x.dtype)


def _check_split(x: torch.Tensor, y: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"{split} inputs and labels must be tensors")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{split} split: expected x [N, ...] and y [N] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or int(y.min()) < 0:
        raise ConfigError(f"{split} labels must be non-negative integers")
    return x.contiguous(), y.long().contiguous()
