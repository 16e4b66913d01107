"""Each distillation loss on random tensors against a hand computation (loops over positions, no shortcuts)."""
from __future__ import annotations

import math

import pytest
import torch

from torchslim.distill import losses as L

G = torch.Generator().manual_seed(0)


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _mask(b: int, n: int) -> torch.Tensor:
    m = torch.ones(b, n)
    m[0, -2:] = 0
    return m


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_kd_kl_is_t_squared_times_mean_kl_of_softened_distributions(temperature: float, masked: bool) -> None:
    s, t = torch.randn(2, 5, 7, generator=G), torch.randn(2, 5, 7, generator=G)
    mask = _mask(2, 5) if masked else None
    total, count = 0.0, 0
    for b in range(2):
        for i in range(5):
            if mask is not None and mask[b, i] == 0:
                continue
            p = _softmax([x / temperature for x in t[b, i].tolist()])
            q = _softmax([x / temperature for x in s[b, i].tolist()])
            total += _kl(p, q)
            count += 1
    assert L.kd_kl(s, t, temperature, mask).item() == pytest.approx(temperature**2 * total / count, rel=1e-5)


def test_kd_kl_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    s = torch.randn(3, 11, generator=G)
    assert L.kd_kl(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert L.kd_kl(s, s + torch.randn(3, 11, generator=G)).item() > 0


def test_topk_kd_kl_renormalizes_both_over_the_teachers_top_k() -> None:
    s, t = torch.randn(4, 20, generator=G), torch.randn(4, 20, generator=G)
    top = t.topk(5, dim=-1)
    total = 0.0
    for r in range(4):
        idx = top.indices[r].tolist()
        p = _softmax([t[r, j].item() / 2 for j in idx])
        q = _softmax([s[r, j].item() / 2 for j in idx])
        total += _kl(p, q)
    assert L.topk_kd_kl(s, top.values, top.indices, 2.0).item() == pytest.approx(4 * total / 4, rel=1e-5)
    full = L.topk_kd_kl(s, *t.topk(20, dim=-1), 2.0)          # k = all classes: the plain loss
    assert full.item() == pytest.approx(L.kd_kl(s, t, 2.0).item(), rel=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_hidden_mse_and_cosine_average_over_kept_positions(masked: bool) -> None:
    s, t = torch.randn(2, 4, 6, generator=G), torch.randn(2, 4, 6, generator=G)
    mask = _mask(2, 4) if masked else None
    mse, cos, count = 0.0, 0.0, 0
    for b in range(2):
        for i in range(4):
            if mask is not None and mask[b, i] == 0:
                continue
            a, c = s[b, i].tolist(), t[b, i].tolist()
            mse += sum((x - y) ** 2 for x, y in zip(a, c)) / 6
            dot = sum(x * y for x, y in zip(a, c))
            cos += 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))
            count += 1
    assert L.hidden_mse(s, t, mask).item() == pytest.approx(mse / count, rel=1e-5)
    assert L.cosine_loss(s, t, mask).item() == pytest.approx(cos / count, rel=1e-5)


def test_relation_kl_compares_self_relations_per_head_even_at_different_widths() -> None:
    b, n, heads = 1, 4, 2
    s, t = torch.randn(b, n, 6, generator=G), torch.randn(b, n, 10, generator=G)   # widths differ

    def rel(x: torch.Tensor, h: int, i: int) -> list[float]:
        d = x.shape[-1] // heads
        xs = x[0, :, h * d:(h + 1) * d]
        return _softmax([float(xs[i] @ xs[j]) / math.sqrt(d) for j in range(n)])

    total = sum(_kl(rel(t, h, i), rel(s, h, i)) for h in range(heads) for i in range(n))
    assert L.relation_kl(s, t, heads).item() == pytest.approx(total / (heads * n), rel=1e-5)
    assert L.relation_kl(t, t, heads).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_kl_gives_padded_keys_no_probability_and_padded_queries_no_weight() -> None:
    s, t = torch.randn(2, 5, 8, generator=G), torch.randn(2, 5, 8, generator=G)
    mask = _mask(2, 5)
    got = L.relation_kl(s, t, 2, mask)
    # the same as computing the first sequence on its 3 real tokens alone, and the second in full
    first = L.relation_kl(s[:1, :3], t[:1, :3], 2)
    second = L.relation_kl(s[1:], t[1:], 2)
    assert got.item() == pytest.approx((first.item() * 3 + second.item() * 5) / 8, rel=1e-5)


def test_the_cached_top_k_loss_with_the_rest_of_the_mass_matches_the_live_teacher_loss() -> None:
    s = torch.randn(3, 7, 200, generator=G)
    t = 4 * torch.randn(3, 7, 200, generator=G)                     # a peaked teacher, as a trained LM's
    s = t + torch.randn(3, 7, 200, generator=G)
    for temp in (1.0, 2.0):
        live = L.kd_kl(s, t, temp).item()
        logp = torch.log_softmax(t / temp, -1)
        everything = L.topk_kd_kl_rest(s, *logp.topk(200, dim=-1), temp).item()
        assert everything == pytest.approx(live, rel=1e-5)          # all classes cached: the same loss
        cached = L.topk_kd_kl_rest(s, *logp.topk(32, dim=-1), temp).item()
        assert cached <= live + 1e-6                                 # merging classes never adds divergence
        if temp == 1.0:                                              # the top 32 of 200 hold nearly all of it
            assert cached == pytest.approx(live, rel=0.05)


def test_the_rest_bucket_charges_a_student_that_moves_mass_outside_the_top_k() -> None:
    t = torch.tensor([[5.0, 4.0, 0.0, 0.0, 0.0]])
    inside = torch.tensor([[5.0, 4.0, -9.0, -9.0, -9.0]])
    outside = torch.tensor([[5.0, 4.0, 6.0, 6.0, 6.0]])              # same ratio on the top 2, mass elsewhere
    top = torch.log_softmax(t, -1).topk(2, dim=-1)
    assert L.topk_kd_kl(outside, *t.topk(2, dim=-1)).item() == pytest.approx(0.0, abs=1e-6)   # renormalised: blind
    assert L.topk_kd_kl_rest(outside, *top).item() > 10 * L.topk_kd_kl_rest(inside, *top).item()
