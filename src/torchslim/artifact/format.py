"""The torchslim artifact: a folder with

* ``model.safetensors``: every tensor of the model's ``state_dict`` in its stored dtype
  (shared tensors, such as tied embeddings, are stored once and listed as aliases);
* ``manifest.json``: format version, torchslim version, the source model, how to rebuild the
  architecture, the ordered history of stages that made the model (each config stored once),
  modules resized or added by a technique, and for every compressed layer its format, kernel
  and the history entry that produced it;
* ``config.json``: the Hugging Face config, for transformers models.

Saving stages the new files inside the folder and renames them into place, manifest last, so an
interrupted save never leaves a manifest describing files that are not there, and files the
artifact did not write (a user's notes, a recipe run's state) are never touched. Loading checks
that every file the manifest names lies inside the folder, checks the weights file's size and
SHA-256 before reading it, and never unpickles anything.

Format versions: 1 (torchslim 0.1: per-layer configs inline, no history) still loads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from torchslim.artifact import checks, hf_files
from torchslim.core import io
from torchslim.core.errors import ArtifactError, TorchSlimError, first_line
from torchslim.core.modules import layer_infos, model_settings, module_format
from torchslim.core.resize import added_spec, apply_added_spec, apply_resize_spec, resize_spec
from torchslim.core.skeletons import build_skeleton
from torchslim.core.state import HistoryEntry, state_of
from torchslim.core.surgery import get_module, replace_module
from torchslim.version import __version__

FORMAT_NAME = checks.FORMAT_NAME
FORMAT_VERSION = checks.FORMAT_VERSION
MANIFEST = checks.MANIFEST
WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"


# -- save --------------------------------------------------------------------------------
class StreamedWeights(Protocol):
    def write(self, file: Path, metadata: dict[str, str]) -> dict[str, str]: ...      # -> aliases
    def layer_infos(self, model: nn.Module) -> dict[str, dict[str, Any]]: ...


def _refuse_training_only(model: nn.Module) -> None:
    """Fake-quantized (QAT) layers are a training tool, never a deliverable: convert them first."""
    found = [n for n, m in model.named_modules() if getattr(m, "torchslim_training_only", False)]
    if found:
        raise ArtifactError(f"'{found[0]}' (and {len(found) - 1} more) are fake-quantized training layers: "
                            "convert them to real quantized layers first (QATConfig does so when training ends)")


def _refuse_runtime_only(model: nn.Module) -> None:
    """Layers rearranged for running (fused by a fast path) are not the architecture an artifact describes."""
    found = [n for n, m in model.named_modules() if getattr(m, "torchslim_runtime_only", False)]
    if found:
        raise ArtifactError(f"'{found[0]}' (and {len(found) - 1} more) were fused by a torchslim.runtime fast path, "
                            "which only rearranges a model for running: save the model before preparing it")


def save(model: nn.Module, path: str | Path, *, source: dict[str, Any] | None = None,
         metadata: dict[str, Any] | None = None, keep: tuple[str, ...] = (),
         streamed: StreamedWeights | None = None) -> Path:
    """Save ``model`` as an artifact folder at ``path`` and return the path. ``keep``: sub-folders of
    ``path`` that are not the artifact's but may be there (a recipe run's checkpoint folders). ``streamed``:
    the weights were written elsewhere, part by part (layer-wise onloading); it writes the weights file and
    gives the layer records of the parts no longer in memory."""
    from safetensors.torch import save_file

    path = Path(path)
    _refuse_training_only(model)
    _refuse_runtime_only(model)
    old = checks.check_target(path, keep)
    state = state_of(model)
    source = source or state.source or {"kind": "module"}
    tensors, aliases = _dedup(model.state_dict()) if streamed is None else ({}, {})
    arch = _architecture(model)
    history = [h.to_dict() for h in state.history]
    with io.staged_files(path, MANIFEST, stale=_stale_files(path, old)) as stage:
        if streamed is None:
            save_file(tensors, str(stage / WEIGHTS), metadata={"format": FORMAT_NAME})
        else:
            aliases = streamed.write(stage / WEIGHTS, {"format": FORMAT_NAME})
        files = [WEIGHTS]
        infos = layer_infos(model) if streamed is None else streamed.layer_infos(model)
        if arch["kind"] == "transformers":
            files += hf_files.write_configs(model, arch, stage, infos)
        files += hf_files.copy_companions(source, stage)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "torchslim_version": __version__,
            "torch_version": torch.__version__,
            "created": io.utc_now(),
            "source": source,
            "architecture": arch,
            "files": [*files, MANIFEST],
            "hashes": {f: io.sha256(stage / f) for f in files},     # what a later save may replace
            "weights": {"file": WEIGHTS, "bytes": (stage / WEIGHTS).stat().st_size, "sha256": io.sha256(stage / WEIGHTS)},
            "aliases": aliases,
            "history": history,
            "resized": resize_spec(model),
            "added": added_spec(model),
            "layers": _compact_layers(infos, history),
            "settings": [c.to_dict() for c in model_settings(model)],
            "metadata": metadata or {},
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return path


def _stale_files(path: Path, old: dict[str, Any] | None) -> list[str]:
    """Files a previous save wrote into the folder (to remove if the new one does not write them): only those
    whose content still has the SHA-256 that save recorded, never merely a name the manifest lists (a
    tampered ``files`` list must not make a save delete a user's file)."""
    if old is None:
        return []
    hashes = old.get("hashes")
    recorded = dict(hashes) if isinstance(hashes, dict) else {}
    weights = old.get("weights")
    if isinstance(weights, dict) and isinstance(weights.get("file"), str):
        recorded.setdefault(weights["file"], weights.get("sha256"))
    stale = []
    for name, digest in recorded.items():
        p = path / name if checks.is_plain_name(name) and name != MANIFEST else None
        if p is not None and isinstance(digest, str) and p.is_file() and not p.is_symlink() and io.sha256(p) == digest:
            stale.append(name)
    return stale


def _compact_layers(layers: dict[str, dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drop a layer's config where it is its history entry's config (stored once there)."""
    for info in layers.values():
        stage = info.get("stage")
        if isinstance(stage, int) and 0 <= stage < len(history) and info.get("config") == history[stage].get("config"):
            del info["config"]
    return layers


def _architecture(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string") and type(model).__module__.startswith("transformers"):
        # top-level submodules present: a model built without some (BertModel(add_pooling_layer=False)) reloads so
        return {"kind": "transformers", "class": type(model).__name__, "children": [n for n, _ in model.named_children()]}
    return {"kind": "source", "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def dedup_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that share memory stored once: ``(tensors, {alias: canonical})`` (what :func:`save` writes)."""
    return _dedup(state)


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


# -- load --------------------------------------------------------------------------------
def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, checked for format, version and structure."""
    return checks.read_manifest(Path(path))


def _weights_path(path: Path, manifest: dict[str, Any], verify: bool) -> Path:
    """The weights file, checked: inside the folder, the size and SHA-256 the manifest records."""
    info = manifest["weights"]
    wpath = checks.inside(path, info["file"])
    if not wpath.is_file():
        raise ArtifactError(f"{wpath}: weights file is missing")
    size = wpath.stat().st_size
    if size != info["bytes"]:
        raise ArtifactError(f"{wpath}: truncated or altered: {size} bytes on disk, the manifest says {info['bytes']}")
    if verify and io.sha256(wpath) != info["sha256"]:
        raise ArtifactError(f"{wpath}: corrupted: SHA-256 does not match the manifest")
    return wpath


def _read_weights(wpath: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(wpath))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise ArtifactError(f"{wpath}: unreadable safetensors file ({first_line(e)})") from None


def _skeleton(manifest: dict[str, Any], path: Path, file_bytes: int) -> nn.Module:
    """The untrained model, after checking on the meta device that it is not absurdly large for the file."""
    with torch.device("meta"):
        probe = build_skeleton(manifest, path)
    checks.bound(f"the {manifest['architecture'].get('class', 'model')} its config describes",
                 checks.module_bytes(probe), file_bytes, path)
    del probe
    return build_skeleton(manifest, path)


def _layer_records(model: nn.Module, layers: dict[str, dict[str, Any]],
                   history: list[dict[str, Any]]) -> list[tuple[str, type[nn.Module], nn.Module, dict[str, Any]]]:
    """``(name, format class, module it replaces, record with its config)`` for every recorded layer."""
    out = []
    for name, info in layers.items():
        cls = module_format(info.get("module"))
        stage = info.get("stage")
        if "config" not in info and isinstance(stage, int) and 0 <= stage < len(history):
            info = {**info, "config": history[stage].get("config")}
        try:
            original = get_module(model, name)
        except TorchSlimError:
            if not any(name.startswith(other + ".") for other in layers):
                raise ArtifactError(f"artifact layer '{name}' does not exist in the rebuilt {type(model).__name__}") \
                    from None
            original = None    # inside a recorded layer (a quantized factor of a low-rank pair): exists once it is built
        out.append((name, cls, original, info))
    return out


def _rebuild_layer(name: str, cls: type[nn.Module], original: nn.Module, info: dict[str, Any]) -> nn.Module:
    try:
        return cls.from_layer_info(original, info)
    except TorchSlimError as e:
        raise ArtifactError(f"artifact layer '{name}': {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError) as e:
        raise ArtifactError(f"artifact layer '{name}' has a bad {info.get('module')} record ({first_line(e)})") from None


def _record_bytes(name: str, original: nn.Module | None, info: dict[str, Any]) -> int:
    """An upper bound of the bytes a layer record asks for: 4 bytes per element of the shape it names
    (every format stores at most a float32 per weight element), else of the module it replaces (a record nested in
    another without a shape: nothing beyond what the enclosing record's module is bounded by)."""
    dims = info.get("shape")
    if dims is None and isinstance(info.get("conv"), dict):
        c = info["conv"]
        dims = [c.get("out_channels"), c.get("in_channels"), *(c.get("kernel_size") or [])]
    if dims is None:
        return checks.module_bytes(original) if original is not None else 0
    if not (isinstance(dims, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)):
        raise ArtifactError(f"artifact layer '{name}': bad shape {str(dims)[:80]}")
    n = 4
    for d in dims:
        n *= d
    return n


def _apply_layer_formats(model: nn.Module, layers: dict[str, dict[str, Any]], history: list[dict[str, Any]],
                         bound: Any = None) -> None:
    """Replace every recorded layer by its (empty) format module, once the shapes the records name are
    bounded (``bound`` receives their total bytes)."""
    records = _layer_records(model, layers, history)
    if bound is not None:
        bound(sum(_record_bytes(name, original, info) for name, _, original, info in records))
    for name, cls, original, info in records:    # in the saved order: an enclosing layer before the ones inside it
        if original is None:
            try:
                original = get_module(model, name)
            except TorchSlimError:
                raise ArtifactError(f"artifact layer '{name}' does not exist in the rebuilt {type(model).__name__}") \
                    from None
        replace_module(model, name, _rebuild_layer(name, cls, original, info))


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make every alias the very tensor object it shared at save time (tied embeddings), from the manifest's
    own record rather than the model's tying rules (which would also tie a head a technique replaced)."""
    for alias, canonical in aliases.items():
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = canonical.rpartition(".")
        module, src = get_module(model, owner), get_module(model, src_owner)
        if attr in module._parameters and src_attr in src._parameters:
            module._parameters[attr] = src._parameters[src_attr]
        elif attr in module._buffers and src_attr in src._buffers:
            module._buffers[attr] = src._buffers[src_attr]


def _apply_settings(model: nn.Module, settings: list[dict[str, Any]], path: Path) -> None:
    """Re-apply model-level settings (recorded configs) through their registered handlers (not a new stage)."""
    from torchslim.core.config import config_from_dict
    from torchslim.core.registry import apply_

    for d in settings:
        try:
            config = config_from_dict(d)
        except TorchSlimError as e:
            raise ArtifactError(f"{path}: cannot restore model setting: {e}") from None
        apply_(model, config, record=False)


def load(path: str | Path, model: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """Load the artifact at ``path``. ``model`` supplies the architecture for plain ``nn.Module`` artifacts.

    Order of checks (nothing large is allocated before they pass): manifest structure and version;
    weights file inside the folder, with the recorded size and SHA-256; its safetensors header
    (dtypes, shapes, offsets within the file); the skeleton's size against the file's; resized and
    added modules built on the meta device and bounded the same way; every tensor's name, shape and
    dtype against the rebuilt model; only then are the tensors read.
    
    Every error is one ArtifactError naming the artifact folder.
    """
    path = Path(path)
    try:
        return _load(path, model, verify)
    except ArtifactError as e:
        raise e if str(path) in str(e) else ArtifactError(f"{path}: {e}") from None


def load_structure(path: str | Path, defer: Callable[[str], bool] | None = None
                   ) -> tuple[nn.Module, dict[str, Any], Path]:
    """``(model, manifest, weights file)``: the artifact's model rebuilt with its parameters on the meta device and
    no weight read (buffers the model computes, such as rotary tables, are real), for reading an artifact larger
    than memory part by part. Compressed layers whose name ``defer`` accepts are left as the skeleton built them:
    :func:`apply_layer_formats` rebuilds them when their part is read. The weights file's size is checked, its
    SHA-256 is not (that reads it whole)."""
    from torchslim.core.surgery import meta_parameters

    path = Path(path)
    try:
        manifest = read_manifest(path)
        wpath = _weights_path(path, manifest, verify=False)
        with meta_parameters():
            model = build_skeleton(manifest, path)
            apply_resize_spec(model, manifest.get("resized", {}))
            apply_added_spec(model, manifest.get("added", {}))
        apply_layer_formats(model, manifest, [n for n in manifest["layers"] if defer is None or not defer(n)])
    except ArtifactError as e:
        raise e if str(path) in str(e) else ArtifactError(f"{path}: {e}") from None
    model.eval()
    state = state_of(model)
    state.source, state.manifest = manifest["source"], manifest
    state.history = [HistoryEntry.from_dict(h) for h in manifest.get("history", [])]
    return model, manifest, wpath


def apply_layer_formats(model: nn.Module, manifest: dict[str, Any], names: list[str]) -> None:
    """Rebuild the recorded compressed layers ``names`` as their (empty, parameters on meta) format modules."""
    from torchslim.core.surgery import meta_parameters

    layers = {n: manifest["layers"][n] for n in names}
    with meta_parameters():
        _apply_layer_formats(model, layers, manifest.get("history", []))


def _load(path: Path, model: nn.Module | None, verify: bool) -> nn.Module:
    path = Path(path)
    manifest = read_manifest(path)
    wpath = _weights_path(path, manifest, verify)
    header = checks.read_header(wpath)
    file_bytes = wpath.stat().st_size
    model = model if model is not None else _skeleton(manifest, path, file_bytes)
    apply_resize_spec(model, manifest.get("resized", {}), bound=lambda n: checks.bound("its resized modules", n,
                                                                                       file_bytes, path))
    apply_added_spec(model, manifest.get("added", {}), bound=lambda n: checks.bound("its added modules", n,
                                                                                    file_bytes, path))
    history = manifest.get("history", [])
    _apply_layer_formats(model, manifest["layers"], history,
                         bound=lambda n: checks.bound("its compressed layers", n, file_bytes, path))
    aliases = manifest.get("aliases", {})
    for alias, canonical in aliases.items():
        if canonical not in header:
            raise ArtifactError(f"{path}: alias '{alias}' points to '{canonical}', which the weights file lacks")
    io.match_header(path, model.state_dict(), {**header, **{a: header[c] for a, c in aliases.items()}})
    tensors = _read_weights(wpath)
    for alias, canonical in aliases.items():
        tensors[alias] = tensors[canonical]
    model.load_state_dict(tensors, strict=True, assign=True)
    _retie(model, aliases)
    _apply_settings(model, manifest.get("settings", []), path)
    model.eval()
    state = state_of(model)
    state.source, state.manifest = manifest["source"], manifest
    state.history = [HistoryEntry.from_dict(h) for h in history]
    state.layer_stage = {n: i["stage"] for n, i in manifest["layers"].items() if isinstance(i.get("stage"), int)}
    return model
