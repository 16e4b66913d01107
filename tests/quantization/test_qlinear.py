import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim
from torchslim.quantization.formats import NF4, Binary, Codebook, IntFormat, PerChannel, PerGroup, PerTensor, Ternary
from torchslim.quantization.kernels import LARGE_M, Kernel
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.weight_only import WeightOnlyConfig, plan, quantize_weight

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


# -- kernels at widths and row counts they do not natively support (regression: crashes, wrong results) ---
@pytest.mark.parametrize("kernel,fmt,gran", [
    ("int8pack_mm", IntFormat(8), PerChannel()),
    ("int4pack_mm", IntFormat(4, symmetric=False), PerGroup(32)),
    ("dequant", IntFormat(4, symmetric=False), PerGroup(32)),
])
@pytest.mark.parametrize("out_f,in_f", [(90, 64), (257, 64), (64, 90), (50257, 32)])
def test_every_kernel_runs_at_odd_widths_and_row_counts(kernel, fmt, gran, out_f, in_f):
    from torchslim.quantization.kernels import Kernel

    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f)
    cfg = WeightOnlyConfig(format=fmt, granularity=gran, kernel=Kernel(kernel))
    q = QuantLinear.from_qtensor(quantize_weight(lin.weight, cfg), gran, lin.bias, cfg.kernel, cfg)
    assert q.choice.kernel.value == kernel
    w = q.dequantize()
    for rows in (1, 2, 17, 32, 33, 128):
        x = torch.randn(rows, in_f)
        with torch.no_grad():
            ref, got = x @ w.T + lin.bias, q(x)
        assert torch.allclose(got, ref, rtol=0.02, atol=0.02 * ref.abs().max().item()), (rows, kernel)


def test_a_kernel_that_cannot_run_is_refused_at_quantize_time():
    from torchslim.core.errors import ConfigError
    from torchslim.quantization.kernels import Kernel

    with pytest.raises(ConfigError, match="dynamic_int8 does not support .* weight-only layers .* use W8A8Config"):
        torchslim.quantize_(nn.Sequential(nn.Linear(8, 8)), WeightOnlyConfig(kernel=Kernel.DYNAMIC_INT8))


def test_pruned_to_odd_widths_then_int8_then_forward():
    """Neurons pruned with round_to=1 leave widths that are not multiples of 16: int8pack must still run."""
    loaded = torchslim.load_model("tiny-llama")
    torchslim.prune_(loaded.model, torchslim.StructuredConfig(targets=("neurons",), ratio=0.3))
    torchslim.quantize_(loaded.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    assert loaded.model.model.layers[0].mlp.down_proj.in_features % 16 != 0
    for rows in (1, 2, 17, 33):
        out = loaded.model(torch.randint(0, 200, (1, rows))).logits
        assert torch.isfinite(out).all()


def test_a_quantized_layer_stands_in_for_code_that_reads_its_weight():
    """T5's feed-forward reads ``self.wo.weight.dtype`` every forward."""
    from torchslim.zoo.families import build_family

    fam = build_family("t5")
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    wo = fam.model.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, QuantLinear) and wo.weight.dtype == torch.float32
    assert torch.equal(wo.weight, wo.dequantize()) and wo.weight is wo.weight          # cached
    assert "weight" not in wo.state_dict()
    out = fam.output(fam.batches(1)[0])
    assert torch.isfinite(out).all()
    wo.scale.mul_(2)                                                                      # tensors change: refreshed
    assert torch.equal(wo.weight, wo.dequantize())


@pytest.mark.parametrize("fmt,gran,kernel", CASES[:3], ids=lambda v: getattr(v, "name", None) or type(v).__name__)
def test_gradients_flow_through_a_frozen_packed_layer(fmt, gran, kernel):
    """Training earlier layers through a packed one (a tied head that QAT keeps, a QLoRA base): the forward
    runs the packed kernel as in inference, and the gradient to the input is the dequantized weight's
    (tests/quantization/test_frozen_grad.py checks every packed layer kind and what is saved for backward)."""
    m = model()
    torchslim.quantize_(m, WeightOnlyConfig(format=fmt, granularity=gran))
    q = m[0]
    assert q.choice.kernel is kernel
    x = torch.randn(4, 256, requires_grad=True)
    g = torch.randn(4, 64)
    with torch.no_grad():
        expected, hidden = m(x), q(x)
    y = m(x)
    assert torch.equal(y.detach(), expected)                            # the packed kernel, gradients or not
    (y * g).sum().backward()
    ref = ((g @ m[2].dequantize()) * (hidden > 0)) @ q.dequantize()
    assert torch.allclose(x.grad, ref, rtol=1e-4, atol=1e-5)
