"""Hugging Face peft's adapter format, both ways: ``adapter_config.json`` + ``adapter_model.safetensors``.

* :func:`to_peft` writes a torchslim adapter as peft 0.21.2 writes it (same config fields and defaults,
  ``sort_keys`` JSON, tensors named ``base_model.model.<layer>.lora_A.weight``...), so
  ``peft.PeftModel.from_pretrained(dense_base, path)`` computes what the torchslim model computes.
* :func:`from_peft` reads such a folder onto a torchslim model, dense or compressed (a branch sits on any layer
  kind), as branches of the named adapter. Pickled ``adapter_model.bin`` files are refused, and so is every peft
  option that changes what the adapter computes and that torchslim does not reproduce (one line each).

One row of :data:`FORMATS` per method, keyed by torchslim's branch method: ``write(model, rows)`` returns the
method's config fields and tensors (``rows`` are ``(layer name, layer, branch)``), ``read(model, config, header,
adapter, path)`` returns the branches to attach, each with the file key of each of its parameters (shapes checked
from the header; the generic code then checks dtypes and sizes, reads, copies and attaches). Methods that adapt
the model rather than layers (peft's prompt and prefix tuning, whose tensors are not under
``base_model.model.``) fit the same two functions: their one branch sits at the root (layer name ``""``).
LoRA (with rsLoRA, DoRA, per-layer ranks and alphas as peft's ``rank_pattern``/``alpha_pattern``) is the row
here; IA3, prompt tuning and prefix tuning are in :mod:`torchslim.peft.interop_rows`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from torchslim.core import io
from torchslim.core.codec import shown
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.core.linear import is_conv1d
from torchslim.core.surgery import get_module
from torchslim.peft.branch import (
    Branch,
    adapters,
    branches,
    check_adapter_name,
    layer_name,
)
from torchslim.peft.files import (
    attach,
    free_adapter_name,
    plain_file,
    read_json,
    read_tensors,
    tensor_header,
    writable_folder,
)
from torchslim.peft.lora.branch import LoraBranch
from torchslim.peft.weights import geometry

PEFT_VERSION = "0.21.2"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
PREFIX = "base_model.model."
Header = dict[str, tuple[torch.dtype, tuple[int, ...]]]
Planned = tuple[str, Branch, dict[str, str]]          # (layer name, empty branch, {branch parameter: file key})


@dataclass(frozen=True)
class PeftFormat:
    method: str                                        # torchslim's Branch.method
    peft_type: str                                     # peft's adapter_config "peft_type"
    write: Callable[[nn.Module, list[tuple[str, nn.Module, Branch]]], tuple[dict[str, Any], dict[str, torch.Tensor]]]
    read: Callable[[nn.Module, dict[str, Any], Header, str, Path], list[Planned]]


FORMATS: dict[str, PeftFormat] = {}


def register_peft_format(fmt: PeftFormat) -> PeftFormat:
    FORMATS[fmt.method] = fmt
    return fmt


def _by_peft_type(peft_type: Any, path: Path) -> PeftFormat:
    for fmt in FORMATS.values():
        if fmt.peft_type == peft_type:
            return fmt
    raise ConfigError(f"{path}: peft adapter type {shown(peft_type)} is not supported (torchslim reads "
                      f"{', '.join(sorted(f.peft_type for f in FORMATS.values()))})")


# -- out -----------------------------------------------------------------------------------------------------
def _common_fields(model: nn.Module, base_model_name_or_path: str | None, peft_type: str) -> dict[str, Any]:
    cls = type(model)
    return {"auto_mapping": {"base_model_class": cls.__name__, "parent_library": cls.__module__},
            "base_model_name_or_path": base_model_name_or_path, "inference_mode": True, "peft_type": peft_type,
            "peft_version": PEFT_VERSION, "revision": None, "task_type": None}


def to_peft(model: nn.Module, path: str | Path, adapter: str = "default",
            base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """Write adapter ``adapter`` of ``model`` as a peft adapter folder at ``path``; returns what was written
    (``peft_type``, ``layers``: how many layers it adapts, 0 for prompt and prefix tuning, ``bytes``, ``files``)."""
    from safetensors.torch import save_file

    path = Path(path)
    found = branches(model, check_adapter_name(adapter))
    if not found:
        raise ConfigError(f"the model has no adapter {adapter!r} (it has {', '.join(adapters(model)) or 'none'})")
    methods = sorted({b.method for _, b in found})
    if len(methods) > 1:
        raise ConfigError(f"adapter {adapter!r} mixes methods ({', '.join(methods)}); a peft adapter holds one")
    fmt = FORMATS.get(methods[0])
    if fmt is None:
        raise ConfigError(f"no peft format for {methods[0]} adapters (torchslim writes {', '.join(sorted(FORMATS))})")
    merged = [n for n, b in found if b.merged]
    if merged:
        raise ConfigError(f"adapter {adapter!r} is merged into the base ('{merged[0]}'): unmerge_ it before exporting")
    writable_folder(path, CONFIG, "a peft adapter folder")
    rows = [(layer_name(n), get_module(model, layer_name(n)), b) for n, b in found]
    fields, tensors = fmt.write(model, rows)
    config = {**_common_fields(model, base_model_name_or_path, fmt.peft_type), **fields}
    with io.staged_files(path, CONFIG) as stage:
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(stage / WEIGHTS),
                  metadata={"format": "pt"})
        (stage / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return {"adapter": adapter, "peft_type": fmt.peft_type, "layers": sum(1 for n, *_ in rows if n),
            "bytes": (path / WEIGHTS).stat().st_size, "files": [CONFIG, WEIGHTS]}


# -- in ---------------------------------------------------------------------------------------------------------
def from_peft(model: nn.Module, path: str | Path, adapter: str = "default") -> list[str]:
    """Attach the peft adapter at ``path`` to ``model`` as adapter ``adapter``; returns the branches' names."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such peft adapter folder")
    free_adapter_name(model, adapter)
    config = read_json(plain_file(path, CONFIG), "a peft adapter folder")
    fmt = _by_peft_type(config.get("peft_type"), path)
    wpath = plain_file(path, WEIGHTS)
    if not wpath.is_file() and (path / PICKLE).exists():
        raise ArtifactError(f"{path}: only {PICKLE} (a pickle, which torchslim never loads): save the adapter with "
                            "safe_serialization=True to get adapter_model.safetensors")
    header = tensor_header(wpath)
    planned = fmt.read(model, config, header, adapter, path)
    params = [(b, p, key) for _, b, keys in planned for p, key in keys.items()]
    used = {key for *_, key in params}
    extra = sorted(set(header) - used)
    if extra:
        raise ConfigError(f"{path}: tensor {extra[0]!r} is not part of any layer's adapter torchslim reads")
    for b, p, key in params:
        ref, (dtype, shape) = b.get_parameter(p), header[key]
        if not dtype.is_floating_point or ref.numel() != _numel(shape):
            raise ArtifactError(f"{path}: tensor {key!r} is {dtype} {list(shape)}, the branch expects float "
                                f"{list(ref.shape)}")
    tensors = read_tensors(wpath)
    with torch.no_grad():
        for b, p, key in params:
            ref = b.get_parameter(p)
            ref.copy_(tensors[key].reshape(ref.shape))
    return attach(model, [(branch_name(lname, b.method, adapter), b) for lname, b, _ in planned])


def branch_name(lname: str, method: str, adapter: str) -> str:
    """Where a read branch goes: under its layer (``q_proj.lora_hf``), or at the root for model-level methods
    (``torchslim_prompt_hf``, as :class:`~torchslim.peft.prompt.config.VirtualTokenConfig` names it)."""
    return f"{lname}.{method}_{adapter}" if lname else f"torchslim_{method}_{adapter}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- LoRA ---------------------------------------------------------------------------------------------------------
# adapter_config.json fields of peft 0.21.2's LoraConfig (besides the common ones), at their defaults.
LORA_FIELDS: dict[str, Any] = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "bias": "none", "corda_config": None,
    "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "target_modules": None,
    "target_parameters": None, "trainable_token_indices": None, "use_bdlora": None, "use_dora": False,
    "use_qalora": False, "use_rslora": False, "velora_config": None,
}
# peft options that change what a LoRA adapter computes (variants, trained biases, saved modules) and torchslim
# does not reproduce: any value but these is refused.
LORA_REFUSED: dict[str, Callable[[Any], bool]] = {
    **{k: (lambda v: not v) for k in ("lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters",
                                      "layer_replication", "use_qalora", "use_bdlora", "alora_invocation_tokens",
                                      "velora_config", "monteclora_config", "arrow_config", "kasa_config",
                                      "megatron_config")},
    "bias": lambda v: v in (None, "none"),
    "init_lora_weights": lambda v: v != "mica",
}
_SUFFIX = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_magnitude_vector": "magnitude",
           "lora_magnitude_vector.weight": "magnitude"}


def _uniform(rows: list[tuple[str, nn.Module, Branch]], attr: str) -> Any:
    values = {getattr(b, attr) for *_, b in rows}
    if len(values) > 1:
        raise ConfigError(f"peft stores one {attr} per adapter; this adapter's layers use {sorted(values)}")
    return values.pop()


def _number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def _target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """The layers' last names (``q_proj``) when peft's suffix matching picks exactly these layers, else full names."""
    suffixes = sorted({n.rpartition(".")[2] for n in names})
    hits = {n for n, m in model.named_modules() if n and not isinstance(m, Branch)
            and any(n == s or n.endswith("." + s) for s in suffixes)}
    return suffixes if hits == set(names) else sorted(names)


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _lora_write(model: nn.Module, rows: list[tuple[str, nn.Module, Branch]]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    dora, rslora, dropout = _uniform(rows, "dora"), _uniform(rows, "rslora"), _uniform(rows, "dropout")
    for name, _, b in rows:
        if b.conv is not None and any(d != 1 for d in b.conv["dilation"]):
            raise ConfigError(f"'{name}' is a dilated convolution: peft's LoRA ignores dilation, so it cannot compute "
                              "this adapter")
    r, alpha = _most_common([b.r for *_, b in rows]), _most_common([b.alpha for *_, b in rows])
    fields = {**LORA_FIELDS, "r": r, "lora_alpha": _number(alpha), "lora_dropout": dropout, "use_dora": dora,
              "use_rslora": rslora, "target_modules": _target_modules(model, [n for n, *_ in rows]),
              "rank_pattern": {re.escape(n): b.r for n, _, b in rows if b.r != r},
              "alpha_pattern": {re.escape(n): _number(b.alpha) for n, _, b in rows if b.alpha != alpha},
              "fan_in_fan_out": any(is_conv1d(m) for _, m, _ in rows)}
    tensors = {}
    for name, _, b in rows:
        tensors[f"{PREFIX}{name}.lora_A.weight"] = b.A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.B
        if b.magnitude is not None:               # peft keeps a convolution's magnitude as [1, out, 1, ...]
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = \
                b.magnitude if b.conv is None else b.magnitude.reshape(1, -1, *[1] * b.conv["dims"])
    return fields, tensors


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first key ``k`` with ``(.*\\.)?(k)$`` matching the layer's name."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        except re.error:
            raise ConfigError(f"bad pattern {shown(key)} in the peft config") from None
    return default


def _lora_groups(header: Header, path: Path) -> dict[str, dict[str, str]]:
    """``{layer: {"A"|"B"|"magnitude": file key}}`` from the file's tensor names."""
    groups: dict[str, dict[str, str]] = {}
    for key in header:
        rest = key[len(PREFIX):] if key.startswith(PREFIX) else None
        hit = next(((rest[: -len(s) - 1], p) for s, p in _SUFFIX.items() if rest and rest.endswith("." + s)), None)
        if hit is None:
            what = "LoRA on embeddings" if "lora_embedding" in key else "a tensor torchslim does not read"
            raise ConfigError(f"{path}: {shown(key)} is {what} (torchslim reads {PREFIX}<layer>.lora_A/lora_B"
                              "/lora_magnitude_vector)")
        groups.setdefault(hit[0], {})[hit[1]] = key
    return groups


def _check_config(config: dict[str, Any], path: Path) -> None:
    for k, neutral in LORA_REFUSED.items():
        if k in config and not neutral(config[k]):
            raise ConfigError(f"{path}: peft option {k}={shown(config[k])} is not supported by torchslim (it changes "
                              "what the adapter computes)")
    for k in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(k) or {}, dict) or len(config.get(k) or {}) > 100_000:
            raise ConfigError(f"{path}: peft option {k} must be a mapping of patterns")


def _lora_branch(model: nn.Module, lname: str, keys: dict[str, str], config: dict[str, Any], header: Header,
                 adapter: str, path: Path) -> LoraBranch:
    try:
        layer = get_module(model, lname)
    except TorchSlimError:
        raise ConfigError(f"{path}: the adapter adapts '{lname[:120]}', which this model lacks") from None
    g = geometry(layer)
    if g is None or isinstance(layer, Branch):
        raise ConfigError(f"{path}: the adapter adapts '{lname[:120]}', a {type(layer).__name__} torchslim cannot adapt")
    if "A" not in keys or "B" not in keys:
        raise ConfigError(f"{path}: '{lname[:120]}' lacks its lora_{'A' if 'A' not in keys else 'B'} tensor")
    dora = bool(config.get("use_dora"))
    if dora != ("magnitude" in keys):
        raise ConfigError(f"{path}: use_dora is {dora} but '{lname[:120]}' "
                          f"{'lacks' if dora else 'has'} a lora_magnitude_vector")
    if g.conv is not None and any(d != 1 for d in g.conv["dilation"]):
        raise ConfigError(f"{path}: '{lname[:120]}' is a dilated convolution, on which peft's LoRA is not defined")
    a_shape = header[keys["A"]][1]
    r = a_shape[0] if a_shape else 0
    kernel = tuple(g.conv["kernel_size"]) if g.conv else ()
    ones = (1,) * len(kernel)
    want = {"A": (r, g.in_features, *kernel), "B": (g.out_features, r, *ones),
            "magnitude": (g.out_features,) if g.conv is None else (1, g.out_features, *ones)}
    for p, key in keys.items():
        if header[key][1] != want[p] or r < 1:
            raise ConfigError(f"{path}: {key} has shape {list(header[key][1])}, '{lname[:120]}' needs {list(want[p])}")
    rank = _pattern_value(config.get("rank_pattern") or {}, lname, config.get("r", 8))
    if rank != r:
        raise ConfigError(f"{path}: '{lname[:120]}' has rank {r} but the config says {shown(rank)}")
    alpha = _pattern_value(config.get("alpha_pattern") or {}, lname, config.get("lora_alpha", 8))
    dropout = config.get("lora_dropout", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0 \
            or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{path}: bad lora_alpha {shown(alpha)} or lora_dropout {shown(dropout)}")
    return LoraBranch(g.in_features, g.out_features, r, float(alpha), dropout=float(dropout),
                      rslora=bool(config.get("use_rslora")), dora=dora, conv=g.conv, adapter=adapter)


def _lora_read(model: nn.Module, config: dict[str, Any], header: Header, adapter: str, path: Path) -> list[Planned]:
    _check_config(config, path)
    groups = _lora_groups(header, path)
    if not groups:
        raise ConfigError(f"{path}: the adapter holds no LoRA tensors")
    return [(lname, _lora_branch(model, lname, keys, config, header, adapter, path), keys)
            for lname, keys in groups.items()]


register_peft_format(PeftFormat("lora", "LORA", _lora_write, _lora_read))
# IA3, prompt tuning and prefix tuning: torchslim.peft.interop_rows, which the package imports (so they register).
