"""Fused int4 x int8 kernel for few rows (decode): the weight's 4-bit codes multiplied on the integer units.

``torch.ops.aten._weight_int4pack_mm`` converts every weight to bf16 and multiplies in floating point, and torch
has no kernel at all for symmetric int4 codes (their layers dequantize the whole weight per call). This kernel
(``csrc/int4_gemv.cpp``) multiplies 32 codes at a time by one integer dot-product instruction (AVX512-VNNI
``vpdpbusd``; AVX2 ``vpmaddubsw``; plain C++ elsewhere, chosen at run time) with the activation quantized per block
of 32 inputs in two int8 parts, the value and its rounding residual (about 15 bits: SmolLM2 int4's perplexity
stays within 0.1% of the same model computed in fp32; one int8 part, as llama.cpp's Q8_0 activations, cost 4%).
The offset of asymmetric codes multiplies the exact float sum of the activation over its group. Measured at one
row on an AMX Xeon, 2 threads, SmolLM2-135M's layer shapes: 1.0-1.3x ``_weight_int4pack_mm`` on layers of 0.3 MB
and more (the 512-bit path: two blocks per instruction, codes unpacked by one shift and mask), slower on the
smallest (a fixed cost of about 5 us a call); 18x the dequantized path of symmetric int4.

The same extension dequantizes stored int4 and int8 codes to bf16 in one pass (:func:`dequantize_bf16`), for the
many-row matmuls of prefill, which run in bf16 on the weight dequantized per call: bit for bit the tensor-op
dequantization, 20x+ faster on SmolLM2's layers (512-bit path only; elsewhere the tensor ops stay).

It is a C++ extension built on first use with the C++ compiler torch's own extensions use (about 10-30 s, once per
machine and torch version; cached where torch caches its extensions, ``$TORCH_EXTENSIONS_DIR``). Without a compiler, or with
``TORCHSLIM_CPP_KERNELS=0``, :func:`available` is False and layers keep their other kernels. Pure kernel math:
which layers use it is the runtime's decision, measured (:func:`torchslim.runtime.int8_units.use_int4_units`).
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

SOURCE = Path(__file__).with_name("csrc") / "int4_gemv.cpp"
BLOCK = 32           # inputs per activation block and per 16 packed weight bytes
# -fopenmp: at::parallel_for is an inline OpenMP loop in torch's headers, so an extension built without it runs every
# layer on one thread whatever torch.get_num_threads() says (measured: 2 threads no faster than 1). The library it
# links, libgomp.so.1, is the one torch has already loaded (same soname), so there is one thread pool.
FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")  # no fused multiply-adds where the source has none: dequantization rounds as torch does
MAX_ROWS = 8         # rows up to which a layer with the kernel uses it (decode of a few sequences)
_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _build_dir() -> Path:
    """Where torch's extensions are built (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``), one
    folder per source and torch version: not under ``$TORCHSLIM_CACHE``, which tests and users point at fresh
    folders for data, and which would rebuild the kernel each time."""
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions").expanduser()
    return root / f"torchslim-int4-gemv-{tag}"


def available() -> bool:
    """Whether the kernel is built and loaded here (building it now, once, if it was not)."""
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
        with heartbeat("building the fused int4 kernel (C++, once per machine)") if not built else \
                contextlib.nullcontext():
            load(name="torchslim_int4_gemv", sources=[str(SOURCE)], build_directory=str(folder),
                 extra_cflags=list(FLAGS), extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as e:               # no compiler, no ninja, a failed build: the other kernels stay
        log.warning("the fused int4 kernel is unavailable here (%s); int4 layers keep torch's kernels",
                    (str(e).strip().splitlines() or [type(e).__name__])[-1][:200])
        return False
    _register_fake()
    return True


def _register_fake() -> None:
    @torch.library.register_fake("torchslim_cpu::int4_gemv")
    def _(x, packed, scale, offset, group, level):
        return x.new_empty(x.shape[0], packed.shape[0])

    @torch.library.register_fake("torchslim_cpu::dequant_bf16")
    def _(packed, scale, offset, kp, k_out, shift, bits):
        return scale.new_empty(scale.shape[0], k_out, dtype=torch.bfloat16)


def level() -> int:
    """The instruction set the kernel uses on this CPU: 3 AVX512-VNNI on 512-bit registers, 2 AVX512-VNNI on 256-bit
    registers, 1 AVX2, 0 plain C++."""
    return int(torch.ops.torchslim_cpu.int4_gemv_level())


def supports(in_features: int, group: int) -> bool:
    """Whether a layer of ``in_features`` (padded) inputs in groups of ``group`` fits the kernel's blocks."""
    return group % BLOCK == 0 and in_features % group == 0


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes ``[N, K]`` (0..15) as ``[N, K / 2]`` bytes, per pair of blocks of 32 inputs: byte ``j``
    of a pair's 32 holds input ``j`` in its low nibble and input ``j + 32`` in its high nibble, so one mask gives the
    first block's codes in input order and one shift the second's. A last, unpaired block (``K / 32`` odd) keeps
    16 bytes: input ``j`` low, ``j + 16`` high."""
    n, k = codes.shape
    u = codes.to(torch.uint8)
    pairs = (k // BLOCK) // 2 * 2 * BLOCK
    head = u[:, :pairs].reshape(n, -1, 2, BLOCK)
    parts = [(head[:, :, 0] | (head[:, :, 1] << 4)).reshape(n, pairs // 2)]
    if pairs < k:
        tail = u[:, pairs:].reshape(n, 2, BLOCK // 2)
        parts.append(tail[:, 0] | (tail[:, 1] << 4))
    return torch.cat(parts, dim=1).contiguous()


def prepare(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, signed_min: int | None,
            ) -> dict[str, Any]:
    """The kernel's operands from a layer's codes ``[N, K]``, per-group ``scale``/``offset`` ``[N, G]``:
    signed codes (``signed_min``, e.g. -8) are shifted to unsigned and the shift folded into the offset."""
    scale = scale.float().contiguous()
    if signed_min is not None:
        codes = codes.to(torch.int16) - signed_min
        shift = scale * float(signed_min)
        offset = shift if offset is None else offset.float() + shift
    return {"packed": pack(codes), "scale": scale, "offset": None if offset is None else offset.float().contiguous(),
            "group": codes.shape[1] // scale.shape[1]}


def matmul(x2: torch.Tensor, ops: dict[str, Any], use_level: int = -1) -> torch.Tensor:
    """``x2 @ W.T`` in ``x2``'s dtype (float32 or bfloat16) for a 2-D ``x2`` of any rows, whose inputs may stop
    short of the weight's padded width (the rest are zeros). Each row's result depends on that row only, so a
    long input computes what decoding it row by row would. ``use_level``: force a lower instruction set (tests);
    -1 the best here."""
    return torch.ops.torchslim_cpu.int4_gemv(x2, ops["packed"], ops["scale"], ops["offset"], ops["group"],
                                             use_level)


def dequantize_bf16(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, padded_in: int,
                    in_features: int, signed: bool, bits: int = 4) -> torch.Tensor:
    """A stored int4 or int8 layer's weight as bf16 ``[N, in_features]`` in one pass over its codes: ``packed``
    holds the codes as :func:`torchslim.quantization.packing.pack_bits` writes them (rows of ``padded_in``),
    ``scale`` / ``offset`` ``[N, G]``; ``signed``: symmetric codes (stored shifted by half the range). Bit for bit
    what the tensor-op dequantization gives. Needs :func:`dequantizes`."""
    shift = -(1 << (bits - 1)) if signed else 0
    return torch.ops.torchslim_cpu.dequant_bf16(packed, scale.float(), None if offset is None else offset.float(),
                                                padded_in, in_features, shift, bits)


def dequantizes(padded_in: int, groups: int, bits: int = 4) -> bool:
    """Whether :func:`dequantize_bf16` takes a layer: 4 or 8 bits, int4 rows and groups of an even number of
    codes (whole bytes), on a CPU with the 512-bit path (elsewhere its plain C++ loop measured no faster than
    the tensor ops)."""
    whole = bits == 8 or (padded_in % 2 == 0 and (padded_in // max(groups, 1)) % 2 == 0)
    return (bits in (4, 8) and groups > 0 and padded_in % groups == 0 and whole and available() and level() >= 3)
