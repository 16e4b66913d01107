"""torchslim's C++ CPU kernels, built once per machine: the fused int4 x int8 GEMV (``csrc/int4_gemv.cpp``) and the
one-pass int4/int8 -> bf16 dequantization (``csrc/dequant_bf16.cpp``), used by :mod:`torchslim.quantization.fused_int4`;
the bf16 GEMV (``csrc/bf16_gemv.cpp``, :mod:`torchslim.runtime.bf16_gemv`). One extension, registered as
``torch.ops.torchslim_cpu``.

It is built on first use with the C++ compiler torch's own extensions use (about 10-30 s, once per machine and
torch version; cached where torch caches its extensions, ``$TORCH_EXTENSIONS_DIR``). Without a compiler, or with
``TORCHSLIM_CPP_KERNELS=0``, :func:`available` is False and every layer keeps torch's kernels. Instruction sets are
chosen inside the kernels at run time, never at build time, so one build serves whichever CPU loads it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("torchslim")

SOURCES = tuple(Path(__file__).with_name("csrc") / f for f in ("int4_gemv.cpp", "dequant_bf16.cpp", "bf16_gemv.cpp"))
# -fopenmp: at::parallel_for is an inline OpenMP loop in torch's headers, so an extension built without it runs every
# layer on one thread whatever torch.get_num_threads() says (measured: 2 threads no faster than 1). The library it
# links, libgomp.so.1, is the one torch has already loaded (same soname), so there is one thread pool.
# -ffp-contract=off: no fused multiply-adds where the source has none (dequantization rounds as torch's ops do).
FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")
_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _build_dir() -> Path:
    """Where torch's extensions are built (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``), one
    folder per source and torch version: not under ``$TORCHSLIM_CACHE``, which tests and users point at fresh
    folders for data, and which would rebuild the kernels each time."""
    code = b"".join(p.read_bytes() for p in SOURCES)
    tag = hashlib.sha256(code + " ".join(FLAGS).encode() + torch.__version__.encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions").expanduser()
    return root / f"torchslim-cpu-kernels-{tag}"


def available() -> bool:
    """Whether the kernels are built and loaded here (building them now, once, if they were not)."""
    if os.environ.get("TORCHSLIM_CPP_KERNELS", "1") == "0":
        return False
    with _LOCK:
        if "ok" not in _STATE:
            _STATE["ok"] = _load()
    return _STATE["ok"]


def _load() -> bool:
    from torch.utils.cpp_extension import load

    folder = _build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from torchslim.core.progress import heartbeat

        built = any(folder.glob("*.so"))
        with heartbeat("building torchslim's C++ kernels (once per machine)") if not built else \
                contextlib.nullcontext():
            load(name="torchslim_cpu_kernels", sources=[str(p) for p in SOURCES], build_directory=str(folder),
                 extra_cflags=list(FLAGS), extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as e:               # no compiler, no ninja, a failed build: torch's kernels stay
        log.warning("torchslim's C++ kernels are unavailable here (%s); layers keep torch's kernels",
                    (str(e).strip().splitlines() or [type(e).__name__])[-1][:200])
        return False
    _register_fake()
    return True


def _register_fake() -> None:
    """Shapes for torch.compile (the kernels run inside compiled decode steps)."""
    @torch.library.register_fake("torchslim_cpu::int4_gemv")
    def _(x, packed, scale, offset, group, level):
        return x.new_empty(x.shape[0], packed.shape[0])

    @torch.library.register_fake("torchslim_cpu::bf16_gemv")
    def _(x, w, bias, level):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("torchslim_cpu::dequant_bf16")
    def _(packed, scale, offset, kp, k_out, shift, bits):
        return scale.new_empty(scale.shape[0], k_out, dtype=torch.bfloat16)
