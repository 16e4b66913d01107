import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.pruning import masks as M
from torchslim.pruning.importance import Importance, reduce_scores, scores


def test_layer_mask_prunes_exactly_the_lowest():
    s = torch.tensor([[5.0, 1.0, 3.0], [0.5, 4.0, 2.0]])
    keep = M.layer_mask(s, 0.5)
    assert keep.tolist() == [[True, False, True], [False, True, False]]


def test_row_mask_prunes_the_same_count_per_row():
    s = torch.rand(6, 40)
    keep = M.row_mask(s, 0.25)
    assert (keep.sum(1) == 30).all()
    # the pruned ones are the lowest of their row
    for r in range(6):
        assert s[r][~keep[r]].max() <= s[r][keep[r]].min()


def test_global_masks_hit_total_and_differ_per_layer():
    scores_ = {"a": torch.rand(10, 10) * 10, "b": torch.rand(10, 10)}
    keeps = M.global_masks(scores_, 0.5)
    total_pruned = sum((~k).sum().item() for k in keeps.values())
    assert total_pruned == 100
    assert M.sparsity_of(keeps["b"]) > M.sparsity_of(keeps["a"])


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_n_of_every_m(n, m):
    s = torch.rand(8, 32)
    keep = M.nm_mask(s, n, m)
    assert (keep.reshape(8, -1, m).sum(-1) == n).all()
    assert M.sparsity_of(keep) == pytest.approx(1 - n / m)


def test_nm_errors_are_clear():
    with pytest.raises(ConfigError, match="multiple of 4"):
        M.nm_mask(torch.rand(2, 6), 2, 4)
    with pytest.raises(ConfigError):
        M.parse_nm("4:2")
    with pytest.raises(ConfigError):
        M.parse_nm("two:four")
    with pytest.raises(ConfigError):
        M.layer_mask(torch.rand(3), 1.0)


def test_keep_indices_sorted_and_at_least_one():
    idx = M.keep_indices(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2)
    assert idx.tolist() == [1, 3]
    assert M.keep_indices(torch.tensor([0.1, 0.2]), 0).tolist() == [1]


def test_importance_scores():
    w = torch.tensor([[1.0, -2.0], [3.0, -0.5]])
    assert torch.equal(scores(w, Importance.MAGNITUDE), w.abs())
    assert torch.equal(scores(w, Importance.MAGNITUDE_L2), w.pow(2))
    g = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert torch.equal(scores(w, Importance.TAYLOR, grad=g), (w * g).abs())
    norm = torch.tensor([10.0, 1.0])
    assert torch.equal(scores(w, Importance.WANDA, input_norm=norm), w.abs() * norm)
    with pytest.raises(ConfigError, match="calibration"):
        scores(w, Importance.WANDA)
    with pytest.raises(ConfigError, match="gradients"):
        scores(w, Importance.TAYLOR)
    assert reduce_scores(torch.ones(4, 3, 2, 2), 0).tolist() == [12.0] * 4


def test_kept_count_rounds_to_multiples_within_bounds():
    assert M.kept_count(10, 3, round_to=8) == 8 and M.kept_count(6, 2, round_to=8) == 2
    assert M.kept_count(64, 0, min_keep=4) == 4 and M.kept_count(64, 0) == 1
