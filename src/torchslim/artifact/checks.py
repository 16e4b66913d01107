"""Checks that keep artifacts safe to save into and to read: confinement to the folder, manifest
structure, and weights that match the rebuilt model. Every failure is one clear
:class:`ArtifactError` (or :class:`TorchSlimError` for a save target), never a traceback."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from torchslim.core.codec import shown
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError, first_line
from torchslim.core.state import HistoryEntry
from torchslim.core.io import OWNED_NAMES, REPLACED, STAGING, recover_staged

FORMAT_NAME = "torchslim-artifact"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
_SHA = re.compile(r"[0-9a-f]{64}")


def is_plain_name(name: Any) -> bool:
    """A file name with no folder part: what an artifact may name."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\x00" not in name


def inside(folder: Path, name: Any) -> Path:
    """``folder / name`` when ``name`` is a plain file name resolving inside ``folder``; else an error."""
    if not is_plain_name(name):
        raise ArtifactError(f"{folder}: the manifest names a file outside the artifact folder ({str(name)[:80]!r})")
    p = folder / name
    root = folder.resolve()
    if p.resolve().parent != root:
        raise ArtifactError(f"{folder}: '{name}' resolves outside the artifact folder (a link?)")
    return p


# -- save target ---------------------------------------------------------------------------------
def check_target(path: Path, keep: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Refuse to save where that would overwrite something not ours (or write through a link); return the
    old manifest, if any. ``keep``: sub-folder names the caller owns (tolerated in an otherwise empty folder)."""
    if path.is_symlink() or (path / STAGING).is_symlink():
        link = path if path.is_symlink() else path / STAGING
        raise TorchSlimError(f"refusing to save an artifact to {path}: {link} is a symbolic link "
                             f"(torchslim does not write through links)")
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise TorchSlimError(f"cannot save an artifact to {path}: it is a file")
    if not path.is_dir():
        return None
    mpath = path / MANIFEST
    if not mpath.is_file() and (path / f"{REPLACED}{MANIFEST}").is_file():
        mpath = path / f"{REPLACED}{MANIFEST}"        # a save of ours was interrupted while committing
    if mpath.is_file():
        try:
            old = _parse(mpath)
        except ArtifactError:
            old = None
        if not isinstance(old, dict) or old.get("format") != FORMAT_NAME:
            raise TorchSlimError(f"refusing to overwrite {path}: its {MANIFEST} is not a torchslim artifact manifest")
        return old
    foreign = [p.name for p in path.iterdir() if p.name not in OWNED_NAMES and p.name not in keep
               and not _is_artifact_dir(p)]
    if foreign:
        raise TorchSlimError(f"refusing to overwrite {path}: it is a non-empty folder that is not a torchslim "
                             f"artifact (it holds {foreign[0]!r}); choose an empty or new folder")
    return None


def _is_artifact_dir(p: Path) -> bool:
    """A sub-folder holding a torchslim artifact (a recipe's ``save: {path: ...}`` stage wrote it)."""
    if p.is_symlink():
        return False                  # a link to an artifact elsewhere is not ours to keep beside a save
    try:
        m = _parse(p / MANIFEST) if (p / MANIFEST).is_file() else None
    except (ArtifactError, OSError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT_NAME


# -- manifest ------------------------------------------------------------------------------------
def _parse(mpath: Path) -> Any:
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mpath}: manifest is larger than {MAX_MANIFEST_BYTES >> 20} MB")
    try:
        return json.loads(mpath.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: corrupted manifest, not valid JSON ({first_line(e)})") from None
    except RecursionError:
        raise ArtifactError(f"{mpath}: corrupted manifest (nested too deeply)") from None


def _expect(cond: bool, mpath: Path, what: str) -> None:
    if not cond:
        raise ArtifactError(f"{mpath}: bad manifest: {what}")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, checked for format, version and structure."""
    mpath = path / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact folder")
    if (path / STAGING).is_dir():
        try:
            recover_staged(path, MANIFEST, discard_incomplete=False)   # finish a save a kill interrupted
        except OSError:
            pass                                 # a read-only folder: read what is there
    if not mpath.is_file():
        if (path / f"{REPLACED}{MANIFEST}").is_file():
            raise ArtifactError(f"{path}: an interrupted save left this artifact incomplete; save it again")
        raise ArtifactError(f"{path}: not a torchslim artifact (no {MANIFEST})")
    m = _parse(mpath)
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise ArtifactError(f"{mpath}: not a torchslim manifest (format field is {str(fmt)[:40]!r})")
    version = m.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: format version {shown(version)} is not supported "
                            f"(this torchslim reads 1 to {FORMAT_VERSION})")
    for key in ("weights", "source", "architecture", "layers"):
        _expect(key in m, mpath, f"the '{key}' field is missing")
    w = m["weights"]
    _expect(isinstance(w, dict), mpath, "'weights' must be a mapping")
    _expect("file" in w and "bytes" in w and "sha256" in w, mpath, "'weights' needs file, bytes and sha256")
    _expect(is_plain_name(w["file"]), mpath, f"weights file {str(w['file'])[:80]!r} is not a file inside the folder")
    _expect(isinstance(w["bytes"], int) and not isinstance(w["bytes"], bool) and w["bytes"] >= 0, mpath,
            "'weights.bytes' must be a non-negative integer")
    _expect(isinstance(w["sha256"], str) and _SHA.fullmatch(w["sha256"]) is not None, mpath,
            "'weights.sha256' must be 64 hex digits")
    _expect(isinstance(m["source"], dict), mpath, "'source' must be a mapping")
    arch = m["architecture"]
    _expect(isinstance(arch, dict) and isinstance(arch.get("kind"), str), mpath, "'architecture' needs a 'kind'")
    _expect(all(isinstance(arch.get(k, ""), str) for k in ("class",)), mpath, "'architecture.class' must be a string")
    _check_layers(m["layers"], mpath)
    _expect(_str_map(m.get("aliases", {})), mpath, "'aliases' must map tensor names to tensor names")
    for key in ("resized", "added", "metadata"):
        _expect(isinstance(m.get(key, {}), dict), mpath, f"'{key}' must be a mapping")
    for key in ("settings", "history"):
        _expect(isinstance(m.get(key, []), list) and all(isinstance(x, dict) for x in m.get(key, [])), mpath,
                f"'{key}' must be a list of mappings")
    for i, h in enumerate(m.get("history", [])):
        try:
            HistoryEntry.from_dict(h)
        except ConfigError as e:
            raise ArtifactError(f"{mpath}: bad manifest: {e}".replace("history entry", f"history entry {i}")) from None
    return m


def _str_map(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())


def _check_layers(layers: Any, mpath: Path) -> None:
    _expect(isinstance(layers, dict), mpath, "'layers' must map layer names to records")
    for name, info in layers.items():
        _expect(isinstance(info, dict), mpath, f"layer {name[:80]!r} must be a mapping")
        _expect(isinstance(info.get("module"), str), mpath, f"layer {name[:80]!r} has no 'module'")
        stage = info.get("stage")
        _expect(stage is None or (isinstance(stage, int) and not isinstance(stage, bool)), mpath,
                f"layer {name[:80]!r}: 'stage' must be an integer")


# -- weights file header and size bounds -----------------------------------------------------------
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
MAX_HEADER_BYTES = 100 << 20
SKELETON_FACTOR = 64          # a 1-bit artifact of a float32 model is 32x smaller than its skeleton
SKELETON_SLACK = 512 << 20


def read_header(wpath: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """``{tensor: (dtype, shape)}`` from a safetensors file's header, validated against the file's size,
    without reading (or allocating) any tensor."""
    size = wpath.stat().st_size
    with open(wpath, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise ArtifactError(f"{wpath}: not a safetensors file (header length {n} for a {size}-byte file)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ArtifactError(f"{wpath}: unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{wpath}: unreadable safetensors header")
    data_bytes, out = size - 8 - n, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _header_entry(wpath, name, entry, data_bytes)
    return out


def _header_entry(wpath: Path, name: str, e: Any, data_bytes: int) -> tuple[torch.dtype, tuple[int, ...]]:
    bad = f"{wpath}: tensor {shown(name)} has a bad header entry"
    if not isinstance(e, dict) or not isinstance(e.get("dtype"), str) or e["dtype"] not in _ST_DTYPES \
            or not isinstance(e.get("shape"), list):
        raise ArtifactError(f"{bad} ({shown(e)})")
    shape, offsets = e["shape"], e.get("data_offsets")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise ArtifactError(f"{bad}: shape {shown(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise ArtifactError(f"{bad}: data offsets {shown(offsets)} outside the file")
    dtype = _ST_DTYPES[e["dtype"]]
    numel = 1
    for d in shape:
        numel *= d
    if numel * dtype.itemsize != offsets[1] - offsets[0]:
        raise ArtifactError(f"{bad}: shape {shape} does not match its {offsets[1] - offsets[0]} bytes")
    return dtype, tuple(shape)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers need (works on the meta device: nothing is allocated)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def bound(what: str, nbytes: int, file_bytes: int, path: Path) -> None:
    """Refuse to allocate a model (or modules) far larger than any weights file of this size could fill."""
    limit = SKELETON_FACTOR * file_bytes + SKELETON_SLACK
    if nbytes > limit:
        raise ArtifactError(f"{path}: {what} would need {nbytes / 2**30:.1f} GiB, far more than its "
                            f"{file_bytes / 2**20:.1f} MiB weights file can describe; the artifact is corrupt or "
                            "tampered with")
