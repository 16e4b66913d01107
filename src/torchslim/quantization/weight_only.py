"""Weight-only post-training quantization by round-to-nearest (RTN).

``WeightOnlyConfig`` also serves as the base scheme that GPTQ and AWQ refine: they reuse its
format, granularity, observer, kernel and selector.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike, canonical_linear_
from torchslim.core.modules import is_tied_input_embedding
from torchslim.core.progress import track
from torchslim.core.registry import register_handler
from torchslim.core.select import Selector
from torchslim.core.surgery import replace_module
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerGroup
from torchslim.quantization.kernels import Kernel, choose
from torchslim.quantization.observers import MinMax, Observer, group_range
from torchslim.quantization.primitives import QTensor, quantize_groups, to_groups
from torchslim.quantization.qconv import QuantConv2d, quantize_conv_weight_only
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.scaled import ScaledLinear, input_scale_of
from torchslim.quantization.sparse_quant import SparseQuantLinear

log = logging.getLogger("torchslim.quantization")


@dataclass
class WeightOnlyConfig(BaseConfig):
    """Quantize the weights of the selected linear layers; activations stay in floating point."""

    family = "quantization"
    technique = "rtn"
    format: Format = IntFormat(4, symmetric=False)
    granularity: Granularity = PerGroup(128)
    observer: Observer = MinMax()
    kernel: Kernel = Kernel.AUTO
    # linear layers and convolutions (convs have no fast weight-only kernel: smaller, and reported slower)
    selector: Selector = field(default_factory=lambda: Selector(include=(LinearLike, nn.Conv2d)))

    def validate(self) -> None:
        if isinstance(self.format, IntFormat) and self.format.symmetric is False and self.format.bits == 8 \
                and self.kernel is Kernel.INT8PACK_MM:
            raise ConfigError("the int8pack_mm kernel needs symmetric int8 weights")


def check_calibration_dtype(config: Any) -> None:
    """``calibration_dtype`` (autocast of calibration forwards) must be a floating dtype or unset."""
    dt = config.calibration_dtype
    if dt is not None and (not dt.is_floating_point or dt == torch.float64):
        raise ConfigError(f"{type(config).__name__}.calibration_dtype must be bfloat16, float16 or float32, got "
                          f"{str(dt).removeprefix('torch.')}")


def quantize_weight(w: torch.Tensor, config: WeightOnlyConfig) -> QTensor:
    """RTN-quantize one weight matrix with ``config``'s format, granularity and observer."""
    g = to_groups(w.detach().float(), config.granularity)
    lo, hi = group_range(g, config.observer, config.format)
    return quantize_groups(g, config.format, lo, hi, w.shape)


def is_sparse(module: nn.Module) -> bool:
    """A pruned layer whose zeros quantization keeps (``keeps_zeros``, e.g. pruning's SparseLinear): it becomes a
    :class:`~torchslim.quantization.sparse_quant.SparseQuantLinear`."""
    return getattr(module, "keeps_zeros", False) is True and isinstance(getattr(module, "mask", None), torch.Tensor)


def selected_linears(model: nn.Module, config: BaseConfig, *, convs: bool = False, sparse: bool = False,
                     scaled: bool = False, embeddings: bool = False) -> list[tuple[str, nn.Module, Any]]:
    """``(name, layer, per-layer config)`` for every layer ``config.selector`` picks (linears, plus Conv2d if
    ``convs``, plus pruned sparse layers if ``sparse``, plus equivalence-scaled float layers if ``scaled``, plus
    ``nn.Embedding`` tables if ``embeddings``: an input embedding tied to the output head is left to the head's
    quantization, with a warning)."""
    out, skipped_convs = [], 0
    for name, module, layer_cfg in config.selector.resolve(model, config):
        if not _holds_weights(module):
            continue                                     # a container or an activation a broad rule matched
        if embeddings and type(module) is nn.Embedding:
            if is_tied_input_embedding(model, module):
                log.warning("%s: '%s' is tied to the output head: it is quantized with the head (select the head) "
                            "and reads its codes, so it is left as it is here", type(config).__name__, name)
            else:
                out.append((name, module, layer_cfg))
            continue
        module = canonical_linear_(model, name)          # Conv1D, nn.Linear subclasses -> plain nn.Linear
        if isinstance(module, ScaledLinear):
            if not scaled:
                raise ConfigError(f"'{name}' is input-scaled (AWQ with scale_only): quantize it with WeightOnlyConfig "
                                  f"or GPTQConfig, not {type(config).__name__}")
            out.append((name, module, layer_cfg))
            continue
        if is_sparse(module):
            if not sparse:
                raise ConfigError(f"'{name}' is pruned: {type(config).__name__} would fill its pruned weights; "
                                  "quantize pruned layers with WeightOnlyConfig (int8/int4 per-channel, symmetric)")
            out.append((name, module, layer_cfg))
            continue
        if not convs and isinstance(module, nn.Conv2d):
            skipped_convs += 1
            continue
        if not (type(module) is nn.Linear or (convs and isinstance(module, nn.Conv2d))):
            kinds = "nn.Linear" + (", nn.Conv2d" if convs else "") + (", nn.Embedding" if embeddings else "")
            kinds = " and ".join(kinds.rsplit(", ", 1))
            raise ConfigError(f"{type(config).__name__} applies to {kinds} layers; '{name}' is a {type(module).__name__}")
        out.append((name, module, layer_cfg))
    if skipped_convs:
        log.warning("%s: %d Conv2d layer(s) left as they are (it applies to linear layers)", type(config).__name__,
                    skipped_convs)
    if not out:
        raise ConfigError(f"{type(config).__name__}: the selector matched no {'linear or conv' if convs else 'linear'} layer")
    return out


def _holds_weights(module: nn.Module) -> bool:
    """A layer with tensors of its own (or a replacement module), rather than a container or an activation."""
    return (callable(getattr(module, "torchslim_layer_info", None)) or any(True for _ in module.parameters(False))
            or any(True for _ in module.buffers(False)))


def plan(model: nn.Module, config: WeightOnlyConfig) -> list[dict[str, Any]]:
    """What quantizing would do, before doing it: per layer, its format and kernel (and any slowdown)."""
    rows = []
    for name, lin, cfg in selected_linears(model, config, convs=True, sparse=True, scaled=True, embeddings=True):
        if cfg is None:
            continue                          # an override of None skips the layer
        cfg = getattr(cfg, "weight", cfg)     # a per-layer GPTQ/AWQ override holds its weight scheme
        if isinstance(lin, nn.Embedding):
            rows.append({"name": name, "format": cfg.format.name, "kernel": "row lookup", "slower_than_fp32": False,
                         "note": "embedding table: the rows a batch reads are unpacked"})
            continue
        if is_sparse(lin):
            rows.append({"name": name, "format": cfg.format.name, "kernel": "sparse+quantized",
                         "slower_than_fp32": False, "note": "kept weights quantized under the pruning mask"})
            continue
        if isinstance(lin, nn.Conv2d):
            rows.append({"name": name, "format": cfg.format.name, "kernel": QuantConv2d.kernel, "slower_than_fp32": True,
                         "note": "Conv2d: the weight is dequantized on every call (no fast kernel)"})
            continue
        device = lin.weight.device.type
        device = "cpu" if device == "meta" else device     # a block not yet onloaded (torchslim.scale) is read to CPU
        choice = choose(cfg.format, cfg.granularity, lin.in_features, device, cfg.kernel)
        rows.append({"name": name, "format": cfg.format.name, "kernel": choice.kernel.value,
                     "slower_than_fp32": choice.slower_than_fp32, "note": choice.reason})
    return rows


def warn_slow_layers(rows: list[dict[str, Any]], when: str) -> None:
    slow = [r for r in rows if r["slower_than_fp32"]]
    if slow:
        log.warning("%s: %d of %d layers have no fast kernel and will run slower than fp32 (e.g. %s: %s)",
                    when, len(slow), len(rows), slow[0]["name"], slow[0]["note"])


@register_handler(WeightOnlyConfig)
def _weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: ApplyContext) -> nn.Module:
    warn_slow_layers(plan(model, config), "before quantizing")
    from torchslim.quantization.qembedding import tie_packed_head_

    for name, lin, cfg in track(selected_linears(model, config, convs=True, sparse=True, scaled=True,
                                                 embeddings=True), "RTN"):
        replace_module(model, name, SparseQuantLinear.from_sparse(lin, cfg) if is_sparse(lin) else rtn_module(lin, cfg))
    warn_slow_layers([{"name": n, "slower_than_fp32": m.choice.slower_than_fp32, "note": m.choice.reason}
                      for n, m in model.named_modules() if isinstance(m, QuantLinear)]
                     + [{"name": n, "slower_than_fp32": True, "note": "Conv2d: dequantized on every call"}
                        for n, m in model.named_modules() if isinstance(m, QuantConv2d)], "after quantizing")
    tie_packed_head_(model)
    return model


def rtn_module(layer: nn.Module, cfg: WeightOnlyConfig) -> nn.Module:
    """Round-to-nearest of a linear layer, a Conv2d or an embedding table: its packed replacement."""
    if isinstance(layer, nn.Embedding):
        from torchslim.quantization.qembedding import PackedEmbedding

        head = QuantLinear.from_qtensor(quantize_weight(layer.weight, cfg), cfg.granularity, None, cfg.kernel, cfg)
        return PackedEmbedding.from_rows(head, layer)
    if isinstance(layer, nn.Conv2d):
        return quantize_conv_weight_only(layer, cfg)
    return rtn_linear(layer, cfg)


def rtn_linear(lin: nn.Module, cfg: WeightOnlyConfig, config: BaseConfig | None = None) -> QuantLinear:
    """Round-to-nearest of a linear (or equivalence-scaled) layer; ``config`` is recorded (default ``cfg``)."""
    return QuantLinear.from_qtensor(quantize_weight(lin.weight, cfg), cfg.granularity, lin.bias, cfg.kernel,
                                    config or cfg, input_scale=input_scale_of(lin))


def split_calibrated(model: nn.Module, config: Any) -> tuple[dict[str, tuple[nn.Module, Any]], dict[str, tuple[nn.Module, Any]]]:
    """The layers a calibrated method (GPTQ, AWQ) picks, split into ``(its own, plain WeightOnlyConfig
    overrides to round to nearest)``. Its solvers work on linear layers: a selected Conv2d is rounded to nearest
    where an override gives it a WeightOnlyConfig, else left as it is (see :func:`start_calibrated`). Pure: the model
    is not changed."""
    own, rtn = {}, {}
    for n, m, c in selected_linears(model, config, convs=True, scaled=True, embeddings=True):
        if isinstance(c, WeightOnlyConfig):
            rtn[n] = (m, c)
        elif isinstance(m, nn.Embedding) and c is not None:
            raise ConfigError(f"{type(config).__name__} applies to linear layers; '{n}' is an embedding table: round "
                              "it to nearest with a selector override {'type:Embedding': WeightOnlyConfig(...)}")
        elif not isinstance(m, nn.Conv2d):
            own[n] = (m, c)
    return own, rtn


def start_calibrated(model: nn.Module, config: Any, label: str) -> None:
    """Common start of a calibrated method's handler: warn about slow kernels and round-to-nearest the layers
    overridden with a plain WeightOnlyConfig (convolutions included); say which convolutions stay float and how to
    cover them."""
    own, rtn = split_calibrated(model, config)
    convs = [n for n, m, c in selected_linears(model, config, convs=True, scaled=True, embeddings=True)
             if isinstance(m, nn.Conv2d) and n not in rtn and c is not None]
    if convs:
        log.warning("%s: %d Conv2d layer(s) left float (its solver applies to linear layers): round them to nearest "
                    "with a selector override {'type:Conv2d': WeightOnlyConfig(...)} in its weight scheme, or a "
                    "WeightOnlyConfig stage", type(config).__name__, len(convs))
    warn_slow_layers([r for r in plan(model, config.weight) if r["name"] in own or r["name"] in rtn], f"before {label}")
    for name, (lin, cfg) in rtn.items():
        replace_module(model, name, rtn_module(lin, cfg))
