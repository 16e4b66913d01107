"""Fake quantization: forward values equal the post-training formats; STE, LSQ, LSQ+ and PACT gradients equal
central finite differences of their surrogates (rounding residual frozen at the evaluation point)."""
from __future__ import annotations

import pytest
import torch

from torchslim.quantization.formats import Binary, IntFormat, PerChannel, PerGroup, Ternary
from torchslim.quantization.observers import MinMax, group_range
from torchslim.quantization.primitives import quantize_groups, to_groups
from torchslim.quantization.qat import fake as FQ
from torchslim.quantization.qat.modules import ActFake, WeightFake

EPS = 1e-6


@pytest.fixture(autouse=True)
def _float64():
    """Finite differences in double precision (restored after each test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _fd(f, t: torch.Tensor) -> torch.Tensor:
    """Central finite differences of scalar ``f`` w.r.t. every element of ``t``."""
    g = torch.zeros_like(t)
    flat, gflat = t.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + EPS
        hi = f()
        flat[i] = old - EPS
        lo = f()
        flat[i] = old
        gflat[i] = (hi - lo) / (2 * EPS)
    return g


def _data(seed: int, shape=(4, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_round_ste_rounds_forward_and_passes_gradients_through() -> None:
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = FQ.round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsq_gradients_equal_finite_differences_of_the_frozen_residual_surrogate(seed: int) -> None:
    """Straight through: ``round`` acts as ``+ residual`` with the residual frozen where the gradient is taken."""
    x, w = _data(seed)
    x = x * 3
    s = torch.tensor([[0.3], [0.5], [0.7], [0.9]], requires_grad=True)
    xv = x.clone().requires_grad_(True)
    (FQ.fake_int(xv, s, -8, 7) * w).sum().backward()
    clipped = torch.clamp(x / s.detach(), -8, 7)
    resid = clipped.round() - clipped

    def surrogate(xx, ss):
        return float(((torch.clamp(xx / ss, -8, 7) + resid) * ss * w).sum())

    xs, ss = x.clone(), s.detach().clone()
    torch.testing.assert_close(xv.grad, _fd(lambda: surrogate(xs, s.detach()), xs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.grad, _fd(lambda: surrogate(x, ss), ss), atol=1e-5, rtol=1e-5)
    # LSQ's closed form: d/ds = round(x/s) - x/s inside the range, qmin / qmax outside
    q = x / s.detach()
    closed = torch.where(q <= -8, -8.0, torch.where(q >= 7, 7.0, q.round() - q))
    torch.testing.assert_close(s.grad, (closed * w).sum(1, keepdim=True))


def test_lsq_plus_offset_gradient_equals_finite_differences_one_outside_zero_inside() -> None:
    x = torch.tensor([[-3.0, 0.1, 0.2, 5.0]])
    s = torch.tensor([[0.1]], requires_grad=True)
    o = torch.tensor([[0.0]], requires_grad=True)
    FQ.fake_int(x, s, 0, 15, o).sum().backward()       # codes 0..15 cover [0, 1.5]: -3 below, 5 above
    assert o.grad.item() == pytest.approx(2.0)
    x2, w = _data(5)
    o2 = torch.tensor([[-0.2], [0.1], [0.0], [0.3]], requires_grad=True)
    s2 = torch.full((4, 1), 0.25, requires_grad=True)
    (FQ.fake_int(x2, s2, 0, 15, o2) * w).sum().backward()
    clipped = torch.clamp((x2 - o2.detach()) / 0.25, 0, 15)
    resid = clipped.round() - clipped
    oo = o2.detach().clone()
    f = lambda: float(((torch.clamp((x2 - oo) / 0.25, 0, 15) + resid) * 0.25 + oo).mul(w).sum())  # noqa: E731
    torch.testing.assert_close(o2.grad, _fd(f, oo), atol=1e-5, rtol=1e-5)


def test_pact_upper_clip_gradient_is_the_clipped_mass_plus_the_step_term() -> None:
    """PACT with ``lo = 0``: ``dy/dhi`` is 1 for inputs at or above ``hi`` and ``(round(x/s) - x/s) / qmax``
    inside (the step ``s = hi / qmax`` moves with ``hi``)."""
    x, w = _data(3, (64,))
    x = x.abs() * 2
    lo, hi = torch.tensor(0.0, requires_grad=True), torch.tensor(1.5, requires_grad=True)
    (FQ.pact_act(x, lo, hi, 255) * w).sum().backward()
    s = 1.5 / 255
    inside = x < 1.5
    expect = (w * torch.where(inside, ((x / s).round() - x / s) / 255, 1.0)).sum()
    torch.testing.assert_close(hi.grad, expect, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fmt,gran", [(IntFormat(4, symmetric=False), PerGroup(8)), (IntFormat(8), PerChannel()),
                                      (IntFormat(2), PerGroup(4)), (Ternary(), PerChannel()), (Binary(), PerGroup(8))])
def test_weight_fake_at_init_equals_post_training_rounding(fmt, gran) -> None:
    w = torch.randn(6, 20, generator=torch.Generator().manual_seed(7)).float()
    g = to_groups(w, gran)
    lo, hi = group_range(g, MinMax(), fmt)
    qt = quantize_groups(g, fmt, lo, hi, w.shape)
    fake = WeightFake.from_qtensor(qt, gran)
    torch.testing.assert_close(fake(w), qt.dequantize(), rtol=0, atol=1e-6)
    packed = fake.to_qtensor(w)
    assert torch.equal(packed.codes, qt.codes)
    torch.testing.assert_close(packed.dequantize(), fake(w).detach(), rtol=0, atol=0)


def test_binary_and_ternary_straight_through_is_clipped_at_the_scale() -> None:
    g = torch.tensor([[[0.05, -0.5, 2.0, -3.0]]], requires_grad=True)
    s = torch.tensor([[[1.0]]], requires_grad=True)
    codes = FQ.binary_codes(g)
    (FQ.fake_levels(g, codes, s) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert g.grad.flatten().tolist() == [1.0, 2.0, 0.0, 0.0]          # |x| <= s passes, beyond is cut
    assert s.grad.item() == pytest.approx(1 - 2 + 3 - 4)              # d/ds = codes


def test_act_fake_matches_the_static_kernels_rounding_and_learns_its_range() -> None:
    q = ActFake(8, "lsq", 16)
    assert not bool(q.ready)
    x = torch.linspace(-1, 3, 50)
    assert torch.equal(q(x), x)                  # no range yet: pass through
    q.set_range(-1.0, 3.0)
    scale, zero = q.qparams()
    expect = (torch.clamp(torch.round(x / scale) + zero, 0, q.qmax) - zero) * scale
    torch.testing.assert_close(q(x).detach(), expect.to(x.dtype), rtol=0, atol=1e-6)
    q(x * 2).sum().backward()
    assert q.a.grad is not None and q.a.grad.item() != 0.0      # the step learns


def test_a_four_bit_quantizer_uses_sixteen_levels() -> None:
    q = ActFake(4, "pact", 8)
    q.set_range(0.0, 1.5)
    assert q.qmax == 15
    assert len(torch.unique(q(torch.linspace(-1, 2, 1000)).detach())) == 16
