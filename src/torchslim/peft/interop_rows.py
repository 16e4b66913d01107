"""peft's IA3, prompt-tuning and prefix-tuning formats: rows of :data:`torchslim.peft.interop.FORMATS`
(registered when :mod:`torchslim.peft` imports this module, so ``to_peft``/``from_peft`` always know them).

* **IA3** (``"IA3"``): one vector per layer, ``base_model.model.<layer>.ia3_l``, shaped ``[out, 1]`` (scales the
  output) or ``[1, in]`` (scales the input of the layers the config's ``feedforward_modules`` names), a
  convolution's ``[1, channels, 1, 1]``. Which layers scale their input is decided as peft decides it (a
  regex string is matched in full against the layer's name; a list entry matches a name it ends with; a config
  without the field takes peft's defaults for the model type); a shape that contradicts it is refused.
* **Prompt tuning** (``"PROMPT_TUNING"``): ``prompt_embeddings`` ``[num_virtual_tokens, token_dim]``, the learned
  input embeddings, as :class:`~torchslim.peft.prompt.branch.PromptBranch` holds them. peft drops position ids
  for prompt tuning, so on left-padded input its positions count the pads and its outputs differ from
  torchslim's (which follow the attention mask, as the base model does) by about 2e-3; on unpadded input both
  give the same outputs.
* **Prefix tuning** (``"PREFIX_TUNING"``): ``prompt_embeddings`` ``[num_virtual_tokens, num_layers * 2 *
  token_dim]``, every layer's keys and values (peft's ``token_dim`` and ``num_attention_heads`` are the key-value
  width and heads). peft saves a projected prefix (``prefix_projection=True``) as this projection's output, not
  as the embedding and MLP it trained (and loads it for inference only), so torchslim does the same: a
  projected :class:`~torchslim.peft.prompt.branch.PrefixBranch` is written as its projected prefix, and a peft
  folder always becomes a branch that learns the prefix directly (the same outputs; the MLP is not in the file).

Prompt and prefix adapters are written for causal LMs (peft ``task_type`` ``CAUSAL_LM``) and base encoders
(``FEATURE_EXTRACTION``), the two models torchslim's prompt methods and peft are checked to compute alike.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.codec import shown
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.linear import is_conv1d
from torchslim.core.surgery import get_module
from torchslim.peft.branch import Branch, branches
from torchslim.peft.ia3.branch import IA3Branch
from torchslim.peft.ia3.targets import PEFT_DEFAULTS
from torchslim.peft.interop import (
    PREFIX,
    Header,
    PeftFormat,
    Planned,
    register_peft_format,
)
from torchslim.peft.prompt.branch import PrefixBranch, PromptBranch
from torchslim.peft.prompt.config import attention_geometry
from torchslim.peft.prompt.virtual import VirtualBranch, hf_config
from torchslim.peft.weights import Geometry, geometry

Rows = list[tuple[str, nn.Module, Branch]]
IA3_SUFFIX = ".ia3_l"


def _refuse_saved_modules(config: dict[str, Any], path: Path) -> None:
    if config.get("modules_to_save"):
        raise ConfigError(f"{path}: peft option modules_to_save={shown(config['modules_to_save'])} is not supported "
                          "by torchslim (it trains and saves whole modules besides the adapter)")


# -- IA3 -------------------------------------------------------------------------------------------------------
def _ia3_shape(g: Geometry, feedforward: bool) -> tuple[int, ...]:
    """peft's shape of a layer's ``ia3_l``."""
    if g.conv is not None:
        return (1, g.in_features if feedforward else g.out_features, 1, 1)
    return (1, g.in_features) if feedforward else (g.out_features, 1)


def _ia3_geometry(layer: nn.Module, name: str, where: str) -> Geometry:
    g = geometry(layer)
    if g is None or isinstance(layer, Branch):
        raise ConfigError(f"{where}'{name[:120]}' is a {type(layer).__name__}, which torchslim's IA3 cannot adapt")
    if g.conv is not None and g.conv["dims"] != 2:
        raise ConfigError(f"{where}'{name[:120]}' is a {g.conv['dims']}-d convolution: peft's IA3 adapts linear "
                          "layers and 2-d convolutions only")
    return g


def _peft_targets(model: nn.Module, entries: list[str]) -> set[str]:
    """The layers peft's ``target_modules`` list picks: the name itself, or a name ending in ``.entry``."""
    inside = tuple(f"{n}." for n, _ in branches(model))
    return {n for n, m in model.named_modules() if n and not isinstance(m, Branch) and not n.startswith(inside)
            and any(n == t or n.endswith("." + t) for t in entries)}


def _peft_feedforward(names: list[str], spec: Any) -> set[str]:
    """The layers among ``names`` that peft's ``feedforward_modules`` makes scale their input."""
    if isinstance(spec, str):
        try:
            return {n for n in names if re.fullmatch(spec, n)}
        except re.error:
            raise ConfigError(f"bad feedforward_modules pattern {shown(spec)} in the peft config") from None
    return {n for n in names if any(n.endswith(f) for f in spec)}


def _short_names(model: nn.Module, names: list[str]) -> list[str]:
    """Each layer's shortest trailing name (``output.dense``) that peft's matching takes to none but ``names``."""
    short = set()
    for n in names:
        parts = n.split(".")
        short.add(next((s for k in range(1, len(parts) + 1)
                        if _peft_targets(model, [s := ".".join(parts[-k:])]) <= set(names)), n))
    return sorted(short)


def _ia3_lists(model: nn.Module, names: list[str], fed: list[str]) -> tuple[list[str], list[str]]:
    """``target_modules`` and ``feedforward_modules`` (a subset of them, as peft requires) that pick exactly the
    adapted and the input-scaled layers: short names where they do (peft's defaults), else full names."""
    short = _short_names(model, names)
    short_fed = [s for s in short if _peft_targets(model, [s]) <= set(fed)]
    for targets, feedforward in ((short, short_fed), (sorted(names), sorted(fed))):
        if _peft_targets(model, targets) == set(names) and _peft_feedforward(names, feedforward) == set(fed):
            return targets, feedforward
    raise ConfigError(f"peft's name matching cannot pick exactly this adapter's {len(names)} layers and its "
                      f"{len(fed)} input-scaled ones (e.g. '{names[0][:120]}')")


def _ia3_write(model: nn.Module, rows: Rows) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    names = [n for n, *_ in rows]
    fed = [n for n, _, b in rows if b.feedforward]
    tensors = {}
    for name, layer, b in rows:
        g = _ia3_geometry(layer, name, "")
        tensors[f"{PREFIX}{name}{IA3_SUFFIX}"] = b.vector.reshape(_ia3_shape(g, b.feedforward))
    targets, feedforward = _ia3_lists(model, names, fed)
    return {"exclude_modules": None, "fan_in_fan_out": any(is_conv1d(m) for _, m, _ in rows),
            "feedforward_modules": feedforward, "init_ia3_weights": True, "modules_to_save": None,
            "target_modules": targets}, tensors


def _ia3_feedforward_spec(model: nn.Module, config: dict[str, Any], path: Path) -> Any:
    spec = config.get("feedforward_modules")
    if spec is None:                       # peft fills it in from its table for the model type
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in PEFT_DEFAULTS:
            raise ConfigError(f"{path}: the config has no feedforward_modules and peft has no default for model "
                              f"type {shown(model_type)}")
        return list(PEFT_DEFAULTS[model_type][1])
    if isinstance(spec, str) or (isinstance(spec, list) and all(isinstance(s, str) for s in spec)):
        return spec
    raise ConfigError(f"{path}: peft option feedforward_modules must be a pattern or a list of names, "
                      f"got {shown(spec)}")


def _ia3_read(model: nn.Module, config: dict[str, Any], header: Header, adapter: str, path: Path) -> list[Planned]:
    _refuse_saved_modules(config, path)
    layers = {}
    for key in header:
        if not (key.startswith(PREFIX) and key.endswith(IA3_SUFFIX)):
            raise ConfigError(f"{path}: {shown(key)} is a tensor torchslim does not read (it reads "
                              f"{PREFIX}<layer>{IA3_SUFFIX})")
        layers[key[len(PREFIX):-len(IA3_SUFFIX)]] = key
    if not layers:
        raise ConfigError(f"{path}: the adapter holds no IA3 vectors")
    fed = _peft_feedforward(list(layers), _ia3_feedforward_spec(model, config, path))
    planned = []
    for lname, key in layers.items():
        try:
            layer = get_module(model, lname)
        except TorchSlimError:
            raise ConfigError(f"{path}: the adapter adapts '{lname[:120]}', which this model lacks") from None
        g = _ia3_geometry(layer, lname, f"{path}: ")
        want = _ia3_shape(g, lname in fed)
        if header[key][1] != want:
            side = "input-scaled (feedforward_modules)" if lname in fed else "output-scaled"
            raise ConfigError(f"{path}: {key} has shape {list(header[key][1])}; '{lname[:120]}' is {side} and "
                              f"needs {list(want)}")
        features = g.in_features if lname in fed else g.out_features
        branch = IA3Branch(features, feedforward=lname in fed, conv=g.conv is not None, adapter=adapter)
        planned.append((lname, branch, {"vector": key}))
    return planned


# -- prompt and prefix tuning ------------------------------------------------------------------------------------
TASK_TYPES = ("CAUSAL_LM", "FEATURE_EXTRACTION")
EMBEDDINGS = "prompt_embeddings"


def _task_type(model: nn.Module) -> str:
    """peft's task type for ``model``: a causal LM, or a base model (an encoder's hidden states)."""
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if getattr(model, "base_model", None) is model:
        return "FEATURE_EXTRACTION"
    raise ConfigError(f"torchslim writes prompt and prefix adapters of causal LMs and base models (peft task types "
                      f"{', '.join(TASK_TYPES)}), not of a {name}")


def _virtual_fields(model: nn.Module, b: VirtualBranch) -> dict[str, Any]:
    return {"auto_mapping": None, "modules_to_save": None, "num_transformer_submodules": 1,
            "num_virtual_tokens": b.n_virtual, "task_type": _task_type(model)}


def _prompt_write(model: nn.Module, rows: Rows) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    (_, _, b), = rows
    config = hf_config(model, "peft's prompt tuning")
    return {**_virtual_fields(model, b), "num_attention_heads": config.num_attention_heads,
            "num_layers": config.num_hidden_layers, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
            "token_dim": b.hidden_size, "tokenizer_kwargs": None, "tokenizer_name_or_path": None}, \
        {EMBEDDINGS: b.embedding}


@torch.no_grad()
def _prefix_write(model: nn.Module, rows: Rows) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    (_, _, b), = rows
    kv_dim = b.kv_heads * b.head_dim
    flat = b.prefix if b.mlp is None else b.mlp(b.prefix)
    return {**_virtual_fields(model, b), "encoder_hidden_size": b.projection or kv_dim, "init_weights": None,
            "num_attention_heads": b.kv_heads, "num_layers": b.num_layers, "prefix_projection": b.mlp is not None,
            "token_dim": kv_dim}, {EMBEDDINGS: flat}


def _count(config: dict[str, Any], key: str, path: Path) -> int:
    v = config.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 20:
        raise ConfigError(f"{path}: peft option {key} must be a positive integer, got {shown(v)}")
    return v


def _virtual_checks(model: nn.Module, config: dict[str, Any], header: Header, path: Path) -> tuple[Any, int]:
    """What prompt and prefix folders share: the model and task, the one tensor; returns (HF config, n_virtual)."""
    _refuse_saved_modules(config, path)
    hf = hf_config(model, f"{config.get('peft_type')} adapter {path}")
    if config.get("task_type") not in TASK_TYPES:
        raise ConfigError(f"{path}: peft task type {shown(config.get('task_type'))} is not supported (torchslim "
                          f"reads {', '.join(TASK_TYPES)} prompt and prefix adapters)")
    if config.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(f"{path}: num_transformer_submodules={shown(config['num_transformer_submodules'])} is "
                          "an encoder-decoder adapter; torchslim reads decoder LMs' and encoders'")
    if EMBEDDINGS not in header:
        raise ConfigError(f"{path}: the adapter lacks its {EMBEDDINGS} tensor")
    active = [b for b in model.children() if isinstance(b, VirtualBranch) and b.active]
    if active:
        raise ConfigError(f"the model has an active {active[0].method} adapter '{active[0].adapter}': switch it off "
                          "(torchslim.peft.set_adapter) before loading another prompt or prefix adapter")
    return hf, _count(config, "num_virtual_tokens", path)


def _check_shape(header: Header, want: tuple[int, ...], path: Path, what: str) -> None:
    if header[EMBEDDINGS][1] != want:
        raise ConfigError(f"{path}: {EMBEDDINGS} has shape {list(header[EMBEDDINGS][1])}; {what} needs {list(want)}")


def _prompt_read(model: nn.Module, config: dict[str, Any], header: Header, adapter: str, path: Path) -> list[Planned]:
    _, n = _virtual_checks(model, config, header, path)
    width = int(model.get_input_embeddings().weight.shape[1])
    token_dim = _count(config, "token_dim", path)
    if token_dim != width:
        raise ConfigError(f"{path}: the adapter's token_dim is {token_dim}; this model's embeddings are {width} wide")
    _check_shape(header, (n, width), path, f"{n} virtual tokens of this model")
    return [("", PromptBranch(n, width, adapter=adapter), {"embedding": EMBEDDINGS})]


def _prefix_read(model: nn.Module, config: dict[str, Any], header: Header, adapter: str, path: Path) -> list[Planned]:
    hf, n = _virtual_checks(model, config, header, path)
    layers, kv_heads, head_dim = attention_geometry(hf)
    theirs = tuple(_count(config, k, path) for k in ("num_layers", "num_attention_heads", "token_dim"))
    if theirs != (layers, kv_heads, kv_heads * head_dim):
        raise ConfigError(f"{path}: the adapter's num_layers, num_attention_heads, token_dim are {list(theirs)}; this "
                          f"model's layers, key-value heads and key-value width are "
                          f"{[layers, kv_heads, kv_heads * head_dim]}")
    _check_shape(header, (n, layers * 2 * kv_heads * head_dim), path, f"a prefix of {n} positions in this model")
    return [("", PrefixBranch(n, layers, kv_heads, head_dim, adapter=adapter), {"prefix": EMBEDDINGS})]


register_peft_format(PeftFormat("ia3", "IA3", _ia3_write, _ia3_read))
register_peft_format(PeftFormat("prompt", "PROMPT_TUNING", _prompt_write, _prompt_read))
register_peft_format(PeftFormat("prefix", "PREFIX_TUNING", _prefix_write, _prefix_read))
