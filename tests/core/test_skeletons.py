import pytest
from torch import nn

from torchslim.core.errors import ArtifactError
from torchslim.core.skeletons import build_skeleton, register_skeleton


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


def test_builders_are_found_by_architecture_source_or_class(tmp_path):
    register_skeleton(cls=MyNet)(lambda manifest, path: MyNet())
    manifest = {"architecture": {"kind": "source", "class": f"{MyNet.__module__}.MyNet"}, "source": {"kind": "module"}}
    assert isinstance(build_skeleton(manifest, tmp_path), MyNet)


def test_an_unknown_plain_module_asks_for_the_architecture(tmp_path):
    manifest = {"architecture": {"kind": "source", "class": "x.Unknown"}, "source": {"kind": "module"}}
    with pytest.raises(ArtifactError, match="model=.*register_skeleton"):
        build_skeleton(manifest, tmp_path)


def test_register_needs_exactly_one_key():
    with pytest.raises(TypeError):
        register_skeleton(architecture="a", source="b")
