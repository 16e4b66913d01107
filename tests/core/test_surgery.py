import pytest
from torch import nn

from torchslim.core.errors import TorchSlimError
from torchslim.core.surgery import get_module, module_names, parent_of, replace_module


def test_get_parent_replace_walk():
    m = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    assert get_module(m, "1.1") is m[1][1]
    assert get_module(m, "") is m
    parent, attr = parent_of(m, "1.1")
    assert parent is m[1] and attr == "1"
    new = nn.Linear(3, 1, bias=False)
    old = replace_module(m, "1.1", new)
    assert m[1][1] is new and isinstance(old, nn.Linear) and old.bias is not None
    assert module_names(m, nn.Linear) == ["0", "1.1"]
    with pytest.raises(TorchSlimError, match="no submodule 'x.y'"):
        get_module(m, "x.y")
    with pytest.raises(TorchSlimError):
        parent_of(m, "")
