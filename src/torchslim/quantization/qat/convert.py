"""Between QAT layers and the packed layers of post-training quantization, both ways.

* :func:`from_float`: a float ``nn.Linear`` / ``nn.Conv2d`` becomes a QAT layer whose fake weight is the
  round-to-nearest result (min-max ranges), the latent weight the float one.
* :func:`from_packed`: a layer post-training quantization produced (``QuantLinear`` from RTN, GPTQ or
  AWQ, ``QuantConv2d``, ``Int8StaticLinear`` / ``Int8DynamicLinear`` from W8A8 and SmoothQuant,
  ``Int8StaticConv2d``) becomes a QAT layer that computes exactly what it computed: latent weight =
  its dequantized weight, scales, offsets, activation ranges and input scales taken over.
* :func:`to_packed`: a trained QAT layer becomes the same kind of packed layer, with the codes its fake
  quantizer used, so the converted model runs on the real kernels and matches the fake-quantized one
  up to the kernel's own rounding.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerChannel
from torchslim.quantization.int8_conv import Int8StaticConv2d
from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear, _Int8Base
from torchslim.quantization.kernels import Kernel
from torchslim.quantization.observers import MinMax, group_range
from torchslim.quantization.primitives import QTensor, quantize_groups, to_groups
from torchslim.quantization.qat.modules import ActFake, QATConv2d, QATLinear, WeightFake, check_trainable_format
from torchslim.quantization.qconv import ConvGeometry, QuantConv2d
from torchslim.quantization.qlinear import QuantLinear, fill_packed

PACKED = (QuantLinear, QuantConv2d, _Int8Base, Int8StaticConv2d)
INT8_PER_CHANNEL = IntFormat(8, symmetric=True)


def check_act_target(fmt: Format, gran: Granularity) -> None:
    """Quantized activations run on the int8 kernels: weights must be symmetric integers per channel."""
    if not (isinstance(fmt, IntFormat) and fmt.symmetric and isinstance(gran, PerChannel)):
        raise ConfigError(f"quantized activations run on the int8 kernels, which need symmetric integer weights per "
                          f"channel; got {fmt.name} {type(gran).__name__}")


def rtn_fake(w2: torch.Tensor, fmt: Format, gran: Granularity, learn: bool) -> WeightFake:
    g = to_groups(w2.detach().float(), gran)
    lo, hi = group_range(g, MinMax(), fmt)
    return WeightFake.from_qtensor(quantize_groups(g, fmt, lo, hi, w2.shape), gran, learn)


def from_float(layer: nn.Module, fmt: Format, gran: Granularity, act: Any | None, learn: bool = True) -> nn.Module:
    """QAT layer of a float linear or conv (``act``: an ``ActQuant`` config, or None for weight-only)."""
    check_trainable_format(fmt)
    target = "weight_only" if act is None else act.mode
    if act is not None:
        check_act_target(fmt, gran)
    w = layer.weight.detach()
    wq = rtn_fake(w.reshape(w.shape[0], -1), fmt, gran, learn)
    bias = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, nn.Conv2d):
        if target == "dynamic":
            raise ConfigError("dynamic (per-token) activations are for linear layers; convs need mode=static")
        aq = ActFake(act.bits, act.method, layer.in_channels) if act is not None else None
        return QATConv2d(ConvGeometry.of(layer), w, bias, wq, aq, target)
    aq = None
    if act is not None:
        aq = ActFake(8, "dynamic", layer.in_features) if target == "dynamic" else \
            ActFake(act.bits, act.method, layer.in_features)
    return QATLinear(w, bias, wq, aq, None, target)


def _scales(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return m.scale.unsqueeze(-1), (m.offset.unsqueeze(-1) if m.offset is not None else None)


def from_packed(m: nn.Module, act: Any | None, learn: bool = True) -> nn.Module:
    """QAT layer computing what the packed layer ``m`` computes (``act`` sets the method of learned
    activation ranges of static int8 layers: ``lsq`` when None)."""
    method = act.method if act is not None and act.method != "dynamic" else "lsq"
    if isinstance(m, QuantLinear):
        check_trainable_format(m.fmt)
        scale, offset = _scales(m)
        wq = WeightFake(m.fmt, m.gran, (m.out_features, m.in_features), scale, offset, learn)
        return QATLinear(m.dequantize(), m.bias, wq, None, m.input_scale, "weight_only")
    if isinstance(m, QuantConv2d):
        check_trainable_format(m.fmt)
        scale, offset = _scales(m)
        wq = WeightFake(m.fmt, m.gran, (m.geometry.out_channels, m.cols), scale, offset, learn)
        return QATConv2d(m.geometry, m.dequantize(), m.bias, wq, None, "weight_only")
    if isinstance(m, _Int8Base):
        wq = WeightFake(INT8_PER_CHANNEL, PerChannel(), (m.out_features, m.in_features),
                        m.weight_scale.reshape(-1, 1, 1), None, learn)
        smooth = m.smooth if m.use_smooth else None
        if isinstance(m, Int8DynamicLinear):
            return QATLinear(m.dequantized_weight(), m.bias, wq, ActFake(8, "dynamic", m.in_features), smooth, "dynamic")
        aq = ActFake(m.act_bits, method, m.in_features)
        aq.set_qparams(float(m.act_scale), int(m.act_zero))
        return QATLinear(m.dequantized_weight(), m.bias, wq, aq, smooth, "static")
    if isinstance(m, Int8StaticConv2d):
        g = m.geometry
        wq = WeightFake(INT8_PER_CHANNEL, PerChannel(), (g.out_channels, m.weight_int8[0].numel()),
                        m.weight_scale.reshape(-1, 1, 1), None, learn)
        aq = ActFake(m.act_bits, method, g.in_channels)
        aq.set_qparams(float(m.act_scale), int(m.act_zero))
        return QATConv2d(g, m.dequantized_weight(), m.bias, wq, aq, "static", {"fused_relu": m.fused_relu})
    raise ConfigError(f"QAT cannot start from a {type(m).__name__}")


def _int8_codes(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    qt = m.wq.to_qtensor(m.weight)
    return qt.codes.reshape(m.weight.shape[0], -1), qt.scale.reshape(-1)


def to_packed(m: nn.Module, config: Any, kernel: Kernel = Kernel.AUTO) -> nn.Module:
    """The packed layer a trained QAT layer becomes (``config`` is recorded as its technique)."""
    bias = m.bias.detach() if m.bias is not None else None
    device = m.weight.device
    if m.target == "weight_only":
        qt: QTensor = m.wq.to_qtensor(m.weight)
        if isinstance(m, QATLinear):
            return QuantLinear.from_qtensor(qt, m.wq.gran, bias, kernel, config, input_scale=m.input_scale).to(device)
        out = QuantConv2d(m.geometry, bias is not None, m.wq.fmt, m.wq.gran, config)
        fill_packed(out, qt)
        if bias is not None:
            out.bias.data.copy_(bias.float())
        return out.to(device)
    codes, scale = _int8_codes(m)
    if isinstance(m, QATConv2d):
        out = Int8StaticConv2d(m.geometry, bias is not None, config, bool(m.meta.get("fused_relu")),
                               act_bits=m.aq.bits)
        out.weight_int8.copy_(codes.reshape(out.weight_int8.shape))
    else:
        cls = Int8DynamicLinear if m.target == "dynamic" else Int8StaticLinear
        kw = {} if m.target == "dynamic" else {"act_bits": m.aq.bits}
        out = cls(m.in_features, m.out_features, bias is not None, config, **kw)
        out.weight_int8.copy_(codes)
        if m.input_scale is not None:
            out.smooth.copy_(m.input_scale)
            out.use_smooth = True
    out.weight_scale.copy_(scale)
    if bias is not None:
        out.bias.data.copy_(bias.float())
    if m.target == "static":
        a_scale, a_zero = m.aq.qparams()
        out.act_scale.fill_(a_scale)
        out.act_zero.fill_(a_zero)
    return out


def requantize(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    """The packed layer ``m`` becomes when its effective float weight (what it multiplies its raw input by:
    ``[out, in]``, or a conv's shape) is ``weight``: same format, granularity, activation quantization, input
    scaling and config, with round-to-nearest codes and scales fitted afresh to ``weight``."""
    trained = from_packed(m, None, False)
    latent = weight.detach().float().reshape(trained.weight.shape)
    if trained.input_scale is not None:                  # the layer multiplies its input by input_scale first
        latent = latent / trained.input_scale.reshape(1, -1, *([1] * (latent.dim() - 2)))
    with torch.no_grad():
        trained.weight.copy_(latent)
    trained.wq = rtn_fake(latent.reshape(latent.shape[0], -1), trained.wq.fmt, trained.wq.gran, False)
    return to_packed(trained, getattr(m, "config", None))


def _register_trainable() -> None:
    """Packed layers train as QAT layers starting from exactly their codes, and pack back to the same formats."""
    from torchslim.core.trainable import TrainableForm, register_trainable

    form = TrainableForm(lambda m: from_packed(m, None, True), lambda m, config: to_packed(m, config),
                         r"(.*\.)?(wq\.(scale_log|offset_steps)|aq\.(a|b))", requantize)
    for packed in PACKED:
        register_trainable(packed, QATLinear, form)
    register_trainable(QuantConv2d, QATConv2d, form)


_register_trainable()
