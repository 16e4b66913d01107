"""Tiny random models of every architecture family torchslim has a table row for (hidden size 64, two
blocks), with example inputs: the support matrix (tests/zoo/test_families.py, docs/architectures.md)
runs every technique on them.

``build_family(name)`` returns a :class:`TinyFamily`: the model (eval mode, seeded), how to call it,
and calibration batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

VOCAB, HIDDEN, FFN, HEADS, KV, LAYERS = 256, 64, 128, 4, 2, 2


@dataclass
class TinyFamily:
    name: str
    model: nn.Module
    kind: str                                  # "causal-lm" | "encoder" | "seq2seq" | "vision"
    make_inputs: Callable[[int, int], dict[str, Any]]

    def batches(self, n: int = 4, batch: int = 2, seq: int = 16) -> list[dict[str, Any]]:
        g = torch.Generator().manual_seed(1)
        return [self.make_inputs(batch, seq, g) for _ in range(n)]

    def output(self, inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            out = self.model(**inputs)
        for key in ("logits", "last_hidden_state"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        return out[0]


def _ids(batch: int, seq: int, g: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def _lm(b: int, s: int, g: torch.Generator | None = None) -> dict[str, Any]:
    return {"input_ids": _ids(b, s, g)}


def _enc(b: int, s: int, g: torch.Generator | None = None) -> dict[str, Any]:
    return {"input_ids": _ids(b, s, g), "attention_mask": torch.ones(b, s, dtype=torch.long)}


def _s2s(b: int, s: int, g: torch.Generator | None = None) -> dict[str, Any]:
    return {"input_ids": _ids(b, s, g), "decoder_input_ids": _ids(b, max(2, s // 2), g)}


def _vision(b: int, s: int, g: torch.Generator | None = None) -> dict[str, Any]:
    return {"pixel_values": torch.randn(b, 3, 32, 32, generator=g)}


_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
               eos_token_id=2)


def _specs() -> dict[str, tuple[str, str, dict[str, Any], str]]:
    """family -> (config class, model class, config kwargs, kind)."""
    gqa = {**_COMMON, "num_key_value_heads": KV}
    return {
        "llama": ("LlamaConfig", "LlamaForCausalLM", gqa, "causal-lm"),
        "mistral": ("MistralConfig", "MistralForCausalLM", gqa, "causal-lm"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", gqa, "causal-lm"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**gqa, "head_dim": 16}, "causal-lm"),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {**gqa, "head_dim": 16}, "causal-lm"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**gqa, "head_dim": 16}, "causal-lm"),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**gqa, "head_dim": 16}, "causal-lm"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", gqa, "causal-lm"),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                                       n_positions=128, n_inner=FFN, bos_token_id=1, eos_token_id=2),
                 "causal-lm"),
        "opt": ("OPTConfig", "OPTForCausalLM", {**_COMMON, "ffn_dim": FFN, "word_embed_proj_dim": HIDDEN},
                "causal-lm"),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _COMMON, "causal-lm"),
        "falcon": ("FalconConfig", "FalconForCausalLM", {**_COMMON, "ffn_hidden_size": FFN}, "causal-lm"),
        "bert": ("BertConfig", "BertModel", _COMMON, "encoder"),
        "roberta": ("RobertaConfig", "RobertaModel", {**_COMMON, "max_position_embeddings": 130}, "encoder"),
        "distilbert": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=VOCAB, dim=HIDDEN, hidden_dim=FFN,
                                                                   n_layers=LAYERS, n_heads=HEADS, pad_token_id=0),
                       "encoder"),
        "t5": ("T5Config", "T5ForConditionalGeneration", dict(vocab_size=VOCAB, d_model=HIDDEN, d_ff=FFN, d_kv=16,
                                                              num_layers=LAYERS, num_heads=HEADS, pad_token_id=0,
                                                              eos_token_id=2, decoder_start_token_id=0), "seq2seq"),
        "bart": ("BartConfig", "BartForConditionalGeneration", dict(
            vocab_size=VOCAB, d_model=HIDDEN, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, encoder_layers=LAYERS,
            decoder_layers=LAYERS, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
            max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=2, forced_eos_token_id=2), "seq2seq"),
        "vit": ("ViTConfig", "ViTForImageClassification", dict(hidden_size=HIDDEN, intermediate_size=FFN,
                                                               num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                               image_size=32, patch_size=8, num_labels=10), "vision"),
    }


FAMILIES = tuple(_specs())
_INPUTS = {"causal-lm": _lm, "encoder": _enc, "seq2seq": _s2s, "vision": _vision}


def build_family(name: str, seed: int = 0, **overrides: Any) -> TinyFamily:
    """A tiny random model of family ``name`` (see :data:`FAMILIES`), eval mode; ``overrides`` change its config."""
    import transformers

    cfg_cls, model_cls, kwargs, kind = _specs()[name]
    config = getattr(transformers, cfg_cls)(**{**kwargs, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(config).eval()
    return TinyFamily(name, model, kind, _INPUTS[kind])


def family_task(fam: TinyFamily) -> Any:
    """A task over a tiny family's random inputs, for training techniques (QAT, distillation) in the support matrix."""
    from torchslim.tasks.base import Task

    class FamilyTask(Task):
        """Random batches of the family's inputs, with padding where the model takes a mask (an encoder-decoder's
        decoder gets labels, -100 at padded positions, and no mask of its own: its positions are not the encoder's).
        The loss: next-token (causal LMs), the decoder's token loss (encoder-decoders), cross-entropy to random
        classes (vision), the mean square of the hidden states (encoders without a head: a stand-in objective)."""

        name = f"tiny-{fam.name}"

        def evaluate(self, model: nn.Module) -> dict[str, float]:
            with torch.no_grad():
                return {"score": -float(self.loss(model, self.calibration_batches(1, 2)[0]))}

        def example_inputs(self, batch: int, seq_len: int | None = None) -> dict[str, Any]:
            return self._batch(batch, seq_len or 16, None)

        def calibration_batches(self, n_samples: int = 128, batch_size: int = 1) -> list[dict[str, Any]]:
            g = torch.Generator().manual_seed(1)
            return [self._batch(batch_size, 16, g) for _ in range(max(1, n_samples // batch_size))]

        def train_batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
            g = torch.Generator().manual_seed(seed * 1000 + rank + 2)
            while True:
                yield self._batch(batch_size, 16, g)

        def _batch(self, b: int, s: int, g: torch.Generator | None) -> dict[str, Any]:
            inputs = fam.make_inputs(b, s, g)
            if fam.kind == "seq2seq":
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
                inputs["attention_mask"][-1, -3:] = 0
                labels = inputs["decoder_input_ids"].clone()
                labels[-1, -2:] = -100
                inputs["labels"] = labels
            elif fam.kind == "encoder":
                inputs["attention_mask"][-1, -3:] = 0
            elif fam.kind == "vision":
                inputs["labels"] = torch.randint(0, 10, (b,), generator=g)
            return inputs

        def forward(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
            return model(**{k: v for k, v in inputs.items() if k != "labels" or fam.kind == "seq2seq"})

        def loss_from_output(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
            import torch.nn.functional as F

            if fam.kind == "encoder":
                return output.last_hidden_state.float().pow(2).mean()
            logits = output.logits.float()
            if fam.kind == "vision":
                return F.cross_entropy(logits, batch["labels"])
            if fam.kind == "seq2seq":
                return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())

    return FamilyTask()
