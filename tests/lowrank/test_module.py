"""LowRankLinear: two matmuls, a registered module format whose factors are ordinary linear layers."""
import pytest
import torch
from torch import nn

import torchslim

from torchslim.core.errors import ArtifactError, ConfigError
from torchslim.core.kinds import kind_of
from torchslim.core.modules import module_format
from torchslim.lowrank import LowRankConfig, LowRankLinear, svd_factors


def _layer(out_f=24, in_f=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_layer_equals_the_dense_layer(bias):
    lin = _layer(bias=bias)
    m = LowRankLinear.from_factors(svd_factors(lin.weight, 24), lin.bias)
    x = torch.randn(5, 7, 40)
    torch.testing.assert_close(m(x), lin(x), atol=1e-4, rtol=0)
    assert (m.rank, m.params, m.dense_params) == (24, 24 * 64, 24 * 40)
    torch.testing.assert_close(m.to_linear()(x), lin(x), atol=1e-4, rtol=0)


def test_the_factors_are_plain_linear_children_and_the_pair_stands_for_nothing():
    lin = _layer()
    m = LowRankLinear.from_factors(svd_factors(lin.weight, 8), lin.bias)
    assert type(m.down) is nn.Linear and type(m.up) is nn.Linear
    assert (m.down.in_features, m.down.out_features, m.up.out_features) == (40, 8, 24)
    assert m.down.bias is None and m.up.bias is not None
    assert not hasattr(m, "stands_for") and m.weight is None     # no selector or adapter mistakes the pair for a layer
    assert sorted(m.state_dict()) == ["down.weight", "up.bias", "up.weight"]


def test_to_linear_is_the_product_with_quantized_factors_too():
    from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig

    lin = _layer()
    m = nn.Sequential(LowRankLinear.from_factors(svd_factors(lin.weight, 8), lin.bias))
    torchslim.quantize_(m, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    pair, x = m[0], torch.randn(4, 40)
    assert type(pair.up).__name__ == "QuantLinear" and pair.bias is pair.up.bias
    with torch.no_grad():
        torch.testing.assert_close(pair.to_linear()(x), pair(x), atol=0.02, rtol=0.02)


def test_dtype_and_device_follow_the_replaced_weight():
    lin = _layer().to(torch.bfloat16)
    m = LowRankLinear.from_factors(svd_factors(lin.weight.float(), 8), lin.bias, like=lin.weight)
    assert m.up.weight.dtype == m.down.weight.dtype == torch.bfloat16


def test_a_pair_of_another_dtype_than_its_input_computes_in_its_own_and_answers_in_the_inputs():
    lin = _layer()
    m = LowRankLinear.from_factors(svd_factors(lin.weight, 24), lin.bias)    # fp32, as T5 keeps wo in a bf16 model
    x = torch.randn(3, 40)
    y = m(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), lin(x.to(torch.bfloat16).float()), atol=0.05, rtol=0.02)


def test_it_is_a_module_format_and_a_kind_that_cannot_be_sliced():
    assert module_format("LowRankLinear") is LowRankLinear
    lin = _layer()
    m = LowRankLinear.from_factors(svd_factors(lin.weight, 8), lin.bias)
    kind = kind_of(m)
    assert kind is not None and kind.slice is None


def test_layer_info_rebuilds_an_empty_layer_of_the_same_shape():
    lin = _layer()
    cfg = LowRankConfig(method="svd", rank=8)
    m = LowRankLinear.from_factors(svd_factors(lin.weight, 8), lin.bias, config=cfg, method="svd")
    m.speed = {"faster": False, "note": "measured: 0.8x", "rows": []}
    info = m.torchslim_layer_info()
    assert info["technique"] == "lowrank-svd" and info["rank"] == 8 and info["params"] == 8 * 64
    assert "shape" not in info and "weight_elements" not in info     # size accounting counts the factors' own tensors
    assert info["kernel"] == "two matmuls (smaller, not faster)"
    empty = LowRankLinear.from_layer_info(lin, info)
    empty.load_state_dict(m.state_dict())
    x = torch.randn(3, 40)
    torch.testing.assert_close(empty(x), m(x))
    assert empty.config == cfg and empty.speed == m.speed


def test_bad_ranks_and_records_are_one_line_errors():
    with pytest.raises(ConfigError, match="rank must be between 1 and 24"):
        LowRankLinear(40, 24, 25)
    with pytest.raises(ArtifactError, match="invalid LowRankLinear layer info"):
        LowRankLinear.from_layer_info(_layer(), {"in_features": 40, "out_features": 24})
    with pytest.raises(ArtifactError, match="invalid LowRankLinear layer info"):
        LowRankLinear.from_layer_info(_layer(), {"in_features": 40, "out_features": 24, "rank": 8, "dtype": "nope"})
    with pytest.raises(ArtifactError, match=r"records a \[24, 4000\] layer where the model has a Linear \[24, 40\]"):
        LowRankLinear.from_layer_info(_layer(), {"in_features": 4000, "out_features": 24, "rank": 8})
