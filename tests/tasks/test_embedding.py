"""SentenceEmbeddingTask on the tiny random BERT: pooling, metrics, lazy reference, distillation loss."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import text
from torchslim.tasks.embedding import SentenceEmbeddingTask, embed, embedding_metrics
from torchslim.zoo.tiny import build_tiny_bert, tiny_bert

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.", "Hi."]


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(seed=0)


def test_embed_is_masked_mean_pooling_normalised(bert):
    got = embed(bert.model, bert.tokenizer, SENTENCES, batch_size=3)
    assert got.shape == (4, 64) and got.dtype == torch.float32
    with torch.no_grad():
        for i, s in enumerate(SENTENCES):          # one at a time: no padding at all
            ids = torch.tensor([[2] + [b + 5 for b in s.encode()] + [3]])
            v = bert.model(input_ids=ids).last_hidden_state[0].mean(0)
            assert torch.allclose(got[i], v / v.norm(), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(4))
    assert torch.allclose(embed(bert.model, bert.tokenizer, SENTENCES, batch_size=1), got, atol=1e-5)


def test_metrics_against_independent_computations():
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=-1)
    emb = torch.nn.functional.normalize(ref + 0.4 * torch.randn(30, 8, generator=g), dim=-1)
    m = embedding_metrics(emb, ref)
    cos = [float(emb[i] @ ref[i]) for i in range(30)]
    assert m["cosine_fidelity"] == pytest.approx(sum(cos) / 30) and m["min_cosine"] == pytest.approx(min(cos))

    def nearest(e, i):
        return max((j for j in range(30) if j != i), key=lambda j: float(e[i] @ e[j]))

    agree = sum(nearest(emb, i) == nearest(ref, i) for i in range(30)) / 30
    assert m["nn_agreement"] == pytest.approx(agree)
    pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)]
    rho = spearmanr([float(emb[i] @ emb[j]) for i, j in pairs], [float(ref[i] @ ref[j]) for i, j in pairs])[0]
    assert m["similarity_spearman"] == pytest.approx(rho, abs=1e-6)
    same = embedding_metrics(ref, ref)
    assert same["cosine_fidelity"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0
    assert same["similarity_spearman"] == pytest.approx(1.0)


def test_reference_is_lazy_cached_and_compared(bert):
    calls = []

    def loader():
        calls.append(1)
        return build_tiny_bert(seed=0)

    task = SentenceEmbeddingTask(bert.tokenizer, loader, max_eval_sentences=40)
    assert calls == []
    same = task.evaluate(bert.model)
    assert calls == [1]
    assert same["cosine_fidelity"] == pytest.approx(1.0, abs=1e-6) and same["nn_agreement"] == 1.0
    assert same["eval_sentences"] == 40
    other = task.evaluate(build_tiny_bert(seed=1))
    assert calls == [1]                               # cached, not reloaded
    assert other["cosine_fidelity"] < 0.9 and other["nn_agreement"] < 1.0
    assert task.reference_embeddings("eval").shape == (40, 64)


def test_reference_as_tensor_or_missing(bert):
    sentences = text.eval_sentences()[:10]
    ref = embed(bert.model, bert.tokenizer, sentences)
    task = SentenceEmbeddingTask(bert.tokenizer, ref, eval_sentences=sentences)
    assert task.evaluate(bert.model)["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(TorchSlimError, match="set_reference"):
        SentenceEmbeddingTask(bert.tokenizer).evaluate(bert.model)
    with pytest.raises(ConfigError, match="max_eval_sentences"):
        SentenceEmbeddingTask(bert.tokenizer, max_eval_sentences=2)
    assert "GPL-3" in SentenceEmbeddingTask(bert.tokenizer).data_note and "user-supplied" in task.data_note
    with pytest.raises(TorchSlimError, match="set_reference"):
        next(task.train_batches(2))                    # a tensor covers eval sentences only
    task.set_reference(bert.model)
    assert next(task.train_batches(2))["target"].shape == (2, 64)


def test_distillation_loss_and_batches(bert):
    task = SentenceEmbeddingTask(bert.tokenizer, lambda: build_tiny_bert(seed=0))
    batch = next(task.train_batches(4, seed=1))
    assert set(batch) == {"input_ids", "attention_mask", "target"}
    assert task.loss(bert.model, batch).item() == pytest.approx(0.0, abs=1e-6)
    student = build_tiny_bert(seed=2).train()
    loss = task.loss(student, batch)
    assert loss.item() > 0.05
    loss.backward()
    assert student.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    shards = [next(task.train_batches(4, seed=1, rank=r, world_size=2))["target"] for r in (0, 1)]
    assert torch.equal(torch.cat(shards), next(task.train_batches(8, seed=1))["target"])
    assert not torch.equal(shards[0], shards[1])

    cal = task.calibration_batches(5, batch_size=2)
    assert [b["input_ids"].shape[0] for b in cal] == [2, 2, 1] and set(cal[0]) == {"input_ids", "attention_mask"}
    ex = task.example_inputs(2, 16)
    assert ex["input_ids"].shape == (2, 16) and int(ex["attention_mask"].sum()) == 32
    assert bert.tokenizer.decode(ex["input_ids"][0], skip_special_tokens=True) in text.calibration_text()


def test_loss_from_raw_or_pooled_output_matches_loss(bert):
    import torch

    from torchslim.tasks.embedding import TARGET_KEY, embed_batch

    model, task = bert.model, bert.task
    batch = next(task.train_batches(2, seed=0))
    with torch.no_grad():
        direct = task.loss(model, batch)
        raw = task.loss_from_output(task.train_forward(model, batch), batch)
        pooled = task.loss_from_output(embed_batch(model, batch), batch)
    torch.testing.assert_close(raw, direct)
    torch.testing.assert_close(pooled, direct, rtol=1e-5, atol=1e-6)
    assert TARGET_KEY in batch
