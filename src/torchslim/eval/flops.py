"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

The counter has formulas for matrix multiplies, convolutions and attention
(``mm``/``addmm``/``bmm``/``conv``/``scaled_dot_product_attention`` ...), counting
``2 * M * N * K`` per matmul. Element-wise ops (activations, norms, softmax) are not counted:
they are a small share of transformer and CNN compute. Every counted op is a sequence of
multiply-accumulates, so **MACs = FLOPs / 2**. Weight-only packed matmuls
(``_weight_int4pack_mm[_for_cpu]``, ``_weight_int8pack_mm``) and ``quantized::linear[_dynamic]``
are added here with the same ``2 * M * K * N`` rule (N read from the output), so a quantized
model's FLOPs match its float original. Other ops without a formula count as zero; a model with
custom layers gets a note that its figure may be a lower bound.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from torchslim.eval.report import ComputeResult
from torchslim.tasks.base import Task


_PACKED_MM = (("aten", "_weight_int4pack_mm"), ("aten", "_weight_int4pack_mm_for_cpu"),
              ("aten", "_weight_int4pack_mm_with_scales_and_zeros"), ("aten", "_weight_int8pack_mm"),
              ("quantized", "linear_dynamic"), ("quantized", "linear"))


def _linear_like_flop(x_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``2 * M * K * N`` for ``x [..., K] -> out [..., N]`` with a packed weight."""
    return 2 * math.prod(x_shape) * int(out_shape[-1])


def _custom_mapping() -> dict[Any, Any]:
    mapping = {}
    for namespace, name in _PACKED_MM:
        try:
            op = getattr(getattr(torch.ops, namespace), name)
        except (AttributeError, RuntimeError):
            continue
        mapping[op] = _linear_like_flop
    return mapping


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
    """``(total FLOPs, FLOPs per module name)`` of one call ``fn(*args, **kwargs)``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
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
