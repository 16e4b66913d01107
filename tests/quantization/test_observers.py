import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import IntFormat, PerChannel, PerGroup, PerTensor
from torchslim.quantization.observers import KL, MSE, ActivationObserver, MinMax, Percentile, compare_observers, group_range
from torchslim.quantization.primitives import to_groups


def outlier_weight():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))
    w[0, 0] = 40.0
    return w


def test_minmax_and_percentile_ranges():
    x = torch.arange(1, 1001).float().reshape(1, 1, -1)
    lo, hi = group_range(x, MinMax(), IntFormat(8))
    assert float(lo) == 1 and float(hi) == 1000
    lo, hi = group_range(x, Percentile(99.0), IntFormat(8))
    assert float(hi) == 990 and float(lo) == 10


def test_clipping_observers_beat_minmax_with_outliers_per_tensor():
    res = compare_observers(outlier_weight(), IntFormat(4, False), PerTensor())
    assert set(res) == {"MinMax", "Percentile", "MSE", "KL"}
    for name in ("Percentile", "MSE", "KL"):
        assert res[name] > res["MinMax"] + 2, (name, res)


def test_mse_never_worse_than_minmax():
    w = outlier_weight()
    for gran in (PerChannel(), PerGroup(64)):
        res = compare_observers(w, IntFormat(3, False), gran, observers=(MinMax(), MSE()))
        assert res["MSE"] >= res["MinMax"] - 1e-6


def test_kl_per_tensor_only_and_validation():
    with pytest.raises(ConfigError, match="PerTensor"):
        group_range(to_groups(outlier_weight(), PerChannel()), KL(), IntFormat(8))
    with pytest.raises(ConfigError):
        Percentile(10)


def test_activation_observer_streams():
    obs = ActivationObserver(MinMax(), IntFormat(8, False))
    with pytest.raises(ConfigError, match="no data"):
        obs.range()
    obs.update(torch.tensor([1.0, -2.0]))
    obs.update(torch.tensor([5.0]))
    assert obs.range() == (-2.0, 5.0)
    p = ActivationObserver(Percentile(99.0), IntFormat(8))
    for _ in range(10):
        p.update(torch.randn(4096, generator=torch.Generator().manual_seed(1)))
    lo, hi = p.range()
    assert 2.0 < hi < 2.8 and -2.8 < lo < -2.0
