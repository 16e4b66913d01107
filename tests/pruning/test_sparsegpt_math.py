import torch

from torchslim.pruning.masks import layer_mask
from torchslim.pruning.sparsegpt_math import sparsegpt_prune


def _problem(seed=0, rows=64, cols=128, n=1024):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) @ (torch.randn(cols, cols, generator=g) * 0.2)
    W = torch.randn(rows, cols, generator=g)
    return X, W, 2 * X.T @ X / n


def test_sparsegpt_hits_sparsity_and_beats_magnitude_on_output_error():
    X, W, H = _problem()
    Wp, keep = sparsegpt_prune(W, H, 0.5, block_size=32)
    assert (Wp == 0).float().mean().item() == 0.5
    assert torch.equal(Wp != 0, keep)
    err = lambda A: (X @ A.T - X @ W.T).pow(2).mean().item()  # noqa: E731
    assert err(Wp) < 0.8 * err(W * layer_mask(W.abs(), 0.5))


def test_sparsegpt_nm_pattern():
    X, W, H = _problem(1)
    Wp, keep = sparsegpt_prune(W, H, 0.5, nm=(2, 4), block_size=32)
    assert (keep.reshape(64, -1, 4).sum(-1) == 2).all()
    assert torch.equal(Wp != 0, keep)


def test_sparsegpt_handles_dead_inputs():
    X, W, H = _problem(2)
    H[:, 3] = 0
    H[3, :] = 0
    Wp, keep = sparsegpt_prune(W, H, 0.5)
    assert torch.isfinite(Wp).all()
    assert (Wp[:, 3] == 0).all()
