"""Adapter-only artifacts: one adapter's branches in a small folder, bound to the base they were trained on.

``save_adapter(model, path, adapter)`` writes

* ``adapter.safetensors``: the branches' tensors, named as in the model (``...q_proj.lora_default.A``);
* ``adapter.json``: format name and version, the branches' module-kind specs under their names (what
  :func:`torchslim.core.kinds.build` rebuilds them from), the adapter's training records from the model's
  history, the weights file's size and SHA-256, and the base: ``kind`` ``"artifact"`` with the SHA-256 the base
  artifact records for its weights (the model was loaded from an artifact and its base is unchanged since), or
  ``kind`` ``"state_dict"`` with a content fingerprint of the base's tensors. The fingerprint (every tensor of
  the ``state_dict`` but adapter branches: names, dtypes, shapes and bytes) is recorded in both cases, and it is
  what :func:`load_adapter` compares: a base that is not the one the adapter was trained on is refused in one
  line naming both.

``load_adapter(model, path, adapter=None)`` checks, before anything is allocated or attached: the manifest's
format and structure, the weights file inside the folder with its recorded size and SHA-256, the base, the
branches' specs (built on the meta device, their size bounded by the file's), and every tensor's name, shape
and dtype against the rebuilt branches; only then are the tensors read and the branches attached
(:func:`torchslim.core.resize.add_module`, so a later artifact save records them). ``adapter`` loads it under
another name, so several adapters (or one twice) sit on one base; :func:`torchslim.peft.set_adapter` switches.
Nothing is ever unpickled; writes are staged (:func:`torchslim.core.io.staged_files`), manifest last.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core import io, kinds
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError, first_line
from torchslim.core.resize import add_module, remove_added
from torchslim.core.state import state_of
from torchslim.core.surgery import get_module, model_device
from torchslim.peft.branch import (
    Branch,
    adapters,
    branches,
    check_adapter_name,
    layer_name,
)
from torchslim.version import __version__

FORMAT_NAME = "torchslim-adapter"
FORMAT_VERSION = 1
MANIFEST = "adapter.json"
WEIGHTS = "adapter.safetensors"
MAX_JSON_BYTES = 16 << 20
MAX_BRANCHES = 1 << 16


# -- shared file checks (also used by the peft interop) ----------------------------------------------
def plain_file(folder: Path, name: str) -> Path:
    """``folder / name`` (a fixed file name), refused when it is a link or resolves outside ``folder``."""
    p = folder / name
    if p.is_symlink() or (p.exists() and p.resolve().parent != folder.resolve()):
        raise ArtifactError(f"{p}: a link or a path outside the folder; torchslim reads only plain files in it")
    return p


def read_json(p: Path, what: str) -> dict[str, Any]:
    if not p.is_file():
        raise ArtifactError(f"{p.parent}: not {what} (no {p.name})")
    if p.stat().st_size > MAX_JSON_BYTES:
        raise ArtifactError(f"{p}: larger than {MAX_JSON_BYTES >> 20} MB")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{p}: not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{p}: expected a JSON object")
    return data


def tensor_header(p: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, read from its header only (the library checks the
    header's size and offsets against the file; nothing is allocated)."""
    from safetensors import safe_open

    if not p.is_file():
        raise ArtifactError(f"{p}: the weights file is missing")
    try:
        with safe_open(str(p), framework="pt") as f:
            out = {}
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (_st_dtype(s.get_dtype()), tuple(s.get_shape()))
            return out
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise ArtifactError(f"{p}: unreadable safetensors file ({first_line(e)})") from None


def _st_dtype(name: str) -> torch.dtype:
    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
    if name not in table:
        raise ValueError(f"unsupported dtype {name}")
    return table[name]


def read_tensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"{p}: unreadable safetensors file ({first_line(e)})") from None


def writable_folder(path: Path, marker: str, what: str) -> None:
    """Refuse to write into a link, a file, or a non-empty folder that is not already ``what`` (holding ``marker``)."""
    if path.is_symlink() or (path / io.STAGING).is_symlink():
        raise TorchSlimError(f"refusing to write {what} to {path}: a symbolic link (torchslim does not write through links)")
    if path.exists() and not path.is_dir():
        raise TorchSlimError(f"cannot write {what} to {path}: it is a file")
    if path.is_dir() and not (path / marker).is_file():
        foreign = [p.name for p in path.iterdir() if p.name not in io.OWNED_NAMES]
        if foreign:
            raise TorchSlimError(f"refusing to overwrite {path}: a non-empty folder that is not {what} (it holds "
                                 f"{foreign[0]!r}); choose an empty or new folder")


def attach(model: nn.Module, made: list[tuple[str, Branch]]) -> list[str]:
    """Add every ``(name, branch)`` (on its layer's device) or none of them."""
    done: list[str] = []
    try:
        for name, branch in made:
            layer = get_module(model, layer_name(name))
            add_module(model, name, branch.to(model_device(layer)))
            done.append(name)
    except BaseException:
        for name in reversed(done):
            remove_added(model, name)
        raise
    return done


def free_adapter_name(model: nn.Module, adapter: str) -> str:
    check_adapter_name(adapter)
    if adapter in adapters(model):
        raise ConfigError(f"the model already has an adapter '{adapter}': load this one under another name "
                          "(adapter=...) or delete_adapter the old one")
    return adapter


# -- the base ------------------------------------------------------------------------------------------
def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every ``state_dict`` tensor outside adapter branches."""
    skip = tuple(f"{n}." for n, _ in branches(model))
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(skip):
            continue
        if not isinstance(t, torch.Tensor):          # a module's extra state
            h.update(f"{name}|{t!r}\n".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def artifact_sha(model: nn.Module) -> str | None:
    """The weights SHA-256 of the artifact the model was loaded from, while its base is unchanged since: every
    later history entry is an evaluation or an adapter's training that did not merge, no branch is merged, and every
    module the artifact added is still there (``merge_`` removes merged branches without a history entry). When in
    doubt this says None and the adapter names its base by content, which is always right."""
    state = state_of(model)
    m = state.manifest
    sha = m.get("weights", {}).get("sha256") if isinstance(m, dict) and isinstance(m.get("weights"), dict) else None
    if not isinstance(sha, str) or any(b.merged for _, b in branches(model)) \
            or not set(m.get("added") or {}) <= set(state.added):
        return None
    for h in state.history[len(m.get("history", [])):]:
        data = (h.config or {}).get("_data") if isinstance(h.config, dict) else None
        adapter_run = h.kind == "training" and isinstance(data, dict) and "adapter" in data and data.get("merge") is False
        if h.kind != "evaluate" and not adapter_run:
            return None
    return sha


def base_record(model: nn.Module) -> dict[str, Any]:
    fingerprint, sha = state_fingerprint(model), artifact_sha(model)
    if sha is not None:
        return {"kind": "artifact", "sha256": sha, "state_dict_sha256": fingerprint}
    return {"kind": "state_dict", "sha256": fingerprint, "state_dict_sha256": fingerprint}


def check_base(model: nn.Module, base: dict[str, Any], where: Path) -> None:
    """Refuse (one line, both hashes) a model whose base is not the one the adapter was saved on."""
    mine = state_fingerprint(model)
    if base["state_dict_sha256"] == mine:
        return
    here = artifact_sha(model) if base["kind"] == "artifact" else None
    if here is not None and here != base["sha256"]:
        theirs, ours = f"artifact {base['sha256'][:12]}", f"artifact {here[:12]}"
    else:
        theirs, ours = f"state fingerprint {base['state_dict_sha256'][:12]}", f"state fingerprint {mine[:12]}"
    raise ArtifactError(f"{where}: this adapter belongs to another base model (its base: {theirs}; this model: "
                        f"{ours}); load it onto the model it was trained on")


# -- save -------------------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, path: str | Path, adapter: str = "default") -> Path:
    """Write adapter ``adapter`` of ``model`` alone (see the module docstring) and return ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    found = branches(model, check_adapter_name(adapter))
    if not found:
        have = adapters(model)
        raise ConfigError(f"the model has no adapter {adapter!r} (it has {', '.join(have) or 'none'})")
    merged = [n for n, b in found if b.merged]
    if merged:
        raise ConfigError(f"adapter {adapter!r} is merged into the base ('{merged[0]}'): unmerge_ it before saving it "
                          "alone, or save the whole model")
    writable_folder(path, MANIFEST, "an adapter folder")
    specs = {n: kinds.describe(b) for n, b in found}
    tensors = {f"{n}.{k}": t.detach().cpu().contiguous() for n, b in found for k, t in b.state_dict().items()}
    history = [h.to_dict() for h in state_of(model).history if h.kind == "training" and isinstance(h.config, dict)
               and isinstance(h.config.get("_data"), dict) and h.config["_data"].get("adapter") == adapter]
    base = base_record(model)
    with io.staged_files(path, MANIFEST) as stage:
        save_file(tensors, str(stage / WEIGHTS), metadata={"format": FORMAT_NAME})
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "torchslim_version": __version__,
            "created": io.utc_now(), "adapter": adapter, "methods": sorted({b.method for _, b in found}),
            "base": base, "branches": specs, "history": history, "files": [WEIGHTS, MANIFEST],
            "weights": {"file": WEIGHTS, "bytes": (stage / WEIGHTS).stat().st_size, "sha256": io.sha256(stage / WEIGHTS)},
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


# -- load ---------------------------------------------------------------------------------------------------
def read_adapter_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the adapter folder at ``path``, checked for format, version and structure."""
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such adapter folder")
    if (path / io.STAGING).is_dir():
        try:
            io.recover_staged(path, MANIFEST, discard_incomplete=False)
        except OSError:
            pass
    if not (path / MANIFEST).is_file():
        if (path / "adapter_config.json").is_file():
            raise ArtifactError(f"{path}: a Hugging Face peft adapter, not a torchslim one: load it with from_peft")
        if (path / "manifest.json").is_file():
            raise ArtifactError(f"{path}: a torchslim model artifact, not an adapter folder: torchslim.load it")
    m = read_json(plain_file(path, MANIFEST), "a torchslim adapter folder")
    mpath = path / MANIFEST

    def expect(cond: bool, what: str) -> None:
        if not cond:
            raise ArtifactError(f"{mpath}: bad adapter manifest: {what}")

    expect(m.get("format") == FORMAT_NAME, f"format is {str(m.get('format'))[:40]!r}, not {FORMAT_NAME!r}")
    v = m.get("format_version")
    expect(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= FORMAT_VERSION,
           f"format version {str(v)[:20]} (this torchslim reads 1 to {FORMAT_VERSION})")
    expect(isinstance(m.get("adapter"), str), "'adapter' must be a name")
    b, w, specs = m.get("base"), m.get("weights"), m.get("branches")
    expect(isinstance(b, dict) and b.get("kind") in ("artifact", "state_dict")
           and all(isinstance(b.get(k), str) and len(b[k]) == 64 for k in ("sha256", "state_dict_sha256")),
           "'base' needs kind (artifact or state_dict), sha256 and state_dict_sha256")
    expect(isinstance(w, dict) and w.get("file") == WEIGHTS and isinstance(w.get("bytes"), int)
           and isinstance(w.get("sha256"), str), f"'weights' must name {WEIGHTS} with its bytes and sha256")
    expect(isinstance(specs, dict) and 0 < len(specs) <= MAX_BRANCHES
           and all(isinstance(k, str) and 0 < len(k) <= 1000 and isinstance(s, dict) for k, s in specs.items()),
           "'branches' must map module names to specs")
    return m


def _weights(path: Path, m: dict[str, Any]) -> Path:
    wpath = plain_file(path, WEIGHTS)
    if not wpath.is_file():
        raise ArtifactError(f"{wpath}: the weights file is missing")
    size = wpath.stat().st_size
    if size != m["weights"]["bytes"]:
        raise ArtifactError(f"{wpath}: truncated or altered: {size} bytes on disk, the manifest says {m['weights']['bytes']}")
    if io.sha256(wpath) != m["weights"]["sha256"]:
        raise ArtifactError(f"{wpath}: corrupted: SHA-256 does not match the manifest")
    return wpath


def _build_branches(model: nn.Module, specs: dict[str, Any], old: str, new: str,
                    file_bytes: int, path: Path) -> list[tuple[str, str, Branch]]:
    """``(file name, new name, empty branch)`` for every spec, built on the meta device and bounded first."""
    out = []
    with torch.device("meta"):
        for name, spec in specs.items():
            lname = layer_name(name)
            try:
                get_module(model, lname)
            except TorchSlimError:
                raise ArtifactError(f"{path}: the adapter adapts '{lname[:120]}', which this model lacks") from None
            try:
                branch = kinds.build({**spec, "adapter": new, "enabled": True})
            except ArtifactError as e:
                raise ArtifactError(f"{path}: branch '{name[:120]}': {e}") from None
            if not isinstance(branch, Branch):
                raise ArtifactError(f"{path}: '{name[:120]}' is a {type(branch).__name__}, not an adapter branch")
            child = name.rpartition(".")[2] if new == old else f"{branch.method}_{new}"
            out.append((name, f"{lname}.{child}", branch))
    nbytes = sum(t.numel() * t.element_size() for *_, b in out for t in (*b.parameters(), *b.buffers()))
    if nbytes > 8 * file_bytes + (16 << 20):
        raise ArtifactError(f"{path}: its branches would need {nbytes / 2**20:.1f} MiB, far more than its "
                            f"{file_bytes / 2**20:.2f} MiB weights file holds; the adapter is corrupt or tampered with")
    return [(f, n, b.to_empty(device="cpu")) for f, n, b in out]


def load_adapter(model: nn.Module, path: str | Path, adapter: str | None = None) -> list[str]:
    """Attach the adapter saved at ``path`` to ``model`` (its base), under its own name or ``adapter``;
    returns the names of the branches added. The loaded adapter is enabled; other adapters keep their state."""
    path = Path(path)
    m = read_adapter_manifest(path)
    old = check_adapter_name(m["adapter"])
    new = free_adapter_name(model, old if adapter is None else adapter)
    wpath = _weights(path, m)
    header = tensor_header(wpath)
    check_base(model, m["base"], path)
    built = _build_branches(model, m["branches"], old, new, wpath.stat().st_size, path)
    expected = {f"{f}.{k}": t for f, _, b in built for k, t in b.state_dict().items()}
    io.match_header(wpath, expected, header, mismatch="tensors do not match the adapter's branches",
                    holder="the branch")
    tensors = read_tensors(wpath)
    for f, _, b in built:
        b.load_state_dict({k: tensors[f"{f}.{k}"] for k in b.state_dict()}, strict=True)
    return attach(model, [(n, b) for _, n, b in built])
