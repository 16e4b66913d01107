"""Sentence embeddings: fidelity of a (compressed) encoder to its uncompressed reference.

Embedding of a sentence = mean of the last hidden states over the attention mask, L2-normalised
(the sentence-transformers recipe of all-MiniLM-L6-v2).

Metrics of :meth:`SentenceEmbeddingTask.evaluate`, on the evaluation sentences (GPL-3), comparing
the model's embeddings ``e`` with the reference model's ``r``:

* ``cosine_fidelity`` (primary, higher is better): mean over sentences of ``cos(e_i, r_i)``.
* ``min_cosine``: the worst sentence's ``cos(e_i, r_i)``.
* ``nn_agreement``: fraction of sentences whose nearest neighbour (highest cosine among the other
  evaluation sentences) is the same sentence under both models.
* ``similarity_spearman``: Spearman rank correlation between the two models' cosine similarities
  over all sentence pairs ``i < j``.

The reference embeddings are computed lazily (from a loader, so the uncompressed model is only
held while it embeds) and cached in memory. Training (recovery fine-tuning) distils towards the
reference: loss = mean ``1 - cos(e_i, r_i)`` on calibration sentences.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import text as text_data
from torchslim.tasks.base import Batch, Task
from torchslim.tasks.causal_lm import eval_mode, model_device

Reference = Union[nn.Module, Callable[[], Any], torch.Tensor, None]
TARGET_KEY = "target"   # key of the reference embeddings in a training batch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``attention_mask`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def hidden_of(output: Any) -> torch.Tensor:
    """The last hidden states of an encoder output (HF ``ModelOutput``, tuple or tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if hidden is not None else output[0]


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = 256) -> Batch:
    """``input_ids`` and ``attention_mask`` for ``sentences``, padded to the longest."""
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def embed_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Normalised mean-pooled embeddings of one tokenized batch (keeps autograd if enabled)."""
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    pooled = mean_pool(hidden_of(model(**inputs)).float(), inputs["attention_mask"])
    return F.normalize(pooled, p=2, dim=-1)


def embed(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 32, max_length: int = 256
) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings of ``sentences``, shape ``(N, D)``, float32 on CPU."""
    if not sentences:
        raise ConfigError("embed() needs at least one sentence")
    parts = []
    with eval_mode(model):
        for i in range(0, len(sentences), batch_size):
            parts.append(embed_batch(model, tokenize(tokenizer, sentences[i : i + batch_size], max_length)).cpu())
    return torch.cat(parts)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x, dtype=torch.float64)
        r[x.argsort()] = torch.arange(x.numel(), dtype=torch.float64)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def embedding_metrics(emb: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Fidelity metrics of normalised embeddings ``emb`` against ``ref`` (same sentences, same order)."""
    if emb.shape != ref.shape or emb.shape[0] < 3:
        raise TorchSlimError(f"embeddings {tuple(emb.shape)} and reference {tuple(ref.shape)} do not match (need >= 3)")
    emb, ref = emb.double(), ref.double()
    cos = (emb * ref).sum(-1)
    sim_e, sim_r = emb @ emb.T, ref @ ref.T
    eye = torch.eye(len(emb), dtype=torch.bool)
    nn_e = sim_e.masked_fill(eye, float("-inf")).argmax(-1)
    nn_r = sim_r.masked_fill(eye, float("-inf")).argmax(-1)
    iu = torch.triu_indices(len(emb), len(emb), offset=1)
    return {
        "cosine_fidelity": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "nn_agreement": float((nn_e == nn_r).double().mean()),
        "similarity_spearman": _spearman(sim_e[iu[0], iu[1]], sim_r[iu[0], iu[1]]),
        "eval_sentences": float(len(emb)),
    }


class SentenceEmbeddingTask(Task):
    """Fidelity of sentence embeddings to an uncompressed reference model (see module docstring).

    ``reference`` is a callable returning the uncompressed model (called lazily, model dropped
    after embedding), an ``nn.Module`` (held by the task), a tensor of reference embeddings of
    the evaluation sentences, or ``None`` (call :meth:`set_reference` before evaluating).
    """

    name = "sentence-embedding"
    metric = "cosine_fidelity"
    higher_is_better = True
    default_shapes = ((1, 128), (8, 128))

    def __init__(
        self,
        tokenizer: Any,
        reference: Reference = None,
        *,
        max_length: int = 256,
        batch_size: int = 32,
        max_eval_sentences: int | None = None,
        eval_sentences: Sequence[str] | None = None,
        calibration_sentences: Sequence[str] | None = None,
    ) -> None:
        if batch_size < 1 or max_length < 2:
            raise ConfigError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
        if max_eval_sentences is not None and max_eval_sentences < 3:
            raise ConfigError(f"max_eval_sentences must be at least 3 (or None), got {max_eval_sentences}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_eval_sentences = max_eval_sentences
        self._sentences = {"eval": eval_sentences, "calibration": calibration_sentences}
        self._reference: Reference = None
        self._ref_cache: dict[str, torch.Tensor] = {}
        custom = eval_sentences is not None or calibration_sentences is not None
        self.data_note = (
            "embedding fidelity to the uncompressed model on user-supplied sentences"
            if custom
            else "embedding fidelity to the uncompressed model on sentences of " + text_data.DATA_NOTE
        )
        self.set_reference(reference)

    # ------------------------------------------------------------ reference
    def set_reference(self, reference: Reference) -> None:
        """Replace the reference (a model loader, a model, or eval-sentence embeddings); clears the cache."""
        self._ref_cache = {}
        if isinstance(reference, torch.Tensor):
            self._ref_cache["eval"] = F.normalize(reference.detach().float().cpu(), dim=-1)
        self._reference = reference

    def sentences(self, split: str) -> list[str]:
        """Sentences of ``split`` (``"eval"`` is cut to ``max_eval_sentences``)."""
        given = self._sentences.get(split)
        found = list(given) if given is not None else text_data.sentences(split)
        if split == "eval" and self.max_eval_sentences is not None:
            found = found[: self.max_eval_sentences]
        return found

    def reference_embeddings(self, split: str = "eval") -> torch.Tensor:
        """Reference embeddings of ``split``'s sentences (computed on first use, then cached)."""
        if split in self._ref_cache:
            return self._ref_cache[split]
        ref = self._reference
        if ref is None or isinstance(ref, torch.Tensor):
            raise TorchSlimError(f"no reference model for '{split}' embeddings; call set_reference(model or loader)")
        model = ref if isinstance(ref, nn.Module) else ref()
        if not isinstance(model, nn.Module):          # a loader may return a LoadedModel
            model = getattr(model, "model", None)
        if not isinstance(model, nn.Module):
            raise TorchSlimError("the reference loader must return an nn.Module (or a LoadedModel)")
        emb = self.embed(model, self.sentences(split))
        del model
        self._ref_cache[split] = emb
        return emb

    # --------------------------------------------------------------- metric
    def embed(self, model: nn.Module, sentences: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Normalised embeddings of ``sentences`` with this task's tokenizer, ``(N, D)`` float32 CPU."""
        return embed(model, self.tokenizer, sentences, batch_size=batch_size or self.batch_size, max_length=self.max_length)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        ref = self.reference_embeddings("eval")
        return embedding_metrics(self.embed(model, self.sentences("eval")), ref)

    # ---------------------------------------------------------------- inputs
    def example_inputs(self, batch: int, seq_len: int | None = None) -> Batch:
        """``(batch, seq_len)`` inputs from consecutive calibration-text words, truncated to ``seq_len`` tokens."""
        seq_len = seq_len or 128
        words = text_data.calibration_text().split()
        rows = []
        for b in range(batch):
            start = (b * seq_len) % max(1, len(words) - seq_len)
            rows.append(" ".join(words[start : start + seq_len]))
        enc = self.tokenizer(rows, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[Batch]:
        """The first ``n_samples`` calibration sentences (cycled if fewer), tokenized in batches."""
        if n_samples < 1 or batch_size < 1:
            raise ConfigError(f"n_samples and batch_size must be positive, got {n_samples} and {batch_size}")
        pool = self.sentences("calibration")
        chosen = [pool[i % len(pool)] for i in range(n_samples)]
        return [tokenize(self.tokenizer, chosen[i : i + batch_size], self.max_length) for i in range(0, n_samples, batch_size)]

    def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Endless shuffled calibration sentences with their reference embeddings under ``"target"``.

        Each step draws ``batch_size * world_size`` sentences (seeded) and yields shard ``rank``.
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        pool = self.sentences("calibration")
        targets = self.reference_embeddings("calibration")
        g = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(0, len(pool), (batch_size * world_size,), generator=g)[rank * batch_size : (rank + 1) * batch_size]
            batch = tokenize(self.tokenizer, [pool[i] for i in idx.tolist()], self.max_length)
            batch[TARGET_KEY] = targets[idx]
            yield batch

    def train_forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output (token hidden states) on the batch's ``input_ids`` and ``attention_mask``."""
        device = model_device(model)
        return model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})

    def loss_from_output(self, output: Any, batch: Batch) -> torch.Tensor:
        """Distillation loss: mean ``1 - cos(embedding, reference embedding)`` over the batch. ``output`` is
        the model's output (mean-pooled here under the attention mask) or already pooled ``[batch, dim]``."""
        if TARGET_KEY not in batch:
            raise TorchSlimError("a sentence-embedding training batch needs reference embeddings under 'target'")
        if isinstance(output, torch.Tensor) and output.dim() == 2:
            pooled = output.float()
        else:
            hidden = hidden_of(output)
            pooled = mean_pool(hidden.float(), batch["attention_mask"].to(hidden.device))
        emb = F.normalize(pooled, dim=-1)
        target = batch[TARGET_KEY].to(emb.device, emb.dtype)
        return (1.0 - (emb * F.normalize(target, dim=-1)).sum(-1)).mean()
