"""The prompt-tuning and prefix-tuning branches.

* :class:`PromptBranch` (Lester et al. 2021): ``n_virtual`` learned input embeddings ``[n_virtual, hidden]``
  placed before the text's embeddings (the call's ``input_ids`` become ``inputs_embeds``).
* :class:`PrefixBranch` (Li & Liang 2021): learned keys and values for ``n_virtual`` positions in every
  attention layer, given to the model as a ``transformers`` ``DynamicCache`` built on every call from the
  learned tensor ``[n_virtual, layers * 2 * kv_heads * head_dim]`` (peft's layout: for layer ``i``, entry
  ``2i`` is the keys and ``2i + 1`` the values), or from a smaller embedding through an MLP
  (``Linear -> tanh -> Linear``, the paper's reparametrisation, peft's ``prefix_projection``).

Neither changes a weight of the base, so neither can be merged (:func:`torchslim.peft.merge_` refuses).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.peft.prompt.virtual import VirtualBranch, cache_length


class PromptBranch(VirtualBranch):
    method = "prompt"

    def __init__(self, n_virtual: int, hidden_size: int, adapter: str = "default", enabled: bool = True) -> None:
        super().__init__(n_virtual, adapter, enabled)
        self.hidden_size = int(hidden_size)
        self.embedding = nn.Parameter(torch.zeros(n_virtual, self.hidden_size))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hidden_size": self.hidden_size}

    def edit_call(self, model: nn.Module, kwargs: dict[str, Any], batch: int, length: int) -> bool:
        if cache_length(kwargs.get("past_key_values")) > 0:      # decoding on: the cache holds the prompt
            self.extend_mask(kwargs, batch, length, make=False)
            self.shift_positions(kwargs, prepend=False)
            return False
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = model.get_input_embeddings()(kwargs["input_ids"])
        if embeds.shape[-1] != self.hidden_size:
            raise ConfigError(f"prompt adapter '{self.adapter}' has {self.hidden_size}-wide embeddings; the model's "
                              f"are {embeds.shape[-1]} wide")
        prompt = self.embedding.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        kwargs["input_ids"] = None
        self.extend_mask(kwargs, batch, length, make=False)
        self.shift_positions(kwargs, prepend=True)
        self.extend_per_token(kwargs, batch, length)
        return False

    def extra_repr(self) -> str:
        return f"prompt n_virtual={self.n_virtual} hidden={self.hidden_size}, " + super().extra_repr()


class PrefixBranch(VirtualBranch):
    method = "prefix"

    def __init__(self, n_virtual: int, num_layers: int, kv_heads: int, head_dim: int, projection: int | None = None,
                 adapter: str = "default", enabled: bool = True) -> None:
        super().__init__(n_virtual, adapter, enabled)
        self.num_layers, self.kv_heads, self.head_dim = int(num_layers), int(kv_heads), int(head_dim)
        self.projection = None if projection is None else int(projection)
        kv_dim = self.kv_heads * self.head_dim
        width = self.num_layers * 2 * kv_dim
        if self.projection is None:
            self.prefix = nn.Parameter(torch.empty(n_virtual, width))
            nn.init.normal_(self.prefix)                 # as peft's nn.Embedding
            self.mlp = None
        else:
            self.prefix = nn.Parameter(torch.empty(n_virtual, kv_dim))
            nn.init.normal_(self.prefix)
            self.mlp = nn.Sequential(nn.Linear(kv_dim, self.projection), nn.Tanh(), nn.Linear(self.projection, width))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_layers": self.num_layers, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "projection": self.projection}

    def key_values(self, dtype: torch.dtype) -> torch.Tensor:
        """``[2 * layers, kv_heads, n_virtual, head_dim]``: keys of layer ``i`` at ``2i``, values at ``2i + 1``."""
        flat = self.prefix if self.mlp is None else self.mlp(self.prefix)
        kv = flat.view(self.n_virtual, 2 * self.num_layers, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)
        return kv.to(dtype)

    def edit_call(self, model: nn.Module, kwargs: dict[str, Any], batch: int, length: int) -> bool:
        past = kwargs.get("past_key_values")
        first = cache_length(past) == 0              # else decoding on: the cache holds the prefix
        if first:
            kwargs["past_key_values"] = self.filled_cache(model, past, batch)
        self.extend_mask(kwargs, batch, length, make=first)
        self.shift_positions(kwargs, prepend=False)
        use_cache = kwargs.get("use_cache")
        use_cache = getattr(model.config, "use_cache", False) if use_cache is None else use_cache
        return past is None and not use_cache

    def filled_cache(self, model: nn.Module, past: Any, batch: int) -> Any:
        """``past`` (an empty DynamicCache, or a new one) holding the prefix of every layer."""
        from transformers.cache_utils import DynamicCache

        if past is None:
            past = DynamicCache(config=model.config)
        if type(past) is not DynamicCache:
            raise ConfigError(f"prefix tuning fills a DynamicCache; the call brought a {type(past).__name__} "
                              "(generate with the default cache)")
        kv = self.key_values(model.get_input_embeddings().weight.dtype)
        for i in range(self.num_layers):
            k, v = (kv[2 * i + j].unsqueeze(0).expand(batch, -1, -1, -1) for j in (0, 1))
            past.update(k, v, i)
        return past

    def extra_repr(self) -> str:
        proj = f", projection={self.projection}" if self.projection is not None else ""
        return (f"prefix n_virtual={self.n_virtual} layers={self.num_layers} kv_heads={self.kv_heads} "
                f"head_dim={self.head_dim}{proj}, " + super().extra_repr())


register_kind(ModuleKind(
    "PromptBranch", PromptBranch, lambda m: m.describe(),
    lambda d: PromptBranch(d["n_virtual"], d["hidden_size"], adapter=d["adapter"], enabled=d["enabled"])))
register_kind(ModuleKind(
    "PrefixBranch", PrefixBranch, lambda m: m.describe(),
    lambda d: PrefixBranch(d["n_virtual"], d["num_layers"], d["kv_heads"], d["head_dim"], d["projection"],
                           adapter=d["adapter"], enabled=d["enabled"])))
