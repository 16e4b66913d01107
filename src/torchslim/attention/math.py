"""Efficient attention as pure math: tensors in, tensors out.

Every function takes queries ``q`` ``[B, H, Lq, D]`` and keys / values ``k``, ``v`` ``[B, H, Lk, D]`` (the same
head count: :func:`repeat_kv` first for grouped-query attention) and returns ``[B, H, Lq, D]``. Queries are the
*last* ``Lq`` positions of the ``Lk`` keys (``Lq < Lk`` while decoding with a cache). ``key_keep`` ``[B, Lk]``
(bool) marks real keys (False: padding). ``scale`` multiplies ``q . k`` (default ``D ** -0.5``).

* :func:`full_attention`: the reference, softmax over every allowed key.
* :func:`local_attention`: sliding window (each token sees keys less than ``window`` positions away, on both sides,
  or only behind it when causal) or block-sparse (a query block sees its own and the neighbouring key blocks),
  plus ``n_global`` leading tokens that see and are seen by every token. Computed block by block on unfolded
  key windows: ``O(L * (block + 2 * window))`` scores instead of ``O(L^2)``.
* :func:`linformer_attention`: keys and values projected along the sequence to ``k`` rows (Wang et al. 2020).
* :func:`performer_attention`: softmax kernel estimated with positive orthogonal random features (FAVOR+,
  Choromanski et al. 2021): ``O(L * m * D)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG = float("-inf")


def _low(dtype: torch.dtype) -> float:
    """A finite "masked" score: a row with no allowed key (a padding query) gets some finite average instead of
    NaN, so no NaN clean-up copy of the probabilities is needed; rows with an allowed key are unaffected."""
    return torch.finfo(dtype).min


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, Hkv, L, D]`` -> ``[B, Hkv * n_rep, L, D]`` (each key/value head shared by ``n_rep`` query heads)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                   causal: bool = False, key_keep: torch.Tensor | None = None,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over every allowed key (``allowed``: an extra ``[Lq, Lk]`` bool pattern)."""
    lq, lk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * _scale(q, scale)
    ok = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        ok = ok & causal_pattern(lq, lk, q.device)
    if allowed is not None:
        ok = ok & allowed
    ok = ok[None, None]
    if key_keep is not None:
        ok = ok & key_keep[:, None, None, :]
    return torch.softmax(scores.masked_fill(~ok, NEG), dim=-1).nan_to_num(0.0) @ v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, causal: bool = False,
         key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Full attention by PyTorch's fused kernel (what a window covering the whole sequence computes)."""
    lq, lk = q.shape[-2], k.shape[-2]
    if key_keep is None and (not causal or lq == lk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and lq > 1, scale=_scale(q, scale))
    ok = causal_pattern(lq, lk, q.device)[None, None] if causal else torch.ones(1, 1, lq, lk, dtype=torch.bool,
                                                                                device=q.device)
    if key_keep is not None:
        ok = ok & key_keep[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ok, scale=_scale(q, scale))
    return out.nan_to_num(0.0)


def causal_pattern(lq: int, lk: int, device: torch.device | None = None) -> torch.Tensor:
    """``[Lq, Lk]``: query ``i`` (position ``Lk - Lq + i``) sees keys at or before its position."""
    pos = torch.arange(lq, device=device)[:, None] + (lk - lq)
    return torch.arange(lk, device=device)[None, :] <= pos


def window_pattern(lq: int, lk: int, window: int, *, causal: bool = False, n_global: int = 0,
                   device: torch.device | None = None) -> torch.Tensor:
    """``[Lq, Lk]`` bool: the sliding-window pattern :func:`local_attention` computes (for tests and docs)."""
    qpos = torch.arange(lq, device=device)[:, None] + (lk - lq)
    kpos = torch.arange(lk, device=device)[None, :]
    rel = kpos - qpos
    ok = (rel > -window) & ((rel <= 0) if causal else (rel < window))
    ok = ok | (kpos < n_global) | (qpos < n_global)
    return ok & (rel <= 0) if causal else ok


def _blocks(x: torch.Tensor, start: int, left: int, right: int, block: int, n_blocks: int,
            fill: float | bool = 0.0) -> torch.Tensor:
    """``x`` ``[..., L, D]`` (or ``[..., L]``) cut into ``n_blocks`` overlapping windows of ``left + block +
    right`` rows, window ``n`` starting at row ``start + n * block - left`` (rows outside ``x`` are ``fill``)."""
    span = left + block + right
    need = start + (n_blocks - 1) * block + span          # padded rows needed
    vec = x.dim() == 2 or x.dtype == torch.bool
    seq = -1 if vec else -2
    extra = need - (x.shape[seq] + left)
    pad = (left, max(extra, 0)) if vec else (0, 0, left, max(extra, 0))
    xp = F.pad(x.to(torch.uint8), pad, value=int(fill)).bool() if x.dtype == torch.bool else F.pad(x, pad, value=fill)
    xp = xp.narrow(seq, start, need - start)
    w = xp.unfold(seq, span, block)                       # [..., n_blocks, (D,) span]
    return w if vec else w.transpose(-1, -2)              # [..., n_blocks, span, D]


SCORE_BUDGET = 1 << 20          # score elements held at once by local_attention (4 MiB in float32)


def _local_chunk(qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, mask: torch.Tensor, scale: float,
                 gk: torch.Tensor, gv: torch.Tensor, gok: torch.Tensor | None) -> torch.Tensor:
    """Blocks ``[B, H, n, b, D]`` of queries against their key windows ``[B, H, n, span, D]`` (and the global keys
    ``[B, H, g, D]``, allowed where ``gok``), one softmax over both."""
    low = _low(qb.dtype)
    scores = torch.einsum("bhnqd,bhnsd->bhnqs", qb, kb).mul_(scale).masked_fill_(~mask[:, None], low)
    if gok is None:
        return torch.einsum("bhnqs,bhnsd->bhnqd", torch.softmax(scores, dim=-1), vb)
    span = scores.shape[-1]
    gs = (qb @ gk[:, :, None].transpose(-1, -2)).mul_(scale).masked_fill_(~gok, low)   # [B, H, n, b, g]
    p = torch.softmax(torch.cat([scores, gs], dim=-1), dim=-1)
    return torch.einsum("bhnqs,bhnsd->bhnqd", p[..., :span], vb) + p[..., span:] @ gv[:, :, None]


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, n_global: int = 0,
                    causal: bool = False, scale: float | None = None, key_keep: torch.Tensor | None = None,
                    block: int | None = None, layout: str = "sliding") -> torch.Tensor:
    """Sliding-window (``layout="sliding"``) or block-sparse (``"blocks"``) attention with global tokens.

    Sliding: query at position ``p`` sees keys ``j`` with ``p - window < j < p + window`` (``j <= p`` when causal).
    Blocks: queries in block ``n`` (``block`` positions each, default ``window``) see key blocks ``n - 1``, ``n``
    and ``n + 1`` (only ``n - 1`` and ``n`` up to the query when causal). The first ``n_global`` positions see every
    (earlier, when causal) key and every query sees them. A window at least as long as the sequence is full
    attention."""
    B, H, lq, D = q.shape
    lk = k.shape[-2]
    off = lk - lq
    scale = _scale(q, scale)
    b = max(1, min(block or window, lq))
    if (window >= lk if layout != "blocks" else b >= lk):
        return sdpa(q, k, v, scale=scale, causal=causal, key_keep=key_keep)   # the window covers everything
    if layout == "blocks":
        left, right = b, (0 if causal else b)
    else:
        left, right = window - 1, (0 if causal else window - 1)
    nb = -(-lq // b)
    qb = F.pad(q, (0, 0, 0, nb * b - lq)).reshape(B, H, nb, b, D)
    kb = _blocks(k, off, left, right, b, nb)                       # [B, H, nb, span, D]
    vb = _blocks(v, off, left, right, b, nb)
    span = left + b + right
    # key position minus query position, the same in every block: [b, span]
    rel = torch.arange(span, device=q.device)[None, :] - left - torch.arange(b, device=q.device)[:, None]
    ok = (rel <= 0) if causal else torch.ones_like(rel, dtype=torch.bool)
    if layout != "blocks":
        ok = ok & (rel > -window) & (rel < window)
    keep = key_keep if key_keep is not None else torch.ones(B, lk, dtype=torch.bool, device=q.device)
    if n_global:
        keep_local = keep & (torch.arange(lk, device=q.device) >= n_global)
    else:
        keep_local = keep
    kk = _blocks(keep_local, off, left, right, b, nb, fill=False)  # [B, nb, span]
    mask = ok[None, None] & kk[:, :, None, :]                      # [B, nb, b, span]
    g = min(n_global, lk)
    gk, gv, gok = k[:, :, :g], v[:, :, :g], None
    if g:
        gok = keep[:, None, None, :g].expand(B, 1, nb * b, g)
        if causal:
            qpos = torch.arange(nb * b, device=q.device) + off
            gok = gok & (torch.arange(g, device=q.device)[None, :] <= qpos[:, None])
        gok = gok.reshape(B, 1, nb, b, g)
    per_block = B * H * b * (span + g)
    step = max(1, SCORE_BUDGET // max(per_block, 1))               # blocks per chunk: bounded score memory
    out = q.new_empty(B, H, nb, b, D)
    for n0 in range(0, nb, step):
        n1 = min(nb, n0 + step)
        out[:, :, n0:n1] = _local_chunk(qb[:, :, n0:n1], kb[:, :, n0:n1], vb[:, :, n0:n1], mask[:, n0:n1], scale,
                                        gk, gv, None if gok is None else gok[:, :, n0:n1])
    out = out.reshape(B, H, nb * b, D)[:, :, :lq]
    rows = max(0, min(n_global, lk) - off)                       # global queries among these queries
    if rows:
        out = out.clone()
        out[:, :, :rows] = full_attention(q[:, :, :rows], k[:, :, :off + rows] if causal else k, v[:, :, :off + rows]
                                          if causal else v, scale=scale, causal=causal,
                                          key_keep=keep[:, :off + rows] if causal else keep)
    return out


# -- Linformer ----------------------------------------------------------------------------------------------
def pooling_projection(k: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[k, n]``: row ``i`` averages the ``i``-th of ``k`` contiguous segments of ``n`` positions (the identity when
    ``k == n``): a start for Linformer's learned projections that keeps every token's information."""
    if not 1 <= k <= n:
        raise ValueError(f"a Linformer projection needs 1 <= k <= n, got k={k}, n={n}")
    seg = torch.arange(n) * k // n                                    # segment of each position
    e = torch.zeros(k, n, dtype=torch.float64)
    e[seg, torch.arange(n)] = 1.0
    return (e / e.sum(1, keepdim=True)).to(dtype)


def linformer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e: torch.Tensor, f: torch.Tensor, *,
                        scale: float | None = None, key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q (E k)^T) (F v)`` with ``E``, ``F`` ``[kp, n >= Lk]`` (their first ``Lk`` columns are used).

    Padded keys are zeroed before projecting, and a projected row that received no real key (its share of the key
    mask, ``E @ keep``, is 0) is masked out: with ``E = F = I`` this is exactly full attention, padding included."""
    lk = k.shape[-2]
    if e.shape[-1] < lk:
        raise ValueError(f"Linformer projections cover {e.shape[-1]} positions, the keys have {lk}")
    e, f = e[:, :lk].to(k.dtype), f[:, :lk].to(v.dtype)
    if key_keep is not None:
        m = key_keep.to(k.dtype)[:, None, :, None]                   # [B, 1, Lk, 1]
        k, v = k * m, v * m
        mass = (e.abs() @ key_keep.to(k.dtype).T).T                   # [B, kp]
    else:
        mass = e.abs().sum(-1).expand(k.shape[0], -1)
    kp, vp = e @ k, f @ v                                             # [B, H, kp, D]
    scores = (q @ kp.transpose(-1, -2)).mul_(_scale(q, scale)).masked_fill_((mass <= 0)[:, None, None, :], _low(q.dtype))
    return torch.softmax(scores, dim=-1) @ vp


# -- Performer (FAVOR+) -------------------------------------------------------------------------------------
def orthogonal_features(m: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[m, d]`` Gaussian random features, orthogonal within each block of ``d`` rows, rows rescaled to the norms
    of Gaussian vectors (FAVOR+'s orthogonal random features: unbiased, lower variance than i.i.d. rows)."""
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        qm, _ = torch.linalg.qr(g)
        blocks.append(qm.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


def favor_features(x: torch.Tensor, w: torch.Tensor, *, is_query: bool, scale: float,
                   key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Positive random features ``phi(x) = exp(w.x' - |x'|^2 / 2) / sqrt(m)`` of ``x' = x * sqrt(scale)``, so that
    ``E[phi(q) . phi(k)] = exp(scale * q . k)``. A per-query constant (the row maximum) or one constant for all keys
    (the global maximum) is subtracted in the exponent for stability; both cancel in the attention ratio."""
    x = x * math.sqrt(scale)
    proj = x @ w.to(x.dtype).T                                        # [B, H, L, m]
    sq = (x * x).sum(-1, keepdim=True) / 2
    if is_query:
        stab = proj.detach().amax(-1, keepdim=True)
    elif key_keep is None:
        stab = proj.detach().amax(dim=(-1, -2), keepdim=True)
    else:
        stab = proj.detach().masked_fill(~key_keep[:, None, :, None], NEG).amax(dim=(-1, -2), keepdim=True)
    # in place (one [L, m] buffer): exp(proj - |x|^2/2 - stab - log sqrt(m))
    phi = proj.sub_(sq + stab.clamp_min(-1e4) + 0.5 * math.log(w.shape[0])).exp_()
    if not is_query and key_keep is not None:
        phi = phi * key_keep[:, None, :, None].to(phi.dtype)
    return phi


def linear_attention(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     chunk: int = 128, eps: float = 1e-6) -> torch.Tensor:
    """``phi(q) (phi(k)^T v) / phi(q) (phi(k)^T 1)``; causal: each query sums only keys at or before its position,
    chunk by chunk (a running ``[m, D]`` state plus a masked product inside the chunk)."""
    lq, lk = qf.shape[-2], kf.shape[-2]
    if not causal:
        kv = kf.transpose(-1, -2) @ v                                 # [B, H, m, D]
        z = kf.sum(-2)                                                # [B, H, m]
        return (qf @ kv) / ((qf @ z[..., None]) + eps)
    off = lk - lq
    kv = kf[:, :, :off].transpose(-1, -2) @ v[:, :, :off]
    z = kf[:, :, :off].sum(-2)
    outs = []
    for s in range(0, lq, chunk):
        e = min(s + chunk, lq)
        qc, kc, vc = qf[:, :, s:e], kf[:, :, off + s:off + e], v[:, :, off + s:off + e]
        a = torch.tril(qc @ kc.transpose(-1, -2))                     # [B, H, c, c]
        num = qc @ kv + a @ vc
        den = qc @ z[..., None] + a.sum(-1, keepdim=True)
        outs.append(num / (den + eps))
        kv = kv + kc.transpose(-1, -2) @ vc
        z = z + kc.sum(-2)
    return torch.cat(outs, dim=-2)


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, *,
                        scale: float | None = None, causal: bool = False,
                        key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+ estimate of softmax attention with random features ``w`` ``[m, D]``."""
    s = _scale(q, scale)
    qf = favor_features(q, w, is_query=True, scale=s)
    kf = favor_features(k, w, is_query=False, scale=s, key_keep=key_keep)
    return linear_attention(qf, kf, v, causal=causal)
