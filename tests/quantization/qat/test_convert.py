"""QAT layers <-> packed layers: starting from a post-training result computes exactly that result; converting a
trained QAT layer gives the packed layer whose outputs equal the fake-quantized ones up to the kernel's rounding."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.errors import ArtifactError
from torchslim.quantization import (Binary, Int8DynamicLinear, Int8StaticConv2d, Int8StaticLinear, IntFormat,
                                    PerChannel, PerGroup, QuantConv2d, QuantLinear, Ternary, WeightOnlyConfig)
from torchslim.quantization.qat import ActQuant, from_float, from_packed, to_packed
from torchslim.quantization.qat.config import QATConfig
from torchslim.quantization.weight_only import rtn_linear

G = torch.Generator().manual_seed(0)


def _perturb(qat: nn.Module) -> None:
    """Move the latent weights and the learned parameters as training would."""
    with torch.no_grad():
        for p in qat.parameters():
            p.add_(torch.randn(p.shape, generator=G) * p.detach().abs().mean() * 0.05)


def _lin(in_f: int = 96, out_f: int = 40) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(in_f, out_f)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    err = (a - b).abs().max().item()
    assert err <= rel * b.abs().max().item(), f"max error {err:.3g} vs scale {b.abs().max().item():.3g}"


@pytest.mark.parametrize("fmt,gran,rel", [
    (IntFormat(4, symmetric=False), PerGroup(32), 2e-2),   # int4 kernel (bf16 activations)
    (IntFormat(8), PerChannel(), 2e-2),                     # int8pack_mm kernel (bf16 scales)
    (IntFormat(2), PerGroup(32), 1e-5),                     # dequantize path: exact but float order
    (Ternary(), PerChannel(), 1e-5),
    (Binary(), PerGroup(32), 1e-5),
])
def test_weight_only_qat_converts_to_the_same_outputs(fmt, gran, rel) -> None:
    qat = from_float(_lin(), fmt, gran, None)
    _perturb(qat)
    x = torch.randn(5, 96, generator=G)
    packed = to_packed(qat, QATConfig(format=fmt, granularity=gran))
    assert isinstance(packed, QuantLinear) and packed.fmt == fmt
    torch.testing.assert_close(packed.dequantize(), qat.fake_weight().detach(), rtol=0, atol=1e-6)
    with torch.no_grad():
        _close(packed(x), qat(x), rel)


def test_qat_from_a_gptq_like_packed_layer_computes_exactly_that_layer() -> None:
    fmt, gran = IntFormat(4, symmetric=False), PerGroup(32)
    ptq = rtn_linear(_lin(), WeightOnlyConfig(format=fmt, granularity=gran))
    qat = from_packed(ptq, None)
    torch.testing.assert_close(qat.fake_weight().detach(), ptq.dequantize(), rtol=0, atol=1e-6)
    again = to_packed(qat, None)
    assert torch.equal(again.codes(), ptq.codes()) and torch.equal(again.scale, ptq.scale)


@pytest.mark.parametrize("bits,method", [(8, "lsq"), (8, "pact"), (4, "lsq")])
def test_static_activation_qat_converts_to_the_int8_static_kernel(bits: int, method: str) -> None:
    wbits = 8 if bits == 8 else 4
    qat = from_float(_lin(), IntFormat(wbits), PerChannel(), ActQuant(bits=bits, method=method))
    x = torch.randn(7, 96, generator=G) * 2
    qat.aq.set_range(float(x.min()), float(x.max()))
    _perturb(qat)
    packed = to_packed(qat, QATConfig(format=IntFormat(wbits), granularity=PerChannel(),
                                      activations=ActQuant(bits=bits, method=method)))
    assert isinstance(packed, Int8StaticLinear) and packed.act_bits == bits
    assert int(packed.weight_int8.abs().max()) <= 2 ** (wbits - 1)
    with torch.no_grad():
        _close(packed(x), qat(x), 1e-4)


def test_w8a8_ptq_layers_start_qat_exactly_and_convert_back() -> None:
    lin = _lin()
    x = torch.randn(6, 96, generator=G)
    static = Int8StaticLinear.from_linear(lin, None)
    static.set_range(float(x.min()), float(x.max()))
    qat = from_packed(static, None)
    with torch.no_grad():
        _close(qat(x), static(x), 1e-4)
    back = to_packed(qat, None)
    assert torch.equal(back.weight_int8, static.weight_int8) and int(back.act_zero) == int(static.act_zero)
    dyn = Int8DynamicLinear.from_linear(lin, None, smooth=torch.rand(96, generator=G) + 0.5)
    qat_dyn = from_packed(dyn, None)
    assert qat_dyn.target == "dynamic" and qat_dyn.input_scale is not None
    back_dyn = to_packed(qat_dyn, None)
    assert isinstance(back_dyn, Int8DynamicLinear) and back_dyn.use_smooth
    with torch.no_grad():
        _close(back_dyn(x), dyn(x), 1e-6)


@pytest.mark.parametrize("act", [None, ActQuant(bits=8)])
def test_conv_qat_converts_to_packed_convs(act) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 6, 6, generator=G).relu()
    fmt = IntFormat(8) if act is not None else IntFormat(4, symmetric=False)
    gran = PerChannel() if act is not None else PerGroup(24)
    qat = from_float(conv, fmt, gran, act)
    if act is not None:
        qat.aq.set_range(0.0, float(x.max()))
    _perturb(qat)
    packed = to_packed(qat, None)
    assert isinstance(packed, Int8StaticConv2d if act is not None else QuantConv2d)
    with torch.no_grad():
        _close(packed(x), qat(x), 1e-4)
    if act is not None:              # and back: a static int8 conv starts QAT where it is
        again = from_packed(packed, None)
        with torch.no_grad():
            _close(again(x), packed(x), 1e-4)


def test_a_model_with_fake_quantized_layers_is_not_an_artifact(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0] = from_float(model[0], IntFormat(4, symmetric=False), PerGroup(8), None)
    with pytest.raises(ArtifactError, match="fake-quantized"):
        torchslim.save(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_converted_w4a4_model_reloads_with_its_narrow_activations(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(10, 16, generator=G)
    ref = copy.deepcopy(model)
    for i in (0, 2):
        model[i] = from_float(model[i], IntFormat(4), PerChannel(), ActQuant(bits=4))
    model[0].aq.set_range(float(x.min()), float(x.max()))
    model[2].aq.set_range(0.0, float(ref[1](ref[0](x)).max().detach()))
    for i in (0, 2):
        model[i] = to_packed(model[i], None)
    torchslim.save(model, tmp_path / "a")
    skeleton = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    back = torchslim.load(tmp_path / "a", model=skeleton)
    assert back[0].act_bits == 4 and back[2].act_bits == 4
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
