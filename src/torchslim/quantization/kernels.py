"""Kernels for quantized linear layers, and the explicit rule that picks one.

Each kernel states what it accepts (format, granularity, device) and what it costs, so the
choice is visible in logs and reports and can be overridden with ``kernel=Kernel.X``.

* ``INT8PACK_MM``: ``torch._weight_int8pack_mm`` (int8 per-channel symmetric weights, bf16
  activations). About 3x fp32 at batch 1 on this CPU; at large batch it falls behind, so rows
  beyond ``LARGE_M`` run as a dequantized bf16 matmul instead. Its input width must be a multiple
  of 16 (measured: other widths give wrong results at 1 row and crash at 2-33): other layers are
  zero-padded.
* ``INT4PACK_MM``: ``torch._weight_int4pack_mm_for_cpu`` (int4 asymmetric, groups of
  32/64/128/256, bf16 activations). About 3.9x fp32 at batch 1; large batches as above. Its output
  width must be a multiple of 16 (a 257-token vocabulary is not): other layers are zero-padded.
* ``DYNAMIC_INT8``: activations quantized per row at run time, int8 x int8 GEMM
  (``torch.ops.quantized.linear_dynamic``, fbgemm/oneDNN). 3.8-4.6x on a large layer. It is
  W8A8Config's kernel (``Int8DynamicLinear``); weight-only layers cannot request it.
* ``DEQUANT``: dequantize the weight on every call, then a dense matmul. Works for every
  format; saves storage but is SLOWER than fp32. Chosen only when nothing else fits, and reported.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import torch

from torchslim.quantization.formats import Format, Granularity, IntFormat, PerChannel, PerGroup

LARGE_M = 32  # rows above which packed weight-only kernels lose to a dense bf16 matmul here
INT8_K_ALIGN = 16   # _weight_int8pack_mm: input width a multiple of 16 (else wrong results, or a crash)
INT4_N_ALIGN = 16   # _convert_weight_to_int4pack_for_cpu: output width a multiple of 16


def pad_to(n: int, align: int) -> int:
    """``n`` rounded up to a multiple of ``align`` (layers of other widths are zero-padded for the kernel)."""
    return -(-n // align) * align


class Kernel(str, enum.Enum):
    AUTO = "auto"
    INT8PACK_MM = "int8pack_mm"
    INT4PACK_MM = "int4pack_mm"
    DYNAMIC_INT8 = "dynamic_int8"
    DEQUANT = "dequant"


@dataclass(frozen=True)
class KernelChoice:
    kernel: Kernel
    reason: str
    slower_than_fp32: bool


def _int4_ok(fmt: Format, gran: Granularity, in_features: int) -> bool:
    return (isinstance(fmt, IntFormat) and fmt.bits == 4 and not fmt.symmetric and isinstance(gran, PerGroup)
            and gran.size in (32, 64, 128, 256))


def _int8_ok(fmt: Format, gran: Granularity) -> bool:
    return isinstance(fmt, IntFormat) and fmt.bits == 8 and fmt.symmetric and isinstance(gran, PerChannel)


def supports(kernel: Kernel, fmt: Format, gran: Granularity, in_features: int, device: str) -> bool:
    if kernel is Kernel.DEQUANT:
        return True
    if kernel is Kernel.INT8PACK_MM:
        return _int8_ok(fmt, gran)
    if kernel is Kernel.INT4PACK_MM:
        return device == "cpu" and _int4_ok(fmt, gran, in_features)
    return False      # DYNAMIC_INT8 quantizes activations too: W8A8Config, not a weight-only layer


def choose(fmt: Format, gran: Granularity, in_features: int, device: str = "cpu",
           requested: Kernel = Kernel.AUTO) -> KernelChoice:
    """The kernel for a weight-only layer: ``requested`` if it fits, else the fastest that does."""
    if requested is not Kernel.AUTO:
        if not supports(requested, fmt, gran, in_features, device):
            from torchslim.core.errors import ConfigError

            extra = " (it quantizes activations: use W8A8Config)" if requested is Kernel.DYNAMIC_INT8 else ""
            raise ConfigError(f"kernel {requested.value} does not support {fmt.name} {type(gran).__name__} weight-only "
                              f"layers on {device}{extra}")
        return KernelChoice(requested, "requested", requested is Kernel.DEQUANT)
    if _int4_ok(fmt, gran, in_features) and device == "cpu":
        return KernelChoice(Kernel.INT4PACK_MM, "packed int4 kernel (bf16 activations)", False)
    if _int8_ok(fmt, gran):
        return KernelChoice(Kernel.INT8PACK_MM, "packed int8 kernel (bf16 activations)", False)
    why = (f"no fast kernel for {fmt.name} {type(gran).__name__}"
           f"{'(' + str(gran.size) + ')' if isinstance(gran, PerGroup) else ''} on {device}: the weight is "
           "dequantized on every call, so this layer will run slower than fp32 (storage is still smaller)")
    return KernelChoice(Kernel.DEQUANT, why, True)


# -- kernel bodies ------------------------------------------------------------------------
def int8pack_mm(x: torch.Tensor, w_int8: torch.Tensor, scale_bf16: torch.Tensor) -> torch.Tensor:
    """``x @ (w_int8 * scale).T`` with bf16 activations; x is 2-D."""
    return torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), w_int8, scale_bf16)


def int4pack_prepare(codes_u4: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel layout from codes ``[N, K]`` (0..15) and per-group ``scale``/``offset`` ``[N, K/g]``.

    The kernel computes ``(q - 8) * scale + zero``; our codes mean ``q * scale + offset``, so
    ``zero = offset + 8 * scale``.
    """
    packed = torch._convert_weight_to_int4pack_for_cpu(codes_u4.to(torch.int32).contiguous(), 2)
    sz = torch.stack([scale, offset + 8 * scale], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, sz


def int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    return torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), packed, group, scales_zeros)


def row_absmax(x2: torch.Tensor) -> torch.Tensor:
    """Per-row ``max |x|`` of a 2-D tensor, ``[M, 1]``, clamped away from 0. ``max(amax, -amin)`` reads ``x``
    twice but allocates nothing of its size: measured 1.6-2x faster than ``x.abs().amax()`` at 4096 rows and
    about 20x faster than ``vector_norm(inf)``, whose CPU reduction is not vectorized. Out of place: the ``[M, 1]``
    results are tiny, and ``amin``'s output must stay intact for autograd (a compiled forward with gradients on)."""
    return torch.maximum(x2.amax(dim=1, keepdim=True), -x2.amin(dim=1, keepdim=True)).clamp_min(1e-8)


@functools.cache
def act_qmax() -> int:
    """Largest uint8 activation code for oneDNN's static int8 kernels. Without AVX512 (e.g. AVX2 CPUs, no
    VNNI) oneDNN multiplies u8 x s8 pairs into int16 with saturation (vpmaddubsw), which corrupts results
    unless activations use 7 bits ("reduce range", as fbgemm does). Cached: it is read on every forward."""
    return 255 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 127


def act_bits_of(info: dict) -> int:
    """A stored layer's activation bits (2-8, default 8), checked: artifacts are untrusted input."""
    bits = info.get("act_bits", 8)
    if type(bits) is not int or not 2 <= bits <= 8:
        from torchslim.core.errors import ArtifactError

        raise ArtifactError(f"layer record: act_bits must be an integer from 2 to 8, got {str(bits)[:40]!r}")
    return bits


def act_qparams(lo: float, hi: float, qmax: int | None = None) -> tuple[float, int]:
    """Asymmetric uint8 ``(scale, zero point)`` for the range ``[lo, hi]`` (widened to contain 0), on
    ``qmax`` steps (default :func:`act_qmax`)."""
    qmax = act_qmax() if qmax is None else qmax
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / qmax
    return scale, int(min(qmax, max(0, round(-lo / scale))))
