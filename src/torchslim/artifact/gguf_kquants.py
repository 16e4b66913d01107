"""GGML's K-quant super-blocks as pure math: codes and scales in, the bytes llama.cpp reads out.

A row is stored in super-blocks of 256 weights (row length a multiple of 256; llama.cpp falls back to
another type for other rows, see :data:`FALLBACK`):

* ``Q4_K`` (144 bytes): fp16 ``d`` and ``dmin``, twelve bytes of 6-bit sub-scales ``sc`` and sub-minimums
  ``m`` for eight sub-blocks of 32, then 128 bytes of nibbles; ``w = d * sc * q - dmin * m``, ``q`` in 0..15.
* ``Q6_K`` (210 bytes): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, sixteen int8 sub-scales for
  sub-blocks of 16, fp16 ``d``; ``w = d * sc * (q - 32)``, ``q`` in 0..63.

The byte layouts follow llama.cpp's ``block_q4_K`` / ``block_q6_K`` (checked against the gguf package's
dequantizers). :func:`round_q4_k` / :func:`round_q6_k` choose codes by rounding with a least-squares refit of
each sub-block's scale (and minimum), then rounding the sub-scales to their 6 / 8 bits; this is not
llama.cpp's own search (``make_qkx2_quants``), so files of the same type are not byte-identical.
"""
from __future__ import annotations

import numpy as np
import torch

QK = 256
FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}      # llama.cpp's type when a row is not whole super-blocks
BLOCK_BYTES = {"Q4_K": 144, "Q6_K": 210}


def _f16(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).contiguous().numpy().view(np.uint8).reshape(*x.shape, 2)


def _check(name: str, codes: torch.Tensor, lo: int, hi: int) -> tuple[int, int]:
    rows, cols = codes.shape
    if cols % QK:
        raise ValueError(f"{name}: rows of {cols} weights are not whole super-blocks of {QK}")
    if int(codes.min()) < lo or int(codes.max()) > hi:
        raise ValueError(f"{name}: codes outside {lo}..{hi}")
    return rows, cols // QK


def pack_q4_k(codes: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor, sc: torch.Tensor, m: torch.Tensor) -> np.ndarray:
    """``codes [rows, cols]`` 0..15; ``d``, ``dmin`` ``[rows, cols/256]``; ``sc``, ``m`` ``[rows, cols/32]`` 0..63."""
    rows, nb = _check("Q4_K", codes, 0, 15)
    if int(sc.min()) < 0 or int(sc.max()) > 63 or int(m.min()) < 0 or int(m.max()) > 63:
        raise ValueError("Q4_K: sub-scales and sub-minimums are 6-bit (0..63)")
    q = codes.to(torch.uint8).reshape(rows, nb, 4, 2, 32)
    qs = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).reshape(rows, nb, 128)
    s, mn = sc.to(torch.uint8).reshape(rows, nb, 8), m.to(torch.uint8).reshape(rows, nb, 8)
    scales = torch.cat([s[..., :4] | ((s[..., 4:] >> 4) << 6), mn[..., :4] | ((mn[..., 4:] >> 4) << 6),
                        (s[..., 4:] & 15) | ((mn[..., 4:] & 15) << 4)], dim=-1)
    out = np.concatenate([_f16(d), _f16(dmin), scales.numpy(), qs.numpy()], axis=-1)
    return out.reshape(rows, nb * BLOCK_BYTES["Q4_K"])


def pack_q6_k(codes: torch.Tensor, d: torch.Tensor, sc: torch.Tensor) -> np.ndarray:
    """``codes [rows, cols]`` -32..31; ``d`` ``[rows, cols/256]``; ``sc`` ``[rows, cols/16]`` int8."""
    rows, nb = _check("Q6_K", codes, -32, 31)
    if int(sc.min()) < -128 or int(sc.max()) > 127:
        raise ValueError("Q6_K: sub-scales are int8")
    q = (codes + 32).to(torch.uint8).reshape(rows, nb, 2, 4, 32)        # [half, row of 32 within the half, l]
    lo, hi = q & 15, q >> 4
    ql = torch.cat([lo[:, :, :, 0] | (lo[:, :, :, 2] << 4), lo[:, :, :, 1] | (lo[:, :, :, 3] << 4)], dim=-1)
    qh = hi[:, :, :, 0] | (hi[:, :, :, 1] << 2) | (hi[:, :, :, 2] << 4) | (hi[:, :, :, 3] << 6)
    out = np.concatenate([ql.reshape(rows, nb, 128).numpy(), qh.reshape(rows, nb, 64).numpy(),
                          sc.to(torch.int8).reshape(rows, nb, 16).numpy().view(np.uint8), _f16(d)], axis=-1)
    return out.reshape(rows, nb * BLOCK_BYTES["Q6_K"])


def _safe_inv(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0, 0, 1 / torch.where(x == 0, 1, x))


def _fit_affine(x: torch.Tensor, steps: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sub-block (last dim) ``scale >= 0`` and ``minimum >= 0`` with ``x ~ scale * q - minimum``, q in 0..15:
    min/max start, then least-squares refits of both for the rounded codes."""
    lo = x.amin(-1).clamp(max=0)
    scale = (x.amax(-1) - lo) / 15
    minimum = -lo
    for _ in range(steps):
        q = torch.round((x + minimum[..., None]) * _safe_inv(scale)[..., None]).clamp(0, 15)
        qm, xm = q.mean(-1), x.mean(-1)
        var = ((q - qm[..., None]) ** 2).mean(-1)
        a = torch.where(var > 0, ((q - qm[..., None]) * (x - xm[..., None])).mean(-1) / var.clamp_min(1e-30), scale)
        b = xm - a * qm                                   # x ~ a q + b, and b = -minimum must be <= 0
        keep = (a > 0) & (b <= 0)
        scale, minimum = torch.where(keep, a, scale), torch.where(keep, -b, minimum)
    return scale, minimum


def round_q4_k(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(codes, d, dmin, sc, m) of ``w [rows, cols]`` on the Q4_K grid."""
    rows, cols = w.shape
    x = w.float().reshape(rows, cols // QK, 8, 32)
    scale, minimum = _fit_affine(x)
    d, dmin = scale.amax(-1) / 63, minimum.amax(-1) / 63
    d16, dmin16 = d.to(torch.float16).float(), dmin.to(torch.float16).float()     # as stored
    sc = torch.round(scale * _safe_inv(d16)[..., None]).clamp(0, 63)
    m = torch.round(minimum * _safe_inv(dmin16)[..., None]).clamp(0, 63)
    step = d16[..., None] * sc
    q = torch.round((x + (dmin16[..., None] * m)[..., None]) * _safe_inv(step)[..., None]).clamp(0, 15)
    return (q.reshape(rows, cols).to(torch.uint8), d, dmin, sc.reshape(rows, -1).to(torch.uint8),
            m.reshape(rows, -1).to(torch.uint8))


def round_q6_k(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(codes, d, sc) of ``w [rows, cols]`` on the Q6_K grid."""
    rows, cols = w.shape
    x = w.float().reshape(rows, cols // QK, 16, 16)
    idx = x.abs().argmax(-1, keepdim=True)
    scale = torch.gather(x, -1, idx).squeeze(-1) / -32          # the largest magnitude maps to -32
    for _ in range(2):                                           # least-squares refit for the rounded codes
        q = torch.round(x * _safe_inv(scale)[..., None]).clamp(-32, 31)
        qq = (q * q).sum(-1)
        scale = torch.where(qq > 0, (q * x).sum(-1) / qq.clamp_min(1e-30), scale)
    big = torch.gather(scale, -1, scale.abs().argmax(-1, keepdim=True)).squeeze(-1)
    d = (big / -128).to(torch.float16).float()
    sc = torch.round(scale * _safe_inv(d)[..., None]).clamp(-128, 127)
    q = torch.round(x * _safe_inv(d[..., None] * sc)[..., None]).clamp(-32, 31)
    return q.reshape(rows, cols).to(torch.int8), d, sc.reshape(rows, -1).to(torch.int8)


def pack_rounded(name: str, w: torch.Tensor) -> np.ndarray:
    """``w`` rounded to K-quant ``name`` and packed."""
    if w.shape[-1] % QK:
        raise ValueError(f"{name}: rows of {w.shape[-1]} weights are not whole super-blocks of {QK}")
    if name == "Q4_K":
        return pack_q4_k(*round_q4_k(w))
    if name == "Q6_K":
        return pack_q6_k(*round_q6_k(w))
    raise ValueError(f"not a K-quant written here: {name}")
