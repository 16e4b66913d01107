"""KV-cache quantization for Hugging Face causal LMs: past keys/values stored as int8 (or int4) + scales.

One scale per (token, head) vector of ``head_dim`` values: symmetric ``s = absmax / qmax``, or
asymmetric ``s = (max - min) / (2**bits - 1)`` with an integer zero point (range widened to include 0).
Scales are stored in ``scale_dtype`` (float16 by default) rounded UP, so every element's error stays
within half a stored step. int4 packs two values per byte. ``residual_length`` keeps the most recent
tokens in float (KIVI-style), spilling older ones into the quantized store.

A forward call quantizes only what it *stores*: its own tokens attend to their exact keys/values and to
the dequantized past, so a forward without past (perplexity, training) gives bit-identical logits.

Installation (transformers 5.23 cannot register a custom ``cache_implementation``): ``model.generate``
is shadowed on the instance by a bound method passing ``past_key_values=QuantizedKVCache(...)`` (a public
``generate`` argument) unless the caller passed a cache, a ``cache_implementation`` or ``use_cache=False``;
a forward pre-hook does the same for ``model(..., use_cache=True)`` calls without ``past_key_values``.
Both survive ``copy.deepcopy``; :func:`remove_kv_cache` undoes them. Attention still reads a transient
float copy of one layer's past at a time (no fused int8 attention kernel).
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.modules import drop_setting, model_settings, record_setting
from torchslim.core.registry import register_handler

_SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class KVCacheConfig(BaseConfig):
    """Store past keys/values as ``bits``-bit integers with one scale per (token, head) vector."""

    family = "quantization"
    technique = "kv-int8"
    bits: int = 8
    symmetric: bool = True
    residual_length: int = between(0, 0, 1 << 20)
    scale_dtype: torch.dtype = torch.float16

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"KVCacheConfig.bits must be 8 or 4, got {self.bits}")
        if self.residual_length < 0:
            raise ConfigError(f"KVCacheConfig.residual_length must be >= 0, got {self.residual_length}")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ConfigError(f"KVCacheConfig.scale_dtype must be float16, bfloat16 or float32, got {self.scale_dtype}")


# -- pure math: tensors in, tensors out ------------------------------------------------------
class QuantizedVectors(NamedTuple):
    """Quantized ``[..., seq, head_dim]`` vectors: codes (int8, or uint8 when asymmetric / packed
    int4), ``scale`` and optional integer ``zero`` (uint8), both ``[..., seq, 1]``."""

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedVectors:
        return QuantizedVectors(fn(self.data), fn(self.scale), None if self.zero is None else fn(self.zero))

    @staticmethod
    def cat(a: QuantizedVectors | None, b: QuantizedVectors) -> QuantizedVectors:
        if a is None:
            return b
        zero = None if a.zero is None else torch.cat([a.zero, b.zero], dim=-2)
        return QuantizedVectors(torch.cat([a.data, b.data], dim=-2), torch.cat([a.scale, b.scale], dim=-2), zero)


def _ceil_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (float32, >= 0) stored as ``dtype``, never smaller than ``x``: inflating by one relative ulp
    before round-to-nearest guarantees it for normal numbers (subnormal scales are avoided by the clamp)."""
    info = torch.finfo(dtype)
    if dtype == torch.float32:
        return x.clamp_min(info.tiny)
    return (x.clamp(info.smallest_normal, info.max / (1 + info.eps)) * (1 + info.eps)).to(dtype)


def quantize_vectors(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
                     scale_dtype: torch.dtype = torch.float16) -> QuantizedVectors:
    """Quantize each vector along the last dim; ``|x - dequantize(q)| <= scale / 2`` elementwise."""
    if bits == 4 and x.shape[-1] % 2:
        raise TorchSlimError(f"int4 KV-cache quantization needs an even head_dim, got {x.shape[-1]}")
    xf = x.detach().float()
    zero = None
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = _ceil_to(xf.abs().amax(-1, keepdim=True) / qmax, scale_dtype)
        q = torch.round(xf / scale.float()).clamp_(-qmax, qmax)
        q = q.to(torch.int8) if bits == 8 else (q + 8).to(torch.uint8)   # int4: offset binary
    else:
        levels = 2**bits - 1
        lo, hi = xf.amin(-1, keepdim=True).clamp(max=0), xf.amax(-1, keepdim=True).clamp(min=0)
        scale = _ceil_to((hi - lo) / levels, scale_dtype)
        zp = torch.round(-lo / scale.float()).clamp_(0, levels)
        q = (torch.round(xf / scale.float()) + zp).clamp_(0, levels).to(torch.uint8)
        zero = zp.to(torch.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return QuantizedVectors(q, scale, zero)


def dequantize_vectors(q: QuantizedVectors, bits: int = 8, dtype: torch.dtype = torch.float32,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`quantize_vectors`, in ``dtype`` (or written into ``out``)."""
    data = q.data
    if bits == 4:
        data = torch.stack([data & 15, data >> 4], dim=-1).flatten(-2)
    if q.zero is not None or bits == 4:
        data = data.float() - (q.zero.float() if q.zero is not None else 8.0)
    if out is not None:
        return torch.mul(data, q.scale.float(), out=out)
    return (data * q.scale.float()).to(dtype)   # int8 * float32 promotes to float32


# -- the cache -------------------------------------------------------------------------------
class QuantizedKVLayer(DynamicLayer):
    """One layer's cache: quantized past (``qkeys`` / ``qvalues``) + a float residual of recent tokens
    (``keys`` / ``values``, at most ``residual_length`` tokens between updates)."""

    def __init__(self, config: KVCacheConfig) -> None:
        super().__init__()
        self.config = config
        self.qkeys: QuantizedVectors | None = None
        self.qvalues: QuantizedVectors | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty((*key_states.shape[:-2], 0, key_states.shape[-1]))
        self.values = value_states.new_empty((*value_states.shape[:-2], 0, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Return past (dequantized) + residual + the new states (exact); then store the new states."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = self._read(self.qkeys, self.keys, key_states)
        values = self._read(self.qvalues, self.values, value_states)
        self.qkeys, self.keys = self._store(self.qkeys, self.keys, key_states)
        self.qvalues, self.values = self._store(self.qvalues, self.values, value_states)
        return keys, values

    def _read(self, q: QuantizedVectors | None, residual: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        n_q, n_r = (0 if q is None else q.scale.shape[-2]), residual.shape[-2]
        if n_q + n_r == 0:
            return new
        out = new.new_empty((*new.shape[:-2], n_q + n_r + new.shape[-2], new.shape[-1]))
        if q is not None:
            dequantize_vectors(q, self.config.bits, out=out[..., :n_q, :])
        out[..., n_q : n_q + n_r, :] = residual
        out[..., n_q + n_r :, :] = new
        return out

    def _store(self, q: QuantizedVectors | None, residual: torch.Tensor,
               new: torch.Tensor) -> tuple[QuantizedVectors | None, torch.Tensor]:
        c = self.config
        res = torch.cat([residual, new.detach()], dim=-2) if residual.shape[-2] else new.detach()
        spill = res.shape[-2] - c.residual_length
        if spill <= 0:
            return q, res if residual.shape[-2] else res.clone()   # never keep a view of the model's tensor
        q = QuantizedVectors.cat(q, quantize_vectors(res[..., :spill, :], c.bits, c.symmetric, c.scale_dtype))
        return q, res[..., spill:, :].clone()   # clone: do not pin the whole of ``res``

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return (0 if self.qkeys is None else self.qkeys.scale.shape[-2]) + self.keys.shape[-2]

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor this layer keeps between calls (for byte accounting)."""
        quantized = [t for q in (self.qkeys, self.qvalues) if q is not None for t in q]
        return [t for t in (self.keys, self.values, *quantized) if t is not None]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.is_initialized:
            self.keys, self.values = fn(self.keys), fn(self.values)
            self.qkeys, self.qvalues = (None if q is None else q.map(fn) for q in (self.qkeys, self.qvalues))

    def reset(self) -> None:
        super().reset()
        self.qkeys = self.qvalues = None

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop expects a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        keep = max(self.get_seq_length() + tokens_to_remove, 0)
        n_q = 0 if self.qkeys is None else self.qkeys.scale.shape[-2]
        n_res = max(keep - n_q, 0)
        self.keys, self.values = self.keys[..., :n_res, :].clone(), self.values[..., :n_res, :].clone()
        if keep < n_q:
            self.qkeys, self.qvalues = (q.map(lambda t: t[..., :keep, :]) for q in (self.qkeys, self.qvalues))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def offload(self) -> None:  # the base class would move only the float residual
        raise TorchSlimError("QuantizedKVCache does not support offloading")


class QuantizedKVCache(Cache):
    """A :class:`~transformers.Cache` of :class:`QuantizedKVLayer` (one per decoder layer of ``model_config``;
    created lazily when no model config is given)."""

    def __init__(self, config: KVCacheConfig, model_config: Any = None) -> None:
        if model_config is None:
            super().__init__(layer_class_to_replicate=partial(QuantizedKVLayer, config))  # type: ignore[arg-type]
        else:
            n = check_full_attention(model_config)
            super().__init__(layers=[QuantizedKVLayer(config) for _ in range(n)])
        self.kv_config = config


def check_full_attention(model_config: Any) -> int:
    """Number of decoder layers; one-line error unless every layer is plain full attention."""
    text = model_config.get_text_config(decoder=True)
    if getattr(text, "is_encoder_decoder", False):
        raise TorchSlimError("KV-cache quantization supports decoder-only models, not encoder-decoders")
    types_, _ = get_layer_types_and_kwargs(text)
    other = sorted(set(types_) - {"full_attention"})
    if other:
        raise TorchSlimError(f"KV-cache quantization supports full-attention layers only; this model has {other[0]}")
    return len(types_)


def cache_nbytes(cache: Cache) -> int:
    """Bytes of the storage kept by ``cache`` (unique storages; works for DynamicCache too)."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        tensors = layer.stored_tensors() if isinstance(layer, QuantizedKVLayer) else [layer.keys, layer.values]
        for t in tensors:
            if t is not None and t.numel():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


# -- installing it on a model ----------------------------------------------------------------
def kv_cache_config(model: nn.Module) -> KVCacheConfig | None:
    """The :class:`KVCacheConfig` applied to ``model`` (a recorded model-level setting), or ``None``."""
    return next((c for c in model_settings(model) if isinstance(c, KVCacheConfig)), None)


def _generate(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``generate`` with a :class:`QuantizedKVCache` unless the caller chose a cache or no cache."""
    cfg = kv_cache_config(self)
    gen = kwargs.get("generation_config") or self.generation_config
    default_cache = (kwargs.get("past_key_values") is None
                     and kwargs.get("cache_implementation", gen.cache_implementation) is None
                     and kwargs.get("use_cache", gen.use_cache) is not False)
    if cfg is not None and default_cache:
        kwargs["past_key_values"] = QuantizedKVCache(cfg, self.config)
    return type(self).generate(self, *args, **kwargs)


def _inject_cache(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: a :class:`QuantizedKVCache` where the model would create a DynamicCache."""
    cfg = kv_cache_config(module)
    if cfg is None or kwargs.get("past_key_values") is not None or len(args) > 1:
        return None   # a cache given, or positional arguments past input_ids: leave the call alone
    use_cache = kwargs.get("use_cache")
    if not (use_cache if use_cache is not None else getattr(module.config, "use_cache", False)):
        return None
    return args, {**kwargs, "past_key_values": QuantizedKVCache(cfg, module.config)}


def apply_kv_cache(model: nn.Module, config: KVCacheConfig) -> nn.Module:
    """Make ``model`` (an HF causal LM) store its KV cache quantized by default; idempotent, re-appliable."""
    if not isinstance(config, KVCacheConfig):
        raise ConfigError(f"apply_kv_cache expects a KVCacheConfig, got {type(config).__name__}")
    if getattr(model, "config", None) is None or not callable(getattr(type(model), "generate", None)):
        raise TorchSlimError(f"KVCacheConfig applies to Hugging Face causal LMs with generate(); got {type(model).__name__}")
    check_full_attention(model.config)
    record_setting(model, config)   # saved in the artifact manifest, re-applied on load
    model.__dict__["generate"] = types.MethodType(_generate, model)
    if not any(h is _inject_cache for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_inject_cache, with_kwargs=True)
    return model


def remove_kv_cache(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_kv_cache`: back to the model's default (float) cache."""
    drop_setting(model, KVCacheConfig)
    if isinstance(model.__dict__.get("generate"), types.MethodType) and model.__dict__["generate"].__func__ is _generate:
        del model.__dict__["generate"]
    for key in [k for k, h in model._forward_pre_hooks.items() if h is _inject_cache]:
        del model._forward_pre_hooks[key]
        model._forward_pre_hooks_with_kwargs.pop(key, None)
    return model


@register_handler(KVCacheConfig, modifies="settings")
def _kv_cache(model: nn.Module, config: KVCacheConfig, ctx: ApplyContext) -> nn.Module:
    return apply_kv_cache(model, config)

