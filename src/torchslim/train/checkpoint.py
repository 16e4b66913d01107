"""Training checkpoints: safetensors for tensors, JSON for everything else; no pickles.

Layout of ``<checkpoint_dir>/step-00000100/`` (written atomically, whole folder at once)::

    model.safetensors       model parameters and buffers
    optimizer.safetensors   optimizer state tensors, keyed ``state.<param index>.<name>``
    state.json              step, loss/eval history, optimizer param groups and scalar state,
                            hook states, the TrainConfig

The learning-rate schedule is a function of the step and the engine reseeds the RNG from
(seed, step, rank) every step, so no scheduler or RNG state needs saving.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from torchslim.core.errors import ArtifactError, first_line
from torchslim.core.io import atomic_dir

FORMAT = "torchslim-train-checkpoint"
FORMAT_VERSION = 1
_PREFIX = "step-"


def checkpoint_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"{_PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX) and (p / "state.json").is_file():
            try:
                found.append((int(p.name[len(_PREFIX):]), p))
            except ValueError:
                continue
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def optimizer_state_split(optimizer: torch.optim.Optimizer | dict[str, Any]
                          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` (or such a dict) as (tensors for safetensors, JSON-serializable rest)."""
    sd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_split`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    root: str | Path, step: int, model: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the ``keep`` newest. ``model`` and
    ``optimizer`` may be given as their whole tensors and state dict (gathered from FSDP shards, tied
    tensors under one name): the files are the same as a 1-process run's."""
    path = checkpoint_path(root, step)
    tensors, opt_meta = optimizer_state_split(optimizer)
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "optimizer": opt_meta, **state}
    text = json.dumps(doc, indent=1)     # fail on non-JSON state before anything is written
    with atomic_dir(path) as tmp:
        if isinstance(model, nn.Module):
            save_model(model, str(tmp / "model.safetensors"))
        else:
            save_file(model, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(text)
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's state.json, checked for format and version."""
    path = Path(path)
    try:
        doc = json.loads((path / "state.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path}: unreadable training checkpoint state ({first_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("step"), int) \
            or not isinstance(doc.get("version", 0), int) or doc.get("version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: not a torchslim training checkpoint")
    return doc


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    sharded: bool = False) -> dict[str, Any]:
    """Load weights (and optimizer state, unless ``optimizer`` is None) from checkpoint folder ``path``;
    returns its state.json. ``sharded``: ``model`` is FSDP-sharded; every rank reads the whole tensors and
    keeps its shard (:func:`torchslim.train.fsdp.load_state`)."""
    path = Path(path)
    doc = read_state(path)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        if sharded:
            from torchslim.train.fsdp import load_state

            weights = load_file(str(path / "model.safetensors"), device=str(device))
            opt_sd = None if optimizer is None else optimizer_state_join(
                load_file(str(path / "optimizer.safetensors"), device=str(device)), doc["optimizer"])
            load_state(model, optimizer, weights, opt_sd)
            return doc
        load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
        if optimizer is not None:
            tensors = load_file(str(path / "optimizer.safetensors"), device=str(device))
            optimizer.load_state_dict(optimizer_state_join(tensors, doc["optimizer"]))
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArtifactError(f"{path}: checkpoint does not match this model/optimizer: {msg}") from None
    return doc
