"""Size figures: artifact bytes on disk, parameter counts, bits per weight, in-memory bytes.

Definitions (all derived from real tensors, never from dtype names):

* **weight tensors** are the ``state_dict`` tensors with two or more dimensions (linear/conv
  weights, embedding tables) -- the tensors compression targets. Biases and norm vectors are
  excluded. A module that stores its weight packed (e.g. int4 nibbles in a ``uint8`` buffer plus
  scales) declares it through ``torchslim_layer_info()`` returning, among others,
  ``"weight_elements"`` (the logical number of weights; if absent, the product of its ``"shape"``,
  e.g. ``[out, in]``) and optionally ``"weight_tensors"`` (names
  of its own state-dict entries making up the packed weight: data, scales, zero points; default:
  all of its own entries except ``bias``) and ``"weight_nonzero"``.
* **weight bytes** is the sum of ``nbytes`` of those tensors, so packing and quantization
  metadata count by their real storage. **bits per weight** = 8 * weight bytes / weight elements.
* **parameters** is the logical parameter count: every ``nn.Parameter`` element, with a packed
  weight counted as its ``weight_elements`` instead of its storage elements.
* Tensors shared between names (tied embeddings) are counted once.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from torchslim.eval.report import SizeResult


@dataclass
class _Packed:
    elements: int
    nonzero: int | None
    tensors: set[str]  # leaf names of the module's own state-dict entries
    module: nn.Module | None = None

    def count_nonzero(self) -> int:
        """The declared non-zero count; else the non-zero entries of the weight the module computes with (its
        ``dequantize()``: an int4 code that rounds to zero is a zero weight, as an exact zero of a float model
        is); else every element."""
        if self.nonzero is not None:
            return self.nonzero
        dequantize = getattr(self.module, "dequantize", None)
        if self.elements and callable(dequantize):
            with torch.no_grad():
                return int(torch.count_nonzero(dequantize()).item())
        return self.elements


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return (id(t),)
    if ptr == 0:
        return (id(t),)
    return (t.device.type, ptr, t.storage_offset(), tuple(t.shape), t.dtype)


def _packed_modules(model: nn.Module) -> dict[str, _Packed]:
    """Modules that declare a packed weight via ``torchslim_layer_info()["weight_elements"]``. A module whose
    packed tensors all alias another's (a tied embedding reading the output head's codes) counts 0 elements:
    one stored weight is one set of parameters, as a tied float embedding is."""
    out: dict[str, _Packed] = {}
    seen: set[tuple] = set()
    alive: list[dict] = []      # a state_dict may build its tensors (a sparse layer's values): freed, their
    for name, module in model.named_modules():   # addresses are reused, and a later layer would read as an alias
        info_fn = getattr(module, "torchslim_layer_info", None)
        if not callable(info_fn):
            continue
        info = info_fn() or {}
        elements = _logical_elements(info)
        if elements is None:
            continue
        tensors = module.state_dict(keep_vars=True)
        alive.append(tensors)
        own = {k for k in tensors if "." not in k}
        names = set(info.get("weight_tensors") or (own - {"bias"}))
        nz = info.get("weight_nonzero")
        keys = {_storage_key(tensors[n]) for n in names if isinstance(tensors.get(n), torch.Tensor)}
        if keys and keys <= seen:
            elements, nz = 0, 0
        seen |= keys
        out[name] = _Packed(elements, None if nz is None else int(nz), names, module)
    return out


def _logical_elements(info: dict[str, Any]) -> int | None:
    """Declared logical weight count: ``weight_elements``, else the product of ``shape``."""
    if "weight_elements" in info:
        return int(info["weight_elements"])
    shape = info.get("shape")
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    return None


def _split(key: str) -> tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf


def weight_storage(model: nn.Module) -> tuple[int, int]:
    """``(weight_bytes, weight_elements)`` as defined in the module docstring."""
    packed = _packed_modules(model)
    seen: set[tuple] = set()
    nbytes = 0
    elements = sum(p.elements for p in packed.values())
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor):
            continue
        prefix, leaf = _split(key)
        is_packed = prefix in packed and leaf in packed[prefix].tensors
        if not is_packed and t.dim() < 2:
            continue
        sk = _storage_key(t)
        if sk in seen:
            continue
        seen.add(sk)
        nbytes += t.nbytes
        if not is_packed:
            elements += t.numel()
    return nbytes, elements


def count_parameters(model: nn.Module, nonzero: bool = True) -> tuple[int, int | None]:
    """``(parameters, nonzero_parameters)``: logical counts, packed weights counted unpacked (their non-zero
    count is that of the weight they compute with). ``nonzero=False`` skips that count (None)."""
    packed = _packed_modules(model)
    total = sum(p.elements for p in packed.values())
    nz = sum(p.count_nonzero() for p in packed.values()) if nonzero else 0
    for key, p in model.named_parameters():  # named_parameters() already skips tied duplicates
        prefix, leaf = _split(key)
        if prefix in packed and leaf in packed[prefix].tensors:
            continue
        total += p.numel()
        if nonzero and p.numel():
            with torch.no_grad():
                nz += int(torch.count_nonzero(p.detach()).item())
    return total, nz if nonzero else None


def memory_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (persistent or not) as held in memory."""
    seen: set[tuple] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        sk = _storage_key(t)
        if sk not in seen:
            seen.add(sk)
            total += t.nbytes
    return total


Sizer = Callable[[nn.Module, "str | os.PathLike | None", "dict[str, Any] | None"], "tuple[int | None, str]"]


def measure_size(model: nn.Module, *, artifact_dir: str | os.PathLike | None = None,
                 source: dict[str, Any] | None = None, sizer: Sizer | None = None) -> SizeResult:
    """All size figures. Bytes on disk come from ``sizer(model, artifact_dir, source)`` (an artifact format's
    measurement: ``torchslim.artifact.size.artifact_size`` saves a temporary artifact, or measures the existing
    one at ``artifact_dir``); without a sizer they are not measured and the note says so."""
    if sizer is None:
        disk, note = None, "not measured: no artifact sizer given (torchslim.evaluate passes torchslim.artifact's)"
    else:
        disk, note = sizer(model, artifact_dir, source)
    params, nonzero = count_parameters(model)
    wbytes, welems = weight_storage(model)
    return SizeResult(
        artifact_bytes=disk, artifact_note=note, parameters=params, nonzero_parameters=nonzero,
        weight_elements=welems, weight_bytes=wbytes,
        bits_per_weight=(8.0 * wbytes / welems) if welems else None,
        memory_bytes=memory_bytes(model),
    )
