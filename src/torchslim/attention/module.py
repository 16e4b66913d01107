"""``EfficientAttention``: the added module that makes one attention module compute efficient attention.

How it plugs in: Hugging Face attention modules (transformers 5) compute ``q``, ``k``, ``v`` themselves and then
call the function that ``ALL_ATTENTION_FUNCTIONS`` holds under their ``config._attn_implementation``. This module
registers one function there, ``"torchslim_efficient"``, which runs the ``EfficientAttention`` child of the calling
module (falling back to PyTorch SDPA for a module without one). Attaching the child (``core.resize.add_module``
calls ``torchslim_attach``, on conversion and on load) gives its parent attention module a private copy of the
model config naming that function; detaching restores the shared config. Nothing else changes: the projections,
rotary embeddings, KV cache and the model's mask building are the model's own, and the whole model's config (saved
as ``config.json``) still says ``sdpa``/``eager``. The artifact records the child as an added module (its
geometry in the spec; Linformer's projections and Performer's random features in the weights), so
``torchslim.load`` rebuilds and re-attaches it.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from torchslim.attention import math as AM
from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind

IMPLEMENTATION = "torchslim_efficient"
CHILD = "efficient_attention"
_SHARED = "_torchslim_shared_config"
METHODS = ("sliding_window", "block_sparse", "linformer", "performer")


def key_keep_from_mask(mask: torch.Tensor | None, n_keys: int) -> torch.Tensor | None:
    """``[B, Lk]`` bool (True: a real key) from the mask a Hugging Face model passes its attention function (bool
    "may attend" or float additive, ``[B, 1, Lq, Lk]`` or ``[B, Lk]``), or ``None`` when every key is real. The last
    query row is read: it sees every real key both in padded encoders and in (left-)padded causal decoders."""
    if mask is None:
        return None
    row = mask[:, 0, -1, :n_keys] if mask.dim() == 4 else mask[:, :n_keys]
    keep = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    return None if bool(keep.all()) else keep


class EfficientAttention(nn.Module):
    """The efficient attention of one attention module (see the module docstring); ``attend`` is the math call."""

    def __init__(self, method: str, *, head_dim: int, window: int = 128, n_global: int = 0, block: int | None = None,
                 proj_len: int = 128, max_length: int = 512, features: int = 256, seed: int = 0,
                 init: bool = True) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"unknown efficient attention method {method!r}; known: {', '.join(METHODS)}")
        self.method, self.head_dim, self.window, self.n_global, self.block = method, head_dim, window, n_global, block
        self.proj_len, self.max_length, self.features, self.seed = proj_len, max_length, features, seed
        if method == "linformer":
            self.proj_k = nn.Parameter(torch.empty(proj_len, max_length))
            self.proj_v = nn.Parameter(torch.empty(proj_len, max_length))
        elif method == "performer":
            self.register_buffer("random_features", torch.empty(features, head_dim))
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linformer: segment-mean pooling projections (the identity when ``proj_len == max_length``); Performer:
        orthogonal random features drawn from ``seed``."""
        with torch.no_grad():
            if self.method == "linformer":
                e = AM.pooling_projection(self.proj_len, self.max_length)
                self.proj_k.copy_(e)
                self.proj_v.copy_(e)
            elif self.method == "performer":
                g = torch.Generator().manual_seed(self.seed)
                self.random_features.copy_(AM.orthogonal_features(self.features, self.head_dim, g))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "head_dim": self.head_dim, "window": self.window, "n_global": self.n_global,
                "block": self.block, "proj_len": self.proj_len, "max_length": self.max_length,
                "features": self.features, "seed": self.seed}

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_keep: torch.Tensor | None, *,
               scale: float | None, causal: bool) -> torch.Tensor:
        """``[B, H, Lq, D]`` attention output (``k``, ``v`` may have fewer heads: grouped-query attention)."""
        n_rep = q.shape[1] // k.shape[1]
        if self.method == "linformer":
            if causal:
                raise ConfigError("Linformer mixes every position into each projected key: it cannot be causal")
            out = AM.linformer_attention(q, AM.repeat_kv(k, n_rep), AM.repeat_kv(v, n_rep), self.proj_k,
                                         self.proj_v, scale=scale, key_keep=key_keep)
            return out
        k, v = AM.repeat_kv(k, n_rep), AM.repeat_kv(v, n_rep)
        if self.method == "performer":
            dtype = q.dtype
            out = AM.performer_attention(q.float(), k.float(), v.float(), self.random_features, scale=scale,
                                         causal=causal, key_keep=key_keep)
            return out.to(dtype)
        return AM.local_attention(q, k, v, window=self.window, n_global=self.n_global, causal=causal, scale=scale,
                                  key_keep=key_keep, block=self.block,
                                  layout="blocks" if self.method == "block_sparse" else "sliding")

    # -- the added-module protocol (core.resize.add_module) -------------------------------------------------
    def torchslim_attach(self, parent: nn.Module) -> None:
        shared = getattr(parent, "config", None)
        if shared is None or not hasattr(shared, "_attn_implementation"):
            raise ConfigError(f"{type(parent).__name__} has no Hugging Face config: its attention function cannot "
                              "be redirected")
        register_forward()
        if parent.__dict__.get(_SHARED) is None:
            parent.__dict__[_SHARED] = shared
            own = copy.copy(shared)
            own._attn_implementation_internal = IMPLEMENTATION   # not the setter: it would recurse into shared sub-configs
            parent.config = own

    def torchslim_detach(self, parent: nn.Module) -> None:
        shared = parent.__dict__.pop(_SHARED, None)
        if shared is not None:
            parent.config = shared

    def extra_repr(self) -> str:
        d = self.describe()
        keys = {"sliding_window": ("window", "n_global"), "block_sparse": ("window", "n_global"),
                "linformer": ("proj_len", "max_length"), "performer": ("features", "seed")}[self.method]
        return f"{self.method}, " + ", ".join(f"{k}={d[k]}" for k in keys)


def efficient_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The function registered as ``"torchslim_efficient"``: the calling module's :class:`EfficientAttention`, or
    SDPA for a module without one. Returns ``([B, Lq, H, D], None)`` as every attention function does."""
    eff = module._modules.get(CHILD)
    if not isinstance(eff, EfficientAttention):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", False)) if causal is None else bool(causal)
    keep = key_keep_from_mask(attention_mask, key.shape[-2])
    out = eff.attend(query, key, value, keep, scale=scaling, causal=causal)
    return out.transpose(1, 2).contiguous(), None


def register_forward() -> None:
    """Register :func:`efficient_attention_forward` with transformers' attention dispatch (done when the first
    :class:`EfficientAttention` is attached: importing the dispatch pulls in torch._dynamo, a second of start-up
    that every ``torchslim`` command paid when it ran at import)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, efficient_attention_forward)

register_kind(ModuleKind(
    "EfficientAttention", EfficientAttention, lambda m: m.describe(),
    lambda d: EfficientAttention(d["method"], head_dim=int(d["head_dim"]), window=int(d["window"]),
                                 n_global=int(d["n_global"]), block=None if d["block"] is None else int(d["block"]),
                                 proj_len=int(d["proj_len"]), max_length=int(d["max_length"]),
                                 features=int(d["features"]), seed=int(d["seed"]), init=False),
    why_not="an efficient attention has no channels to slice"))
