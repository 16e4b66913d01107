import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import torchslim
from torchslim.core.linear import LinearLike, canonical_linear_, is_linear_like, out_in, plain_linear, weight_matrix
from torchslim.core.state import state_of


class Sub(nn.Linear):          # a subclass with nn.Linear's math (as Falcon's FalconLinear)
    pass


def test_conv1d_and_linear_subclasses_are_linear_like_and_convert_exactly():
    conv = Conv1D(6, 4)            # nf=6 outputs, nx=4 inputs
    torch.nn.init.normal_(conv.weight)
    assert is_linear_like(conv) and isinstance(conv, LinearLike) and isinstance(Sub(2, 2), LinearLike)
    assert not isinstance(nn.Conv2d(1, 1, 1), LinearLike) and out_in(conv) == (6, 4)
    assert torch.equal(weight_matrix(conv), conv.weight.t())
    x = torch.randn(3, 4)
    lin = plain_linear(conv)
    assert type(lin) is nn.Linear and torch.allclose(lin(x), conv(x), atol=1e-6)
    sub = Sub(4, 6)
    assert torch.allclose(plain_linear(sub)(x), sub(x))


def test_canonicalising_a_conv1d_records_it_for_artifacts():
    model = nn.Sequential(Conv1D(6, 4), nn.ReLU())
    new = canonical_linear_(model, "0")
    assert type(model[0]) is nn.Linear and new is model[0]
    assert state_of(model).resized["modules"]["0"]["kind"] == "Linear"
    assert canonical_linear_(model, "1") is model[1]            # not linear-like: unchanged


def test_gpt2_projections_are_selected_by_default_and_by_type_conv1d(tmp_path):
    from torchslim.zoo.families import build_family
    from torchslim.quantization import IntFormat, PerChannel, WeightOnlyConfig

    fam = build_family("gpt2")
    n_conv = sum(isinstance(m, Conv1D) for m in fam.model.modules())
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(),
                                                    selector=torchslim.Selector(include=("type:Conv1D",))))
    assert state_of(fam.model).history[-1].touched["layers"] == n_conv == 8
    fam = build_family("gpt2")
    torchslim.quantize_(fam.model, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    assert state_of(fam.model).history[-1].touched["layers"] == n_conv + 2   # + lm_head + the tied wte reading its codes
    with pytest.raises(torchslim.ConfigError, match="unknown module type"):
        torchslim.Selector(include=("type:NoSuchLayer",))
