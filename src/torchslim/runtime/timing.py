"""Timing primitives: one function timed alone, or several interleaved (A B C A B C ...) so that a busy machine
slows all alike. Shared by the evaluation harness and the per-machine kernel table."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torchslim.core.errors import ConfigError


@dataclass
class LatencyStats:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    iters: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float


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
                    sync: Callable[[], None] | None = None,
                    after_each: Callable[[], None] | None = None) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then time ``iters`` calls one by one.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs inside each timed call so that asynchronous
    device work is included. ``after_each`` (a progress update) runs after every call, outside the timing.
    """
    _check(warmup, iters)
    after = after_each or (lambda: None)
    for _ in range(warmup):
        fn()
        after()
    if sync is not None:
        sync()
    seconds = []
    for _ in range(iters):
        seconds.append(_timed(fn, sync))
        after()
    return latency_stats(seconds)


def measure_interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int = 3, iters: int = 10, *,
                        sync: Callable[[], None] | None = None,
                        after_each: Callable[[], None] | None = None) -> dict[str, LatencyStats]:
    """Time several variants in round-robin order (A B C A B C ...), ``iters`` calls each; ``after_each`` (a
    progress update) runs after every call, outside the timing."""
    _check(warmup, iters)
    after = after_each or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            after()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            times[name].append(_timed(fn, sync))
            after()
    return {name: latency_stats(t) for name, t in times.items()}
