"""The split-activation int8 kernel: int8 weights x activations split into two int8 passes, as exact as the bf16
kernel it replaces (or better), in eager mode, compiled without a graph break, and on 7-bit (AVX2) codes."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.quantization import IntFormat, PerChannel, PerGroup
from torchslim.quantization import split_int8


def _int8_model(in_f: int = 64, out_f: int = 300) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(in_f, out_f), nn.Linear(out_f, 1000, bias=False))
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    return m


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("half", [128, 64])
@pytest.mark.parametrize("rows", [1, 3])
def test_split_kernel_is_at_least_as_exact_as_the_bf16_kernel(monkeypatch, half, rows) -> None:
    monkeypatch.setattr(split_int8, "half_range", lambda: half)     # 64: the 7-bit codes used without AVX512
    layer = _int8_model()[0]
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(1))
    x[:, 5] = 40.0                       # an outlier channel: one int8 pass would lose the small ones
    exact = x.double() @ layer.dequantize().double().T + layer.bias.double()
    with torch.inference_mode():
        bf16 = layer(x)
        layer.use_split_int8()
        split = layer(x)
    assert _rel_err(split, exact) < 1e-3 and _rel_err(split, exact) < _rel_err(bf16, exact)
    r = x.abs().amax(-1, keepdim=True)      # one int8 pass, for scale: at least 10x worse than the split here
    one_pass = torch.round(x / r * 127) / 127 * r
    assert _rel_err(one_pass.double() @ layer.dequantize().double().T + layer.bias.double(), exact) \
        > 10 * _rel_err(split, exact)


def test_split_kernel_runs_only_at_few_rows_and_keeps_the_dtype() -> None:
    m = _int8_model()
    for layer in m:
        layer.use_split_int8()
    x = torch.randn(split_int8.MAX_ROWS + 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = m(x)
        few = m(x[:2])
    assert y.dtype == few.dtype == torch.bfloat16 and y.shape == (5, 1000)
    # beyond MAX_ROWS the layer runs its usual kernel: its rows agree with the split kernel's to bf16 precision
    assert torch.allclose(y[:2].float(), few.float(), rtol=0.05, atol=0.05)


def test_split_kernel_compiles_without_a_graph_break_and_survives_copies() -> None:
    import torch._dynamo

    m = _int8_model()
    for layer in m:
        layer.use_split_int8()
    x = torch.randn(1, 64)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.inference_mode():
        eager = m(x)
        compiled = torch.compile(m)(x)
        copied = copy.deepcopy(m)(x)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch.equal(compiled, eager) and torch.equal(copied, eager)


def test_moving_a_layer_drops_the_packed_copy_and_other_layers_are_refused() -> None:
    layer = _int8_model()[0]
    layer.use_split_int8()
    assert layer._split is not None
    layer.float()
    assert layer._split is None
    torch.manual_seed(0)
    int4 = nn.Sequential(nn.Linear(64, 32))
    torchslim.quantize_(int4, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    assert not int4[0].can_split_int8()
    with pytest.raises(ValueError, match="int8 per-channel"):
        int4[0].use_split_int8()


def test_a_copy_owns_its_packed_weight_and_switching_off_frees_it() -> None:
    import gc

    m = _int8_model()
    m[0].use_split_int8()
    x = torch.randn(1, 64)
    with torch.inference_mode():
        want = m(x)
    twin = copy.deepcopy(m)
    assert twin[0]._split is not None and twin[0]._split != m[0]._split
    handle = m[0]._split
    del m
    gc.collect()
    assert handle not in split_int8._PACKED                    # released with its layer
    with torch.inference_mode():
        assert torch.equal(twin(x), want)                     # the copy's own packed weight outlived the original
    own = twin[0]._split
    twin[0].use_split_int8(False)
    assert own not in split_int8._PACKED and twin[0]._split is None
