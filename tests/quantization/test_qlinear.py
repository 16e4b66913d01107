import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim
from torchslim.quantization.formats import NF4, Binary, Codebook, IntFormat, PerChannel, PerGroup, PerTensor, Ternary
from torchslim.quantization.kernels import LARGE_M, Kernel
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.weight_only import WeightOnlyConfig, plan

CASES = [
    (IntFormat(8), PerChannel(), Kernel.INT8PACK_MM),
    (IntFormat(4, False), PerGroup(128), Kernel.INT4PACK_MM),
    (IntFormat(4, False), PerGroup(32), Kernel.INT4PACK_MM),
    (IntFormat(3, False), PerGroup(64), Kernel.DEQUANT),
    (IntFormat(2, False), PerGroup(64), Kernel.DEQUANT),
    (IntFormat(4), PerTensor(), Kernel.DEQUANT),
    (NF4(), PerGroup(64), Kernel.DEQUANT),
    (Codebook(4), PerChannel(), Kernel.DEQUANT),
    (Ternary(), PerChannel(), Kernel.DEQUANT),
    (Binary(), PerChannel(), Kernel.DEQUANT),
]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64, bias=False))


def skeleton():
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64, bias=False))


@pytest.mark.parametrize("fmt,gran,kernel", CASES, ids=lambda v: getattr(v, "name", None) or type(v).__name__)
def test_kernel_matches_dequantized_reference_and_round_trips(fmt, gran, kernel, tmp_path):
    m = model()
    torchslim.quantize_(m, WeightOnlyConfig(format=fmt, granularity=gran))
    q = m[0]
    assert isinstance(q, QuantLinear) and q.choice.kernel is kernel
    for rows in (1, 4, LARGE_M + 8):  # packed kernel path and large-batch path
        x = torch.randn(rows, 256)
        ref = F.linear(x, q.dequantize(), q.bias)
        out = q(x)
        tol = 0.0 if kernel is Kernel.DEQUANT else 1.5e-2  # packed kernels compute in bf16
        assert ((out - ref).norm() / ref.norm()) <= tol + 1e-6
    # storage is really packed: bytes of the code buffer
    assert q.packed.numel() == (256 * 128 * fmt.storage_bits + 7) // 8
    torchslim.save(m, tmp_path / "a")
    m2 = torchslim.load(tmp_path / "a", model=skeleton())
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    x = torch.randn(3, 256)
    assert torch.equal(m(x), m2(x))
    assert m2[0].choice.kernel is kernel


def test_ragged_groups_use_the_int4_kernel_with_padded_inputs(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(576, 96))  # 576 = 4.5 groups of 128, like SmolLM2's hidden size
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(128)))
    q = m[0]
    assert q.choice.kernel is Kernel.INT4PACK_MM and q.padded_in == 640 and q.scale.shape == (96, 5)
    x = torch.randn(2, 576)
    ref = F.linear(x, q.dequantize(), q.bias)
    assert q.dequantize().shape == (96, 576)
    assert (q(x) - ref).norm() / ref.norm() < 1.5e-2
    torchslim.save(m, tmp_path / "r")
    m2 = torchslim.load(tmp_path / "r", model=nn.Sequential(nn.Linear(576, 96)))
    assert torch.equal(m2(x), m(x))


def test_int8_and_int4_errors_are_small_and_ordered():
    errs = {}
    x = torch.randn(16, 256)
    for fmt, gran in [(IntFormat(8), PerChannel()), (IntFormat(4, False), PerGroup(32)), (IntFormat(2, False), PerGroup(64))]:
        m = model()
        ref = m(x)
        torchslim.quantize_(m, WeightOnlyConfig(format=fmt, granularity=gran))
        errs[fmt.bits] = float((m(x) - ref).norm() / ref.norm())
    assert errs[8] < 0.02 < errs[4] < 0.15 < errs[2]


def test_plan_reports_slow_layers_before_quantizing(caplog):
    rows = plan(model(), WeightOnlyConfig(format=IntFormat(3, False), granularity=PerGroup(64)))
    assert all(r["slower_than_fp32"] and "slower than fp32" in r["note"] for r in rows)
    fast = plan(model(), WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(128)))
    assert not any(r["slower_than_fp32"] for r in fast)
    with caplog.at_level("WARNING", logger="torchslim.quantization"):
        torchslim.quantize_(model(), WeightOnlyConfig(format=NF4(), granularity=PerGroup(64)))
    assert "slower than fp32" in caplog.text


def test_requested_kernel_must_fit():
    with pytest.raises(torchslim.ConfigError, match="does not support"):
        torchslim.quantize_(model(), WeightOnlyConfig(format=IntFormat(3, False), kernel=Kernel.INT4PACK_MM))
    m = model()
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(128), kernel=Kernel.DEQUANT))
    assert m[0].choice.kernel is Kernel.DEQUANT and m[0].torchslim_layer_info()["slower_than_fp32"]


def test_quantized_models_deepcopy_after_running():
    import copy

    from torchslim.quantization.w8a8 import ActMode, W8A8Config

    x = torch.randn(4, 256)
    for cfg in (WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(128)),
                W8A8Config(), W8A8Config(mode=ActMode.STATIC)):
        m = model()
        torchslim.quantize_(m, cfg, calibration=[{"input": x}])
        y = m(x)  # builds kernel buffers
        assert torch.equal(copy.deepcopy(m)(x), y)
