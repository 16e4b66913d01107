"""Latency and throughput measurement.

:func:`measure_latency` times any zero-argument callable with ``time.perf_counter`` after warm-up;
:func:`measure_interleaved` round-robins several callables so that slow drifts (thermal, other
load) hit every variant alike -- use it to compare variants in benchmarks.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from torchslim.core.surgery import model_device  # noqa: F401 - re-exported (eval.harness)
from torchslim.eval.report import DecodeResult, LatencyStats, ShapeSpeed
from torchslim.runtime.timing import latency_stats, measure_interleaved, measure_latency, percentile  # noqa: F401
from torchslim.tasks.base import Batch, Task


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor (in dicts, lists, tuples) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def forward_fn(model: nn.Module, task: Task, inputs: Batch) -> Callable[[], Any]:
    """A zero-argument callable running one inference-mode forward through the task."""
    def run() -> Any:
        with torch.inference_mode():
            return task.forward(model, inputs)
    return run


def shape_speed(batch: int, seq_len: int | None, stats: LatencyStats) -> ShapeSpeed:
    """Throughput figures derived from the median latency."""
    per_s = 1000.0 / max(stats.median_ms, 1e-9)
    return ShapeSpeed(
        batch=batch, seq_len=seq_len, latency=stats,
        samples_per_s=batch * per_s,
        tokens_per_s=None if seq_len is None else batch * seq_len * per_s,
    )


def measure_decode(model: nn.Module, task: Task, new_tokens: int) -> DecodeResult:
    """Generation speed from ``task.decode``: prefill time and steady-state tokens/s."""
    with torch.inference_mode():
        st = task.decode(model, new_tokens)
    return DecodeResult(
        prompt_tokens=int(st.prompt_tokens), new_tokens=int(st.new_tokens),
        prefill_ms=float(st.prefill_s) * 1000.0, decode_tokens_per_s=float(st.tokens_per_s),
    )
