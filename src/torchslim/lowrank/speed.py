"""Is a factorized layer faster than the dense one it replaces? Measured per shape, at conversion.

Fewer weights mean fewer FLOPs and fewer bytes read, but two matmuls instead of one, and the smaller the layer the
more a second kernel launch costs; whether ``[out, in]`` at rank ``r`` wins depends on the shape, the rank, the
row count (one token at decode, hundreds at prefill), the dtype, the CPU and the threads. So each distinct
``(out, in, r, dtype, threads)`` is timed once per process, dense ``F.linear`` against the two factor matmuls on
random tensors, interleaved (A B A B ...) so a busy machine slows both alike, at :data:`ROWS` rows.

The rule (documented, and written into every layer's record): a layer is **faster** when its median time is at
most ``1/FASTER`` of the dense layer's at every measured row count; otherwise the report says "smaller, not
faster" (and ``LowRankConfig.only_faster`` keeps such layers dense).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

ROWS = (1, 256)          # one decode token; a prefill-sized block of rows
FASTER = 1.05            # speed-up needed at every row count to call a layer faster (5%: above timing noise)
ITERS = 9


@lru_cache(maxsize=1024)
def _measure(out_f: int, in_f: int, rank: int, dtype: torch.dtype, threads: int, device: str,
             rows: tuple[int, ...], iters: int) -> tuple[tuple[int, float, float], ...]:
    from torchslim.runtime.timing import measure_interleaved

    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g).to(device=device, dtype=dtype)
    up = torch.randn(out_f, rank, generator=g).to(device=device, dtype=dtype)
    down = torch.randn(rank, in_f, generator=g).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    out = []
    with torch.inference_mode():
        for m in rows:
            x = torch.randn(m, in_f, generator=g).to(device=device, dtype=dtype)
            got = measure_interleaved({"dense": lambda: F.linear(x, w),
                                       "lowrank": lambda: F.linear(F.linear(x, down), up)},
                                      warmup=2, iters=iters, sync=sync)
            out.append((m, got["dense"].median_ms / 1e3, got["lowrank"].median_ms / 1e3))
    return tuple(out)


def measure_shape(out_f: int, in_f: int, rank: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  rows: tuple[int, ...] = ROWS, iters: int = ITERS) -> dict[str, Any]:
    """``{"rows": [{"rows", "dense_ms", "lowrank_ms", "speedup"}, ...], "faster": bool, "threads", "note"}`` for one
    shape (plain JSON: it goes into the layer's artifact record)."""
    threads = torch.get_num_threads()
    got = _measure(out_f, in_f, rank, dtype, threads, device, tuple(rows), iters)
    per = [{"rows": m, "dense_ms": d * 1e3, "lowrank_ms": lr * 1e3, "speedup": d / lr if lr > 0 else 1e9}
           for m, d, lr in got]
    faster = all(v["speedup"] >= FASTER for v in per)
    shown = ", ".join(f"{v['speedup']:.2f}x at {v['rows']} row{'s' if v['rows'] > 1 else ''}" for v in per)
    dt = str(dtype).removeprefix("torch.")
    return {"rows": per, "faster": faster, "threads": threads,
            "note": f"measured against dense {dt} on {device} ({threads} threads): {shown}"
                    + ("" if faster else " (smaller, not faster)")}


def clear_cache() -> None:
    _measure.cache_clear()
