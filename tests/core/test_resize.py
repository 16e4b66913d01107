import pytest
import torch
from torch import nn

from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.resize import apply_resize_spec, record_attribute, record_resized, rename_prefix, resize_spec


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.n = nn.LayerNorm(16)
        self.c = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.heads = 4


def test_recorded_modules_are_rebuilt_with_their_shapes_and_attributes():
    m = Net()
    m.a = nn.Linear(8, 5)
    m.n = nn.LayerNorm(5)
    m.c = nn.Conv2d(3, 2, 3, padding=1)
    for name in ("a", "n", "c"):
        record_resized(m, name)
    record_attribute(m, "", "heads", 2)
    spec = resize_spec(m)
    fresh = Net()
    apply_resize_spec(fresh, spec)
    assert fresh.a.out_features == 5 and fresh.n.normalized_shape == (5,) and fresh.c.out_channels == 2
    assert fresh.heads == 2
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(2, 8)
    assert torch.equal(fresh.n(fresh.a(x)), m.n(m.a(x)))


def test_rename_and_errors():
    m = Net()
    record_resized(m, "a")
    rename_prefix(m, "a", "b")
    assert list(resize_spec(m)["modules"]) == []  # 'b' does not exist in the model: dropped on refresh
    m.prelu = nn.PReLU()
    with pytest.raises(TorchSlimError, match="cannot record"):
        record_resized(m, "prelu")
    with pytest.raises(ArtifactError, match="lacks"):
        apply_resize_spec(Net(), {"modules": {"missing": {"kind": "Linear", "in_features": 1, "out_features": 1,
                                                          "bias": True}}})
