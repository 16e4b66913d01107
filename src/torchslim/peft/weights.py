"""The layers an adapter can adapt, read and written through one interface, whatever their storage.

* :func:`geometry` says whether a layer can be adapted and how: ``out``/``in`` features, and the
  convolution's geometry for convolutions.
* :func:`effective_weight` is the float weight the layer multiplies its raw input by (a packed layer's
  dequantized codes with its input scaling folded in; a sparse layer's masked weight), ``[out, in]`` or a
  convolution's shape, computed on demand and never cached (a QLoRA base stays packed).
* :func:`write_weight` stores a new effective weight (a merged adapter): in place for float layers, inside
  the mask for sparse layers, and re-quantized to the layer's own format for packed layers (through the
  trainable form the quantization family registers, :mod:`torchslim.core.trainable`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.linear import is_conv1d, out_in
from torchslim.core.surgery import replace_module
from torchslim.core.trainable import form_of


@dataclass(frozen=True)
class Geometry:
    out_features: int
    in_features: int
    conv: dict[str, Any] | None = None      # {"dims", "kernel_size", "stride", "padding", "dilation"}


def _conv_geometry(src: Any, dims: int) -> dict[str, Any]:
    pad = src.padding
    if isinstance(pad, str):
        raise ConfigError("adapters on convolutions need explicit padding amounts, not padding='same'/'valid'")
    return {"dims": dims, "kernel_size": list(src.kernel_size), "stride": list(src.stride), "padding": list(pad),
            "dilation": list(src.dilation)}


def geometry(m: nn.Module) -> Geometry | None:
    """How an adapter sees ``m``, or None when ``m`` is not a layer adapters can adapt."""
    if isinstance(m, nn.Linear) or is_conv1d(m):
        out_f, in_f = out_in(m)
        return Geometry(out_f, in_f)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1 or m.padding_mode != "zeros":
            return None
        return Geometry(m.out_channels, m.in_channels, _conv_geometry(m, m.weight.dim() - 2))
    g = getattr(m, "geometry", None)            # packed convolutions
    if g is not None and hasattr(g, "kernel_size") and getattr(g, "groups", 1) == 1:
        return Geometry(g.out_channels, g.in_channels, _conv_geometry(g, 2))
    if isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int) \
            and (callable(getattr(m, "dense_weight", None)) or isinstance(getattr(m, "weight", None), torch.Tensor)):
        return Geometry(m.out_features, m.in_features)
    return None


def is_adaptable(name: str, m: nn.Module) -> bool:
    """Selector rule: layers adapters can adapt (linear-like, convolutions, and their packed/sparse forms)."""
    return geometry(m) is not None and not hasattr(m, "torchslim_attach")


def _packed(m: nn.Module) -> bool:
    return callable(getattr(m, "dense_weight", None)) and not isinstance(getattr(m, "weight", None), nn.Parameter)


@torch.no_grad()
def effective_weight(m: nn.Module) -> torch.Tensor:
    """The float weight ``m`` applies to its raw input (``[out, in]``, or the convolution's shape)."""
    if is_conv1d(m):
        return m.weight.t().float()
    if _packed(m):
        w = m.dense_weight().float()
        scale = getattr(m, "input_scale", None)      # AWQ: the layer multiplies its input by input_scale first
        if isinstance(scale, torch.Tensor):
            w = w * scale.float().reshape(1, -1, *([1] * (w.dim() - 2)))
        g = getattr(m, "geometry", None)
        if g is not None and hasattr(g, "kernel_size") and w.dim() == 2:
            w = w.reshape(g.out_channels, g.in_channels, *g.kernel_size)
        return w
    w = m.weight.float()
    mask = getattr(m, "mask", None)
    return w * mask if isinstance(mask, torch.Tensor) and mask.shape == w.shape else w


def bias_of(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


@torch.no_grad()
def write_weight(model: nn.Module, name: str, m: nn.Module, weight: torch.Tensor) -> tuple[nn.Module, str]:
    """Make layer ``name`` (``m``) apply ``weight``; returns ``(the layer now there, how it was written)``:
    ``exact`` (float), ``masked`` (sparse: the update outside the mask is dropped) or ``requantized``."""
    if _packed(m):
        form = form_of(m)
        if form is None or form.requantize is None:
            raise ConfigError(f"cannot merge into '{name}': a {type(m).__name__} has no re-quantization form "
                              "(keep the adapter as a branch instead: merge=False)")
        new = form.requantize(m, weight).to(weight.device)
        new.train(m.training)
        replace_module(model, name, new)
        return new, "requantized"
    target = weight.t() if is_conv1d(m) else weight
    m.weight.copy_(target.to(m.weight.dtype).reshape(m.weight.shape))
    if isinstance(getattr(m, "mask", None), torch.Tensor) and callable(getattr(m, "set_mask", None)):
        m.set_mask(m.mask.clone())          # zeroes the update outside the mask, drops cached sparse forms
        return m, "masked"
    return m, "exact"
