"""The allocator policies: bounded_heap gives large freed blocks back to the system at once."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from torchslim.runtime import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only")

# Run in a fresh process: the thresholds are process-wide and the test process's heap is whatever earlier tests left.
SCRIPT = textwrap.dedent("""
    import torch
    from torchslim.runtime.allocator import bounded_heap

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    def churn():
        # glibc's default raises its mmap threshold to each freed block's size: after the first 8 MB free, the
        # next ones come from the heap, and a small block allocated after them pins the heap top
        warm = torch.ones(2 << 20); del warm
        big = [torch.ones(2 << 20) for _ in range(24)]       # 24 x 8 MB
        pin = torch.ones(1024)
        before = rss()
        del big
        return before - rss(), pin

    with bounded_heap() as ok:
        freed, _ = churn()
    print(ok, freed)
""")


def _freed() -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    ok, freed = out.stdout.split()
    return ok == "True", int(freed)


@glibc
def test_bounded_heap_returns_large_freed_blocks():
    ok, freed = _freed()
    assert ok
    assert freed >= 150e6                     # of the 201 MB freed, at least 150 MB leave the process at once

