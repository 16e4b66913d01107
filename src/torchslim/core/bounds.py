"""Bounds on the numbers and text a user supplies, checked before anything is allocated or run.

Each refusal is a :class:`ConfigError` whose message names the value and the bound it broke.
"""
from __future__ import annotations

import os
import resource
from typing import Any

from torchslim.core.errors import ConfigError

MAX_SEQ_LEN = 1 << 20             # a sequence length when the model names no context length
CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def model_context(model: Any) -> int | None:
    """The longest sequence a transformers model takes (its config's context length), or ``None`` if unknown."""
    config = getattr(model, "config", None)
    for attr in CONTEXT_ATTRS:
        v = getattr(config, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            return v
    return None


def check_seq_len(seq_len: int | None, model: Any, what: str = "--seq-len") -> None:
    """Refuse a sequence length below 2 or beyond the model's context (or :data:`MAX_SEQ_LEN`)."""
    if seq_len is None:
        return
    context = model_context(model)
    bound = context if context is not None else MAX_SEQ_LEN
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= bound:
        where = f"the model's context length, {bound}" if context is not None else f"{bound}"
        raise ConfigError(f"{what} must be between 2 and {where}; got {str(seq_len)[:40]}")


def check_new_tokens(prompt_tokens: int, new_tokens: int, model: Any) -> None:
    """Refuse a generation whose prompt plus new tokens would not fit the model's context."""
    context = model_context(model)
    if context is not None and prompt_tokens + new_tokens > context:
        raise ConfigError(f"--max-new-tokens {new_tokens} with a {prompt_tokens}-token prompt exceeds the model's "
                          f"context length of {context} tokens (at most {max(context - prompt_tokens, 0)} new tokens)")


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a command-line argument in another encoding arrives as lone
    surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{what} is not valid UTF-8 text (undecodable byte at character {e.start})") from None


def memory_budget() -> int:
    """Bytes this process may use at most: the smaller of the physical memory and its address-space limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 1 << 40
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(total, soft) if soft not in (resource.RLIM_INFINITY, -1) and soft > 0 else total


def check_activation_memory(batch: int, seq_len: int, width: int, what: str) -> None:
    """Refuse a batch when one activation of it (``batch x seq_len x width`` float32 values: a hidden state,
    or the logits) alone would not fit :func:`memory_budget` (a lower bound of what a step needs), before
    allocating any of it."""
    per_sample = max(seq_len, 1) * max(width, 1) * 4
    budget = memory_budget()
    if batch * per_sample > budget:
        raise ConfigError(f"{what}: a batch of {batch} x {seq_len} tokens x width {width} needs at least "
                          f"{batch * per_sample / 2**30:.1f} GiB for one activation, more than the "
                          f"{budget / 2**30:.1f} GiB of memory here; the bound is a batch of {budget // per_sample}")


def model_width(model: Any) -> int:
    """The widest activation per token of a model: its config's hidden, intermediate or vocabulary size, else
    the largest output dimension of its parameters."""
    config = getattr(model, "config", None)
    sizes = [getattr(config, k, None) for k in ("hidden_size", "intermediate_size", "vocab_size", "n_embd")]
    sizes = [v for v in sizes if isinstance(v, int) and not isinstance(v, bool)]
    if sizes:
        return max(sizes)
    return max((p.shape[0] for p in model.parameters() if p.ndim), default=1)
