"""bf16 linear layers at decode on torchslim's own bf16 GEMV, where it measures faster than torch's.

At one row, oneDNN's bf16 matmul reads SmolLM2-135M's weights far below the memory bandwidth (the bf16 decode step
ran at 66% of llama.cpp's F16 one). The GEMV in ``csrc/bf16_gemv.cpp`` streams each weight row once per call,
products and sums in float32 (AVX512-BF16 dot products where the CPU has them), rounded to bf16 once, as a bf16
matmul does; the results differ from oneDNN's only by summation order.

:func:`use_bf16_gemv` times each distinct bf16 ``nn.Linear`` shape at one row, both kernels interleaved, and switches
the layers of the shapes where the GEMV is ``min_gain`` times faster. A switched layer stays an ``nn.Linear`` with
the same parameters (a tied head keeps its tie, the state dict its keys); only its forward changes, and only for
up to :data:`MAX_ROWS` rows without a gradient to record: prefill and training run torch's matmul as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.runtime.cpu_kernels import available
from torchslim.runtime.int8_units import SplitReport, switch_measured

MAX_ROWS = 8          # rows up to which a switched layer uses the GEMV (decode of a few sequences)
WORDS = "bf16 linear layers run on torchslim's bf16 GEMV"


def bf16_matmul(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                use_level: int = -1) -> torch.Tensor:
    """``x2 @ weight.T (+ bias)`` for bf16 ``x2`` ``[M, K]`` and ``weight`` ``[N, K]``. ``use_level``: 2 AVX512-BF16,
    1 AVX512F, 0 plain C++, -1 the best here (a level above the CPU's runs the best it has). Needs
    :func:`~torchslim.runtime.cpu_kernels.available`."""
    return torch.ops.torchslim_cpu.bf16_gemv(x2, weight, bias, use_level)


def level() -> int:
    """The GEMV's instruction set on this CPU: 2 AVX512-BF16, 1 AVX512F, 0 plain C++."""
    return int(torch.ops.torchslim_cpu.bf16_gemv_level())


class GemvLinear(nn.Linear):
    """An ``nn.Linear`` whose forward runs up to :data:`MAX_ROWS` bf16 rows on the GEMV (set by
    :func:`use_bf16_gemv` on an existing layer; :func:`restore` undoes it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if (x2.shape[0] <= MAX_ROWS and x2.dtype == torch.bfloat16 and self.weight.dtype == torch.bfloat16
                and x2.device.type == "cpu"
                and not (torch.is_grad_enabled() and (x2.requires_grad or self.weight.requires_grad))):
            return bf16_matmul(x2, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    @staticmethod
    def concatenated(layers: list[nn.Module]) -> nn.Module:
        """Shared-input layers fused into one plain ``nn.Linear`` (``prepare_fast`` run again measures it anew)."""
        from torchslim.runtime.fuse import concat_linears

        return concat_linears(layers)


def restore(model: nn.Module) -> int:
    """Every switched layer of ``model`` back to a plain ``nn.Linear``; returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is GemvLinear:
            m.__class__ = nn.Linear
            n += 1
    return n


def _can(m: nn.Module) -> bool:
    return (type(m) is nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
            and (m.bias is None or m.bias.dtype == torch.bfloat16))


def _use(m: nn.Module, on: bool) -> None:
    m.__class__ = GemvLinear if on else nn.Linear


def _candidates(m: nn.Module) -> dict:
    w, b = m.weight, m.bias
    return {"bf16": lambda x: F.linear(x, w, b), "gemv": lambda x: bf16_matmul(x, w, b)}


def use_bf16_gemv(model: nn.Module, min_gain: float = 1.1, reps: int = 9) -> SplitReport:
    """Switch the bf16 ``nn.Linear`` layers of ``model`` (on the CPU) whose shape measures ``min_gain`` times faster
    on the GEMV at one row; the others keep torch's matmul. Without the C++ kernels nothing switches."""
    report = SplitReport(words=WORDS, kind="bf16")
    if not available():
        return report
    return switch_measured(model, report, _can, _use, _candidates, "gemv", lambda m: MAX_ROWS, min_gain, reps)
