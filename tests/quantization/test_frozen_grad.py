"""Frozen packed layers under training (QLoRA): the gradient reaches their input and equals the dequantized
float layer's, and no dense ``[out, in]`` weight is kept between forward and backward."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim
from torchslim.core.errors import TorchSlimError
from torchslim.quantization import NF4, IntFormat, PerChannel, PerGroup, W8A8Config, WeightOnlyConfig
from torchslim.quantization.int8_conv import Int8StaticConv2d
from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear, _Int8Base
from torchslim.quantization.kernels import LARGE_M, Kernel
from torchslim.quantization.qconv import QuantConv2d, quantize_conv_weight_only
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.sparse_quant import SparseQuantLinear

IN, OUT = 64, 48


def _weight_only(fmt, gran, kernel):
    def build(lin: nn.Linear) -> nn.Module:
        m = nn.Sequential(lin)
        torchslim.quantize_(m, WeightOnlyConfig(format=fmt, granularity=gran))
        assert isinstance(m[0], QuantLinear) and m[0].choice.kernel is kernel
        return m[0]
    return build


def _w8a8_dynamic(lin: nn.Linear) -> nn.Module:
    return Int8DynamicLinear.from_linear(lin, W8A8Config(), smooth=torch.rand(lin.in_features) + 0.5)


def _w8a8_static(lin: nn.Linear) -> nn.Module:
    m = Int8StaticLinear.from_linear(lin, W8A8Config(mode="static"))
    m.set_range(-4.0, 4.0)
    return m


def _sparse_int8(lin: nn.Linear) -> nn.Module:
    mask = torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    sparse = SimpleNamespace(weight=lin.weight, mask=mask, bias=lin.bias, in_features=lin.in_features,
                             out_features=lin.out_features, pattern=None, config=None)
    return SparseQuantLinear.from_sparse(sparse, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))


BUILDERS = {
    "int4": _weight_only(IntFormat(4, False), PerGroup(32), Kernel.INT4PACK_MM),
    "int8": _weight_only(IntFormat(8), PerChannel(), Kernel.INT8PACK_MM),
    "nf4": _weight_only(NF4(), PerGroup(32), Kernel.DEQUANT),
    "w8a8-dynamic-smoothed": _w8a8_dynamic,
    "w8a8-static": _w8a8_static,
    "sparse-int8": _sparse_int8,
}


def _layer(kind: str, in_f: int = IN, out_f: int = OUT, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[kind](nn.Linear(in_f, out_f))


def _effective_weight(m: nn.Module) -> torch.Tensor:
    """The float weight the layer's input meets (input scalings folded in)."""
    if isinstance(m, _Int8Base):
        return m.dense_weight()
    w = m.dequantize()
    scale = getattr(m, "input_scale", None)
    return w * scale[None, :] if scale is not None else w


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("rows", [3, LARGE_M + 8])           # the packed kernel's rows, and the large-batch path
def test_input_and_bias_gradients_equal_the_dequantized_float_layers(kind, rows):
    m = _layer(kind)
    x = torch.randn(2, rows, IN, requires_grad=True)
    g = torch.randn(2, rows, OUT)
    (m(x) * g).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    br = m.bias.detach().clone().requires_grad_(True)
    (F.linear(xr, _effective_weight(m), br) * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.bias.grad, br.grad, rtol=1e-4, atol=1e-5)
    assert all(b.grad is None for b in m.buffers())


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_training_forward_is_the_packed_forward_and_a_frozen_bias_gets_nothing(kind):
    m = _layer(kind)
    m.bias.requires_grad_(False)
    x = torch.randn(4, IN)
    with torch.no_grad():
        expected = m(x)
    xg = x.clone().requires_grad_(True)
    y = m(xg)
    assert torch.equal(y.detach(), expected)                  # the same kernel with or without gradients
    y.sum().backward()
    assert xg.grad is not None and m.bias.grad is None


def test_input_scaled_layer_passes_the_gradient_through_its_scale():
    m = _layer("int4")
    m.input_scale = torch.rand(IN) + 0.5                      # as AWQ leaves it (a buffer in a real layer)
    x = torch.randn(5, IN, requires_grad=True)
    g = torch.randn(5, OUT)
    (m(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ _effective_weight(m), rtol=1e-4, atol=1e-5)


class _SavedShapes:
    """Every tensor autograd saves for backward while active: ``(shape, dtype)``."""

    def __init__(self) -> None:
        self.saved: list[tuple[tuple[int, ...], torch.dtype]] = []
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved.append((tuple(t.shape), t.dtype))
        return t

    def dense_weights(self, shapes: set[tuple[int, ...]]) -> list:
        return [(s, d) for s, d in self.saved if s in shapes and d.is_floating_point]


def _stack(kind: str, n: int) -> nn.Sequential:
    return nn.Sequential(*[_layer(kind, IN if i % 2 == 0 else OUT, OUT if i % 2 == 0 else IN, seed=i)
                           for i in range(n)])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_stack_of_frozen_layers_saves_no_dense_weight_for_backward(kind):
    stack = _stack(kind, 4)
    for p in stack.parameters():
        p.requires_grad_(False)                               # the frozen base of QLoRA
    weights = {(OUT, IN), (IN, OUT)}
    rec = _SavedShapes()
    x = torch.randn(5, IN, requires_grad=True)
    with rec.hooks:
        y = stack(x)
    assert rec.dense_weights(weights) == []
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the check can fail: the formulation this replaces (a dequantized weight under autograd) is caught
    control = _SavedShapes()
    with control.hooks:
        h = x
        for m in stack:
            h = F.linear(h, _effective_weight(m))
    assert len(control.dense_weights(weights)) == 4


def _conv_layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
    q = quantize_conv_weight_only(conv, WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(12)))
    s = Int8StaticConv2d.from_conv(conv)
    s.set_range(-4.0, 4.0)
    r = Int8StaticConv2d.from_conv(conv)
    r.set_range(-4.0, 4.0)
    r.fuse_relu()
    return {"quant-int4": q, "static-int8": s, "static-int8-relu": r}


@pytest.mark.parametrize("kind", ["quant-int4", "static-int8", "static-int8-relu"])
def test_conv_gradients_equal_the_dequantized_float_convs_and_keep_no_dense_weight(kind):
    m = _conv_layers()[kind]
    w = m.dequantize() if isinstance(m, QuantConv2d) else m.dequantized_weight()
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    with torch.no_grad():
        mask = m(x) > 0 if kind.endswith("relu") else torch.ones(1, dtype=torch.bool)
    rec = _SavedShapes()
    with rec.hooks:
        y = m(x)
    assert rec.dense_weights({tuple(w.shape)}) == []
    g = torch.randn_like(y)
    (y * g).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    br = m.bias.detach().clone().requires_grad_(True)
    (F.conv2d(xr, w, br, 2, 1) * g * mask).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.bias.grad, br.grad, rtol=1e-4, atol=1e-5)


def test_a_uint8_chained_conv_refuses_to_pass_gradients_but_still_runs_inference():
    m = _conv_layers()["static-int8"]
    m.set_uint8_output(0.05, 0)
    x = torch.randn(1, 4, 9, 9)
    assert m(x).dtype == torch.uint8                          # grad mode on, input without grad: inference
    with pytest.raises(TorchSlimError, match="cannot pass gradients"):
        m(x.requires_grad_(True))
