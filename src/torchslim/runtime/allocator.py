"""Keep freed activation memory in the process instead of handing it back to the OS on every forward.

glibc's ``malloc`` serves blocks above a (dynamic, at most 32 MiB) threshold with ``mmap`` and returns them
with ``munmap``, and trims the heap top above 128 KiB. A forward at batch 32 x 128 allocates and frees
tens of activation tensors of 6-25 MB, so each call pays fresh page faults and the kernel zeroing those
pages: measured on a 2-core EPYC, MiniLM at 32 x 128 took 550 ms in fp32 and 345 ms in W8A8 with the
defaults, 480 ms and 200 ms with freed memory kept. This is what jemalloc/tcmalloc preloading does for
PyTorch CPU inference, done in-process with ``mallopt`` so nothing needs to be installed.

It is process-wide and one-way (memory is reused, not returned: resident size stays at the peak), so it
is opt-in: the encoder fast path asks for it, and benchmarks apply it before timing every variant,
baseline included.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("torchslim")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30      # mallopt takes an int; 1 GiB covers any single activation of the models we run
_DEFAULT_MMAP = 128 << 10     # glibc's starting thresholds (the mmap one then grows with freed blocks, to 32 MiB)
_DEFAULT_TRIM = 128 << 10
_state: dict[str, bool] = {}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so freed blocks are reused. True when applied (now or before);
    False where the C library is not glibc (macOS, Windows, musl), with the reason logged once."""
    if "applied" in _state:
        return _state["applied"]
    libc = _glibc()
    ok = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT) == 1)
    if ok:
        log.info("allocator: freed activation memory is kept for reuse (glibc mallopt)")
    else:
        log.info("allocator: not glibc; large activations keep the C library's default allocation")
    _state["applied"] = ok
    return ok


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS now (glibc ``malloc_trim(0)``): after a one-off large free,
    such as the whole parameters FSDP replaced by their shards, which would otherwise stay resident. False where
    the C library is not glibc."""
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim and trim(0))


@contextmanager
def bounded_heap(mmap_threshold: int = 1 << 20) -> Iterator[bool]:
    """Within the block, every allocation of ``mmap_threshold`` bytes or more is its own mapping, unmapped the
    moment it is freed, and the heap top is trimmed at 128 KiB: the opposite of :func:`retain_freed_memory`, for
    runs whose peak resident size is the point (layer-wise onloading). glibc's default raises its mmap threshold
    to the size of each large block freed (up to 32 MiB), after which activations of a few to 32 MB come from the
    heap, whose freed space stays resident while anything above it lives: on SmolLM2-135M onloaded GPTQ that
    held a few hundred MB of dead activations. Yields whether it applied (glibc only); on exit the thresholds go
    back to those in force before (glibc's starting values, fixed, or retain_freed_memory's)."""
    libc = _glibc()
    ok = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM) == 1)
    try:
        yield ok
    finally:
        if libc is not None and ok:
            retained = _state.get("applied", False)
            libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT if retained else _DEFAULT_MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT if retained else _DEFAULT_TRIM)
            libc.malloc_trim(0)
