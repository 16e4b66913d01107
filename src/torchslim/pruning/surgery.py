"""Structured surgery on ordinary modules: keep some rows/columns of a linear layer (representation)."""
from __future__ import annotations

import torch
from torch import nn

from torchslim.core import kinds
from torchslim.core.resize import record_resized
from torchslim.core.surgery import get_module, replace_module


def slice_linear_(model: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Shrink linear ``name`` of ``model`` in place to the ``keep`` output rows (``dim=0``) or input
    columns (``dim=1``), and record the new shape for artifacts."""
    lin = get_module(model, name)
    if type(lin) is not nn.Linear:
        raise TypeError(f"structured pruning slices nn.Linear layers; '{name}' is a {type(lin).__name__} "
                        "(prune before quantizing)")
    replace_module(model, name, kinds.slice_module(lin, {"out" if dim == 0 else "in": keep}))
    record_resized(model, name)


def unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads of ``width`` rows): unit ``u`` -> ``u*width ... u*width+width-1``."""
    return (units.reshape(-1, 1) * width + torch.arange(width).reshape(1, -1)).reshape(-1)
