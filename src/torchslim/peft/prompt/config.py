"""Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021) as training techniques.

``torchslim.finetune_(model, PromptTuningConfig(n_virtual=20), task=task, train=TrainConfig(...))`` adds one
branch at the model's root (``model.torchslim_prompt_default``; prefix tuning: ``torchslim_prefix_default``),
freezes the base and trains the branch. Both work on Hugging Face decoder LMs (Llama-like, with grouped-query
attention) and encoders (BERT-like); encoder-decoder models are refused. Trainable-parameter counts equal
peft's for the same settings (prompt: ``n_virtual * hidden``; prefix without projection:
``n_virtual * layers * 2 * kv_heads * head_dim``; with ``projection=p``, peft's ``encoder_hidden_size=p``).
Neither can be merged into the base.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from torchslim.core.config import between
from torchslim.core.errors import ConfigError
from torchslim.core.resize import add_module
from torchslim.core.surgery import model_device
from torchslim.peft.config import AdapterConfig
from torchslim.peft.prompt.branch import PrefixBranch, PromptBranch
from torchslim.peft.prompt.virtual import VirtualBranch, hf_config

PROMPT_INITS = ("random", "vocab")


@dataclass
class VirtualTokenConfig(AdapterConfig):
    """Base of the two methods: ``n_virtual`` learned positions before the text, one branch at the root."""

    n_virtual: int = between(20, 1, 1 << 14)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.merge:
            raise ConfigError(f"{name} changes the model's inputs, not its weights, and cannot be merged: "
                              "use merge=False")
        if self.selector is not None:
            raise ConfigError(f"{name} adapts the whole model, not chosen layers: leave selector unset")

    def branch_for(self, model: nn.Module, config: Any) -> VirtualBranch:
        raise NotImplementedError

    def add_branches(self, model: nn.Module) -> list[str]:
        config = hf_config(model, type(self).__name__)
        active = [b for b in model.children() if isinstance(b, VirtualBranch) and b.active]
        if active:
            raise ConfigError(f"the model has an active {active[0].method} adapter '{active[0].adapter}': switch it "
                              "off (torchslim.peft.set_adapter) before adding another prompt or prefix adapter")
        name = f"torchslim_{self.method}_{self.adapter}"
        add_module(model, name, self.branch_for(model, config).to(model_device(model)))
        return [name]


@dataclass
class PromptTuningConfig(VirtualTokenConfig):
    """``n_virtual`` learned input embeddings before the text. ``init``: ``"random"`` (normal, with the
    standard deviation of the model's embedding table; peft's random init is N(0, 1) whatever the table's
    scale) or ``"vocab"`` (copies of the embeddings of ``n_virtual`` tokens drawn uniformly from the
    vocabulary, as peft's ``SAMPLE_VOCAB``; Lester et al. found vocabulary initialisation trains better)."""

    technique: ClassVar[str] = "prompt_tuning"
    method: ClassVar[str] = "prompt"
    init: str = "random"

    def validate(self) -> None:
        super().validate()
        if self.init not in PROMPT_INITS:
            raise ConfigError(f"PromptTuningConfig.init must be one of {', '.join(PROMPT_INITS)}, got {self.init!r}")

    @torch.no_grad()
    def branch_for(self, model: nn.Module, config: Any) -> VirtualBranch:
        table = model.get_input_embeddings().weight
        branch = PromptBranch(self.n_virtual, table.shape[1], adapter=self.adapter)
        if self.init == "vocab":
            ids = torch.randint(0, table.shape[0], (self.n_virtual,))
            branch.embedding.copy_(table[ids.to(table.device)].float())
        else:
            branch.embedding.normal_(0.0, float(table.float().std()))
        return branch


@dataclass
class PrefixTuningConfig(VirtualTokenConfig):
    """Learned keys and values of ``n_virtual`` positions in every attention layer. ``projection``: None
    learns them directly; an int learns ``n_virtual`` embeddings of width ``kv_heads * head_dim`` mapped to
    them by an MLP with that hidden size (the paper's reparametrisation, peft's ``prefix_projection``)."""

    technique: ClassVar[str] = "prefix_tuning"
    method: ClassVar[str] = "prefix"
    projection: int | None = None

    def validate(self) -> None:
        super().validate()
        p = self.projection
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 1 << 16):
            raise ConfigError(f"PrefixTuningConfig.projection must be None or an integer in 1..65536, got {p!r}")

    def branch_for(self, model: nn.Module, config: Any) -> VirtualBranch:
        layers, kv_heads, head_dim = attention_geometry(config)
        return PrefixBranch(self.n_virtual, layers, kv_heads, head_dim, self.projection, adapter=self.adapter)


def attention_geometry(config: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a uniform attention stack, from a Hugging Face config."""
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ConfigError(f"prefix tuning gives every layer the same prefix; this model mixes attention kinds "
                          f"({', '.join(sorted(kinds))})")
    try:
        layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    except AttributeError as e:
        raise ConfigError(f"prefix tuning reads layers, heads and hidden size from the model's config: {e}") from None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return int(layers), int(kv_heads), int(head_dim)
