from __future__ import annotations

import time

import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.eval.report import LatencyStats
from torchslim.eval.speed import (latency_stats, measure_decode, measure_interleaved, measure_latency, percentile,
                                  shape_speed, to_device)

from .conftest import TinyClassifier, TinyDecodeTask


def test_percentile_and_stats_are_exact() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 5.5
    assert percentile(values, 0.9) == pytest.approx(9.1)
    st = latency_stats([v / 1000 for v in reversed(values)])   # seconds in, ms out, any order
    assert (st.iters, st.min_ms, st.max_ms) == (10, 1.0, 10.0)
    assert st.median_ms == pytest.approx(5.5) and st.mean_ms == pytest.approx(5.5)


def test_sleep_measures_at_least_its_duration() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.005)

    st = measure_latency(fn, warmup=2, iters=5)
    assert len(calls) == 7 and st.iters == 5
    assert st.median_ms >= 5.0
    assert st.p90_ms >= st.median_ms > 0
    assert st.max_ms >= st.p90_ms and st.min_ms <= st.median_ms


def test_sync_runs_inside_every_timed_call() -> None:
    syncs = []
    measure_latency(lambda: None, warmup=1, iters=4, sync=lambda: syncs.append(1))
    assert len(syncs) == 1 + 4


def test_interleaved_runs_round_robin() -> None:
    order: list[str] = []
    out = measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iters=3)
    assert order == ["a", "b"] * 4
    assert set(out) == {"a", "b"} and all(isinstance(s, LatencyStats) and s.iters == 3 for s in out.values())


def test_bad_iteration_counts() -> None:
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, warmup=0, iters=0)
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, warmup=-1, iters=3)


def test_throughput_from_median() -> None:
    st = LatencyStats(iters=3, median_ms=10.0, p90_ms=12.0, mean_ms=11.0, min_ms=9.0, max_ms=13.0, std_ms=1.0)
    s = shape_speed(4, 8, st)
    assert s.samples_per_s == pytest.approx(400.0) and s.tokens_per_s == pytest.approx(3200.0)
    assert shape_speed(4, None, st).tokens_per_s is None


def test_measure_decode_uses_task_decode() -> None:
    d = measure_decode(TinyClassifier(), TinyDecodeTask(), 5)
    assert d.new_tokens == 5 and d.prompt_tokens == 4
    assert d.prefill_ms > 0 and d.decode_tokens_per_s > 0


def test_to_device_nested() -> None:
    batch = {"x": torch.ones(2), "more": [torch.zeros(1), (torch.zeros(1), "s")], "n": 3}
    out = to_device(batch, torch.device("cpu"))
    assert out["n"] == 3 and out["more"][1][1] == "s" and isinstance(out["more"][1], tuple)
