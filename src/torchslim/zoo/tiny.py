"""Tiny randomly initialised text models for unit tests (``test_only`` zoo entries).

They are built from configs in milliseconds, deterministically (``seed``), and come with real
Hugging Face tokenizers that need no files: byte-level (one token per UTF-8 byte, vocab 256 +
special tokens), built with the ``tokenizers`` library. So the real tasks run on them unchanged,
and ``save_pretrained`` of model + tokenizer gives a folder that :func:`load_hf_folder` reads back.

* ``tiny-llama``: ``LlamaForCausalLM``, hidden 64, 2 layers, 4 heads / 2 kv heads (grouped-query
  attention), MLP 128, tied embeddings, with a :class:`CausalLMTask` (seq_len 128).
* ``tiny-bert``: ``BertModel``, hidden 64, 2 layers, 4 heads, MLP 128, with a
  :class:`SentenceEmbeddingTask` whose reference is the same model rebuilt from the same seed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.zoo.registry import LoadedModel, ZooEntry, register_zoo

LLAMA_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True,
}
BERT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 512,
}
TINY_LM_SEQ_LEN = 128
EOS = "<|endoftext|>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in character for each byte value 0..255, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_tokenizer(specials: tuple[str, ...], bert: bool = False) -> Any:
    """An HF fast tokenizer: ids ``0..len(specials)-1`` are ``specials``, then one id per byte value.

    With ``bert=True`` single sentences are wrapped as ``[CLS] ... [SEP]`` and padding uses ``[PAD]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({ch: len(specials) + b for b, ch in enumerate(_bytes_to_unicode())})
    unk = "[UNK]" if bert else None
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if bert:
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=512,
        )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=4096)


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def build_tiny_llama(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Only the tiny ``LlamaForCausalLM`` (float32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{"vocab_size": 257, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
                            **LLAMA_DEFAULTS, **overrides})
    return _seeded(seed, lambda: LlamaForCausalLM(config))


def build_tiny_bert(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Only the tiny ``BertModel`` (float32, eval mode, no pooler)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(**{"vocab_size": 256 + len(BERT_SPECIALS), "pad_token_id": 0, **BERT_DEFAULTS, **overrides})
    return _seeded(seed, lambda: BertModel(config, add_pooling_layer=False))


def tiny_llama(seed: int = 0, **overrides: Any) -> LoadedModel:
    """Tiny random ``LlamaForCausalLM`` (GQA 4/2 heads) + byte tokenizer + :class:`CausalLMTask` (seq_len 128)."""
    tokenizer = byte_tokenizer((EOS,))
    model = build_tiny_llama(seed, **overrides)
    return LoadedModel(
        name="tiny-llama",
        model=model,
        task=CausalLMTask(tokenizer, seq_len=TINY_LM_SEQ_LEN),
        source={"kind": "zoo", "name": "tiny-llama", "kwargs": {"seed": seed, **overrides}},
        tokenizer=tokenizer,
    )


def tiny_bert(seed: int = 0, **overrides: Any) -> LoadedModel:
    """Tiny random ``BertModel`` + byte tokenizer + :class:`SentenceEmbeddingTask` (reference = same seed)."""
    tokenizer = byte_tokenizer(BERT_SPECIALS, bert=True)
    model = build_tiny_bert(seed, **overrides)
    task = SentenceEmbeddingTask(tokenizer, lambda: build_tiny_bert(seed, **overrides), max_length=256)
    return LoadedModel(
        name="tiny-bert",
        model=model,
        task=task,
        source={"kind": "zoo", "name": "tiny-bert", "kwargs": {"seed": seed, **overrides}},
        tokenizer=tokenizer,
    )


register_zoo(ZooEntry("tiny-llama", "tiny random Llama (GQA, 2 layers) for tests", "causal-lm", tiny_llama, test_only=True))
register_zoo(ZooEntry("tiny-bert", "tiny random BERT encoder for tests", "sentence-embedding", tiny_bert, test_only=True))
