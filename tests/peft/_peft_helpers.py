"""Helpers the PEFT tests share (imported as ``_peft_helpers``: conftest puts this folder on the path)."""
from __future__ import annotations

import torch
from torch import nn


def outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits, or an encoder's last hidden state, without gradients."""
    with torch.no_grad():
        out = model(**inputs)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}
