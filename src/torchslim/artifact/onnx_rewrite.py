"""Packed layers in an exported ONNX graph: before the export every packed layer is replaced by a float module of
the weight it computes (:func:`densify`); after it, the MatMul / Gemm / Conv that runs that float weight is found
again (by the weight's hash) and replaced by ONNX Runtime's int operator on the layer's own codes (:func:`rewrite`):

* int4 weight-only (``QuantLinear``, groups of 16..256, also when the width is not whole groups)
  -> ``com.microsoft.MatMulNBits`` (``w = (q - zp) * scale``, the same codes, scales and zero points);
* int8 weight-only per channel (linear or conv) -> int8 ``DequantizeLinear`` + ``MatMul`` / ``Conv``;
* other symmetric int4 / int8 weight-only layers (int4 convs, per-channel int4, grouped int8) -> opset 21's blocked
  int4 / int8 ``DequantizeLinear`` (the codes stored as int4 / int8) + ``MatMul`` / ``Conv``;
* W8A8 dynamic (``Int8DynamicLinear``) -> ``DynamicQuantizeLinear`` (one per input tensor) +
  ``com.microsoft.MatMulIntegerToFloat`` (activations per tensor at run time: ONNX Runtime has no per-token form);
* W8A8 static (``Int8StaticLinear`` / ``Int8StaticConv2d``) -> ``QuantizeLinear``/``DequantizeLinear`` around the
  input and an int8 ``DequantizeLinear`` weight: QDQ, which ONNX Runtime fuses into int8 kernels.

SmoothQuant / AWQ input scales become a ``Mul`` before the layer; a Gemm's bias an ``Add`` after it. Packed layers
with no ONNX int operator (other bit widths, NF4, codebooks, sparse) run as float; :func:`plan` names them before
the export starts so the caller can warn (or refuse) without waiting for the exporter.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

MS = "com.microsoft"
NBITS_BLOCKS = (16, 32, 64, 128, 256)


def _key(w: torch.Tensor) -> str:
    return hashlib.sha256(w.detach().float().contiguous().numpy().tobytes()).hexdigest()


def rewrite_kind(m: nn.Module) -> str | None:
    """The int operator family that runs ``m``'s codes in ONNX Runtime, or None (float)."""
    from torchslim.quantization.formats import IntFormat, PerChannel, PerGroup
    from torchslim.quantization.int8_conv import Int8StaticConv2d
    from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear
    from torchslim.quantization.qconv import QuantConv2d
    from torchslim.quantization.qlinear import QuantLinear

    if isinstance(m, Int8DynamicLinear):
        return "dynamic"
    if isinstance(m, (Int8StaticLinear, Int8StaticConv2d)):
        return "static" if m.act_bits == 8 else None
    if isinstance(m, (QuantLinear, QuantConv2d)) and isinstance(m.fmt, IntFormat):
        if (isinstance(m, QuantLinear) and m.fmt.bits == 4 and isinstance(m.gran, PerGroup)
                and m.gran.size in NBITS_BLOCKS):
            return "nbits"
        if m.fmt.bits == 8 and m.fmt.symmetric and isinstance(m.gran, PerChannel):
            return "int8"
        if m.fmt.bits in (4, 8) and m.fmt.symmetric and isinstance(m.gran, (PerChannel, PerGroup)):
            return "blocked"          # opset 21's blocked DequantizeLinear of int4 / int8 codes
    return None


def needs_opset21(model: nn.Module) -> bool:
    """Whether a packed layer is written as a blocked (opset 21) DequantizeLinear."""
    return any(rewrite_kind(m) == "blocked" for _, m in _packed(model))


def _packed(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torchslim.core.modules import StandIn

    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, StandIn)
            and type(m).__name__ != "PackedEmbedding"]


def plan(model: nn.Module) -> dict[str, list[str]]:
    """Before the (slow) export: ``{"int": [...], "float": [...]}`` names of packed layers, and a TorchSlimError for
    a layer that can be neither (an int operator's limits it breaks, or no float form)."""
    out: dict[str, list[str]] = {"int": [], "float": []}
    for name, m in _packed(model):
        kind = rewrite_kind(m)
        if kind == "static" and m.act_qmax() != 255:
            raise TorchSlimError(f"ONNX QDQ activations are uint8 (0..255); layer {name} uses 0..{m.act_qmax()}")
        if kind is None and not (hasattr(m, "in_features") or hasattr(m, "geometry")):
            raise TorchSlimError(f"ONNX export: packed layer {name} ({type(m).__name__}) has no ONNX form")
        out["int" if kind else "float"].append(name)
    return out


def _core_weight(m: nn.Module) -> torch.Tensor:
    """The layer's weight before its input scaling: ``y = (x * s) @ W^T``."""
    if hasattr(m, "dequantized_weight"):
        return m.dequantized_weight().float()
    if hasattr(m, "dequantize"):
        return m.dequantize(torch.float32)
    return m.dense_weight().detach().float()


def _input_scale(m: nn.Module) -> torch.Tensor | None:
    s = getattr(m, "input_scale", None)
    if isinstance(s, torch.Tensor):
        return s.float()
    return m.smooth.float() if getattr(m, "use_smooth", False) else None


def _float_module(m: nn.Module, kind: str | None) -> tuple[nn.Module, torch.Tensor]:
    """A float module computing what ``m`` does (without the input scale when ``kind`` puts it back as a Mul) and
    the weight tensor the exported graph will hold for it."""
    w = _core_weight(m)
    scale = _input_scale(m)
    if kind is None and scale is not None:     # no Mul will be put back: fold the input scale into the weight
        w = w * scale
    if hasattr(m, "geometry"):
        g = m.geometry
        stride, pad, dil, groups = g.conv_args()
        conv = nn.Conv2d(g.in_channels, g.out_channels, tuple(w.shape[2:]), stride=stride, padding=pad,
                         dilation=dil, groups=groups, bias=m.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(w)
            if m.bias is not None:
                conv.bias.copy_(m.bias.detach().float())
        mod: nn.Module = nn.Sequential(conv, nn.ReLU()) if getattr(m, "fused_relu", False) else conv
        return mod, w
    lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w[:, : m.in_features])
        if m.bias is not None:
            lin.bias.copy_(m.bias.detach().float())
    return lin, lin.weight.detach()


def densify(model: nn.Module) -> dict[str, nn.Module]:
    """Replace every packed layer by a float module (in place); returns ``{weight hash: packed layer}`` for the
    layers with an int operator, to find their nodes again after the export."""
    from torchslim.core.surgery import get_module, replace_module

    found: dict[str, nn.Module] = {}
    for name in [n for n, m in model.named_modules() if type(m).__name__ == "PackedEmbedding"]:
        m = get_module(model, name)       # a tied table read from the head's codes: a float lookup table here
        replace_module(model, name, nn.Embedding.from_pretrained(m.dense_weight().detach().float(), freeze=True,
                                                                 padding_idx=m.padding_idx))
    for name, m in _packed(model):
        kind = rewrite_kind(m)
        mod, w = _float_module(m, kind)
        if kind:
            found[_key(w)] = m
        replace_module(model, name, mod)
    return found


def _nbits(m: nn.Module, x: str, out: str, prefix: str) -> tuple[list[Any], list[Any]]:
    """MatMulNBits on the layer's codes; a last partial group keeps its padding codes (ORT reads K columns)."""
    from onnx import helper, numpy_helper

    n, k, g = m.out_features, m.padded_in, m.gran.size
    blocks = k // g
    codes = m.codes().to(torch.int16)
    if m.fmt.symmetric:
        q, zp = codes + 8, torch.full((n, blocks), 8.0)
    else:
        q, zp = codes, -m.offset.float() / m.scale.float()
    q = q.to(torch.uint8).reshape(n, blocks, g)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous().numpy()
    inits = [numpy_helper.from_array(packed, f"{prefix}_B"),
             numpy_helper.from_array(m.scale.float().reshape(n, blocks).reshape(-1).numpy(), f"{prefix}_scales"),
             numpy_helper.from_array(zp.float().reshape(-1).numpy(), f"{prefix}_zp")]
    node = helper.make_node("MatMulNBits", [x, f"{prefix}_B", f"{prefix}_scales", f"{prefix}_zp"], [out],
                            domain=MS, K=m.in_features, N=n, bits=4, block_size=g, name=f"{prefix}_matmulnbits")
    return [node], inits


def _int8_weight(m: nn.Module, prefix: str, conv: bool) -> tuple[list[Any], list[Any], str]:
    """DequantizeLinear of the int8 weight (``W^T`` per output column for a MatMul, ``W`` per output channel for a
    Conv): the float weight as a graph value."""
    from onnx import helper, numpy_helper

    if hasattr(m, "weight_int8"):
        q, s = m.weight_int8, m.weight_scale
    else:
        q, s = m.codes().to(torch.int8), m.scale.reshape(-1)
    q = q.reshape(q.shape[0], -1)[:, : m.in_features] if not conv else q.reshape(m.geometry.weight_shape)
    arr = q.contiguous().numpy() if conv else q.t().contiguous().numpy()
    inits = [numpy_helper.from_array(arr.astype(np.int8), f"{prefix}_Wq"),
             numpy_helper.from_array(s.float().reshape(-1).numpy(), f"{prefix}_Ws")]
    node = helper.make_node("DequantizeLinear", [f"{prefix}_Wq", f"{prefix}_Ws"], [f"{prefix}_W"],
                            axis=0 if conv else 1, name=f"{prefix}_dqw")
    return [node], inits, f"{prefix}_W"


def _blocked_weight(m: nn.Module, prefix: str, conv: bool) -> tuple[list[Any], list[Any], str]:
    """Blocked DequantizeLinear (opset 21) of the layer's int4 / int8 codes ``[out, padded cols]`` with one scale per
    group, then the columns cut to the layer's width and shaped as the node needs (conv ``W``, MatMul ``W^T``)."""
    from onnx import TensorProto, helper, numpy_helper

    codes = m.codes().to(torch.int8)
    n, padded = codes.shape
    groups = m.scale.shape[-1] if m.scale.dim() > 1 else 1
    cols = m.cols if conv else m.in_features
    dtype = TensorProto.INT4 if m.fmt.bits == 4 else TensorProto.INT8
    inits = [helper.make_tensor(f"{prefix}_Wq", dtype, [n, padded], codes.reshape(-1).tolist()),
             numpy_helper.from_array(m.scale.float().reshape(n, groups).numpy() if groups > 1
                                     else m.scale.float().reshape(n).numpy(), f"{prefix}_Ws")]
    attrs = {"axis": 1, "block_size": padded // groups} if groups > 1 else {"axis": 0}
    nodes = [helper.make_node("DequantizeLinear", [f"{prefix}_Wq", f"{prefix}_Ws"], [f"{prefix}_Wp"],
                              name=f"{prefix}_dqw", **attrs)]
    w = f"{prefix}_Wp"
    if padded != cols:
        inits += [numpy_helper.from_array(np.array([0], np.int64), f"{prefix}_s0"),
                  numpy_helper.from_array(np.array([cols], np.int64), f"{prefix}_s1"),
                  numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_s2")]
        nodes.append(helper.make_node("Slice", [w, f"{prefix}_s0", f"{prefix}_s1", f"{prefix}_s2"], [f"{prefix}_Wc"],
                                      name=f"{prefix}_cut"))
        w = f"{prefix}_Wc"
    if conv:
        inits.append(numpy_helper.from_array(np.array(m.geometry.weight_shape, np.int64), f"{prefix}_shape"))
        nodes.append(helper.make_node("Reshape", [w, f"{prefix}_shape"], [f"{prefix}_W"], name=f"{prefix}_shape"))
    else:
        nodes.append(helper.make_node("Transpose", [w], [f"{prefix}_W"], perm=[1, 0], name=f"{prefix}_t"))
    return nodes, inits, f"{prefix}_W"


def _replacement(m: nn.Module, kind: str, node: Any, out: str, prefix: str,
                 quantized: dict[str, list[str]]) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers computing ``out`` from ``node``'s input with ``m``'s codes; ``quantized`` maps graph
    values already quantized dynamically to their (codes, scale, zero point)."""
    from onnx import helper, numpy_helper

    x, conv = node.input[0], node.op_type == "Conv"
    nodes, inits = [], []
    scale = _input_scale(m)
    if scale is not None:
        inits.append(numpy_helper.from_array(scale.numpy(), f"{prefix}_in_scale"))
        nodes.append(helper.make_node("Mul", [x, f"{prefix}_in_scale"], [f"{prefix}_x"], name=f"{prefix}_scale"))
        x = f"{prefix}_x"
    if kind == "nbits":
        more, more_init = _nbits(m, x, out, prefix)
        return nodes + more, inits + more_init
    if kind == "dynamic":
        if x not in quantized:              # one activation quantization per input tensor (q/k/v share theirs)
            quantized[x] = [f"{prefix}_xq", f"{prefix}_xs", f"{prefix}_xz"]
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], quantized[x], name=f"{prefix}_qx"))
        xq, xs, xz = quantized[x]
        inits += [numpy_helper.from_array(m.weight_int8.t().contiguous().numpy(), f"{prefix}_Wq"),
                  numpy_helper.from_array(m.weight_scale.float().numpy(), f"{prefix}_Ws")]
        nodes.append(helper.make_node("MatMulIntegerToFloat", [xq, f"{prefix}_Wq", xs, f"{prefix}_Ws", xz],
                                      [out], domain=MS, name=f"{prefix}_matmul_i8"))
        return nodes, inits
    wn, wi, w = _blocked_weight(m, prefix, conv) if kind == "blocked" else _int8_weight(m, prefix, conv)
    nodes, inits = nodes + wn, inits + wi
    if kind == "static":
        inits += [numpy_helper.from_array(np.array(float(m.act_scale), np.float32), f"{prefix}_as"),
                  numpy_helper.from_array(np.array(int(m.act_zero), np.uint8), f"{prefix}_az")]
        nodes += [helper.make_node("QuantizeLinear", [x, f"{prefix}_as", f"{prefix}_az"], [f"{prefix}_xq"],
                                   name=f"{prefix}_qx"),
                  helper.make_node("DequantizeLinear", [f"{prefix}_xq", f"{prefix}_as", f"{prefix}_az"],
                                   [f"{prefix}_xdq"], name=f"{prefix}_dqx")]
        x = f"{prefix}_xdq"
    if conv:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("Conv", [x, w, *node.input[2:]], [out], name=f"{prefix}_conv", **attrs))
    else:
        nodes.append(helper.make_node("MatMul", [x, w], [out], name=f"{prefix}_matmul"))
    return nodes, inits


def _weight_of(node: Any, by_name: dict[str, Any]) -> tuple[Any, torch.Tensor] | None:
    """The float weight (``W^T`` for MatMul/Gemm, ``W`` for Conv) an exported node multiplies by, if an initializer."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
        return None
    init = by_name.get(node.input[1])
    if init is None or len(init.dims) != (4 if node.op_type == "Conv" else 2):
        return None
    w = torch.from_numpy(numpy_helper.to_array(init).copy())
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        w = w if attrs.get("transB", 0) else w.t()
        return init, w
    return init, (w if node.op_type == "Conv" else w.t())


def rewrite(model_proto: Any, packed: dict[str, nn.Module]) -> list[nn.Module]:
    """Replace the float MatMul / Gemm / Conv nodes of packed layers in ``model_proto`` (in place); returns the
    packed layers rewritten."""
    from onnx import helper

    graph = model_proto.graph
    by_name = {i.name: i for i in graph.initializer}
    done: list[nn.Module] = []
    new_nodes, used = [], set()
    quantized: dict[str, list[str]] = {}
    for node in graph.node:
        found = _weight_of(node, by_name)
        m = packed.get(_key(found[1])) if found is not None else None
        if m is None:
            new_nodes.append(node)
            continue
        kind = rewrite_kind(m)
        prefix = f"ts{len(used)}"
        gemm_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        out = f"{prefix}_mm" if gemm_bias else node.output[0]
        nodes, inits = _replacement(m, kind, node, out, prefix, quantized)
        if gemm_bias:
            nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=f"{prefix}_bias"))
        new_nodes += nodes
        graph.initializer.extend(inits)
        used.add(found[0].name)
        done.append(m)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still = {n.input[i] for n in graph.node for i in range(len(n.input))}
    keep = [i for i in graph.initializer if i.name not in used or i.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if done and not any(o.domain == MS for o in model_proto.opset_import):
        model_proto.opset_import.append(helper.make_opsetid(MS, 1))
    return done
