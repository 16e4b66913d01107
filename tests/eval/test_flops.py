from __future__ import annotations

import pytest
from torch import nn

from torchslim.eval.flops import count_flops, measure_flops

from .conftest import TinyClassification, TinyClassifier


def test_linear_flops_are_2_b_in_out() -> None:
    import torch

    total, _ = count_flops(nn.Linear(64, 32), torch.randn(8, 64))
    assert total == 2 * 8 * 64 * 32


def test_conv_flops() -> None:
    import torch

    total, _ = count_flops(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.randn(2, 3, 8, 8))
    assert total == 2 * 2 * 8 * 8 * 8 * 3 * 3 * 3


def test_measure_flops_through_task() -> None:
    task, model = TinyClassification(), TinyClassifier()
    res = measure_flops(model, task, task.example_inputs(8), 8, None)
    assert res.flops == 2 * 8 * (64 * 32 + 32 * 4)
    assert res.macs == res.flops // 2
    assert res.by_module["TinyClassifier.fc1"] == 2 * 8 * 64 * 32
    assert "MACs = FLOPs / 2" in res.note


def test_counter_failure_is_reported_not_raised() -> None:
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("custom kernel\nwith details")

    res = measure_flops(Broken(), TinyClassification(), {"x": None}, 1, None)
    assert res.flops is None and res.macs is None
    assert res.note == "FLOP counting failed: RuntimeError: custom kernel"


def test_packed_int8_matmul_is_counted_like_a_linear() -> None:
    import torch

    class Int8WeightOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.randint(-127, 127, (32, 64), dtype=torch.int8))
            self.register_buffer("s", torch.ones(32, dtype=torch.bfloat16))

        def forward(self, x):
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.s)

    total, _ = count_flops(Int8WeightOnly(), torch.randn(8, 64))
    assert total == 2 * 8 * 64 * 32


def test_real_quantlinear_flops_match_float() -> None:
    import torch

    wo = pytest.importorskip("torchslim.quantization.weight_only")
    from torchslim.api import quantize_

    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    x = torch.randn(8, 256)
    before, _ = count_flops(model, x)
    quantize_(model, wo.WeightOnlyConfig())
    assert count_flops(model, x)[0] == before == 2 * 8 * (256 * 128 + 128 * 64)


def test_int4_packed_layers_count_their_float_matmul_not_the_kernel_padding() -> None:
    """64-wide inputs run as one 128-wide group and 40 outputs as 48 in the int4 kernel: FLOPs stay the float ones."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from torchslim.api import quantize_
    from torchslim.eval.flops import _custom_mapping
    from torchslim.quantization import IntFormat, PerGroup, WeightOnlyConfig

    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 64))
    x = torch.randn(4, 64)
    before, by_module_before = count_flops(model, x)
    quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128)))
    assert model[0].choice.kernel.value == "int4pack_mm" and model[0].padded_in == 128
    raw = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with raw, torch.inference_mode():
        model(x)
    assert raw.get_total_flops() > before                       # what the kernel multiplies, zeros included
    after, by_module_after = count_flops(model, x)
    assert after == before == 2 * 4 * (64 * 40 + 40 * 64)      # ratio int4 / float: 1.00x
    assert by_module_after == by_module_before
