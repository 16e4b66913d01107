"""Calibrated methods as plans: AWQ scaling then GPTQ share one calibration pass, exactly."""
import pytest
import torch

import torchslim
from torchslim.calibration.plan import can_share, sharing_group
from torchslim.calibration.stats import ChannelStats, HessianAccumulator
from torchslim.core.context import ApplyContext
from torchslim.core.state import state_of
from torchslim.quantization import AWQConfig, GPTQConfig, IntFormat, PerGroup, WeightOnlyConfig
from torchslim.quantization.scaled import ScaledLinear

W4 = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32),
                      selector=torchslim.Selector(exclude=("lm_head",)))


def test_scaled_statistics_equal_statistics_of_scaled_inputs():
    x, d = torch.randn(50, 6), torch.rand(6) + 0.5
    a, b = HessianAccumulator(6), HessianAccumulator(6)
    a.add_batch(x)
    b.add_batch(x * d)
    torch.testing.assert_close(a.scaled(d).H, b.H)
    c, e = ChannelStats(6), ChannelStats(6)
    c.add_batch(x)
    e.add_batch(x * d)
    torch.testing.assert_close(c.scaled(d).absmean, e.absmean)
    torch.testing.assert_close(c.scaled(d).hi, e.hi)


def _first_block_calls(model):
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def _quantized(shared: bool, propagate: bool = False):
    loaded = torchslim.load_model("tiny-llama")
    m, task = loaded.model, loaded.task
    calls = _first_block_calls(m)
    configs = [AWQConfig(weight=W4, scale_only=True, n_samples=16),
               GPTQConfig(weight=W4, n_samples=16, propagate_quantized=propagate)]
    if shared:
        torchslim.quantize_(m, configs, calibration=task)
    else:
        for c in configs:
            torchslim.quantize_(m, c, calibration=task)
    return m, task, len(calls)


def test_awq_scaling_then_gptq_share_one_pass_and_give_the_same_layers():
    shared, task, shared_calls = _quantized(True)
    separate, _, separate_calls = _quantized(False)
    assert shared_calls < separate_calls            # the GPTQ stage ran no pass of its own
    names = [h.name for h in state_of(shared).history]
    assert names == ["AWQConfig", "GPTQConfig"]
    for (n, a), b in zip(shared.named_modules(), separate.modules()):
        if hasattr(a, "packed"):
            assert a.input_scale is not None, n
            assert (a.packed != b.packed).float().mean() < 0.01, n     # same codes up to float rounding
    ids = torch.arange(32).reshape(1, 32)
    torch.testing.assert_close(shared(ids).logits, separate(ids).logits, rtol=1e-2, atol=1e-2)


def test_scale_only_awq_leaves_an_exactly_equivalent_float_model():
    loaded = torchslim.load_model("tiny-llama")
    ids = torch.arange(40).reshape(2, 20)
    ref = loaded.model(ids).logits
    torchslim.quantize_(loaded.model, AWQConfig(weight=W4, scale_only=True, n_samples=8), calibration=loaded.task)
    assert isinstance(loaded.model.model.layers[0].mlp.down_proj, ScaledLinear)
    torch.testing.assert_close(loaded.model(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_no_sharing_when_the_second_method_propagates_its_own_results():
    loaded = torchslim.load_model("tiny-llama")
    ctx = ApplyContext(task=loaded.task)
    group = sharing_group(loaded.model, [AWQConfig(weight=W4, scale_only=True, n_samples=8),
                                         GPTQConfig(weight=W4, n_samples=8, propagate_quantized=True)], ctx)
    assert len(group) == 1
    group = sharing_group(loaded.model, [AWQConfig(weight=W4, n_samples=8), GPTQConfig(weight=W4, n_samples=8)], ctx)
    assert len(group) == 1                          # quantizing AWQ changes the function: no sharing
    a, g = sharing_group(loaded.model, [AWQConfig(weight=W4, scale_only=True, n_samples=8),
                                        GPTQConfig(weight=W4, n_samples=8)], ctx)
    assert can_share(a, g) and not can_share(g, a)
    other = ApplyContext(task=torchslim.load_model("tiny-llama").task)
    (g2,) = sharing_group(loaded.model, [GPTQConfig(weight=W4, n_samples=8)], other)
    assert not can_share(a, g2)                     # different calibration data
    _, _, calls = _quantized(True, propagate=True)
    _, _, separate = _quantized(False, propagate=True)
    assert calls == separate


def test_w8a8_refuses_scaled_layers():
    loaded = torchslim.load_model("tiny-llama")
    torchslim.quantize_(loaded.model, AWQConfig(weight=W4, scale_only=True, n_samples=8), calibration=loaded.task)
    with pytest.raises(torchslim.ConfigError, match="input-scaled"):
        torchslim.quantize_(loaded.model, torchslim.W8A8Config())
