"""The torchslim artifact: a folder with

* ``model.safetensors``: every tensor of the model's ``state_dict`` in its stored dtype
  (shared tensors, such as tied embeddings, are stored once and listed as aliases);
* ``manifest.json``: format version, torchslim version, the source model, how to rebuild
  the architecture, and for every compressed layer its technique, config and storage format;
* ``config.json``: the Hugging Face config, for transformers models.

Saving writes a temporary folder and renames it into place, so an interrupted save never
replaces a good artifact with a broken one. Loading checks the weights file's size and
SHA-256 before reading it and never unpickles anything.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.io import atomic_dir
from torchslim.core.modules import layer_infos, model_settings, module_format
from torchslim.core.resize import apply_resize_spec, resize_spec
from torchslim.core.surgery import get_module, replace_module
from torchslim.version import __version__

FORMAT_NAME = "torchslim-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"


# -- save --------------------------------------------------------------------------------
def save(model: nn.Module, path: str | Path, *, source: dict[str, Any] | None = None,
         metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as an artifact folder at ``path`` (atomically) and return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_target(path)
    source = source or getattr(model, "_torchslim_source", None) or {"kind": "module"}
    tensors, aliases = _dedup(model.state_dict())
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT_NAME})
        arch = _architecture(model)
        if arch["kind"] == "transformers":
            (tmp / HF_CONFIG).write_text(model.config.to_json_string())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "torchslim_version": __version__,
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source,
            "architecture": arch,
            "weights": {"file": WEIGHTS, "bytes": (tmp / WEIGHTS).stat().st_size, "sha256": _sha256(tmp / WEIGHTS)},
            "aliases": aliases,
            "resized": resize_spec(model),
            "layers": layer_infos(model),
            "settings": [c.to_dict() for c in model_settings(model)],
            "metadata": metadata or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return path


def _check_target(path: Path) -> None:
    if path.is_file():
        raise TorchSlimError(f"cannot save an artifact to {path}: it is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise TorchSlimError(f"refusing to overwrite {path}: it is a non-empty folder that is not a torchslim artifact")


def _architecture(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string") and type(model).__module__.startswith("transformers"):
        # top-level submodules present: a model built without some (BertModel(add_pooling_layer=False)) reloads so
        return {"kind": "transformers", "class": type(model).__name__, "children": [n for n, _ in model.named_children()]}
    return {"kind": "source", "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store tensors that share memory once; return ``(tensors, {alias: canonical})``."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        shared = ptr in storages and t.numel() > 0
        storages.add(ptr)
        tensors[name] = t.clone() if shared or not t.is_contiguous() else t
    return tensors, aliases


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# -- load --------------------------------------------------------------------------------
def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, checked for format and version."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact folder")
    if not mpath.is_file():
        raise ArtifactError(f"{path}: not a torchslim artifact (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: corrupted manifest, not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{mpath}: not a torchslim manifest (format field is {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{mpath}: not a torchslim manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: format version {version!r} is not supported (this torchslim reads <= {FORMAT_VERSION})")
    for key in ("weights", "source", "architecture", "layers"):
        if key not in manifest:
            raise ArtifactError(f"{mpath}: manifest is missing the '{key}' field")
    return manifest


def _read_weights(path: Path, manifest: dict[str, Any], verify: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    info = manifest["weights"]
    wpath = path / info["file"]
    if not wpath.is_file():
        raise ArtifactError(f"{wpath}: weights file is missing")
    size = wpath.stat().st_size
    if size != info["bytes"]:
        raise ArtifactError(f"{wpath}: truncated or altered: {size} bytes on disk, the manifest says {info['bytes']}")
    if verify and _sha256(wpath) != info["sha256"]:
        raise ArtifactError(f"{wpath}: corrupted: SHA-256 does not match the manifest")
    try:
        return load_file(str(wpath))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise ArtifactError(f"{wpath}: unreadable safetensors file ({str(e).splitlines()[0]})") from None


def _build_skeleton(path: Path, manifest: dict[str, Any]) -> nn.Module:
    arch = manifest["architecture"]
    if arch.get("kind") == "transformers":
        import transformers

        cls = getattr(transformers, arch.get("class", ""), None)
        if cls is None:
            raise ArtifactError(f"{path}: transformers has no model class {arch.get('class')!r}")
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = cls(config)
        if "children" in arch:
            for name in [n for n, _ in model.named_children() if n not in arch["children"]]:
                setattr(model, name, None)
        return model
    source = manifest["source"]
    if source.get("kind") == "zoo":
        from torchslim.zoo import get_entry

        entry = get_entry(source["name"])
        if entry.skeleton is not None:
            return entry.skeleton(source)
    raise ArtifactError(
        f"{path}: the artifact holds a plain {arch.get('class', 'nn.Module')}; "
        "pass its architecture as torchslim.load(path, model=...)"
    )


def _apply_layer_formats(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    for name, info in layers.items():
        cls = module_format(info["module"])
        try:
            original = get_module(model, name)
        except TorchSlimError:
            raise ArtifactError(f"artifact layer '{name}' does not exist in the rebuilt {type(model).__name__}") from None
        replace_module(model, name, cls.from_layer_info(original, info))


def _apply_settings(model: nn.Module, settings: list[dict[str, Any]], path: Path) -> None:
    """Re-apply model-level settings (recorded configs) through their registered handlers."""
    from torchslim.core.config import config_from_dict
    from torchslim.core.registry import apply_

    for d in settings:
        try:
            config = config_from_dict(d)
        except TorchSlimError as e:
            raise ArtifactError(f"{path}: cannot restore model setting: {e}") from None
        apply_(model, config)


def load(path: str | Path, model: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """Load the artifact at ``path``. ``model`` supplies the architecture for plain ``nn.Module`` artifacts."""
    path = Path(path)
    manifest = read_manifest(path)
    tensors = _read_weights(path, manifest, verify)
    model = model if model is not None else _build_skeleton(path, manifest)
    apply_resize_spec(model, manifest.get("resized", {}))
    _apply_layer_formats(model, manifest["layers"])
    for alias, canonical in manifest.get("aliases", {}).items():
        tensors[alias] = tensors[canonical]
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ArtifactError(f"{path}: weights do not match the architecture ({what})")
    model.load_state_dict(tensors, strict=True, assign=True)
    if manifest.get("aliases") and callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # restore shared Parameter objects (tied embeddings)
    _apply_settings(model, manifest.get("settings", []), path)
    model.eval()
    model._torchslim_source = manifest["source"]
    model._torchslim_manifest = manifest
    return model
