import copy

import torch
from torch import nn

import torchslim
from torchslim.quantization.awq import AWQConfig, awq_search
from torchslim.quantization.formats import IntFormat, PerGroup
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.weight_only import WeightOnlyConfig, quantize_weight


def salient_inputs(n=1024, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :6] *= 20  # a few salient channels, as in LLM activations
    return x


def test_awq_search_beats_plain_rtn_on_salient_channels():
    x = salient_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    wcfg = WeightOnlyConfig(format=IntFormat(3, False), granularity=PerGroup(64))
    y = x @ w.T
    rtn = quantize_weight(w, wcfg).dequantize()
    s, alpha = awq_search(w, x, x.abs().mean(0), wcfg, grid=20)
    awq = quantize_weight(w * s, wcfg).dequantize() / s
    err_rtn = (x @ rtn.T - y).norm() / y.norm()
    err_awq = (x @ awq.T - y).norm() / y.norm()
    assert alpha > 0 and err_awq < 0.8 * err_rtn


def test_awq_layers_apply_input_scaling_and_round_trip(tmp_path):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    x = salient_inputs(256)
    calib = [{"input": x[i:i + 32]} for i in range(0, 256, 32)]
    wcfg = WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(32))
    ref = base(x)
    errs = {}
    for name, cfg in (("rtn", wcfg), ("awq", AWQConfig(weight=wcfg))):
        m = copy.deepcopy(base)
        torchslim.quantize_(m, cfg, calibration=calib)
        errs[name] = float((m(x) - ref).norm() / ref.norm())
    assert isinstance(m[0], QuantLinear) and m[0].input_scale is not None
    assert errs["awq"] < errs["rtn"]
    torchslim.save(m, tmp_path / "a")
    m2 = torchslim.load(tmp_path / "a", model=nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32)))
    assert torch.equal(m2(x), m(x))
