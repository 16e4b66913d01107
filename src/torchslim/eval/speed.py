"""Latency and throughput measurement.

:func:`measure_latency` times any zero-argument callable with ``time.perf_counter`` after warm-up;
:func:`measure_interleaved` round-robins several callables so that slow drifts (thermal, other
load) hit every variant alike -- use it to compare variants in benchmarks.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn

from torchslim.core.surgery import model_device
from torchslim.core.errors import ConfigError
from torchslim.eval.report import DecodeResult, LatencyStats, ShapeSpeed
from torchslim.tasks.base import Batch, Task


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1) of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> LatencyStats:
    """Summary statistics (in ms) of per-call durations given in seconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    return LatencyStats(
        iters=len(ms),
        median_ms=statistics.median(ms),
        p90_ms=percentile(ms, 0.9),
        mean_ms=statistics.fmean(ms),
        min_ms=ms[0],
        max_ms=ms[-1],
        std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
    )


def _check(warmup: int, iters: int) -> None:
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if iters < 1:
        raise ConfigError(f"iters must be >= 1, got {iters}")


def _timed(fn: Callable[[], Any], sync: Callable[[], None] | None) -> float:
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def measure_latency(fn: Callable[[], Any], warmup: int = 3, iters: int = 10, *,
                    sync: Callable[[], None] | None = None) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then time ``iters`` calls one by one.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs inside each timed call so that asynchronous
    device work is included.
    """
    _check(warmup, iters)
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    return latency_stats([_timed(fn, sync) for _ in range(iters)])


def measure_interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int = 3, iters: int = 10, *,
                        sync: Callable[[], None] | None = None) -> dict[str, LatencyStats]:
    """Time several variants in round-robin order (A B C A B C ...), ``iters`` calls each."""
    _check(warmup, iters)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            times[name].append(_timed(fn, sync))
    return {name: latency_stats(t) for name, t in times.items()}




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
