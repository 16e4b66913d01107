"""Pure math of efficient attention: exact where the approximation covers everything, convergent where it samples."""
import pytest
import torch

from torchslim.attention import math as AM

B, H, L, D = 2, 3, 37, 16


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, B, H, L, D, generator=g).unbind(0)


@pytest.fixture
def keep():
    k = torch.ones(B, L, dtype=torch.bool)
    k[1, 29:] = False                      # right padding in the second row
    return k


def _close(a, b, tol=1e-5, keep=None):
    """Equal outputs (at real query positions only, when ``keep`` is given: a padding query's output is unspecified)."""
    if keep is not None:
        rows = keep[:, None, -a.shape[-2]:, None]
        a, b = a * rows, b * rows
    assert (a - b).abs().max().item() < tol


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block", [None, 5, 8, 64])
def test_window_as_long_as_sequence_is_full_attention(qkv, keep, causal, block):
    q, k, v = qkv
    _close(AM.local_attention(q, k, v, window=L, causal=causal, key_keep=keep, block=block),
           AM.full_attention(q, k, v, causal=causal, key_keep=keep))


@pytest.mark.parametrize("causal", [False, True])
def test_one_block_covering_the_sequence_is_full_attention(qkv, keep, causal):
    q, k, v = qkv
    _close(AM.local_attention(q, k, v, window=L, layout="blocks", causal=causal, key_keep=keep),
           AM.full_attention(q, k, v, causal=causal, key_keep=keep))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,n_global,block", [(5, 0, 6), (7, 2, 4), (4, 3, 13), (1, 0, 3), (L - 1, 0, 8)])
def test_sliding_window_matches_masked_full_attention(qkv, keep, causal, window, n_global, block):
    q, k, v = qkv
    pattern = AM.window_pattern(L, L, window, causal=causal, n_global=n_global)
    out = AM.local_attention(q, k, v, window=window, n_global=n_global, causal=causal, key_keep=keep, block=block)
    _close(out, AM.full_attention(q, k, v, causal=causal, key_keep=keep, allowed=pattern), keep=keep)
    # and it really is local: far from full attention
    assert (out - AM.full_attention(q, k, v, causal=causal, key_keep=keep)).abs().max() > 1e-2


def test_decode_queries_are_the_last_positions(qkv):
    q, k, v = qkv
    pattern = AM.window_pattern(L, L, 6, causal=True, n_global=2)
    full = AM.full_attention(q, k, v, causal=True, allowed=pattern)
    for lq in (1, 5):
        out = AM.local_attention(q[:, :, -lq:], k, v, window=6, n_global=2, causal=True, block=4)
        _close(out, full[:, :, -lq:])


def test_block_sparse_sees_neighbour_blocks_only(qkv):
    q, k, v = qkv
    b = 6
    qb, kb = torch.arange(L)[:, None] // b, torch.arange(L)[None, :] // b
    pattern = (kb - qb).abs() <= 1
    _close(AM.local_attention(q, k, v, window=b, layout="blocks"), AM.full_attention(q, k, v, allowed=pattern))


def test_linformer_identity_projection_at_k_equals_n_is_full_attention(qkv, keep):
    q, k, v = qkv
    e = AM.pooling_projection(L + 3, L + 3)              # identity, longer than the sequence: first L columns used
    assert torch.equal(e, torch.eye(L + 3))
    _close(AM.linformer_attention(q, k, v, e, e, key_keep=keep), AM.full_attention(q, k, v, key_keep=keep))


def test_linformer_pooling_projection_averages_segments():
    e = AM.pooling_projection(4, 10)
    assert torch.allclose(e.sum(1), torch.ones(4)) and (e > 0).sum() == 10
    with pytest.raises(ValueError):
        AM.pooling_projection(11, 10)


def test_linformer_rejects_sequences_longer_than_its_projection(qkv):
    q, k, v = qkv
    e = AM.pooling_projection(8, L - 1)
    with pytest.raises(ValueError, match="cover"):
        AM.linformer_attention(q, k, v, e, e)


def test_orthogonal_features_are_orthogonal_within_blocks():
    w = AM.orthogonal_features(2 * D, D, torch.Generator().manual_seed(1))
    block = w[:D] / w[:D].norm(dim=1, keepdim=True)
    assert torch.allclose(block @ block.T, torch.eye(D), atol=1e-5)


def test_favor_kernel_estimate_is_unbiased():
    """E[phi(q) . phi(k)] = exp(q . k * scale): the mean over many independent draws approaches it."""
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 1, 1, 4, D, generator=g) * 0.5).unbind(0)
    exact = torch.exp((q @ k.transpose(-1, -2)) * D ** -0.5)
    est = torch.zeros_like(exact)
    n = 200
    for s in range(n):
        w = torch.randn(64, D, generator=torch.Generator().manual_seed(100 + s))
        qf = AM.favor_features(q, w, is_query=True, scale=D ** -0.5)
        kf = AM.favor_features(k, w, is_query=False, scale=D ** -0.5)
        # undo the stabilisers to compare the raw kernel
        x_q, x_k = q * D ** -0.25, k * D ** -0.25
        stab_q = (x_q @ w.T).amax(-1, keepdim=True)
        stab_k = (x_k @ w.T).amax(dim=(-1, -2), keepdim=True)
        est += (qf * stab_q.exp()) @ (kf * stab_k.exp()).transpose(-1, -2)
    assert ((est / n - exact).abs() / exact).max() < 0.05


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_shrinks_with_features(qkv, keep, causal):
    q, k, v = (t * 0.5 for t in qkv)
    ref = AM.full_attention(q, k, v, causal=causal, key_keep=keep)

    def err(m):
        return sum((AM.performer_attention(q, k, v, AM.orthogonal_features(m, D, torch.Generator().manual_seed(s)),
                                           causal=causal, key_keep=keep) - ref).abs().mean().item()
                   for s in range(4)) / 4
    e16, e256, e2048 = err(16), err(256), err(2048)
    assert e2048 < e256 < e16 and e2048 < 0.5 * e16


def test_causal_linear_attention_matches_quadratic_form():
    g = torch.Generator().manual_seed(5)
    qf, kf = torch.rand(2, B, H, L, 8, generator=g).unbind(0)
    v = torch.randn(B, H, L, D, generator=g)
    a = torch.tril(qf @ kf.transpose(-1, -2))
    ref = (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)
    for chunk in (1, 7, 64):
        _close(AM.linear_attention(qf, kf, v, causal=True, chunk=chunk), ref, 1e-4)
    # with a cache offset: the last 5 queries
    _close(AM.linear_attention(qf[:, :, -5:], kf, v, causal=True, chunk=3), ref[:, :, -5:], 1e-4)


def test_repeat_kv_shares_heads():
    x = torch.randn(1, 2, 3, 4)
    r = AM.repeat_kv(x, 3)
    assert r.shape == (1, 6, 3, 4) and torch.equal(r[:, 0], r[:, 2]) and torch.equal(r[:, 3], x[:, 1])


def test_chunked_blocks_equal_one_chunk(qkv, keep, monkeypatch):
    q, k, v = qkv
    one = AM.local_attention(q, k, v, window=5, n_global=2, key_keep=keep, block=4)
    monkeypatch.setattr(AM, "SCORE_BUDGET", 1)                    # one block per chunk
    _close(AM.local_attention(q, k, v, window=5, n_global=2, key_keep=keep, block=4), one, 1e-6, keep=keep)


def test_local_attention_trains(qkv):
    q, k, v = (t.clone().requires_grad_(True) for t in qkv)
    AM.local_attention(q, k, v, window=5, n_global=1, causal=True, block=4).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
