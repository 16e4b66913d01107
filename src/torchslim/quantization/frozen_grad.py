"""Gradients through frozen packed layers without keeping their dense weights.

Adapters trained over a frozen quantized base (QLoRA) need the gradient with respect to each packed
layer's *input*, never with respect to its weight. Computing ``F.linear(x, layer.dequantize())`` under
autograd would save every layer's dense float weight until backward, so a whole model's dense weights
would be alive at once. The functions here instead:

* run the layer's own no-grad forward (its packed kernel) and save **no** weight: only a callable that
  re-creates it (``dequantize(dtype) -> [out, in]``, a bound method of the layer);
* in backward, dequantize the weight transiently, one layer at a time, for ``grad_input = grad_out @ W``
  (a convolution: the transposed convolution with ``W``).

The gradient is the dequantized float layer's. For layers that also quantize their input (W8A8) the
input's rounding is passed straight through (a straight-through estimate). The weight gets no gradient
(it is frozen packed storage); a bias that requires grad gets ``grad_out`` summed over rows. Double
backward is not supported.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

Run = Callable[[torch.Tensor], torch.Tensor]              # the layer's no-grad forward (bias included if passed)
Dequantize = Callable[[torch.dtype], torch.Tensor]        # the dense weight in a dtype, built on each call


def wants_grad(x: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether a forward on ``x`` must be differentiable (grad mode on, and ``x`` or ``bias`` requires grad)."""
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, run, dequantize):  # type: ignore[override]
        ctx.dequantize, ctx.x_dtype = dequantize, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return run(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        gx = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g @ ctx.dequantize(g.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gb = g.reshape(-1, g.shape[-1]).sum(0).to(ctx.bias_dtype)
        return gx, gb, None, None


def frozen_linear(x: torch.Tensor, run: Run, dequantize: Dequantize, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``run(x)`` (a packed linear's forward, ``[..., in] -> [..., out]``), differentiable with respect to ``x``
    (``grad @ dequantize(dtype)``) and, when given, to the ``bias`` that ``run`` adds; nothing dense is saved."""
    return _FrozenLinear.apply(x, bias, run, dequantize)


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, run, dequantize, conv_args, relu):  # type: ignore[override]
        y = run(x)
        ctx.dequantize, ctx.conv_args, ctx.x_shape, ctx.x_dtype = dequantize, conv_args, x.shape, x.dtype
        ctx.bias_dtype, ctx.relu = None if bias is None else bias.dtype, relu
        if relu:                                        # a ReLU fused into the kernel: its mask is an activation
            ctx.save_for_backward(y > 0)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        if ctx.relu:
            g = g * ctx.saved_tensors[0]
        gx = gb = None
        if ctx.needs_input_grad[0]:
            stride, pad, dil, groups = ctx.conv_args
            w = ctx.dequantize(g.dtype)
            gx = torch.nn.grad.conv2d_input(ctx.x_shape, w, g, stride, pad, dil, groups).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gb = g.sum((0, 2, 3)).to(ctx.bias_dtype)
        return gx, gb, None, None, None, None


def frozen_conv2d(x: torch.Tensor, run: Run, dequantize: Dequantize, conv_args: tuple, bias: torch.Tensor | None = None,
                  relu: bool = False) -> torch.Tensor:
    """``run(x)`` (a packed Conv2d's forward; ``relu``: a ReLU fused into it), differentiable with respect to
    ``x`` and the ``bias`` that ``run`` adds. ``conv_args``: ``(stride, padding, dilation, groups)``."""
    return _FrozenConv2d.apply(x, bias, run, dequantize, conv_args, relu)
