"""Export an artifact as a Hugging Face folder in the compressed-tensors layout (``quant_method:
compressed-tensors``, format ``pack-quantized``), which transformers (with the ``compressed-tensors`` package)
and vLLM load without torchslim.

Each packed integer layer keeps its codes: they are packed with compressed-tensors' own ``pack_to_int32`` into
``weight_packed`` beside ``weight_scale`` (and ``weight_zero_point``) and ``weight_shape``; the
``quantization_config`` is a compressed-tensors ``QuantizationConfig`` written by its ``ModelCompressor``.

* Symmetric ints (per channel, per group, per tensor) map exactly: ``w = q * scale`` in both.
* Asymmetric ints are refused: torchslim stores ``w = q * scale + offset`` with a float offset,
  compressed-tensors ``w = (q - zp) * scale`` with an integer zero point, so the offsets would have to be
  rounded (measured on tiny-llama int4 g32: up to 11% relative output error per layer, 5.7% of the logits),
  and transformers 5.23 with compressed-tensors 0.20 cannot load pack-quantized zero points anyway (its loader
  builds them unpacked, its decompressor wants them packed into int32; only ``from_pretrained(...,
  quantization_config=CompressedTensorsConfig(dequantize=True))`` loads them, at 4.8% logits error).
* A tied input embedding that reads a packed head's codes is written in float (transformers cannot build a
  compressed ``nn.Embedding``: its weight initialisation fails), and the config is untied.
* Layers the format cannot express (NF4 / codebook / ternary / binary levels, AWQ input scaling, groups that do
  not divide the width, other replacement layers) are written dense in float, each named in a warning.
* 2:4 sparse layers are refused: compressed-tensors 0.20 has no sparse compressor (its ModelCompressor writes
  an empty ``sparsity_config``), so transformers would load them as nothing but dense weights.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError

log = logging.getLogger("torchslim.artifact")

CT_FORMAT = "pack-quantized"
_EXACT_TOL = 1e-6        # compressed-tensors' decompressed weight vs torchslim's, relative to the largest


@dataclass
class LayerPlan:
    """How one layer is written: its compressed-tensors tensors and scheme key, or why it stays dense."""

    name: str
    key: tuple | None = None                   # (bits, strategy, group_size, symmetric)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    dense_reason: str | None = None


def _import_ct() -> Any:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as e:  # pragma: no cover - the package is pinned in requirements.txt
        raise ConfigError("the compressed-tensors format needs the 'compressed-tensors' package "
                          "(pip install compressed-tensors)") from e
    import compressed_tensors
    return compressed_tensors


def _is_sparse(module: nn.Module) -> bool:
    return type(module).__name__ in ("SparseLinear", "SparseQuantLinear")


def plan_quant_linear(name: str, m: nn.Module) -> LayerPlan:
    """The compressed-tensors tensors for a ``QuantLinear`` (codes kept), or why it must stay dense."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from torchslim.quantization.formats import IntFormat, PerChannel, PerGroup, PerTensor

    fmt, gran = m.fmt, m.gran
    if not isinstance(fmt, IntFormat):
        return LayerPlan(name, dense_reason=f"{fmt.name} levels are not a uniform integer grid")
    if not fmt.symmetric:
        raise TorchSlimError(f"{name} is {fmt.name}: compressed-tensors' integer zero points cannot hold torchslim's "
                             "float offsets and transformers cannot load its packed zero points; quantize "
                             "symmetric, or export with `torchslim export hf --dense`")
    if m.input_scale is not None:
        return LayerPlan(name, dense_reason="its inputs are scaled (AWQ), which the layout has no tensor for")
    if isinstance(gran, PerGroup):
        if m.in_features % gran.size:
            return LayerPlan(name, dense_reason=f"groups of {gran.size} do not divide its {m.in_features} inputs")
        strategy, group = "group", gran.size
    elif isinstance(gran, PerChannel):
        strategy, group = "channel", None
    elif isinstance(gran, PerTensor):
        strategy, group = "tensor", None
    else:
        return LayerPlan(name, dense_reason=f"{type(gran).__name__} granularity has no compressed-tensors strategy")
    bits = fmt.bits
    codes = m.codes()[:, : m.in_features].to(torch.int16)
    scale = m.scale.detach().float().clone()
    plan = LayerPlan(name, key=(bits, strategy, group, fmt.symmetric))
    plan.tensors["weight_packed"] = pack_to_int32(codes.to(torch.int8), bits)
    plan.tensors["weight_scale"] = scale.reshape(1) if strategy == "tensor" else scale
    plan.tensors["weight_shape"] = torch.tensor([m.out_features, m.in_features])
    return plan


def quantization_args(key: tuple) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    bits, strategy, group, symmetric = key
    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, group_size=group)


def ct_dequantized(plan: LayerPlan, shape: torch.Size) -> torch.Tensor:
    """The float weight compressed-tensors' own decompressor reads back from ``plan``'s tensors."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=quantization_args(plan.key))
    return PackedQuantizationCompressor.decompress(dict(plan.tensors), scheme)["weight"].reshape(shape).float()


def _name_target(name: str) -> str:
    return "re:^" + re.escape(name) + "$"


def quantization_config(plans: list[LayerPlan], dense_linears: list[str]) -> Any:
    """A compressed-tensors ``QuantizationConfig``: one config group per scheme, its targets the layer names."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    keys = sorted({p.key for p in plans}, key=str)
    groups = {}
    for i, key in enumerate(keys):
        targets = [_name_target(p.name) for p in plans if p.key == key]
        groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=quantization_args(key))
    return QuantizationConfig(config_groups=groups, format=CT_FORMAT, quantization_status="compressed",
                              ignore=sorted(dense_linears))


def _float_module(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Embedding`` holding ``weight`` (and ``m``'s bias)."""
    from torchslim.quantization.qembedding import PackedEmbedding

    with torch.no_grad():
        if isinstance(m, PackedEmbedding):
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx)
            emb.weight.copy_(weight)
            return emb
        bias = getattr(m, "bias", None)
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias.detach().float())
        return lin


def _conv1d_names(model: nn.Module) -> set[str]:
    """Layers that the model's own class builds as GPT-2 ``Conv1D`` (compressed-tensors compresses only Linear)."""
    from torchslim.core.linear import is_conv1d

    with torch.device("meta"):
        skeleton = type(model)(model.config)
    return {n for n, m in skeleton.named_modules() if n and is_conv1d(m)}


def export_ct(artifact: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the artifact at ``artifact`` as a compressed-tensors Hugging Face folder at ``out``."""
    from torchslim.artifact import hf_files, load, read_manifest
    from torchslim.artifact.checks import check_target
    from torchslim.artifact.export_hf import _restore_conv1d_, dense_linear
    from torchslim.core.io import user_mode_tree
    from torchslim.core.surgery import get_module, replace_module
    from torchslim.quantization.qembedding import PackedEmbedding
    from torchslim.quantization.qlinear import QuantLinear

    _import_ct()
    from compressed_tensors.compressors import ModelCompressor

    artifact, out = Path(artifact), Path(out)
    manifest = read_manifest(artifact)
    if manifest["architecture"].get("kind") != "transformers":
        raise TorchSlimError(f"{artifact}: not a transformers model; only those export as a Hugging Face folder")
    model = load(artifact).eval()
    sparse = [n for n, m in model.named_modules() if _is_sparse(m)]
    if sparse:
        raise TorchSlimError(f"{artifact}: {len(sparse)} sparse layers (e.g. {sparse[0]}): compressed-tensors "
                             f"{_import_ct().__version__} has no sparse (2:4) compressor that transformers loads; "
                             "export them dense with `torchslim export hf --dense`")

    conv1d = _conv1d_names(model)
    plans: dict[str, LayerPlan] = {}
    dense: dict[str, str] = {}
    embeds: dict[str, str] = {}            # packed embedding -> the head whose codes it reads
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            plan = plan_quant_linear(name, m) if name not in conv1d else \
                LayerPlan(name, dense_reason="the model's class builds it as a Conv1D, which compressed-tensors skips")
            if plan.dense_reason is None:
                plans[name] = plan
            else:
                dense[name] = plan.dense_reason
        elif isinstance(m, PackedEmbedding):
            head = next((hn for hn, h in model.named_modules() if isinstance(h, QuantLinear) and h.packed is m.packed),
                        None)
            embeds[name] = head
        elif name and dense_linear(m) is not None:
            dense[name] = f"{type(m).__name__} has no compressed-tensors form"
    for name, plan in plans.items():
        m = get_module(model, name)
        w, mine = ct_dequantized(plan, torch.Size([m.out_features, m.in_features])), m.dequantize()
        if float((w - mine).abs().max()) > _EXACT_TOL * float(mine.abs().max().clamp_min(1e-12)):
            raise TorchSlimError(f"{name}: compressed-tensors' decompressor does not read back this layer's weight "
                                 "(a layout mismatch); use `torchslim export hf --dense`")
        replace_module(model, name, _float_module(m, w))
    for name, head in embeds.items():      # transformers cannot build a compressed Embedding: float rows
        m = get_module(model, name)
        dense[name] = f"transformers loads no compressed embedding (it reads the codes of {head or 'the head'})"
        replace_module(model, name, _float_module(m, m.dense_weight().detach().clone()))
    for name in [n for n in dense if not isinstance(get_module(model, n), (nn.Linear, nn.Embedding))]:
        replace_module(model, name, dense_linear(get_module(model, name)))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if any(get_module(model, n) is head for n in plans):
        for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            cfg.tie_word_embeddings = False       # the packed head and the float embedding are written apart
    _restore_conv1d_(model)
    if not plans:
        raise TorchSlimError(f"{artifact}: no packed integer layers to write in the compressed-tensors layout "
                             f"({len(dense)} layers it cannot express); use `torchslim export hf`")
    if not hf_files.hf_loadable(model, manifest["architecture"].get("children")):
        raise TorchSlimError(f"{artifact}: transformers' config for {type(model).__name__} cannot describe this "
                             "model's shapes; load it with torchslim.load")
    for name, why in sorted(dense.items()):
        log.warning("%s stays dense (float) in the compressed-tensors export: %s", name, why)
    state = model.state_dict()
    for name, plan in plans.items():
        state.pop(f"{name}.weight")
        state.update({f"{name}.{k}": v.contiguous() for k, v in plan.tensors.items()})
    if out.exists() and any(out.iterdir()):
        check_target(out)
    dense_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in plans]
    model.save_pretrained(out, state_dict=state)
    ModelCompressor(quantization_config=quantization_config(list(plans.values()), dense_linears)).update_config(
        str(out))
    for f in (f for f in hf_files.COMPANIONS if (artifact / f).is_file()):
        (out / f).write_bytes((artifact / f).read_bytes())
    user_mode_tree(out)
    return {"format": CT_FORMAT, "packed_layers": len(plans), "dense_layers": dict(sorted(dense.items())),
            "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
            "files": sorted(p.name for p in out.iterdir())}
