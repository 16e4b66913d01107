"""The model to onload: its skeleton with parameters on the meta device, its weight files, its task.

A source is a Hugging Face model folder (``config.json`` and ``*.safetensors``, sharded or not) or a zoo
name whose entry keeps such a folder (SmolLM2's converted cache). The skeleton is built with parameters on
the meta device and buffers real (rotary tables and masks are computed at construction, not stored); then
everything outside the transformer blocks (embeddings, final norm, head) is read and stays resident.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.archs import chain_blocks
from torchslim.core.errors import ConfigError, UnknownModelError
from torchslim.core.linear import swapped_from_conv1d
from torchslim.core.surgery import meta_parameters
from torchslim.scale.files import TensorFiles


@dataclass
class Source:
    folder: Path
    loaded: Any                    # LoadedModel: the skeleton, its task, tokenizer and source record
    files: TensorFiles

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def source_folder(spec: str) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face folder holding ``spec``'s weights and the source record an artifact keeps."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path}: onloading reads a Hugging Face model folder (config.json and "
                                    "*.safetensors); this folder has no config.json")
        return path.resolve(), {"kind": "hf", "path": str(path.resolve())}
    from torchslim.zoo.registry import get_entry

    entry = get_entry(spec)
    folder = getattr(entry, "weights_folder", None)
    if folder is None:
        raise ConfigError(f"'{spec}' keeps no safetensors folder to onload from; save it as a Hugging Face folder "
                          "(model.save_pretrained) and pass that folder")
    return Path(folder()), {"kind": "zoo", "name": spec}


def open_source(spec: str, **data: Any) -> Source:
    """The skeleton of ``spec`` with its non-block tensors loaded, its weight files and its task."""
    from torchslim.tasks.user_data import task_with_user_data
    from torchslim.zoo.hf import (architecture_classes, context_length, has_tokenizer, is_causal_lm, load_config,
                                  load_tokenizer, make_task, quiet_transformers)
    from torchslim.zoo.registry import LoadedModel

    folder, record = source_folder(spec)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UnknownModelError(f"{folder} has no .safetensors weights to onload")
    config = load_config(folder)
    if not is_causal_lm(config):
        raise ConfigError(f"{folder}: onloading supports causal language models (decoder blocks), not "
                          f"{getattr(config, 'model_type', '?')}")
    classes = architecture_classes(config)
    with meta_parameters(), quiet_transformers():
        if classes:
            model = classes[0]._from_config(config, dtype=torch.float32)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    model.eval()
    source = Source(folder, None, TensorFiles(files))
    load_resident(model, source.files)
    tokenizer = load_tokenizer(folder) if has_tokenizer(folder) else None
    # as the in-memory loaders: a folder's task windows span its context, a zoo entry's the task's default
    task_kwargs = {"seq_len": context_length(config)} if record["kind"] == "hf" else {}
    task = make_task("causal-lm", tokenizer, **task_kwargs) if tokenizer is not None else None
    loaded = LoadedModel(name=folder.name if record["kind"] == "hf" else spec, model=model, task=task,
                         source=record, tokenizer=tokenizer, extra={"onloaded": True})
    loaded.task = task_with_user_data(loaded, data.get("calib_data"), data.get("eval_data"), data.get("seq_len"))
    from torchslim.core.state import state_of

    state_of(model).source = record
    source.loaded = loaded
    return source


def artifact_task(path: Path, manifest: dict[str, Any], model: nn.Module) -> Any:
    """The causal-LM task of an artifact, built from a tokenizer without loading any model: the source folder's (or a
    zoo entry's weights folder's) tokenizer and window length, as their loaders set them; else the artifact's own."""
    from torchslim.zoo.hf import context_length, has_tokenizer, load_config, load_tokenizer, make_task

    source = manifest.get("source") or {}
    folder, kwargs = None, {}
    if source.get("kind") == "hf" and Path(str(source.get("path", ""))).is_dir():
        folder = Path(source["path"])
        kwargs = {"seq_len": context_length(load_config(folder))}
    elif source.get("kind") == "zoo" and isinstance(source.get("name"), str):
        from torchslim.zoo.registry import get_entry

        weights = getattr(get_entry(source["name"]), "weights_folder", None)
        folder = Path(weights()) if weights is not None else None
    if folder is not None and has_tokenizer(folder):
        return make_task("causal-lm", load_tokenizer(folder), **kwargs)
    from torchslim.models import task_for_artifact

    return task_for_artifact(path, manifest, model)[0]       # a zoo model without a folder: its loader (small ones)


def block_prefixes(model: nn.Module) -> list[str]:
    return [name for name, _ in chain_blocks(model)]


def in_block(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in prefixes)


def tie_groups(module: nn.Module) -> dict[str, list[str]]:
    """``{name: every name of the same tensor}`` for the module's parameters and buffers (tied embeddings)."""
    by_id: dict[int, list[str]] = {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(name)
    return {n: names for names in by_id.values() for n in names}


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of the parameter or buffer ``name`` (keeping whether it is a parameter)."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        requires_grad = old.requires_grad if old is not None else False
        owner._parameters[attr] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad)
    else:
        owner._buffers[attr] = value


def load_tensors(module: nn.Module, files: TensorFiles, prefix: str = "", aliases: dict[str, str] | None = None,
                 skip: list[str] = (), from_source: bool = True) -> int:
    """Read ``module``'s tensors (the files' names under ``prefix``, except those under a name in ``skip``) and load
    them with the module's own ``load_state_dict`` (so a compressed layer reads its stored layout). Floating point
    tensors take the dtype of the module's parameter or buffer of that name (as ``from_pretrained(dtype=float32)``
    does); a tied tensor the files store once, or an alias the artifact records, is filled from its twin. Files
    in the model's own layout (``from_source``) may store a GPT-2 ``Conv1D`` weight that a technique has already
    swapped for a plain ``nn.Linear``: it is transposed; a stage's block files store the swapped layout.
    Returns the bytes read."""
    groups = tie_groups(module)
    dtypes = {n: t.dtype for n, t in [*module.named_parameters(remove_duplicate=False),
                                       *module.named_buffers(remove_duplicate=False)]}
    tensors: dict[str, torch.Tensor] = {}
    for full in files.where:
        rel = full[len(prefix):]
        if full.startswith(prefix) and not in_block(rel, list(skip)):
            t = files.read(full)
            want = dtypes.get(rel)
            t = t.to(want) if want is not None and t.is_floating_point() and want.is_floating_point \
                and t.dtype != want else t
            tensors[rel] = _as_swapped(module, rel, t) if from_source else t
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    for alias, canonical in (aliases or {}).items():
        if alias.startswith(prefix) and canonical[len(prefix):] in tensors:
            tensors.setdefault(alias[len(prefix):], tensors[canonical[len(prefix):]])
    for name, twins in groups.items():
        have = next((t for t in twins if t in tensors), None)
        if have is not None:
            tensors.setdefault(name, tensors[have])
    result = module.load_state_dict(tensors, strict=False, assign=True)
    missing = [n for n in result.missing_keys if not in_block(n, list(skip))]
    if missing or result.unexpected_keys:
        what = f"no tensor '{prefix}{missing[0]}'" if missing else f"an unexpected '{prefix}{result.unexpected_keys[0]}'"
        raise ConfigError(f"the weight files do not match the model: {what}")
    for twins in {tuple(t) for t in groups.values() if len(t) > 1}:
        first = module.get_parameter(twins[0]) if twins[0] in dict(module.named_parameters()) else None
        for other in twins[1:] if first is not None else []:
            set_tensor(module, other, first)
    return total


def _as_swapped(module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
    """A GPT-2 ``Conv1D`` weight (stored ``[in, out]``) read for the plain ``nn.Linear`` a technique already swapped
    in for it (``[out, in]``): transposed, as the in-memory swap copies it; any other tensor as it is."""
    owner, _, attr = name.rpartition(".")
    try:
        m = module.get_submodule(owner) if owner else module
    except AttributeError:
        return t
    if attr == "weight" and swapped_from_conv1d(m) and t.dim() == 2 and tuple(t.shape) == (m.in_features,
                                                                                          m.out_features):
        return t.t().contiguous()
    return t


def load_resident(model: nn.Module, files: TensorFiles) -> None:
    """Read every tensor outside the transformer blocks (embeddings, final norm, head)."""
    load_tensors(model, files, skip=block_prefixes(model))
