"""Entries of the distillation teacher cache (``teacher_cache``): top-k teacher logits of one batch in one
safetensors file, read back only after the checks a manifest gets (no link, bounded size, exact names,
dtypes and shapes, finite values, indices inside the vocabulary) and written atomically."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchslim.core.errors import first_line

log = logging.getLogger("torchslim")
_HEADER_SLACK = 1 << 16        # bytes of safetensors header an entry may hold beside its two tensors


def read_entry(path: Path, shape: tuple[int, ...], vocab: int) -> dict[str, torch.Tensor] | None:
    """The entry at ``path`` if it is one this cache wrote for a batch of ``shape`` (``[..., k]``); ``None``
    when missing or (with a warning line) when it fails a check."""
    from safetensors.torch import load_file

    if not path.exists() and not path.is_symlink():
        return None
    numel = 1
    for d in shape:
        numel *= d
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("not a regular file")
        if path.stat().st_size > 8 * numel + _HEADER_SLACK:
            raise ValueError(f"{path.stat().st_size} bytes, more than its {numel} top-k entries need")
        got = load_file(str(path))
        values, indices = got.get("values"), got.get("indices")
        if set(got) != {"values", "indices"} or values.dtype != torch.float32 or indices.dtype != torch.int32:
            raise ValueError("not a float32 'values' and int32 'indices' pair")
        if tuple(values.shape) != tuple(shape) or tuple(indices.shape) != tuple(shape):
            raise ValueError(f"shape {tuple(values.shape)}, this batch needs {tuple(shape)}")
        if values.numel() and float(values.max()) > 1e-4:
            raise ValueError("values are not log-probabilities (some exceed 0)")
        if not bool(torch.isfinite(values).all()) or (indices.numel() and not (0 <= int(indices.min())
                                                                               and int(indices.max()) < vocab)):
            raise ValueError("non-finite logits or token indices outside the vocabulary")
    except Exception as e:  # noqa: BLE001 - any damage is a miss, never a traceback
        log.warning("teacher cache entry %s is damaged (%s); recomputing it", path, first_line(e))
        return None
    return {"values": values, "indices": indices}


def write_entry(path: Path, values: torch.Tensor, indices: torch.Tensor) -> None:
    """Write an entry atomically (a temporary sibling renamed over ``path``, which replaces a link rather
    than writing through it)."""
    from safetensors.torch import save_file

    from torchslim.core.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({"values": values.float().cpu().contiguous(), "indices": indices.int().cpu().contiguous()}, str(tmp))
