"""Quantized convs: static int8 on oneDNN (vs a dequantized reference), weight-only any-format convs,
ReLU fusion / uint8 chaining, exact artifact round trips, and measured digits-cnn accuracy."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim
from torchslim.calibration.pipeline import run_basic
from torchslim.calibration.stats import ChannelStats
from torchslim.core.errors import ConfigError
from torchslim.core.surgery import replace_module
from torchslim.quantization import (ActMode, Binary, IntFormat, Kernel, PerChannel, PerGroup, Ternary, W8A8Config,
                                    WeightOnlyConfig)
from torchslim.quantization.int8_conv import (Int8StaticConv2d, conv_input_stats, convert_conv,
                                              quantize_conv_weight_only)
from torchslim.quantization.fuse_int8 import fuse_int8_relu_
from torchslim.transforms import FoldedAway, fold_bn_
from torchslim.zoo.digits_cnn import build_digits_cnn, load_digits_cnn
from torchslim.core.state import state_of

STATIC = W8A8Config(mode=ActMode.STATIC)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The trained digits-cnn (same session cache folder as the zoo and train tests)."""
    return load_digits_cnn(cache_dir=tmp_path_factory.getbasetemp() / "torchslim-cache", progress=False)


def _calibrated(conv: nn.Conv2d, x: torch.Tensor) -> Int8StaticConv2d:
    stats = conv_input_stats(conv)
    stats.add_batch(x)
    return convert_conv(conv, STATIC, stats)


def _reference(m: Int8StaticConv2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Float conv of the fake-quantized input with the dequantized weight."""
    s, z = float(m.act_scale), int(m.act_zero)
    xq = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    g = m.geometry
    return F.conv2d(xq, m.dequantized_weight(), conv.bias, g.stride, g.padding, g.dilation, g.groups)


def static_int8_(model: nn.Module, task, n_samples: int = 128) -> None:
    """Calibrate every Conv2d on ``task``'s calibration batches and swap in Int8StaticConv2d."""
    targets = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def solve(measured: dict) -> None:
        for name, (conv, stats) in measured.items():
            replace_module(model, name, convert_conv(conv, STATIC, stats))

    run_basic(model, targets, task.calibration_batches(n_samples), task.forward,
              lambda _n, m: conv_input_stats(m), solve)


@pytest.mark.parametrize("kw", [{"padding": 1}, {"stride": 2, "bias": False}, {"groups": 4, "padding": 1},
                                {"dilation": 2, "padding": "same"}])
def test_kernel_matches_dequantized_reference(kw) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, **kw)
    x = torch.randn(3, 8, 9, 9) * 2 + 0.5
    m = _calibrated(conv, x)
    y, ref = m(x), _reference(m, conv, x)
    assert y.dtype == torch.float32 and y.shape == conv(x).shape
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    # and close to the float conv within int8 error (a few percent of the output range)
    assert (y - conv(x)).abs().max() < 0.03 * conv(x).abs().max()


def test_fused_relu_and_uint8_output_are_exact_rewrites() -> None:
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    q1, q2 = _calibrated(c1, x), _calibrated(c2, torch.relu(c1(x)))
    plain = q2(torch.relu(q1(x)))
    model = nn.Sequential(q1, nn.ReLU(), q2).eval()
    assert fuse_int8_relu_(model) == {"relu": ["0"], "uint8": ["0"]}
    assert isinstance(model[1], FoldedAway) and q1.fused_relu and q1.uint8_output
    assert model[0](x).dtype == torch.uint8
    torch.testing.assert_close(model(x), plain, atol=1e-5, rtol=1e-5)


def test_conv_input_stats_are_per_channel() -> None:
    x = torch.randn(5, 3, 4, 4)
    stats = conv_input_stats(nn.Conv2d(3, 2, 1))
    stats.add_batch(x)
    assert isinstance(stats, ChannelStats) and stats.count == 5 * 16
    torch.testing.assert_close(stats.lo, x.amin(dim=(0, 2, 3)))
    torch.testing.assert_close(stats.hi, x.amax(dim=(0, 2, 3)))


@pytest.mark.parametrize("fmt, levels", [(Ternary(), 3), (Binary(), 2)])
def test_ternary_and_binary_weights_take_only_their_values(fmt, levels) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    m = quantize_conv_weight_only(conv, WeightOnlyConfig(format=fmt, granularity=PerChannel()))
    w = m.dequantize()
    assert w.shape == conv.weight.shape and m.packed.numel() == -(-conv.weight.numel() * fmt.storage_bits // 8)
    for row, s in zip(w.reshape(5, -1), m.scale.reshape(-1)):
        allowed = torch.tensor([-s, 0.0, s] if levels == 3 else [-s, s])
        assert torch.isin(row, allowed).all()
        assert len(row.unique()) <= levels
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(m(x), F.conv2d(x, w, conv.bias, 1, 1))
    assert m.torchslim_layer_info()["slower_than_fp32"] is True


def test_weight_only_int4_groups_are_close_to_float() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, groups=2)  # 36 inputs per row: groups of 16 pad the last one
    cfg = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(16))
    m = quantize_conv_weight_only(conv, cfg)
    half_step = conv.weight.abs().max() / 15  # (hi - lo) / 15 / 2 with hi - lo <= 2 max|w|
    assert (m.dequantize() - conv.weight).abs().max() <= 1.001 * half_step


def test_artifact_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(0)

    def skeleton() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    model = skeleton().eval()
    x = torch.randn(4, 3, 6, 6)
    fold_bn_(model)
    targets = {"0": model[0], "3": model[3]}
    stats = {n: conv_input_stats(m) for n, m in targets.items()}
    hooks = [m.register_forward_pre_hook(lambda _m, a, s=stats[n]: s.add_batch(a[0])) for n, m in targets.items()]
    model(x)
    for h in hooks:
        h.remove()
    for n, m in targets.items():
        replace_module(model, n, convert_conv(m, STATIC, stats[n]))
    ternary = WeightOnlyConfig(format=Ternary(), granularity=PerChannel())
    replace_module(model, "5", quantize_conv_weight_only(model[5], ternary))
    fuse_int8_relu_(model)
    assert model[0].fused_relu and model[0].uint8_output and model[3].fused_relu and not model[3].uint8_output
    path = torchslim.save(model, tmp_path / "art")
    again = torchslim.load(path, model=skeleton())
    assert [type(m).__name__ for m in again] == [type(m).__name__ for m in model]
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert torch.equal(again(x), model(x))
    assert torch.equal(copy.deepcopy(again)(x), model(x))   # the packed oneDNN weight is rebuilt, not copied
    layers = state_of(again).manifest["layers"]
    assert layers["0"]["kernel"].startswith("onednn::qconv2d_pointwise") and layers["0"]["output"] == "uint8"
    assert layers["5"]["storage"] == "ternary PerChannel" and layers["1"]["technique"] == "fold_bn"


def test_static_int8_digits_cnn_keeps_accuracy(digits) -> None:
    task = digits.task
    fp32 = task.evaluate(digits.model)["top1"]
    model = build_digits_cnn(digits.source["arch"])
    model.load_state_dict(digits.model.state_dict())
    model.eval()
    fold_bn_(model)
    static_int8_(model, task)
    fused = fuse_int8_relu_(model)
    assert sum(isinstance(m, Int8StaticConv2d) for m in model.modules()) == 6 and len(fused["relu"]) == 3
    int8 = task.evaluate(model)["top1"]
    assert int8 >= fp32 - 0.3, (int8, fp32)


def test_user_mistakes_are_config_errors() -> None:
    conv = nn.Conv2d(2, 2, 3)
    stats = conv_input_stats(conv)
    stats.add_batch(torch.randn(1, 2, 4, 4))
    with pytest.raises(ConfigError, match="mode=static"):
        convert_conv(conv, W8A8Config(), stats)
    with pytest.raises(ConfigError, match="SmoothQuant"):
        convert_conv(conv, W8A8Config(mode=ActMode.STATIC, smooth_alpha=0.5), stats)
    with pytest.raises(ConfigError, match="calibration"):
        convert_conv(conv, STATIC, None)
    with pytest.raises(ConfigError, match="zero padding"):
        convert_conv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), STATIC, stats)
    with pytest.raises(ConfigError, match="kernel"):
        quantize_conv_weight_only(conv, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                         kernel=Kernel.INT8PACK_MM))
    with pytest.raises(ConfigError, match="Conv2d"):
        convert_conv(nn.Linear(2, 2), STATIC, stats)
