"""A whole-model fast path for decoder LMs (gpt-fast style): a static KV cache allocated once, activations in
one dtype end to end (bf16 by default: the float layers' weights are cast once, packed layers take bf16
inputs natively, so no layer casts per call), the decode step optionally compiled with ``torch.compile``,
and a plain greedy loop with no ``generate`` machinery per token.

``FastDecoder(model).generate(ids, n)`` returns the same greedy tokens as ``model.generate(ids,
do_sample=False)`` on a model in the same dtype; :func:`prepare_fast` casts a model to the path's dtype.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

log = logging.getLogger("torchslim")
FLOAT_MODULES = (nn.Linear, nn.Embedding, nn.LayerNorm)   # exact types: a switched GemvLinear is already cast


def _is_norm(m: nn.Module) -> bool:
    return type(m).__name__.endswith(("RMSNorm", "LayerNorm"))


def prepare_fast(model: nn.Module, dtype: torch.dtype = torch.bfloat16, fuse: bool = True,
                 int8_units: bool = True, int4_units: bool = True, bf16_gemv: bool = True) -> int:
    """Cast the weights of float layers (linear, embedding, norms) to ``dtype`` once; packed layers keep their
    storage and compute in ``dtype`` from their input. With ``fuse``, q/k/v and gate/up also run as one matmul
    each (float or packed alike: :func:`torchslim.runtime.fuse.fuse_shared_inputs`), where the architecture
    table knows the model. With ``int8_units``, int8 weight-only layers whose shape measures faster on the int8
    units with split activations use that kernel at decode (:func:`torchslim.runtime.int8_units.use_int8_units`;
    as exact as the bf16 kernel). With ``int4_units``, int4 layers whose shape measures faster with the fused
    int4 x int8 kernel use it at decode (:func:`torchslim.runtime.int8_units.use_int4_units`; activations in
    two int8 parts per block of 32, about 15 bits). With ``bf16_gemv`` (and ``dtype`` bf16), float linear layers
    whose shape measures faster on torchslim's bf16 GEMV at one row use it at decode
    (:func:`torchslim.runtime.bf16_gemv.use_bf16_gemv`). Returns how many layers were cast."""
    n = 0
    for m in model.modules():
        if type(m) in FLOAT_MODULES or _is_norm(m):
            m.to(dtype)
            n += 1
        elif hasattr(m, "out_dtype"):         # a packed embedding: its rows come out in the path's dtype
            m.out_dtype = dtype
            n += 1
    if hasattr(model, "config"):
        model.config.dtype = dtype
    if fuse:
        from torchslim.core.archs import arch_of
        from torchslim.runtime.fuse import fuse_shared_inputs

        if arch_of(model) is not None:
            log.info("fast path: %s", fuse_shared_inputs(model).summary())
    from torchslim.runtime.bf16_gemv import use_bf16_gemv
    from torchslim.runtime.int8_units import use_int4_units, use_int8_units

    gemv = bf16_gemv and dtype is torch.bfloat16
    for on, use in ((int8_units, use_int8_units), (int4_units, use_int4_units), (gemv, use_bf16_gemv)):
        report = use(model) if on else None
        if report is not None and (report.switched or report.kept):
            log.info("fast path: %s", report.summary())
    return n


@dataclass
class DecodeTiming:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        return max(self.new_tokens - 1, 1) / max(self.decode_s, 1e-9)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / max(self.prefill_s, 1e-9)


class FastDecoder:
    """Greedy decoding of one sequence with a KV cache.

    ``static``: a cache of ``max_len`` positions allocated once (shapes never change, which ``compile`` needs;
    in eager mode attention then spans all ``max_len`` positions, so the growing cache is the eager default).
    ``compile``: ``torch.compile`` the one-token step on a static cache (the first calls compile, which takes
    minutes on a CPU; worth it only for long generations, on machines where it measured faster).
    """

    def __init__(self, model: nn.Module, max_len: int = 1024, compile: bool = False, static: bool | None = None) -> None:
        if not callable(getattr(model, "generate", None)) or not hasattr(model, "config"):
            raise TorchSlimError(f"{type(model).__name__} is not a generating language model")
        self.model = model.eval()
        self.max_len = max_len
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.device = next(model.parameters()).device
        self.static = compile if static is None else static
        if compile and not self.static:
            raise TorchSlimError("a compiled decode step needs the static cache")
        if compile:      # one token's grouped-query attention without repeating the cache (see runtime.gqa)
            from torchslim.runtime.gqa import use_packed_gqa

            if use_packed_gqa(model):
                log.info("fast path: grouped-query attention of one token runs on the key/value heads")
        self._step = torch.compile(self._forward, dynamic=False) if compile else self._forward
        self._static_cache: Any = None
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def warm_up(self, steps: int = 3) -> float:
        """Run the prefill and ``steps`` decode steps once on a throwaway cache, so that compilation (and first-call
        allocation) is paid here and not inside a timed generation; returns the seconds it took."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
            cache = self._cache()
            tok = self._forward(ids, torch.arange(2, device=self.device), cache).argmax(-1, keepdim=True)
            for i in range(min(steps, self.max_len - 2)):
                tok = self._step(tok, torch.tensor([2 + i], device=self.device), cache).argmax(-1, keepdim=True)
        return time.perf_counter() - t0

    def _cache(self) -> Any:
        from transformers import DynamicCache, StaticCache

        if self.static:        # one cache, reset per generation: a compiled step's guards hold it (no recompile)
            if self._static_cache is None:
                self._static_cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
            else:
                self._static_cache.reset()
            return self._static_cache
        return DynamicCache(config=self.model.config)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        # only the last position's logits: a prompt's other rows through the vocabulary-sized head are wasted work
        # (on SmolLM2 the head is a third of a 128-token prefill's weight bytes, dequantized per call when packed)
        last = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(input_ids=ids, cache_position=pos, past_key_values=cache, use_cache=True, **last)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None) -> tuple[torch.Tensor, DecodeTiming]:
        """``input_ids`` ``[1, T]`` followed by up to ``max_new_tokens`` greedy tokens, and the timing."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise TorchSlimError(f"the fast path decodes one sequence at a time; got input shape {tuple(input_ids.shape)}")
        t = input_ids.shape[1]
        if t + max_new_tokens > self.max_len:
            raise TorchSlimError(f"{t} prompt + {max_new_tokens} new tokens exceed the cache of {self.max_len}")
        cache = self._cache()
        ids = input_ids.to(self.device)
        t0 = time.perf_counter()
        logits = self._forward(ids, torch.arange(t, device=self.device), cache)
        tok = logits.argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        out = [tok]
        for i in range(max_new_tokens - 1):
            if eos_token_id is not None and int(tok) == eos_token_id:
                break
            logits = self._step(tok, torch.tensor([t + i], device=self.device), cache)
            tok = logits.argmax(-1, keepdim=True)
            out.append(tok)
        t2 = time.perf_counter()
        new = torch.cat(out, dim=1)
        return torch.cat([ids, new], dim=1), DecodeTiming(t, new.shape[1], t1 - t0, t2 - t1)
