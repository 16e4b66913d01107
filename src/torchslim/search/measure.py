"""How far a changed model's outputs move from the original's: pure math on output tensors."""
from __future__ import annotations

from typing import Any

import torch


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a model's forward result is judged by: ``logits``, else ``last_hidden_state``, else the tensor
    itself or the first element of a tuple."""
    for attr in ("logits", "last_hidden_state"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, dict):
        for key in ("logits", "last_hidden_state"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(f"cannot find an output tensor in a {type(out).__name__}")


# KL in float64 for outputs up to this many values per batch: a near-lossless change on a small model moves a
# float32 KL by less than its rounding; a large vocabulary's logits (4 x 512 x 49k) take 3-4x longer in float64,
# and their costs are far above float32's rounding.
FLOAT64_UP_TO = 1 << 22


def reference(out: torch.Tensor, kind: str) -> torch.Tensor:
    """What is kept of the original's output: the float32 output itself (compared as log-probabilities for
    ``kl``, in float64 where it is small: :data:`FLOAT64_UP_TO`)."""
    return out.detach().float().clone()


def divergence(ref: torch.Tensor, out: torch.Tensor, kind: str) -> tuple[float, int]:
    """``(sum, count)`` of the per-position divergence of ``out`` from ``ref``: the KL divergence
    ``KL(p_ref || p_out)`` (nats) of each position's distribution over the last dimension for ``kl``; the squared
    error relative to the reference's mean square for ``mse`` (summed over positions, counted per position)."""
    if kind == "kl":
        total, count = 0.0, 0
        dtype = torch.float64 if ref.numel() <= FLOAT64_UP_TO else torch.float32
        for r, o in zip(ref.reshape(-1, ref.shape[-1]).split(256), out.detach().reshape(-1, ref.shape[-1]).split(256)):
            lr, lo = torch.log_softmax(r.to(dtype), -1), torch.log_softmax(o.to(dtype), -1)
            per = (lr.exp() * (lr - lo)).sum(-1)
            total, count = total + float(per.sum()), count + per.numel()
        return total, count
    if kind == "mse":
        rows = ref.double().reshape(-1, ref.shape[-1]) if ref.dim() > 1 else ref.double().reshape(1, -1)
        err = (out.detach().double().reshape(rows.shape) - rows).pow(2).sum(-1) \
            / rows.pow(2).mean(-1).clamp_min(1e-12) / rows.shape[-1]
        return float(err.sum()), err.numel()
    raise ValueError(f"unknown divergence {kind!r}")
