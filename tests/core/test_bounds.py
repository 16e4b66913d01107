"""Bounds on user numbers and text, checked before anything is allocated."""
from __future__ import annotations

import types

import pytest
import torch

from torchslim.core import bounds
from torchslim.core.errors import ConfigError


def _model(**config):
    m = torch.nn.Linear(4, 8)
    m.config = types.SimpleNamespace(**config)
    return m


def test_seq_len_is_bounded_by_the_context_or_a_fixed_bound():
    lm = _model(max_position_embeddings=512, hidden_size=64)
    bounds.check_seq_len(512, lm)
    bounds.check_seq_len(None, lm)
    with pytest.raises(ConfigError, match="--seq-len must be between 2 and the model's context length, 512; got 10"):
        bounds.check_seq_len(10**21, lm)
    with pytest.raises(ConfigError, match="between 2 and"):
        bounds.check_seq_len(1, lm)
    with pytest.raises(ConfigError, match=f"between 2 and {bounds.MAX_SEQ_LEN}; got"):
        bounds.check_seq_len(bounds.MAX_SEQ_LEN + 1, torch.nn.Linear(2, 2))


def test_new_tokens_must_fit_the_context():
    lm = _model(n_positions=64)
    bounds.check_new_tokens(4, 60, lm)
    with pytest.raises(ConfigError, match="exceeds the model's context length of 64 tokens \\(at most 60 new tokens\\)"):
        bounds.check_new_tokens(4, 61, lm)
    bounds.check_new_tokens(4, 10**6, torch.nn.Linear(2, 2))     # no known context: the CLI's own cap applies


def test_text_must_be_unicode():
    bounds.check_text("héllo", "--prompt")
    with pytest.raises(ConfigError, match="--prompt is not valid UTF-8 text \\(undecodable byte at character 2\\)"):
        bounds.check_text("hi\udcff", "--prompt")


def test_a_batch_whose_one_activation_exceeds_memory_is_refused(monkeypatch):
    monkeypatch.setattr(bounds, "memory_budget", lambda: 1 << 30)
    lm = _model(hidden_size=64, vocab_size=257)
    assert bounds.model_width(lm) == 257
    bounds.check_activation_memory(1000, 128, 257, "batch")
    with pytest.raises(ConfigError, match=r"batch: a batch of 1000000 x 128 tokens x width 257 needs at least "
                                          r"122.5 GiB .* the bound is a batch of 8160"):
        bounds.check_activation_memory(10**6, 128, 257, "batch")
    assert bounds.model_width(torch.nn.Linear(4, 8)) == 8
    assert 0 < bounds.memory_budget()
