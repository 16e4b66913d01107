from __future__ import annotations

import time

import torch

from torchslim.eval.memory import RssSampler, cuda_peak, current_rss


def test_sampler_sees_a_transient_allocation() -> None:
    n = 64 * 2**20                                    # 256 MiB of float32
    with RssSampler(interval_s=0.002) as s:
        x = torch.ones(n)
        time.sleep(0.05)
        del x
        time.sleep(0.01)
    res = s.result()
    assert res.rss_before_bytes > 0 and s.samples >= 3
    assert res.peak_rss_delta_bytes >= 200 * 2**20
    assert res.peak_rss_bytes == res.rss_before_bytes + res.peak_rss_delta_bytes
    assert res.interval_ms == 2.0 and res.cuda_max_allocated_bytes is None


def test_current_rss_and_cpu_cuda_peak() -> None:
    assert current_rss() > 10 * 2**20
    assert cuda_peak(torch.device("cpu")) is None
