import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import IntFormat, PerChannel, PerGroup
from torchslim.quantization.gptq import GPTQConfig
from torchslim.quantization.gptq_math import HessianAccumulator, gptq_quantize
from torchslim.quantization.observers import MinMax
from torchslim.quantization.primitives import fake_quantize
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.weight_only import WeightOnlyConfig


def correlated_inputs(n=2048, d=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g))
    x[:, :4] *= 8
    return x


def test_hessian_accumulator_matches_closed_form():
    x = correlated_inputs(512, 32)
    acc = HessianAccumulator(32)
    for b in x.split(100):
        acc.add_batch(b)
    assert torch.allclose(acc.H, 2 * x.T @ x / 512, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("gran", [PerGroup(64), PerChannel()])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn_on_layer_output_error(gran, act_order, bits):
    x = correlated_inputs()
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(256)
    acc.add_batch(x)
    fmt = IntFormat(bits, symmetric=False)
    y = x @ w.T
    rtn = fake_quantize(w, fmt, gran)
    qt = gptq_quantize(w, acc.H, fmt, gran, MinMax(), act_order=act_order)
    err_rtn = (x @ rtn.T - y).norm() / y.norm()
    err_gptq = (x @ qt.dequantize().T - y).norm() / y.norm()
    assert err_gptq < 0.75 * err_rtn
    assert int(qt.codes.max()) <= fmt.qmax


def test_gptq_with_ragged_groups():
    x = correlated_inputs(1024, 96)
    w = torch.randn(32, 96, generator=torch.Generator().manual_seed(2))
    acc = HessianAccumulator(96)
    acc.add_batch(x)
    fmt, gran = IntFormat(4, False), PerGroup(64)
    qt = gptq_quantize(w, acc.H, fmt, gran, MinMax())
    y = x @ w.T
    err_gptq = (x @ qt.dequantize().T - y).norm() / y.norm()
    err_rtn = (x @ fake_quantize(w, fmt, gran).T - y).norm() / y.norm()
    assert qt.dequantize().shape == (32, 96) and err_gptq < err_rtn


def test_gptq_on_tiny_llama_sequentially_beats_rtn():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 256, (1, 64))} for _ in range(16)]
    ids = torch.randint(0, 256, (2, 64))
    ref = base(ids).logits
    weight = WeightOnlyConfig(format=IntFormat(3, False), granularity=PerGroup(64))
    errs = {}
    for name, cfg_q in (("rtn", weight), ("gptq", GPTQConfig(weight=weight))):
        m = copy.deepcopy(base)
        torchslim.quantize_(m, cfg_q, calibration=calib)
        assert sum(isinstance(x, QuantLinear) for x in m.modules()) == 2 * 7 + 1  # incl. lm_head
        errs[name] = float((m(ids).logits - ref).norm() / ref.norm())
    assert errs["gptq"] < errs["rtn"]


def test_gptq_needs_calibration_and_valid_config():
    with pytest.raises(ConfigError, match="calibration"):
        torchslim.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 8)), GPTQConfig(
            weight=WeightOnlyConfig(granularity=PerGroup(32))))
    with pytest.raises(ConfigError, match="damp"):
        GPTQConfig(damp=2.0)


def test_block_inputs_are_replayable_without_kv_cache():
    from torchslim.calibration.pipeline import catch_block_inputs
    from torchslim.core.archs import find_blocks

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(0, 64, (1, 8))
    block = find_blocks(m)[0][1]
    (args, kwargs), = catch_block_inputs(m, block, [{"input_ids": ids}], lambda mod, b: mod(**b))
    assert "past_key_values" not in kwargs
    with torch.no_grad():
        first, again = block(*args, **kwargs), block(*args, **kwargs)
    assert torch.equal(first, again)


def test_layers_overridden_with_weight_only_config_use_rtn():
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    weight = WeightOnlyConfig(format=IntFormat(4, False), granularity=PerGroup(32),
                              selector=torchslim.Selector(overrides={"lm_head": head}))
    expected_head = QuantLinear.from_qtensor(
        __import__("torchslim.quantization.weight_only", fromlist=["x"]).quantize_weight(m.lm_head.weight, head),
        head.granularity, None)
    calib = [{"input_ids": torch.randint(0, 64, (1, 16))} for _ in range(4)]
    torchslim.quantize_(m, GPTQConfig(weight=weight, calibration_dtype=torch.bfloat16), calibration=calib)
    assert torch.equal(m.lm_head.packed, expected_head.packed)  # RTN, exactly
    assert m.lm_head.torchslim_layer_info()["technique"] == "rtn"
    assert m.model.layers[0].mlp.down_proj.torchslim_layer_info()["technique"] == "gptq"


def test_gptq_on_a_cnn_names_the_override_that_covers_its_convolutions_and_the_override_works(caplog):
    """GPTQ's solver applies to linear layers: a CNN's convolutions stay float by default with a warning naming the
    selector override, and that override rounds every one of them to nearest while GPTQ solves the linears."""
    from torch import nn

    from torchslim.core.linear import LinearLike
    from torchslim.core.select import Selector
    from torchslim.quantization import GPTQConfig, IntFormat, PerChannel, WeightOnlyConfig
    from torchslim.quantization.qconv import QuantConv2d
    from torchslim.zoo.digits_cnn import build_digits_cnn

    torch.manual_seed(0)
    batches = [{"x": torch.randn(4, 1, 8, 8)} for _ in range(2)]
    model = build_digits_cnn().eval()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    with caplog.at_level("WARNING", logger="torchslim"):
        torchslim.quantize_(model, GPTQConfig(n_samples=8), calibration=batches)
    assert f"{n_convs} Conv2d layer(s) left float" in caplog.text and "'type:Conv2d': WeightOnlyConfig" in caplog.text
    rtn = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    weight = WeightOnlyConfig(selector=Selector(include=(LinearLike, nn.Conv2d), overrides={nn.Conv2d: rtn}))
    model = build_digits_cnn().eval()
    torchslim.quantize_(model, GPTQConfig(weight=weight, n_samples=8), calibration=batches)
    assert sum(isinstance(m, QuantConv2d) for m in model.modules()) == n_convs
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
