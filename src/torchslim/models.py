"""Resolve what a user names (zoo name, Hugging Face folder, artifact folder) into a LoadedModel."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torchslim.core.errors import UnknownModelError
from torchslim.core.state import state_of
from torchslim.zoo.registry import LoadedModel, get_entry, list_entries


def _task_for_source(source: dict[str, Any], artifact: Path, model: Any) -> tuple[Any, Any]:
    """The (task, tokenizer) of an artifact: the source model's, where it is known; else, for a causal LM
    whose tokenizer the artifact carries, a perplexity task on that tokenizer (the artifact moved)."""
    from torchslim.zoo.hf import has_tokenizer, is_causal_lm, load_hf_folder, load_tokenizer, make_task

    kind = source.get("kind")
    if kind == "zoo":
        base = get_entry(source["name"]).loader(**source.get("kwargs", {}))
        return base.task, base.tokenizer
    if kind == "hf" and Path(source.get("path", "")).is_dir():
        base = load_hf_folder(source["path"])
        return base.task, base.tokenizer
    config = getattr(model, "config", None)
    if has_tokenizer(artifact) and config is not None and is_causal_lm(config):
        tokenizer = load_tokenizer(artifact)
        return make_task("causal-lm", tokenizer), tokenizer
    return None, None


def task_for_artifact(path: str | Path, manifest: dict[str, Any], model: Any) -> tuple[Any, Any]:
    """The (task, tokenizer) of the artifact at ``path`` without loading its weights (``model`` may be a skeleton)."""
    return _task_for_source(manifest.get("source") or {}, Path(path), model)


def load_model(spec: str, *, calib_data: str | Path | None = None, eval_data: str | Path | None = None,
               seq_len: int | None = None, **kwargs: Any) -> LoadedModel:
    """Load ``spec``: an artifact folder, a Hugging Face model folder, or a zoo name; with ``calib_data`` /
    ``eval_data`` (a text or JSONL file, or a folder) and ``seq_len``, its task uses the user's data."""
    from torchslim.tasks.user_data import task_with_user_data

    loaded = _load(spec, **kwargs)
    loaded.task = task_with_user_data(loaded, calib_data, eval_data, seq_len)
    return loaded


def _load(spec: str, **kwargs: Any) -> LoadedModel:
    from torchslim.artifact.format import is_artifact, load

    path = Path(spec).expanduser()
    if path.is_dir() and is_artifact(path):
        model = load(path)
        source = state_of(model).source or {}
        task, tokenizer = _task_for_source(source, path, model)
        extra: dict[str, Any] = {"artifact": str(path)}
        if source.get("kind") == "hf" and Path(source.get("path", "")).is_dir():
            from torchslim.zoo.hf import image_processor_loader

            extra["image_processor_loader"] = image_processor_loader(source["path"])
        return LoadedModel(name=path.name, model=model, task=task, source=source, tokenizer=tokenizer, extra=extra)
    if path.is_dir():
        from torchslim.zoo.hf import load_hf_folder

        loaded = load_hf_folder(path, **kwargs)
    elif "/" in spec or spec.startswith("."):
        hub = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) is not None and not path.exists()
        hint = (" (it looks like a Hugging Face Hub id: torchslim reads local folders only and never downloads; "
                "fetch it first, e.g. `hf download " + spec + " --local-dir DIR`, then pass DIR)") if hub else ""
        raise UnknownModelError(f"{spec}: no such model folder or artifact{hint}")
    else:
        names = {e.name for e in list_entries()}
        if spec not in names:
            raise UnknownModelError(f"unknown model '{spec}': not a zoo name ({', '.join(sorted(names))}) nor a folder")
        loaded = get_entry(spec).loader(**kwargs)
    state_of(loaded.model).source = loaded.source
    return loaded
