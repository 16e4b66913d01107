"""Export a model (artifact, HF folder or zoo name) to ONNX for ONNX Runtime, keeping its compressed layers.

The model is exported in float with the torch ONNX exporter (``dynamo=True``; batch and sequence dynamic),
then every MatMul whose weight came from a packed layer is rewritten to run that layer's own codes:

* int4 weight-only (``QuantLinear``, groups of 16..256) -> ``com.microsoft.MatMulNBits`` (4 bits, the same
  codes, scales and zero points: ``w = (q - zp) * scale``);
* int8 weight-only per channel -> ``DequantizeLinear`` (int8, per column) + ``MatMul``;
* W8A8 dynamic (``Int8DynamicLinear``) -> one ``DynamicQuantizeLinear`` per input tensor (q, k and v share it)
  and ``com.microsoft.MatMulIntegerToFloat`` per layer with per-column weight scales (activations quantized
  per tensor at run time: ONNX Runtime has no per-token form, so results differ slightly from torchslim's);
* W8A8 static (``Int8StaticLinear``) -> ``QuantizeLinear``/``DequantizeLinear`` around the input (the
  calibrated range) and an int8 ``DequantizeLinear`` weight: QDQ, which ONNX Runtime fuses into int8 kernels.

SmoothQuant / AWQ input scales become a ``Mul`` before the layer. Decoder LMs export ``input_ids -> logits``
(no KV-cache inputs yet); encoders ``input_ids, attention_mask -> last_hidden_state``; other modules take the
task's example inputs.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

log = logging.getLogger("torchslim")
MS = "com.microsoft"


class _Wrapped(nn.Module):
    """A fixed signature for the exporter: named tensor inputs to one output tensor."""

    def __init__(self, model: nn.Module, names: list[str], causal: bool) -> None:
        super().__init__()
        self.model, self.names, self.causal = model, names, causal

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                x: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "x": x, "pixel_values": pixel_values}
        if x is not None:
            return self.model(x)
        kw = {k: v for k, v in given.items() if k in self.names}
        if self.causal:
            return self.model(**kw, use_cache=False).logits
        out = self.model(**kw)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0] if isinstance(out, tuple) else out


def _key(w: torch.Tensor) -> str:
    return hashlib.sha256(w.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _densify(model: nn.Module) -> dict[str, nn.Module]:
    """Replace packed layers by float ``nn.Linear``s of the weight they compute (without input scales, which
    the rewrite puts back as a Mul); returns ``{hash of W^T: packed layer}`` to find their MatMuls again."""
    from torchslim.core.surgery import get_module, replace_module

    found: dict[str, nn.Module] = {}
    for name in [n for n, m in model.named_modules() if type(m).__name__ == "PackedEmbedding"]:
        m = get_module(model, name)       # a tied table read from the head's codes: a float lookup table here
        replace_module(model, name, nn.Embedding.from_pretrained(m.dense_weight().detach().float(), freeze=True,
                                                                 padding_idx=m.padding_idx))
    for name in [n for n, m in model.named_modules() if n and _rewrite_kind(m)]:
        m = get_module(model, name)
        w = _core_weight(m)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if m.bias is not None:
                lin.bias.copy_(m.bias.detach().float())
        found[_key(w.t())] = m
        replace_module(model, name, lin)
    return found


def _rewrite_kind(m: nn.Module) -> str | None:
    from torchslim.quantization.formats import IntFormat, PerChannel, PerGroup
    from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear
    from torchslim.quantization.qlinear import QuantLinear

    if isinstance(m, Int8DynamicLinear):
        return "dynamic"
    if isinstance(m, Int8StaticLinear):
        return "static" if m.act_bits == 8 else None
    if isinstance(m, QuantLinear) and isinstance(m.fmt, IntFormat):
        if m.fmt.bits == 4 and isinstance(m.gran, PerGroup) and m.gran.size in (16, 32, 64, 128, 256):
            return "nbits"
        if m.fmt.bits == 8 and m.fmt.symmetric and isinstance(m.gran, PerChannel):
            return "int8"
    return None


def _input_scale(m: nn.Module) -> torch.Tensor | None:
    s = getattr(m, "input_scale", None)
    if isinstance(s, torch.Tensor):
        return s.float()
    return m.smooth.float() if getattr(m, "use_smooth", False) else None


def _core_weight(m: nn.Module) -> torch.Tensor:
    """The layer's weight before its input scaling: ``y = (x * s) @ W^T``."""
    if hasattr(m, "dequantized_weight"):
        return m.dequantized_weight().float()
    return m.dequantize(torch.float32)


def _nbits(m: nn.Module, x: str, out: str, prefix: str) -> tuple[list[Any], list[Any]]:
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
             numpy_helper.from_array(m.scale.float().reshape(-1).numpy(), f"{prefix}_scales"),
             numpy_helper.from_array(zp.float().reshape(-1).numpy(), f"{prefix}_zp")]
    a = x
    nodes = []
    if m.padded_in != m.in_features:
        raise TorchSlimError(f"ONNX MatMulNBits needs whole groups; a layer has {m.in_features} inputs for groups of {g}")
    nodes.append(helper.make_node("MatMulNBits", [a, f"{prefix}_B", f"{prefix}_scales", f"{prefix}_zp"], [out],
                                  domain=MS, K=k, N=n, bits=4, block_size=g, name=f"{prefix}_matmulnbits"))
    return nodes, inits


def _int8_weight(m: nn.Module, prefix: str) -> tuple[list[Any], list[Any], str]:
    """DequantizeLinear of the int8 ``W^T`` (per output column): the float weight as a graph value."""
    from onnx import helper, numpy_helper

    if hasattr(m, "weight_int8"):
        q, s = m.weight_int8, m.weight_scale
    else:
        q, s = m.codes().to(torch.int8), m.scale.reshape(-1)
    inits = [numpy_helper.from_array(q.t().contiguous().numpy(), f"{prefix}_Wq"),
             numpy_helper.from_array(s.float().numpy(), f"{prefix}_Ws")]
    node = helper.make_node("DequantizeLinear", [f"{prefix}_Wq", f"{prefix}_Ws"], [f"{prefix}_W"], axis=1,
                            name=f"{prefix}_dqw")
    return [node], inits, f"{prefix}_W"


def _replacement(m: nn.Module, kind: str, x: str, out: str, prefix: str,
                 quantized: dict[str, list[str]]) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers computing ``out`` from ``x`` with ``m``'s codes; ``quantized`` maps graph values
    already quantized dynamically to their (codes, scale, zero point)."""
    from onnx import helper, numpy_helper

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
    wn, wi, w = _int8_weight(m, prefix)
    nodes, inits = nodes + wn, inits + wi
    if kind == "static":
        qmax = m.act_qmax()
        if qmax != 255:
            raise TorchSlimError(f"ONNX QDQ activations are uint8 (0..255); a layer uses 0..{qmax}")
        inits += [numpy_helper.from_array(np.array(float(m.act_scale), np.float32), f"{prefix}_as"),
                  numpy_helper.from_array(np.array(int(m.act_zero), np.uint8), f"{prefix}_az")]
        nodes += [helper.make_node("QuantizeLinear", [x, f"{prefix}_as", f"{prefix}_az"], [f"{prefix}_xq"],
                                   name=f"{prefix}_qx"),
                  helper.make_node("DequantizeLinear", [f"{prefix}_xq", f"{prefix}_as", f"{prefix}_az"],
                                   [f"{prefix}_xdq"], name=f"{prefix}_dqx")]
        x = f"{prefix}_xdq"
    nodes.append(helper.make_node("MatMul", [x, w], [out], name=f"{prefix}_matmul"))
    return nodes, inits


def rewrite(model_proto: Any, packed: dict[str, nn.Module]) -> dict[str, int]:
    """Replace the float MatMuls of packed layers in ``model_proto`` (in place); returns counts per kind."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    by_name = {i.name: i for i in graph.initializer}
    counts: dict[str, int] = {}
    new_nodes, used = [], set()
    quantized: dict[str, list[str]] = {}
    for node in graph.node:
        init = by_name.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        m = None
        if init is not None and len(init.dims) == 2:
            m = packed.get(_key(torch.from_numpy(numpy_helper.to_array(init).copy())))
        if m is None:
            new_nodes.append(node)
            continue
        kind = _rewrite_kind(m)
        prefix = f"ts{len(used)}"
        nodes, inits = _replacement(m, kind, node.input[0], node.output[0], prefix, quantized)
        new_nodes += nodes
        graph.initializer.extend(inits)
        used.add(init.name)
        counts[kind] = counts.get(kind, 0) + 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    still = {n.input[i] for n in graph.node for i in range(len(n.input))}
    keep = [i for i in graph.initializer if i.name not in used or i.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == MS for o in model_proto.opset_import):
        model_proto.opset_import.append(helper.make_opsetid(MS, 1))
    return counts


def _inputs(task: Any, model: nn.Module) -> tuple[list[str], tuple[torch.Tensor, ...], bool]:
    causal = bool(getattr(getattr(model, "config", None), "is_decoder", False)) or callable(
        getattr(model, "generate", None)) and hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM")
    if task is None:
        raise TorchSlimError("ONNX export needs the model's task to know its inputs")
    batch = task.example_inputs(2, 16) if hasattr(task, "tokenizer") else task.example_inputs(2)
    names = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and k in ("input_ids", "attention_mask", "x",
                                                                                   "pixel_values")]
    if causal:
        names = ["input_ids"]
    if not names:
        raise TorchSlimError(f"ONNX export: no tensor inputs among {sorted(batch)}")
    return names, tuple(batch[n] for n in names), causal


def write_onnx(model: nn.Module, out: str | Path, task: Any) -> dict[str, Any]:
    """Write ``model`` as the ONNX file ``out`` (weights inside it; ``task`` gives example inputs); returns what was
    rewritten. ``torchslim.exports.export_onnx`` loads a model by name or folder first."""
    import copy

    try:
        import onnx
        import onnxscript  # noqa: F401 - the torch exporter needs it
    except ImportError as e:
        raise TorchSlimError(f"ONNX export needs onnx and onnxscript ({e}): pip install 'torchslim[onnx]'") from None

    from torchslim.core.io import atomic_path

    model = copy.deepcopy(model).eval()
    names, args, causal = _inputs(task, model)
    packed = _densify(model)
    dyn = {n: {0: "batch", 1: "seq"} if args[i].dim() >= 2 and n != "pixel_values" and n != "x" else {0: "batch"}
           for i, n in enumerate(names)}
    with tempfile.TemporaryDirectory(prefix="torchslim-onnx-") as d, torch.inference_mode(False), torch.no_grad():
        tmp = Path(d) / "float.onnx"
        try:
            quiet = logging.getLogger("torch.onnx")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():   # the exporter's chatter
                warnings.simplefilter("ignore")
                torch.onnx.export(_Wrapped(model, names, causal).eval(), (), str(tmp), kwargs=dict(zip(names, args)),
                                  dynamo=True, input_names=names,
                                  output_names=["logits" if causal else "output"], dynamic_shapes=dyn, verbose=False)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter's own failure, in one line
            log.debug("exporter failure", exc_info=True)
            raise TorchSlimError(f"the torch ONNX exporter failed on {type(model).__name__}: "
                                 f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from None
        finally:
            quiet.setLevel(level)
        proto = onnx.load(str(tmp))
    counts = rewrite(proto, packed)
    if len(packed) != sum(counts.values()):
        log.warning("ONNX export: %d of %d packed layers were not found in the exported graph and run in float",
                    len(packed) - sum(counts.values()), len(packed))
    with atomic_path(Path(out)) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return {"file": str(out), "bytes": Path(out).stat().st_size, "inputs": names, "rewritten": counts,
            "packed_layers": len(packed), "float_layers": len(packed) - sum(counts.values())}
