"""Low-rank math on random tensors: exact at full rank, optimal where the theory says so."""
import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.lowrank import math as LM


def _data(seed=0, n=512, out_f=24, in_f=40):
    """A weight and inputs with correlated channels and a few large ones (as LLM activations have)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mix = torch.randn(in_f, in_f, generator=g) / in_f ** 0.5
    x = torch.randn(n, in_f, generator=g) @ mix
    x[:, :3] *= 20                                     # outlier channels
    return w, x


def _all_methods(w, x, rank):
    gram = x.T @ x
    absmean = x.abs().mean(0)
    return {"svd": LM.svd_factors(w, rank), "asvd": LM.asvd_factors(w, absmean, rank),
            "whiten": LM.whitened_factors(w, gram, rank, damp=0.0)}


def test_full_rank_factors_reproduce_the_weight_for_every_method():
    w, x = _data()
    for name, f in _all_methods(w, x, min(w.shape)).items():
        assert f.up.shape == (24, 24) and f.down.shape == (24, 40), name
        torch.testing.assert_close(f.product(), w, atol=1e-4, rtol=0, msg=name)


def test_truncated_svd_is_the_best_approximation_of_the_weight():
    w, _ = _data()
    f = LM.svd_factors(w, 8)
    s = torch.linalg.svdvals(w.double())
    err = float((w.double() - f.product().double()).norm())
    assert err == pytest.approx(float(s[8:].pow(2).sum().sqrt()), rel=1e-5)     # Eckart-Young


@pytest.mark.parametrize("rank", [4, 8, 16])
def test_whitened_error_on_the_calibration_inputs_is_at_most_plain_svds(rank):
    w, x = _data(seed=rank)
    f = _all_methods(w, x, rank)
    err = {k: LM.output_error(w, v, x) for k, v in f.items()}
    assert err["whiten"] <= err["svd"] + 1e-9
    assert err["whiten"] <= err["asvd"] + 1e-9
    assert err["whiten"] < 0.9 * err["svd"]            # and clearly better with outlier channels
    damped = LM.whitened_factors(w, x.T @ x, rank, damp=0.01)
    assert LM.output_error(w, damped, x) <= err["svd"]


def test_activation_aware_svd_beats_plain_svd_on_inputs_with_outlier_channels():
    w, x = _data(seed=3)
    f = _all_methods(w, x, 8)
    assert LM.output_error(w, f["asvd"], x) < LM.output_error(w, f["svd"], x)


def test_the_gram_scale_and_a_dead_channel_do_not_matter():
    w, x = _data(seed=5)
    x[:, 7] = 0                                        # a channel that never fires: Gram singular, dampened
    a = LM.whitened_factors(w, x.T @ x, 8)
    b = LM.whitened_factors(w, 2 / len(x) * x.T @ x, 8)
    torch.testing.assert_close(a.product(), b.product(), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(a.down).all()


def test_factors_split_the_singular_values_evenly():
    w, _ = _data()
    f = LM.svd_factors(w, 6)
    torch.testing.assert_close(f.up.norm(dim=0), f.down.norm(dim=1), rtol=1e-4, atol=1e-5)


def test_bad_ranks_and_parameters_are_one_line_errors():
    w, x = _data()
    for rank in (0, 25):
        with pytest.raises(ConfigError, match="rank must be between 1 and 24"):
            LM.svd_factors(w, rank)
    with pytest.raises(ConfigError, match="alpha"):
        LM.activation_scaling(x.abs().mean(0), -1)
    with pytest.raises(ConfigError, match="not positive definite"):
        LM.whitened_factors(w, torch.full((40, 40), float("nan")), 4)
