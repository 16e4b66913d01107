from __future__ import annotations

import pytest
import torch

from torchslim.eval.report import LatencyStats
from torchslim.eval.speed import measure_decode, shape_speed, to_device

from .conftest import TinyClassifier, TinyDecodeTask


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
