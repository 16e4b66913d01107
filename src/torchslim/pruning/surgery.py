"""Structured surgery on ordinary modules: keep some rows/columns of a linear layer (representation)."""
from __future__ import annotations

import torch
from torch import nn

from torchslim.core import kinds
from torchslim.core.resize import record_resized
from torchslim.core.errors import TorchSlimError
from torchslim.core.linear import canonical_linear_, is_conv1d, is_linear_like
from torchslim.core.surgery import get_module, replace_module


def slice_linear_(model: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Shrink linear-like ``name`` of ``model`` in place to the ``keep`` output units (``dim=0``) or input
    units (``dim=1``), keeping its kind (a Conv1D stays a Conv1D), and record the new shape for artifacts."""
    lin = get_module(model, name)
    if not is_linear_like(lin):
        raise TorchSlimError(f"structured pruning slices linear layers; '{name}' is a {type(lin).__name__} "
                             "(prune before quantizing)")
    if type(lin) is not nn.Linear and not is_conv1d(lin):
        lin = canonical_linear_(model, name)          # a subclass with nn.Linear's math (FalconLinear)
    replace_module(model, name, kinds.slice_module(lin, {"out" if dim == 0 else "in": keep}))
    record_resized(model, name)


def unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads of ``width`` rows): unit ``u`` -> ``u*width ... u*width+width-1``."""
    return (units.reshape(-1, 1) * width + torch.arange(width).reshape(1, -1)).reshape(-1)
