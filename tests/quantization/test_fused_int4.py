"""The fused int4 x int8 kernel: its packing, its arithmetic on every instruction set, and layers using it."""
from __future__ import annotations

import copy

import pytest
import torch

import torchslim
from torchslim import WeightOnlyConfig
from torchslim.quantization import IntFormat, PerGroup
from torchslim.quantization import fused_int4 as F4
from torchslim.quantization.qlinear import QuantLinear

pytestmark = pytest.mark.skipif(not F4.available(), reason="no C++ compiler here: the fused int4 kernel is not built")


def _weights(n: int, k: int, group: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    offset = torch.randn(n, k // group, generator=g) * 0.01
    w = (u.float().reshape(n, -1, group) * scale.unsqueeze(-1) + offset.unsqueeze(-1)).reshape(n, k)
    return u, scale, offset, w


def test_packing_pairs_blocks_and_keeps_a_last_odd_block_on_its_own() -> None:
    """Per pair of blocks, byte j holds input j (low nibble) and input j + 32 (high); an unpaired last block
    holds input j and j + 16."""
    codes = torch.randint(0, 16, (2, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = F4.pack(codes)
    assert packed.shape == (2, 48)
    assert torch.equal(packed[:, :32] & 0x0F, codes[:, :32]) and torch.equal(packed[:, :32] >> 4, codes[:, 32:64])
    assert torch.equal(packed[:, 32:] & 0x0F, codes[:, 64:80]) and torch.equal(packed[:, 32:] >> 4, codes[:, 80:])


@pytest.mark.parametrize("rows", [1, 3, 8, 19])
@pytest.mark.parametrize("k, group", [(256, 64), (160, 32), (384, 128)])
def test_every_instruction_set_computes_the_same_integer_products(rows, k, group) -> None:
    """Activations that are integers of at most 127 with 127 in every block quantize exactly (scale 1): then
    every path equals the float product up to summation order, whatever the CPU. Groups of two blocks and of
    four (the 512-bit path's pairs), and of one block in a row of five (pairs across groups, a last odd block)."""
    n = 70                                          # 70 rows: 17 blocks of four and two rows left over
    u, scale, offset, w = _weights(n, k, group)
    x = torch.randint(-127, 128, (rows, k)).float()
    x[:, ::32] = 127.0
    ops = F4.prepare(u, scale, offset, None)
    want = x.double() @ w.double().T
    for level in (0, 1, 2, 3):                      # a level above this CPU's runs the best it has
        got = F4.matmul(x, ops, level).double()
        assert got.shape == (rows, n)
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5, level


def test_general_activations_keep_about_15_bits() -> None:
    u, scale, offset, w = _weights(64, 512, 128, seed=1)
    x = torch.randn(2, 512)
    got, want = F4.matmul(x, F4.prepare(u, scale, offset, None)), x @ w.T
    err = ((got - want).norm() / want.norm()).item()
    assert 0 < err < 2e-4                          # the hi and lo codes keep about 15 bits of each input


def test_signed_codes_shift_into_the_offset() -> None:
    q = torch.randint(-8, 8, (32, 128), dtype=torch.int8)
    scale = torch.rand(32, 4) * 0.1 + 0.01
    w = (q.float().reshape(32, 4, 32) * scale.unsqueeze(-1)).reshape(32, 128)
    x = torch.randint(-127, 128, (1, 128)).float()
    x[:, ::32] = 127.0
    got = F4.matmul(x, F4.prepare(q, scale, None, -8))
    assert torch.allclose(got, x @ w.T, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("symmetric, in_features, out_features", [(False, 200, 70), (True, 256, 64)])
def test_a_layer_on_the_fused_kernel_matches_its_other_kernel(symmetric, in_features, out_features) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=symmetric), granularity=PerGroup(32)))
    layer = model[0]
    assert isinstance(layer, QuantLinear) and layer.can_fuse_int4()
    x = torch.randn(1, in_features)
    with torch.inference_mode():
        before = layer(x)
        layer.use_fused_int4(True)
        after = layer(x)
        many = layer(torch.randn(64, in_features))          # above fused_rows: the other kernel
    assert ((after - before).norm() / before.norm()).item() < 2e-2
    assert many.shape == (64, out_features)
    copied = copy.deepcopy(layer)
    assert copied._fused is not None and torch.equal(copied(x), after)
    layer.to(torch.float32)                                 # moving drops derived kernel operands
    assert layer._fused is None
    layer.use_fused_int4(True)
    layer.use_fused_int4(False)
    assert layer._fused is None


def test_the_runtime_switches_int4_layers_only_where_measured_faster() -> None:
    from torchslim.runtime.int8_units import use_int4_units

    lm = torchslim.load_model("tiny-llama")
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    every = use_int4_units(lm.model, min_gain=0.0, reps=3)
    n = len(every.switched)
    assert n > 0 and not every.kept and f"{n} of {n} int4 layers" in every.summary()
    none = use_int4_units(lm.model, min_gain=1e9, reps=3)
    assert not none.switched and all(m._fused is None for m in lm.model.modules() if isinstance(m, QuantLinear))


def test_the_switch_turns_the_kernel_off(monkeypatch) -> None:
    monkeypatch.setenv("TORCHSLIM_CPP_KERNELS", "0")
    assert not F4.available()


@pytest.mark.slow
def test_a_compiled_graph_calls_the_kernel_without_a_break() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64))
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    model[0].use_fused_int4(True)
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)       # fullgraph: a graph break would raise
    assert compiled.dtype == torch.bfloat16 and torch.allclose(compiled.float(), eager.float(), atol=1e-2)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits, in_features, out_features, group",
                         [(4, 200, 70, 32), (4, 576, 96, 128), (4, 100, 5, 64), (8, 77, 9, None), (8, 200, 70, 32)])
def test_one_pass_bf16_dequantization_is_bit_for_bit_the_tensor_ops(symmetric, bits, in_features, out_features,
                                                                     group) -> None:
    from torchslim.quantization import PerChannel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    gran = PerGroup(group) if group else PerChannel()
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(bits, symmetric=symmetric), granularity=gran))
    layer = model[0]
    if not F4.dequantizes(layer.padded_in, layer.scale.shape[1], bits):
        pytest.skip("no 512-bit path on this CPU: the layer keeps the tensor-op dequantization")
    assert layer._one_pass_bf16()
    fast = layer.dequantize(torch.bfloat16)
    layer._one_pass_bf16 = lambda: False          # the tensor-op path, on the same layer
    assert torch.equal(fast, layer.dequantize(torch.bfloat16))
    assert fast.shape == (out_features, in_features)


def test_trained_scales_keep_the_differentiable_dequantization() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(128, 32))
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    layer = model[0]
    layer.scale.requires_grad_(True)
    assert not layer._one_pass_bf16()
    layer.dequantize(torch.bfloat16).float().sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0
