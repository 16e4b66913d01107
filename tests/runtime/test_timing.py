from __future__ import annotations

import time

import pytest

from torchslim.core.errors import ConfigError
from torchslim.runtime.timing import LatencyStats, latency_stats, measure_interleaved, measure_latency, percentile


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


def test_after_each_runs_after_every_call_outside_the_timing() -> None:
    events: list[str] = []
    st = measure_latency(lambda: events.append("call"), warmup=1, iters=2,
                         after_each=lambda: (events.append("after"), time.sleep(0.02)))
    assert events == ["call", "after"] * 3
    assert st.max_ms < 20                         # the 20 ms after each call is not in any timed call


def test_interleaved_runs_round_robin() -> None:
    order: list[str] = []
    out = measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iters=3)
    assert order == ["a", "b"] * 4
    assert set(out) == {"a", "b"} and all(isinstance(s, LatencyStats) and s.iters == 3 for s in out.values())
    events: list[str] = []
    measure_interleaved({"a": lambda: events.append("a")}, warmup=1, iters=2, after_each=lambda: events.append("+"))
    assert events == ["a", "+"] * 3


def test_bad_iteration_counts() -> None:
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, warmup=0, iters=0)
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, warmup=-1, iters=3)
