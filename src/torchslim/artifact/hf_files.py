"""The Hugging Face side of an artifact: its config, and the tokenizer/processor files that make it
self-contained.

``config.json`` is the model's real config when ``from_pretrained`` would rebuild the artifact exactly
(a plain or uniformly pruned model: same tensor names and shapes as the config's model). Otherwise
(packed layers, added modules, shapes the config cannot express) ``config.json`` is a marker whose
``model_type`` makes ``from_pretrained`` fail with a message naming ``torchslim.load``, and the real
config goes to ``hf-config.json``: transformers never loads random weights in place of compressed ones.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.archs import config_problem
from torchslim.core.errors import ArtifactError
from torchslim.core.modules import layer_infos
from torchslim.core.state import state_of

REAL_CONFIG = "hf-config.json"
MARKER = {"model_type": "torchslim-artifact (load it with torchslim.load(folder))",
          "architectures": ["TorchslimArtifact"],
          "torchslim": "This folder is a torchslim artifact with compressed layers: torchslim.load(folder) "
                       "rebuilds it; transformers' from_pretrained cannot."}


def hf_loadable(model: nn.Module, children: list[str] | None = None, infos: dict[str, Any] | None = None) -> bool:
    """Whether ``from_pretrained`` on the config would build a model with exactly ``model``'s tensors (``infos``: its
    layer records, when they were taken earlier, as layer-wise onloading does)."""
    state = state_of(model)
    if (infos if infos is not None else layer_infos(model)) or state.added:
        return False
    try:
        with torch.device("meta"):
            skeleton = type(model)(model.config)
    except Exception:  # noqa: BLE001 - a config transformers cannot build from: not loadable by it
        return False
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    dropped = {n for n, _ in skeleton.named_children()} - set(children or [n for n, _ in model.named_children()])
    extra = {k for k in set(theirs) - set(ours) if k.split(".", 1)[0] not in dropped}
    return not extra and all(theirs.get(k) == shape for k, shape in ours.items())


def write_configs(model: nn.Module, arch: dict[str, Any], folder: Path, infos: dict[str, Any] | None = None) -> list[str]:
    """Write the config (or the marker and the real config); returns the file names, and records in
    ``arch`` which file holds the real config."""
    problem = config_problem(model.config)
    if problem:
        raise ArtifactError(f"{type(model.config).__name__} fails transformers' validation ({problem}): neither "
                            f"torchslim.load nor from_pretrained could read it back; fix the config before saving")
    text = model.config.to_json_string()
    if hf_loadable(model, arch.get("children"), infos):
        (folder / "config.json").write_text(text)
        return ["config.json"]
    (folder / "config.json").write_text(json.dumps(MARKER, indent=2))
    (folder / REAL_CONFIG).write_text(text)
    arch["config_file"] = REAL_CONFIG
    return ["config.json", REAL_CONFIG]


COMPANIONS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "spiece.model",
              "special_tokens_map.json", "merges.txt", "vocab.json", "added_tokens.json", "preprocessor_config.json",
              "processor_config.json", "generation_config.json", "chat_template.jinja")


def copy_companions(source: dict[str, Any], folder: Path) -> list[str]:
    """Copy the tokenizer and processor files of the Hugging Face folder the model came from."""
    src = Path(source.get("path", "")) if source.get("kind") == "hf" else None
    if src is None or not src.is_dir():
        return []
    copied = []
    for name in COMPANIONS:
        if (src / name).is_file():
            shutil.copyfile(src / name, folder / name)
            copied.append(name)
    return copied
