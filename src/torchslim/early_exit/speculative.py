"""Self-speculative greedy decoding for decoder LMs (LayerSkip-style drafts, Elhoushi et al. 2024; Zhang et al.
2023): the model's first ``exit_layer`` blocks, its final norm and its LM head draft ``draft_tokens`` tokens one at
a time; the full model checks them all in one forward and keeps the longest prefix it agrees with, plus its own
next token. Every emitted token is the full model's greedy choice, so the output equals plain greedy decoding
(up to the rounding of a multi-token forward against a one-token one).

The draft runs the model's own forward with ``config.num_hidden_layers`` lowered for the call (Hugging Face decoders
loop over ``layers[:num_hidden_layers]``), on a KV cache of its own; both caches are cropped back after each
verification. No weights are added: exits reuse the final norm and LM head, which decides how often drafts are
accepted.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from torchslim.core.errors import ConfigError


@dataclass
class SpeculativeStats:
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    verify_calls: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@contextlib.contextmanager
def shallow(model: nn.Module, layers: int) -> Iterator[None]:
    """The model's forward runs only its first ``layers`` blocks inside this block."""
    cfg = model.config
    old = cfg.num_hidden_layers
    cfg.num_hidden_layers = layers
    try:
        yield
    finally:
        cfg.num_hidden_layers = old


def _crop(cache: Any, keep: int) -> None:
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)


class SelfSpeculativeDecoder:
    """``SelfSpeculativeDecoder(model, exit_layer=12, draft_tokens=4).generate(ids, n)`` -> ``(ids, stats)``."""

    def __init__(self, model: nn.Module, exit_layer: int, draft_tokens: int = 4) -> None:
        cfg = getattr(model, "config", None)
        depth = getattr(cfg, "num_hidden_layers", None)
        if not isinstance(depth, int) or not callable(getattr(model, "generate", None)):
            raise ConfigError(f"{type(model).__name__} is not a Hugging Face decoder LM with num_hidden_layers")
        if not 1 <= exit_layer < depth:
            raise ConfigError(f"exit_layer must be in [1, {depth - 1}] for this {depth}-block model, got {exit_layer}")
        if draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be >= 1, got {draft_tokens}")
        self.model, self.exit_layer, self.k = model.eval(), exit_layer, draft_tokens

    def _logits(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
        from transformers import DynamicCache

        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ConfigError(f"self-speculative decoding takes one sequence, got shape {tuple(input_ids.shape)}")
        cfg, stats = self.model.config, SpeculativeStats()
        full, draft = DynamicCache(config=cfg), DynamicCache(config=cfg)
        seq = input_ids[0].tolist()
        nxt = int(self._logits(input_ids, full)[-1].argmax())
        out = [nxt]
        while len(out) < max_new_tokens and (eos_token_id is None or out[-1] != eos_token_id):
            seq_now = seq + out                      # the last token is not in either cache yet
            drafts: list[int] = []
            with shallow(self.model, self.exit_layer):
                feed = seq_now[draft.get_seq_length():]
                for _ in range(min(self.k, max_new_tokens - len(out))):
                    tok = int(self._logits(torch.tensor([feed]), draft)[-1].argmax())
                    drafts.append(tok)
                    feed = [tok]
            check = self._logits(torch.tensor([[out[-1], *drafts]]), full).argmax(-1).tolist()
            n = 0
            while n < len(drafts) and drafts[n] == check[n]:
                n += 1
            stats.drafted += len(drafts)
            stats.accepted += n
            stats.verify_calls += 1
            emitted = drafts[:n] + [check[n]]
            if eos_token_id is not None and eos_token_id in emitted:
                emitted = emitted[:emitted.index(eos_token_id) + 1]
            out += emitted
            kept = len(seq_now) + n                  # tokens now in the sequence whose KV both caches may keep
            _crop(full, kept)
            _crop(draft, kept)
        out = out[:max_new_tokens]
        stats.new_tokens = len(out)
        return torch.tensor([seq + out]), stats
