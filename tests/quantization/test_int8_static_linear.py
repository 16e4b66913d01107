"""The static int8 linear kernel equals its dequantized reference, also for wide activation ranges
(on CPUs without VNNI, 8-bit activations would saturate oneDNN's int16 pair products)."""
import pytest
import torch
from torch import nn

from torchslim.quantization.int8_linear import Int8StaticLinear
from torchslim.quantization.kernels import act_qmax


def test_static_linear_matches_dequantized_reference_with_large_values():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    with torch.no_grad():
        lin.weight.mul_(10)
    x = torch.randn(8, 256) * 3 + 1
    m = Int8StaticLinear.from_linear(lin, None)
    m.set_range(float(x.min()), float(x.max()))
    y = m(x)
    s, zp = float(m.act_scale), int(m.act_zero)
    xd = (torch.clamp(torch.round(x / s) + zp, 0, act_qmax()) - zp) * s
    ref = xd @ (m.weight_int8.float() * m.weight_scale[:, None]).T + lin.bias
    torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-4)
    assert (y - lin(x)).abs().max() < 0.05 * lin(x).abs().max()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("out_f,in_f", [(90, 64), (257, 90), (64, 90)])
def test_w8a8_kernels_at_odd_widths_and_row_counts(mode, out_f, in_f):
    import torchslim

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(in_f, out_f))
    ref = nn.Sequential(nn.Linear(in_f, out_f))
    ref.load_state_dict(m.state_dict())
    torchslim.quantize_(m, torchslim.W8A8Config(mode=mode), calibration=[{"input": torch.randn(256, in_f)} for _ in range(4)])
    for rows in (1, 2, 17, 32, 33, 128):
        x = torch.randn(rows, in_f)
        with torch.no_grad():
            assert float((m(x) - ref(x)).norm() / ref(x).norm()) < 0.05, rows
