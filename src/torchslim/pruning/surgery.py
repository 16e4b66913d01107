"""Structured surgery on ordinary modules: keep some rows/columns of a linear layer (representation)."""
from __future__ import annotations

import torch
from torch import nn

from torchslim.core.resize import record_resized
from torchslim.core.surgery import get_module, replace_module


def sliced_linear(lin: nn.Linear, dim: int, keep: torch.Tensor) -> nn.Linear:
    """A new ``nn.Linear`` with only the ``keep`` output rows (``dim=0``) or input columns (``dim=1``)."""
    keep = keep.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, keep)
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach().index_select(0, keep))
    new.train(lin.training)
    return new


def slice_linear_(model: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Shrink linear ``name`` of ``model`` in place (and record the new shape for artifacts)."""
    lin = get_module(model, name)
    if type(lin) is not nn.Linear:
        raise TypeError(f"structured pruning slices nn.Linear layers; '{name}' is a {type(lin).__name__} "
                        "(prune before quantizing)")
    replace_module(model, name, sliced_linear(lin, dim, keep))
    record_resized(model, name)


def unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads of ``width`` rows): unit ``u`` -> ``u*width ... u*width+width-1``."""
    return (units.reshape(-1, 1) * width + torch.arange(width).reshape(1, -1)).reshape(-1)
