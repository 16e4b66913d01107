"""The encoder fast path: what made W8A8 MiniLM run at its int8 speed on a 2-core CPU, in one call.

Measured at 32 x 128 tokens (``benchmarks/speed/minilm.py``), W8A8 was slower than its own kernels
promise for three reasons, each fixed here or in the layer itself:

* freed activation memory went back to the OS after every forward, so each call paid page faults on
  tens of megabytes (:func:`torchslim.runtime.allocator.retain_freed_memory`);
* q, k and v quantized the same activation three times and ran three thin matmuls (fused into one by
  :func:`torchslim.runtime.fuse.fuse_shared_inputs`);
* per-token scaling cost three extra passes over activations (now one reduction and one ``addcmul``, in
  ``Int8DynamicLinear``).

``compile=True`` adds ``torch.compile`` (inductor): W8A8 layers then run as per-row int8 quantization,
``torch._int_mm`` and a fused epilogue, and LayerNorm/GELU/residual adds fuse with their neighbours. It costs
about 20 s the first time a shape family is seen, so it is opt-in; the returned ``report.model`` is the
module to call.

Attention already runs in PyTorch's fused scaled-dot-product kernel (HF's default ``sdpa``; a hand-written
matmul-softmax-matmul measured no faster), and LayerNorm is one kernel; models loaded with ``eager``
attention are switched to ``sdpa``. Works on float and W8A8 models alike, so a baseline can take the same
path and comparisons stay fair.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.runtime.allocator import retain_freed_memory
from torchslim.runtime.fuse import FuseReport, fuse_shared_inputs

log = logging.getLogger("torchslim")


@dataclass
class FastPathReport:
    fuse: FuseReport = field(default_factory=FuseReport)
    memory_retained: bool = False
    attention: str | None = None
    compiled: bool = False
    model: nn.Module | None = None          # what to call: the model itself, or its compiled wrapper

    def summary(self) -> str:
        parts = [self.fuse.summary(),
                 "freed memory kept for reuse" if self.memory_retained else "default allocator"]
        if self.attention:
            parts.append(f"attention: {self.attention}")
        if self.compiled:
            parts.append("torch.compile (inductor)")
        return "; ".join(parts)


def _use_sdpa(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl == "eager" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
            return "sdpa (was eager)"
        except (ValueError, ImportError) as e:      # the family has no sdpa path: keep eager, say so
            log.warning("fast path: attention stays eager (%s)", str(e).splitlines()[0][:120])
            return "eager"
    return impl


def prepare_fast_encoder(model: nn.Module, *, fuse: bool = True, retain_memory: bool = True,
                         compile: bool = False) -> FastPathReport:
    """Put ``model`` (float or compressed) on the encoder fast path in place; returns what changed, and in
    ``report.model`` the module to call (``model``, or with ``compile`` its compiled wrapper).

    Outputs are unchanged up to float rounding (fused matmuls sum in another order; compiled W8A8 layers
    round activations on a symmetric grid). Raises :class:`~torchslim.core.errors.TorchSlimError` for an
    architecture without a table row."""
    report = FastPathReport(model=model.eval())
    if fuse:
        report.fuse = fuse_shared_inputs(model)
    report.attention = _use_sdpa(model)
    if retain_memory:
        report.memory_retained = retain_freed_memory()
    if compile:
        t = time.perf_counter()
        # dynamic from the start: one graph for every batch and length (specializing on the first shape and
        # recompiling per new one hits dynamo's recompile limit on real traffic and silently falls back to eager)
        report.model = torch.compile(model, dynamic=True)
        report.compiled = True
        log.debug("torch.compile wrapper built in %.1f s (kernels compile on the first calls)", time.perf_counter() - t)
    log.info("encoder fast path: %s", report.summary())
    return report
