"""The channel dependency graph: which slices of which modules are coupled."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.pruning.depgraph import ChannelGroup, channel_groups, index_dim, reshape_channels
from torchslim.zoo.digits_cnn import build_digits_cnn

from _pruning_helpers import IMAGES, CatAddNet, CatNet, DepthwiseNet, SqueezeExcite, TokenMixer, mlp  # noqa: E402


def members(group: ChannelGroup) -> set[tuple[str, str]]:
    return {(m.module, m.kind) for m in group.members}


def member(group: ChannelGroup, name: str, kind: str):
    return next(m for m in group.members if m.module == name and m.kind == kind)


def by_producer(groups: list[ChannelGroup], name: str) -> ChannelGroup:
    return next(g for g in groups if name in g.producers)




def test_residual_cnn_groups_join_shortcut_and_main_branch() -> None:
    groups = channel_groups(build_digits_cnn(), {"x": torch.randn(2, 1, 8, 8)})
    assert [g.size for g in groups] == [32, 32, 64, 64]
    stem = by_producer(groups, "stem.0")   # identity shortcut: stem output and block output are one space
    assert members(stem) == {("stem.0", "out"), ("stem.1", "bn"), ("stages.0.0.conv1", "in"),
                             ("stages.0.0.conv2", "out"), ("stages.0.0.bn2", "bn"),
                             ("stages.1.0.conv1", "in"), ("stages.1.0.shortcut.0", "in")}
    last = by_producer(groups, "stages.1.0.shortcut.0")   # 1x1 projection shortcut + main branch
    assert set(last.producers) == {"stages.1.0.conv2", "stages.1.0.shortcut.0"}
    assert ("head", "in") in members(last) and ("stages.1.0.shortcut.1", "bn") in members(last)
    inner = by_producer(groups, "stages.1.0.conv1")
    assert members(inner) == {("stages.1.0.conv1", "out"), ("stages.1.0.bn1", "bn"), ("stages.1.0.conv2", "in")}
    for g in groups:   # every member maps each channel once (no flatten here)
        for m in g.members:
            assert torch.equal(m.channels.sort().values, torch.arange(g.size))
    assert not any("head" in g.producers for g in groups)   # the model's outputs are never pruned


def test_cat_offsets_and_flatten_blocks() -> None:
    groups = channel_groups(CatNet(), IMAGES)
    a, b, fuse = by_producer(groups, "a"), by_producer(groups, "b"), by_producer(groups, "fuse")
    assert (a.size, b.size, fuse.size) == (8, 12, 16)
    assert torch.equal(member(a, "fuse", "in").positions, torch.arange(8))
    assert torch.equal(member(b, "fuse", "in").positions, torch.arange(8, 20))
    assert torch.equal(member(b, "fuse", "in").channels, torch.arange(12))
    head = member(fuse, "head", "in")   # channel c of the 4x4 map becomes in_features 16c .. 16c+15
    assert torch.equal(head.positions, torch.arange(256))
    assert torch.equal(head.channels, torch.arange(16).repeat_interleave(16))


def test_cat_added_to_a_conv_splits_that_conv_between_groups() -> None:
    groups = channel_groups(CatAddNet(), IMAGES)
    a, b = by_producer(groups, "a"), by_producer(groups, "b")
    assert set(a.producers) == {"a", "proj"} and set(b.producers) == {"b", "proj"}
    assert torch.equal(member(a, "proj", "out").positions, torch.arange(8))
    assert torch.equal(member(b, "proj", "out").positions, torch.arange(8, 20))


def test_depthwise_filters_follow_their_input_channels() -> None:
    groups = channel_groups(DepthwiseNet(), IMAGES)
    assert len(groups) == 2
    first = by_producer(groups, "conv")
    assert members(first) == {("conv", "out"), ("bn1", "bn"), ("dw", "dw"), ("bn2", "bn"), ("pw", "in")}
    assert first.size == 8   # multiplier 2: each input channel owns two depthwise filters
    assert torch.equal(member(first, "dw", "dw").channels, torch.arange(8).repeat_interleave(2))
    assert torch.equal(member(first, "pw", "in").channels, torch.arange(8).repeat_interleave(2))
    assert members(by_producer(groups, "pw")) == {("pw", "out"), ("bn3", "bn"), ("fc", "in")}


def test_mlp_groups() -> None:
    groups = channel_groups(mlp(), {"input": torch.randn(2, 10)})
    assert [(g.size, members(g)) for g in groups] == [
        (32, {("0", "out"), ("2", "in")}), (16, {("2", "out"), ("5", "in")})]


def test_gates_and_transposes_follow_the_channels() -> None:
    groups = channel_groups(SqueezeExcite(), IMAGES)
    features = by_producer(groups, "conv")
    assert members(features) == {("conv", "out"), ("bn", "bn"), ("fc1", "in"), ("fc2", "out"), ("out", "in")}
    assert members(by_producer(groups, "fc1")) == {("fc1", "out"), ("fc2", "in")}
    (group,) = channel_groups(TokenMixer(), {"x": torch.randn(2, 5, 6)})
    assert members(group) == {("up", "out"), ("bn", "bn"), ("down", "in")}


def test_grouped_conv_and_input_residual_are_frozen_boundaries() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.c3 = nn.Conv2d(8, 3, 1)
            self.c4 = nn.Conv2d(3, 6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x + self.c3(self.c2(self.c1(x)))     # added to the input: c3's outputs are fixed
            return self.c4(y)

    groups = channel_groups(Net(), IMAGES)
    assert groups == []   # c1 feeds a grouped conv, c2 feeds c3, c3 meets the input, c4 is the output


def test_shared_module_joins_its_inputs() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.shared = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.a(x)) * self.shared(self.b(x))

    (group,) = channel_groups(Net(), IMAGES)
    assert set(group.producers) == {"a", "b"} and ("shared", "in") in members(group)


def test_layernorm_over_channels_is_a_member() -> None:
    model = nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.Linear(12, 2))
    (group,) = channel_groups(model, {"x": torch.randn(3, 5, 6)})
    assert members(group) == {("0", "out"), ("1", "ln"), ("2", "in")}


@pytest.mark.parametrize("body, what", [
    (lambda y: torch.roll(y, 1, dims=1), "roll"),
    (lambda y: y.softmax(dim=1), "softmax"),
    (lambda y: y.sum(1, keepdim=True).expand_as(y), "sum"),
    (lambda y: y[:, :4].repeat(1, 2, 1, 1), "indexing"),
])
def test_unknown_channel_op_raises_naming_it(body, what) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(body(self.conv(x)))

    with pytest.raises(TorchSlimError, match=what) as info:
        channel_groups(Net(), IMAGES)
    assert "\n" not in str(info.value)


def test_unknown_module_on_channels_raises_but_not_before_them() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1))
    with pytest.raises(TorchSlimError, match="GroupNorm module '1'"):
        channel_groups(model, IMAGES)
    first = nn.Sequential(nn.GroupNorm(1, 3), nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    assert [g.size for g in channel_groups(first, IMAGES)] == [8]


def test_bad_example_inputs() -> None:
    with pytest.raises(ConfigError, match="'y'"):
        channel_groups(CatNet(), {"x": IMAGES["x"], "y": 1})
    with pytest.raises(TorchSlimError, match="example_inputs"):
        channel_groups(CatNet(), {"x": torch.randn(2, 5, 4, 4)})


def test_reshape_and_index_rules() -> None:
    assert reshape_channels([2, 16, 4, 4], 1, [2, 256]) == (1, 16, 1)
    assert reshape_channels([2, 16, 1, 1], 1, [2, 16]) == (1, 1, 1)
    assert reshape_channels([2, 5, 16], 2, [10, 16]) == (1, 1, 1)
    assert reshape_channels([2, 16, 4], 1, [2, 4, 4, 4]) is None   # splits the channel dim
    assert index_dim((slice(None), slice(None), 0), 4, 1) == 1
    assert index_dim((Ellipsis, None, None), 2, 1) == 1
    assert index_dim((slice(None), slice(0, 4)), 4, 1) is None
    assert index_dim((0,), 3, 1) == 0
