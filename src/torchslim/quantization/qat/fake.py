"""Fake quantization for training: pure functions, tensors in, tensors out, differentiable.

Rounding passes gradients straight through (the straight-through estimator, Bengio et al. 2013):
``round_ste(x) = x + (round(x) - x).detach()``. With it, the learned-step-size quantizer of LSQ (Esser
et al. 2020) needs no hand-written backward: for ``y = clamp(round_ste(x / s), qmin, qmax) * s``
autograd gives ``dy/dx = 1`` inside the range and ``0`` outside, and ``dy/ds = round(x/s) - x/s``
inside, ``qmin`` or ``qmax`` outside, which are LSQ's gradients. LSQ+ (Bhalgat et al. 2020) adds a
learned offset ``o``: ``y = clamp(round_ste((x - o) / s), 0, qmax) * s + o`` (``dy/do`` is ``0``
inside, ``1`` outside). PACT (Choi et al. 2018) learns the clipping range of activations instead of
the step: ``x`` is clipped to ``[lo, hi]`` and quantized with ``s = (hi - lo) / qmax``.

Every function computes exactly what the packed format dequantizes to (same scale, offset, codes),
which is what makes converting a trained model to real kernels exact up to the kernel's own rounding.
"""
from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward, gradient multiplied by ``factor`` backward (LSQ's step-size gradient scale)."""
    if factor == 1.0:
        return x
    y = x * factor
    return x.detach() + (y - y.detach())          # exactly x forward (y - y is 0), factor backward


def lsq_grad_factor(n_per_scale: int, qmax: int) -> float:
    """LSQ's gradient scale ``1 / sqrt(N * qmax)`` for a step shared by ``N`` values."""
    return 1.0 / max(1.0, float(n_per_scale * max(qmax, 1))) ** 0.5


def fake_int(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
             offset: torch.Tensor | None = None) -> torch.Tensor:
    """LSQ (``offset`` None, symmetric codes in ``[qmin, qmax]``) or LSQ+ (float ``offset``, codes in
    ``[0, qmax]``): ``round(clamp(x/s)) * s`` or ``round(clamp((x-o)/s)) * s + o`` (clipped before rounding, as
    in the LSQ paper: values within half a step beyond the range count as outside)."""
    if offset is None:
        return round_ste(torch.clamp(x / scale, qmin, qmax)) * scale
    return round_ste(torch.clamp((x - offset) / scale, 0, qmax)) * scale + offset


def int_codes(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
              offset: torch.Tensor | None = None) -> torch.Tensor:
    """The integer codes :func:`fake_int` uses (for packing): int8 when symmetric, uint8 otherwise."""
    if offset is None:
        return torch.clamp(torch.round(x / scale), qmin, qmax).to(torch.int8)
    return torch.clamp(torch.round((x - offset) / scale), 0, qmax).to(torch.uint8)


def ternary_codes(groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """``-1, 0, +1`` per value: 0 where ``|x| <= threshold * mean|x|`` of its group (TWN's rule, as the
    post-training ternary format uses); float, no gradient."""
    g = groups.detach()
    keep = g.abs() > threshold * g.abs().mean(dim=-1, keepdim=True)
    return torch.sign(g) * keep


def binary_codes(groups: torch.Tensor) -> torch.Tensor:
    """``-1, +1`` per value (``+1`` for ``x >= 0``, as the post-training binary format); no gradient."""
    return torch.where(groups.detach() >= 0, 1.0, -1.0).to(groups.dtype)


def fake_levels(groups: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``codes * scale`` forward; backward: ``dy/ds = codes``, and ``dy/dx = 1`` where ``|x| <= s``
    (the clipped straight-through estimator of binary and ternary networks), else 0."""
    inside = (groups.detach().abs() <= scale.detach()).to(groups.dtype)
    through = groups * inside
    return codes * scale + (through - through.detach())


def fake_act(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Asymmetric unsigned activation quantization exactly as the static int8 kernels do it:
    ``(clamp(round(x/s) + z, 0, qmax) - z) * s`` with the zero point ``z`` rounded (straight through)."""
    z = round_ste(torch.clamp(zero, 0, qmax))
    return (torch.clamp(round_ste(x / scale) + z, 0, qmax) - z) * scale


def pact_act(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> torch.Tensor:
    """PACT: clip ``x`` to the learned ``[lo, hi]`` (``lo <= 0 <= hi``), then quantize on ``qmax`` steps
    (zero point rounded so that 0 stays exact)."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp(hi - lo, min=1e-8) / qmax
    return fake_act(torch.minimum(torch.maximum(x, lo), hi), scale, -lo / scale, qmax)


def pact_qparams(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """The ``(scale, zero point)`` :func:`pact_act` quantizes with, for conversion to real kernels."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / qmax
    return scale, int(min(qmax, max(0, round(-lo / scale))))
