"""Pure math of early exit on random tensors."""
import math

import torch

from torchslim.early_exit.math import (entropy_exit, features, gate_exit, gate_loss, kd_loss, normalized_entropy,
                                       patience_step, pool, pool_for)


def test_normalized_entropy_is_one_for_uniform_and_near_zero_for_certain():
    assert torch.allclose(normalized_entropy(torch.zeros(3, 5)), torch.ones(3))
    sharp = torch.tensor([[50.0, 0, 0, 0]])
    assert normalized_entropy(sharp).item() < 1e-6
    x = torch.randn(100, 7)
    h = normalized_entropy(x)
    assert bool(((h >= 0) & (h <= 1 + 1e-6)).all())


def test_entropy_and_gate_thresholds_at_their_ends_never_fire():
    x = torch.randn(200, 4) * 30
    assert not entropy_exit(x, 0.0).any() and entropy_exit(x, 1.0 + 1e-6).all()
    g = torch.randn(200) * 50
    assert not gate_exit(g, 1.0).any()
    assert gate_exit(torch.tensor([3.0, -3.0]), 0.5).tolist() == [True, False]


def test_patience_counts_consecutive_agreement_and_resets():
    last, count = torch.full((2,), -1), torch.zeros(2, dtype=torch.long)
    seq = [torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([1, 3]), torch.tensor([0, 3])]
    counts = []
    for pred in seq:
        count = patience_step(pred, last, count)
        last = pred
        counts.append(count.tolist())
    assert counts == [[0, 0], [1, 0], [2, 1], [0, 2]]


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    t = torch.randn(6, 5)
    assert kd_loss(t, t, 2.0).abs().item() < 1e-6
    assert kd_loss(torch.randn(6, 5), t, 2.0).item() > 0
    p = torch.softmax(t / 2, -1)
    s = torch.randn(6, 5)
    ref = (p * (p.log() - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert math.isclose(kd_loss(s, t, 2.0).item(), ref.item(), rel_tol=1e-5)


def test_gate_loss_targets_agreement_with_the_final_layer():
    final = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    exit_logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])        # agrees on row 0, not row 1
    good = gate_loss(torch.tensor([20.0, -20.0]), exit_logits, final)
    bad = gate_loss(torch.tensor([-20.0, 20.0]), exit_logits, final)
    assert good.item() < 1e-6 < bad.item()


def test_pooling_shapes_match_features():
    for shape in ((4, 9, 16), (4, 8, 6, 6), (4, 12), (4, 3, 2, 2, 2)):
        h = torch.randn(*shape)
        assert pool(h, pool_for(len(shape))).shape == (4, features(shape))
    h = torch.randn(2, 5, 8)
    assert torch.equal(pool(h, "first"), h[:, 0])


def test_token_mean_ignores_padding():
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pool(h, "tokens", mask)
    assert torch.allclose(out[0], h[0, :3].mean(0)) and torch.allclose(out[1], h[1].mean(0))
    h2 = h.clone()
    h2[0, 3:] = 1e6                                              # whatever sits at padded positions
    assert torch.equal(pool(h2, "tokens", mask), out)
    assert torch.allclose(pool(h, "tokens"), h.mean(1))
