"""fold_bn_: BatchNorm2d folded into the conv before it, exactly, found with torch.fx; artifacts still load."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim
from torchslim.core.errors import TorchSlimError
from torchslim.transforms import FoldedAway, FoldedConv2d, fold_bn_, fold_conv_bn_weights
from torchslim.zoo.digits_cnn import build_digits_cnn, load_digits_cnn
from torchslim.core.state import state_of


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The trained digits-cnn (same session cache folder as the zoo and train tests)."""
    return load_digits_cnn(cache_dir=tmp_path_factory.getbasetemp() / "torchslim-cache", progress=False)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            if m.running_mean is None:
                continue
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


class SmallResNet(nn.Module):
    """Foldable pairs (with and without conv bias, affine-free BN) and three that must stay unfolded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)        # conv3 output also used in the add
        self.bn_add = nn.BatchNorm2d(8)                                       # after an add: not foldable
        self.conv4, self.bn4 = nn.Conv2d(8, 4, 3, stride=2, groups=4), nn.BatchNorm2d(4, track_running_stats=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)) + h)
        c3 = self.conv3(h)
        h = self.bn_add(self.bn3(c3) + c3)
        return self.bn4(self.conv4(h))


def test_pure_fold_math_matches_conv_then_bn() -> None:
    conv, bn = nn.Conv2d(4, 6, 3, bias=True), _randomize_bn(nn.Sequential(nn.BatchNorm2d(6)))[0]
    w, b = fold_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_trained_digits_cnn_folds_exactly_and_round_trips(digits, tmp_path) -> None:
    model = digits.model
    folded = build_digits_cnn(digits.source["arch"])
    folded.load_state_dict(model.state_dict())
    folded.eval()
    pairs = fold_bn_(folded)
    assert len(pairs) == 6 and ("stem.0", "stem.1") in pairs
    assert ("stages.1.0.shortcut.0", "stages.1.0.shortcut.1") in pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded.stem[1], nn.Identity) and isinstance(folded.stem[0], FoldedConv2d)
    x = digits.task.eval_x
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert digits.task.evaluate(folded)["top1"] == digits.task.evaluate(model)["top1"]
    path = torchslim.save(folded, tmp_path / "folded", source=digits.source)
    again = torchslim.load(path)
    assert isinstance(again.stem[0], FoldedConv2d) and isinstance(again.stem[1], FoldedAway)
    assert state_of(again).manifest["layers"]["stem.1"]["technique"] == "fold_bn"
    with torch.no_grad():
        assert torch.equal(again(x), folded(x))


def test_small_residual_net_folds_only_safe_pairs() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(SmallResNet())
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = model(x)
    pairs = fold_bn_(model)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    assert isinstance(model.bn3, nn.BatchNorm2d) and isinstance(model.bn_add, nn.BatchNorm2d)
    assert isinstance(model.bn4, nn.BatchNorm2d)      # no running statistics: uses batch statistics
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert fold_bn_(model) == []                       # idempotent


def test_untrained_digits_with_random_statistics_is_exact() -> None:
    torch.manual_seed(1)
    model = _randomize_bn(build_digits_cnn({"channels": [8, 16], "blocks": 2}), seed=3)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert len(fold_bn_(model)) == 10
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_training_mode_and_untraceable_models_are_user_errors() -> None:
    model = SmallResNet().train()
    with pytest.raises(TorchSlimError, match="eval"):
        fold_bn_(model)

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(TorchSlimError, match="torch.fx-traceable") as err:
        fold_bn_(Branchy().eval())
    assert "\n" not in str(err.value)
