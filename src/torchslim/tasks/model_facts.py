"""Facts a task reads from a transformers model: the task its class implies (its head) and the longest sequence it
takes. Plain attribute reads, shared by the zoo's folder loader and user-data tasks."""
from __future__ import annotations

from typing import Any

from torch import nn

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def task_kind(model: nn.Module) -> str:
    """The kind of task a transformers model's class implies (its head)."""
    name = type(model).__name__
    if name.endswith(CAUSAL_SUFFIXES):
        return "causal-lm"
    for suffix, kind in (("ForSequenceClassification", "text-classification"),
                         ("ForImageClassification", "image-classification"),
                         ("ForConditionalGeneration", "seq2seq")):
        if name.endswith(suffix):
            return kind
    return "sentence-embedding"


def context_length(config: Any, default: int = 512) -> int:
    """The longest sequence the model takes (perplexity windows are capped to it)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 1:
            return min(default, v)
    return default
