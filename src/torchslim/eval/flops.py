"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

The counter has formulas for matrix multiplies, convolutions and attention
(``mm``/``addmm``/``bmm``/``conv``/``scaled_dot_product_attention`` ...), counting
``2 * M * N * K`` per matmul. Element-wise ops (activations, norms, softmax) are not counted:
they are a small share of transformer and CNN compute. Every counted op is a sequence of
multiply-accumulates, so **MACs = FLOPs / 2**. Ops without a formula (e.g. a custom quantized
kernel) count as zero; such a model's figure is a lower bound, noted in the result.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.eval.report import ComputeResult
from torchslim.tasks.base import Task


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
    """``(total FLOPs, FLOPs per module name)`` of one call ``fn(*args, **kwargs)``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(*args, **kwargs)
    per_module = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items() if name != "Global"
    }
    return int(counter.get_total_flops()), per_module


def _has_custom_layers(model: nn.Module) -> bool:
    return any(callable(getattr(m, "torchslim_layer_info", None)) for m in model.modules())


def measure_flops(model: nn.Module, task: Task, inputs: dict[str, Any], batch: int,
                  seq_len: int | None, *, by_module: bool = True) -> ComputeResult:
    """FLOPs and MACs of one forward of ``task.forward(model, inputs)``.

    A failure of the counter (an op it cannot trace) is recorded in ``note``, not raised.
    """
    try:
        total, per_module = count_flops(task.forward, model, inputs)
    except Exception as e:  # noqa: BLE001 - a measurement failure is reported, not fatal
        return ComputeResult(batch=batch, seq_len=seq_len, flops=None, macs=None,
                             note=f"FLOP counting failed: {type(e).__name__}: {e}".splitlines()[0])
    note = "matmul/conv/attention FLOPs only (element-wise ops not counted); MACs = FLOPs / 2"
    if _has_custom_layers(model):
        note += "; custom (torchslim) layers may run kernels the counter does not see"
    return ComputeResult(batch=batch, seq_len=seq_len, flops=total, macs=total // 2,
                         by_module=per_module if by_module else {}, note=note)
