"""The model to onload: its skeleton with parameters on the meta device, its weight files, its task.

A source is a Hugging Face model folder (``config.json`` and ``*.safetensors``, sharded or not) or a zoo
name whose entry keeps such a folder (SmolLM2's converted cache). The skeleton is built with parameters on
the meta device and buffers real (rotary tables and masks are computed at construction, not stored); then
everything outside the transformer blocks (embeddings, final norm, head) is read and stays resident.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from torchslim.core.archs import chain_blocks
from torchslim.core.errors import ConfigError, UnknownModelError
from torchslim.scale.files import TensorFiles


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules with their parameters on the meta device (no memory) and their buffers real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


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

            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
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
    old = owner._parameters.get(attr)
    if old is not None or attr in owner._parameters:
        requires_grad = old.requires_grad if old is not None else False
        owner._parameters[attr] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad)
    else:
        owner._buffers[attr] = value


def load_tensors(module: nn.Module, read: Any, names: list[str], prefix: str = "") -> int:
    """Read every tensor ``names`` lists (relative to ``module``) with ``read(prefix + name)``, in the module's
    dtype for floating-point ones (as ``from_pretrained(dtype=float32)`` does), tied names sharing one tensor.
    Returns the bytes read."""
    groups, done, total = tie_groups(module), set(), 0
    current = dict(module.state_dict(keep_vars=True))
    for name in names:
        if name in done:
            continue
        value = read(prefix + name, [prefix + a for a in groups.get(name, [name])])
        ref = current[name]
        if value.is_floating_point() and ref.is_floating_point() and value.dtype != ref.dtype:
            value = value.to(ref.dtype)
        if tuple(value.shape) != tuple(ref.shape):
            raise ConfigError(f"tensor '{prefix + name}' has shape {list(value.shape)}, the model expects "
                              f"{list(ref.shape)}")
        total += value.numel() * value.element_size()
        shared = nn.Parameter(value, ref.requires_grad) if isinstance(ref, nn.Parameter) else value
        for alias in groups.get(name, [name]):
            set_tensor(module, alias, shared)
            done.add(alias)
    return total


def reader(files: TensorFiles) -> Any:
    """``read(name, aliases)``: the tensor under ``name`` or one of its tied aliases, or a one-line error."""
    def read(name: str, aliases: list[str]) -> torch.Tensor:
        for n in [name, *aliases]:
            if n in files:
                return files.read(n)
        raise ConfigError(f"the weight files have no tensor '{name}'")
    return read


def load_resident(model: nn.Module, files: TensorFiles) -> None:
    """Read every tensor outside the transformer blocks (embeddings, final norm, head)."""
    prefixes = block_prefixes(model)
    names = [n for n in model.state_dict(keep_vars=True) if not in_block(n, prefixes)]
    load_tensors(model, reader(files), names)
