"""W8A8 layers' float view: what export and model code read as ``weight``."""
from __future__ import annotations

import torch
from torch import nn

from torchslim.quantization import Int8DynamicLinear


def test_dense_weight_of_a_smoothed_layer_is_what_it_computes() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    smooth = torch.rand(32) + 0.5
    q = Int8DynamicLinear.from_linear(lin, None, smooth)
    x = torch.randn(4, 32)
    torch.testing.assert_close(q(x), x @ q.dense_weight().T + q.bias, rtol=0.05, atol=0.05)
    torch.testing.assert_close(q.dense_weight(), lin.weight, rtol=0, atol=float(q.weight_scale.max() * smooth.max()))
