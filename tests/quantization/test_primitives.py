import pytest
import torch

from torchslim.quantization.formats import NF4, NF4_LEVELS, Binary, Codebook, IntFormat, PerChannel, PerGroup, PerTensor, Ternary
from torchslim.quantization.primitives import fake_quantize, kmeans_1d, quantize_groups, sqnr_db, to_groups


def weight(rows=64, cols=256, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_to_groups_shapes():
    w = weight()
    assert to_groups(w, PerTensor()).shape == (1, 1, 64 * 256)
    assert to_groups(w, PerChannel()).shape == (64, 1, 256)
    assert to_groups(w, PerGroup(32)).shape == (64, 8, 32)
    ragged = to_groups(w, PerGroup(100))  # 256 inputs -> 3 groups of 100, zero padded
    assert ragged.shape == (64, 3, 100) and torch.equal(ragged.reshape(64, 300)[:, 256:], torch.zeros(64, 44))


def test_ragged_groups_dequantize_to_the_original_shape():
    w = weight(16, 96)
    out = fake_quantize(w, IntFormat(4, False), PerGroup(64))
    assert out.shape == w.shape and sqnr_db(w, out) > 15


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int_rtn_error_within_half_step(bits, symmetric):
    w = weight()
    fmt = IntFormat(bits, symmetric)
    g = to_groups(w, PerGroup(64))
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    qt = quantize_groups(g, fmt, lo, hi, w.shape)
    assert int(qt.codes.min()) >= fmt.qmin and int(qt.codes.max()) <= fmt.qmax
    err = (qt.dequantize() - w).abs().reshape(g.shape)
    # inside the clipping range the rounding error is at most half a step
    assert bool((err <= qt.scale / 2 + 1e-6).all())


def test_more_bits_less_error_and_groups_help():
    w = weight()
    s = [sqnr_db(w, fake_quantize(w, IntFormat(b, False), PerGroup(64))) for b in (2, 3, 4, 8)]
    assert s == sorted(s) and s[-1] > 40
    assert sqnr_db(w, fake_quantize(w, IntFormat(4, False), PerGroup(32))) > sqnr_db(
        w, fake_quantize(w, IntFormat(4, False), PerChannel()))


def test_symmetric_int8_per_channel_exact_on_grid():
    scale = torch.rand(8, 1) + 0.1
    q = torch.randint(-127, 128, (8, 16)).float()
    w = q * scale
    w[:, 0] = 127 * scale[:, 0]  # make absmax hit the grid end
    assert torch.allclose(fake_quantize(w, IntFormat(8), PerChannel()), w, atol=1e-5)


def test_nf4_ternary_binary_values():
    w = weight(8, 64)
    nf = quantize_groups(to_groups(w, PerGroup(64)), NF4(), *_range(w, 64), w.shape)
    assert set(nf.values().unique().tolist()) <= set(NF4_LEVELS.tolist())
    assert 15 < sqnr_db(w, nf.dequantize()) < 25
    t = fake_quantize(w, Ternary(), PerChannel())
    assert all(len(r.abs().unique()) <= 2 for r in t)  # {0, scale}
    b = fake_quantize(w, Binary(), PerChannel())
    assert torch.allclose(b.abs(), w.abs().mean(1, keepdim=True).expand_as(b))
    assert torch.equal(torch.sign(b), torch.where(w >= 0, 1.0, -1.0))


def _range(w, g):
    x = to_groups(w, PerGroup(g))
    return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)


def test_kmeans_codebook_beats_uniform_on_skewed_data():
    x = torch.distributions.Laplace(0, 1).sample((4, 1024)) ** 3
    cb = fake_quantize(x, Codebook(3), PerTensor())
    uni = fake_quantize(x, IntFormat(3, False), PerTensor())
    assert sqnr_db(x, cb) > sqnr_db(x, uni) + 3
    c = kmeans_1d(torch.cat([torch.zeros(100), torch.ones(100) * 5]), 2)
    assert torch.allclose(c, torch.tensor([0.0, 5.0]))
