"""Zoo registry: a name maps to a loader that returns the model, its task and its source."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from torchslim.core.errors import UnknownModelError
from torchslim.core.skeletons import register_skeleton
from torchslim.tasks.base import Task


@dataclass
class LoadedModel:
    """A model ready to compress and evaluate.

    ``source`` is JSON data that the artifact manifest records so the architecture can be
    rebuilt at load time (e.g. ``{"kind": "zoo", "name": "digits-cnn"}``).
    ``tokenizer`` is set for text models.
    """

    name: str
    model: nn.Module
    task: Task | None
    source: dict[str, Any]
    tokenizer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    summary: str
    kind: str                              # "causal-lm" | "sentence-embedding" | "image-classification"
    loader: Callable[..., LoadedModel]     # loader(**kwargs) -> LoadedModel
    needs: str = ""                        # what must be installed for it, shown by `zoo list`
    test_only: bool = False                # tiny random models for unit tests
    # Rebuilds the (untrained) architecture from a LoadedModel.source, for artifacts of models
    # that are not transformers models (those are rebuilt from their config.json).
    skeleton: Callable[[dict[str, Any]], nn.Module] | None = None
    # The GGUF file the model was converted from, if any (GGUF export reuses its tokenizer keys).
    gguf_file: Callable[[], Any] | None = None
    # The Hugging Face folder (config.json + safetensors) holding the weights, for layer-wise onloading.
    weights_folder: Callable[[], Any] | None = None

    def available(self) -> bool:
        return True


_ENTRIES: dict[str, ZooEntry] = {}
# Modules that register entries; imported lazily so `import torchslim` stays cheap.
_PROVIDERS = ("torchslim.zoo.minilm", "torchslim.zoo.smollm2", "torchslim.zoo.digits_cnn", "torchslim.zoo.tiny")


def register_zoo(entry: ZooEntry) -> ZooEntry:
    _ENTRIES[entry.name] = entry
    return entry


def _load_providers() -> None:
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not e.name or not e.name.startswith("torchslim.zoo"):
                raise


def list_entries(include_test: bool = True) -> list[ZooEntry]:
    _load_providers()
    return [e for e in _ENTRIES.values() if include_test or not e.test_only]


def get_entry(name: str) -> ZooEntry:
    _load_providers()
    if name not in _ENTRIES:
        raise UnknownModelError(f"unknown zoo model '{name}'; known: {', '.join(sorted(_ENTRIES))}")
    return _ENTRIES[name]


def load_model(name: str, **kwargs: Any) -> LoadedModel:
    """Load a zoo model (with its task) by name."""
    return get_entry(name).loader(**kwargs)


def _zoo_skeleton(manifest: dict[str, Any], path: Any) -> nn.Module | None:
    """Skeleton of an artifact made from a zoo model that is not a transformers model (digits-cnn)."""
    source = manifest.get("source", {})
    name = source.get("name")
    if not isinstance(name, str):
        return None
    try:
        entry = get_entry(name)
    except UnknownModelError:
        return None
    return entry.skeleton(source) if entry.skeleton is not None else None


register_skeleton(source="zoo")(_zoo_skeleton)
