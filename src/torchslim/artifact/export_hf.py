"""Export an artifact as an ordinary Hugging Face folder (``save_pretrained`` layout), where transformers can
represent it: a plainly or uniformly pruned model as it is; a quantized or sparse one with ``dense=True``,
its layers dequantized back to float (the accuracy of the compressed model, none of its size or speed)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact import hf_files
from torchslim.artifact.checks import check_target
from torchslim.core.io import user_mode_tree
from torchslim.core.errors import TorchSlimError
from torchslim.core.linear import is_conv1d
from torchslim.core.surgery import get_module, replace_module


def dense_linear(module: nn.Module) -> nn.Linear | None:
    """The float ``nn.Linear`` computing what a replacement layer computes (None for other modules, packed
    convolutions and embeddings included: :func:`dense_module` rebuilds those)."""
    if getattr(module, "geometry", None) is not None or hasattr(module, "num_embeddings"):
        return None
    dense = getattr(module, "dense_weight", None)
    if callable(dense) or hasattr(module, "to_linear") or type(module).__name__ == "ScaledLinear":
        w = module.dense_weight() if callable(dense) else (module.to_linear().weight if hasattr(module, "to_linear")
                                                            else module.weight)
        scale = getattr(module, "input_scale", None)
        w = w.detach().float() * (scale[None, :] if isinstance(scale, torch.Tensor) else 1.0)
        bias = getattr(module, "bias", None)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias.detach().float())
        return lin
    return None


def dense_conv(module: nn.Module) -> nn.Conv2d | None:
    """The float ``nn.Conv2d`` computing what a packed convolution computes (None for other modules)."""
    g = getattr(module, "geometry", None)
    if g is None or not callable(getattr(module, "dense_weight", None)):
        return None
    if getattr(module, "fused_relu", False) or getattr(module, "uint8_output", False):
        raise TorchSlimError(f"{type(module).__name__} ({g.in_channels}->{g.out_channels}) has a ReLU fused into it: "
                             "a float Conv2d cannot stand for it in the model's own class; export without --dense")
    bias = getattr(module, "bias", None)
    conv = nn.Conv2d(g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation, g.groups,
                     bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(module.dense_weight().detach().float().reshape(conv.weight.shape))
        if bias is not None:
            conv.bias.copy_(bias.detach().float())
    return conv


def dense_embedding(module: nn.Module) -> nn.Embedding | None:
    """The float ``nn.Embedding`` a packed embedding looks rows up in (None for other modules)."""
    if not (hasattr(module, "num_embeddings") and callable(getattr(module, "dense_weight", None))):
        return None
    emb = nn.Embedding(module.num_embeddings, module.embedding_dim, getattr(module, "padding_idx", None))
    with torch.no_grad():
        emb.weight.copy_(module.dense_weight().detach().float())
    return emb


def dense_module(module: nn.Module) -> nn.Module | None:
    """The float layer (linear, convolution or embedding) computing what a replacement layer computes."""
    return dense_conv(module) or dense_embedding(module) or dense_linear(module)


def densify_(model: nn.Module) -> int:
    """Replace every packed, sparse or scaled layer by its float equivalent; returns how many."""
    found: list[tuple[str, nn.Module]] = []
    for n, m in model.named_modules():
        if n and not any(n.startswith(f + ".") for f, _ in found):   # parts of a layer densified whole (a low-rank pair)
            d = dense_module(m)
            if d is not None:
                found.append((n, d))
    for n, d in found:
        replace_module(model, n, d)
    return len(found)


def _restore_conv1d_(model: nn.Module) -> None:
    """Where the model's own class has a Conv1D (GPT-2) and the compressed model a plain Linear, put it back."""
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    for name, ref in skeleton.named_modules():
        if name and is_conv1d(ref):
            mine = get_module(model, name)
            if type(mine) is nn.Linear:
                conv = type(ref)(mine.out_features, mine.in_features)
                with torch.no_grad():
                    conv.weight.copy_(mine.weight.t())
                    conv.bias.copy_(mine.bias)
                replace_module(model, name, conv)


def export_hf(artifact: str | Path, out: str | Path, dense: bool = False) -> dict[str, Any]:
    """Write the artifact at ``artifact`` as a Hugging Face folder at ``out``; returns what was done."""
    from torchslim.artifact import load, read_manifest

    artifact, out = Path(artifact), Path(out)
    manifest = read_manifest(artifact)
    if manifest["architecture"].get("kind") != "transformers":
        raise TorchSlimError(f"{artifact}: not a transformers model; only those export as a Hugging Face folder")
    model = load(artifact)
    n = densify_(model) if dense else 0
    _restore_conv1d_(model)
    if not hf_files.hf_loadable(model, manifest["architecture"].get("children")):
        hint = "" if dense else " (its layers are compressed: --dense writes them back in float)"
        raise TorchSlimError(f"{artifact}: transformers' config for {type(model).__name__} cannot describe this "
                             f"model's shapes{hint}; load it with torchslim.load")
    if out.exists() and any(out.iterdir()):
        check_target(out)
    model.save_pretrained(out)
    copied = [f for f in hf_files.COMPANIONS if (artifact / f).is_file()]
    for f in copied:
        shutil.copyfile(artifact / f, out / f)
    user_mode_tree(out)                      # safetensors writes 0600; a serving container must read the folder
    return {"densified_layers": n, "files": sorted(p.name for p in out.iterdir())}
