"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

The counter has formulas for matrix multiplies, convolutions and attention
(``mm``/``addmm``/``bmm``/``conv``/``scaled_dot_product_attention`` ...), counting
``2 * M * N * K`` per matmul. Element-wise ops (activations, norms, softmax) are not counted:
they are a small share of transformer and CNN compute. Every counted op is a sequence of
multiply-accumulates, so **MACs = FLOPs / 2**. Weight-only packed matmuls
(``_weight_int4pack_mm[_for_cpu]``, ``_weight_int8pack_mm``) and ``quantized::linear[_dynamic]``
are added here with the same ``2 * M * K * N`` rule (N read from the output). Other ops without a
formula count as zero; a model with custom layers gets a note that its figure may be a lower bound.

FLOPs here are the model's arithmetic, not a kernel's: a packed layer (a torchslim layer with
``in_features``/``out_features``) counts ``2 * M * in_features * out_features``, the matmul of its float
original, whichever path ran. The zeros its kernel pads the inputs and outputs with (int4 inputs to whole
groups, outputs to a multiple of 16: SmolLM2's 576-wide inputs run as 640) are kernel overhead that shows in
latency, not here (counted, they made an int4 SmolLM2 read about 1.07x the FLOPs of fp32). Dequantizing a weight is
element-wise and, like norms and activations, not counted: a layer whose kernel is ``dequant`` (no packed
kernel for its format) or that runs more rows than its packed kernel's cut does that per call, and the layer
table's kernel column says which.
"""
from __future__ import annotations

import functools
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


def _packed_layers(roots: list[nn.Module]) -> list[tuple[str, nn.Module]]:
    """``(counter name, layer)`` of every torchslim linear-like layer (named as ``FlopCounterMode`` names it)."""
    return [(f"{type(root).__name__}.{name}", m) for root in roots for name, m in root.named_modules()
            if name and callable(getattr(m, "torchslim_layer_info", None))
            and isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)]


def _logical_shapes(counter: Any, roots: list[nn.Module]) -> tuple[dict[str, int], list[Any]]:
    """Hooks that record, per packed layer, its float matmul's FLOPs minus what the counter saw in its calls."""
    corrections: dict[str, int] = {}
    started: dict[str, int] = {}

    def pre(name: str, mod: nn.Module, args: tuple) -> None:
        started[name] = counter.get_total_flops()

    def post(name: str, mod: nn.Module, args: tuple, out: Any) -> None:
        seen = counter.get_total_flops() - started.pop(name)
        if seen > 0 and args and isinstance(args[0], torch.Tensor):      # a matmul the counter sees ran
            logical = 2 * (args[0].numel() // mod.in_features) * mod.in_features * mod.out_features
            corrections[name] = corrections.get(name, 0) + logical - seen

    handles = []
    for name, layer in _packed_layers(roots):
        handles += [layer.register_forward_pre_hook(functools.partial(pre, name)),
                    layer.register_forward_hook(functools.partial(post, name), prepend=True)]  # before others
    return corrections, handles


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
    """``(total FLOPs, FLOPs per module name)`` of one call ``fn(*args, **kwargs)``; packed layers count the
    matmul of their logical shape (their kernels' alignment padding is not the model's arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    roots = [m for m in (fn, *args) if isinstance(m, nn.Module)]
    corrections, handles = _logical_shapes(counter, roots)
    try:
        with counter, torch.inference_mode():
            fn(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    per_module = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items() if name != "Global"
    }
    for name, delta in corrections.items():         # the layer and every module that contains it
        for parent in per_module:
            if name == parent or name.startswith(parent + "."):
                per_module[parent] += delta
    return int(counter.get_total_flops()) + sum(corrections.values()), per_module


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
    note = ("matmul/conv/attention FLOPs only (element-wise ops, dequantization included, not counted; packed "
            "layers count their float matmul, not their kernels' padding); MACs = FLOPs / 2")
    if _has_custom_layers(model):
        note += "; custom (torchslim) layers may run kernels the counter does not see"
    return ComputeResult(batch=batch, seq_len=seq_len, flops=total, macs=total // 2,
                         by_module=per_module if by_module else {}, note=note)
