import pytest
import torch
from torch import nn

from torchslim.core import kinds
from torchslim.core.errors import ArtifactError, TorchSlimError


@pytest.mark.parametrize("module", [
    nn.Linear(6, 4), nn.Linear(6, 4, bias=False), nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv1d(4, 4, 3, groups=4),
    nn.BatchNorm2d(5), nn.LayerNorm(7), nn.Embedding(10, 3, padding_idx=0), nn.RMSNorm(6),
    nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2), nn.GELU(), nn.Dropout(0.1)),
])
def test_describe_then_build_gives_the_same_shapes(module):
    spec = kinds.describe(module)
    with torch.device("meta"):
        rebuilt = kinds.build(spec)
    assert type(rebuilt) is type(module)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


def test_slicing_linear_conv_and_norms_keeps_the_chosen_indices():
    lin = nn.Linear(6, 4)
    s = kinds.slice_module(lin, {"out": torch.tensor([0, 2]), "in": torch.tensor([1, 3, 5])})
    assert torch.equal(s.weight, lin.weight[[0, 2]][:, [1, 3, 5]]) and torch.equal(s.bias, lin.bias[[0, 2]])
    dw = nn.Conv2d(4, 8, 3, groups=4)
    s = kinds.slice_module(dw, {"out": torch.tensor([2, 3, 6, 7])})
    assert s.groups == 2 and s.in_channels == 2 and torch.equal(s.weight, dw.weight[[2, 3, 6, 7]])
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_()
    s = kinds.slice_module(bn, {"out": torch.tensor([1, 3])})
    assert torch.equal(s.running_mean, bn.running_mean[[1, 3]])
    assert kinds.axis_sizes(lin) == {"out": 4, "in": 6} and kinds.channel_role(dw) == "conv"


def test_unknown_or_unsliceable_kinds_are_clear_errors():
    with pytest.raises(TorchSlimError, match="cannot record a PReLU"):
        kinds.describe(nn.PReLU())
    with pytest.raises(TorchSlimError, match="cannot shrink a GRU"):
        kinds.slice_module(nn.GRU(2, 2), {})
    with pytest.raises(ArtifactError, match="unknown kind 'Nope'"):
        kinds.build({"kind": "Nope"})
    with pytest.raises(ArtifactError, match="bad spec for a Linear"):
        kinds.build({"kind": "Linear", "in_features": 2})


def test_replacement_modules_are_rows_that_cannot_be_sliced():
    from torchslim.quantization import CastLinear, CastConfig

    m = CastLinear(4, 4, True, torch.bfloat16, CastConfig())
    with pytest.raises(TorchSlimError, match="prune before quantizing"):
        kinds.slice_module(m, {})
    assert "CastLinear" in kinds.known_kinds()
