"""Fuse ReLUs into the static int8 convs before them, and chain int8 convs in uint8.

Both rewrites keep the model's outputs (up to one rounding step of 8-bit activations) and save
time and memory traffic:

* an :class:`~torchslim.quantization.int8_conv.Int8StaticConv2d` whose output goes only into an
  ``nn.ReLU`` applies the ReLU inside oneDNN's kernel; the ReLU module becomes a
  :class:`~torchslim.transforms.graph.FoldedAway` identity;
* when such a conv (or its fused ReLU) feeds only another ``Int8StaticConv2d``, the producer
  writes uint8 at the consumer's input scale and zero point, which the consumer takes as is,
  so the float tensor between them is never written nor re-quantized.
"""
from __future__ import annotations

from torch import nn

from torchslim.core.surgery import get_module, replace_module
from torchslim.quantization.int8_conv import Int8StaticConv2d
from torchslim.transforms.graph import FoldedAway, module_chains, single_consumer, trace


def fuse_int8_relu_(model: nn.Module, chain_uint8: bool = True) -> dict[str, list[str]]:
    """Fuse, in place; returns ``{"relu": [conv names], "uint8": [conv names now emitting uint8]}``."""
    graph = trace(model, "fuse_int8_relu_")
    fused: list[str] = []
    tails: dict[str, str] = {}  # conv name -> name of the module whose output leaves the conv's fused group
    for name, module in model.named_modules():
        if isinstance(module, Int8StaticConv2d):
            tails[name] = name
    for conv_name, relu_name in module_chains(model, graph, Int8StaticConv2d, nn.ReLU):
        get_module(model, conv_name).fuse_relu()
        replace_module(model, relu_name, FoldedAway("fuse_relu", conv_name, "ReLU"))
        fused.append(conv_name)
        tails[conv_name] = relu_name
    chained: list[str] = []
    if chain_uint8:
        for conv_name, tail in tails.items():
            consumer = single_consumer(graph, tail)
            nxt = get_module(model, consumer) if consumer is not None else None
            if isinstance(nxt, Int8StaticConv2d) and nxt.act_bits == 8:   # narrower codes: the next clamps itself
                get_module(model, conv_name).set_uint8_output(float(nxt.act_scale), int(nxt.act_zero))
                chained.append(conv_name)
    return {"relu": fused, "uint8": chained}
