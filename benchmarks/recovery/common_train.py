"""What every recovery benchmark records about a training run: wall time, peak memory, samples and tokens seen."""
from __future__ import annotations

import os
import resource
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the process's peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(values: dict[str, Any], steps: int, batch: int, tokens_per_sample: int | None = None) -> Iterator[None]:
    """Fill ``values`` with the block's wall time, its peak resident memory (sampled every 50 ms), and the
    samples (and tokens) it trained on."""
    peak, stop = [rss_mb()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mb())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    try:
        yield
    finally:
        values["train s"] = time.perf_counter() - t
        stop.set()
        th.join()
        values["peak MB"] = max(peak[0], rss_mb())
        values["samples seen"] = steps * batch
        if tokens_per_sample:
            values["tokens seen"] = steps * batch * tokens_per_sample
